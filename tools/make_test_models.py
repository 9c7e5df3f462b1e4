"""Test models for the `device` crate: torchvision ResNets with random but BatchNorm-realistic
weights, their ONNX exports (fp32 and int8 QDQ), and reference logits.

Run with the project venv (the device tests call it themselves when fixtures are missing):

    .venv/bin/python tools/make_test_models.py [--out target/device-fixtures] [--models resnet8,resnet18]
    .venv/bin/python tools/make_test_models.py --models resnet50     # for tools/bench_ort.py --model resnet50

For each model NAME it writes into --out:

- NAME.state_dict.safetensors  torchvision state_dict (Training form: conv + BatchNorm), f32
                               (`num_batches_tracked` as i64). `device convert` turns it into the
                               compact weights format (Training or Folded form, f32 or f16).
- NAME.onnx                    fp32 ONNX of the same network with BatchNorm folded into the convs,
                               initializers named like torchvision (`layer1.0.conv1.weight`).
- NAME.torchvision.onnx        the plain `torch.onnx.export` of the unfolded torchvision module.
- NAME.int8.onnx               int8 QDQ ONNX from onnxruntime.quantization.quantize_static:
                               per-output-channel symmetric int8 weights, per-tensor int8
                               activations, int32 biases, Q/DQ only on Conv/Gemm inputs (exactly
                               the compact int8 scheme of docs/weights-format.md).
- NAME.int8.integer.onnx       the same int8 network in integer ops (`integer_onnx`: ConvInteger,
                               MatMulInteger; what `host export --onnx` writes for int8 files).
- NAME.int8.safetensors        the int8 parameters read back out of NAME.int8.onnx under our tensor
                               names (`L.weight` i8, `L.weight_scale`, `L.weight_zero_point`,
                               `L.input_scale`, `L.input_zero_point`, `L.bias` i32).
- NAME.int8-ort.onnx           (resnet18, resnet50: for tools/bench_ort.py) the default QDQ quantization
                               ORT runs fastest: u8 activations with Q/DQ on every output.
- NAME.parity.safetensors      the parity file (docs/parity-file.md): `inputs`, `logits` (PyTorch
                               fp32), `logits_int8` (ONNX Runtime on NAME.int8.onnx, graph optimizations off: the
                               reference QDQ semantics).
- NAME.integer.parity.safetensors the same, with `logits_int8` from ONNX Runtime on
                               NAME.int8.integer.onnx.
- NAME.exact.parity.safetensors the same, with `logits_int8` from `exact_int8_logits` (the int8
                               scheme with exact integer sums) instead of ONNX Runtime. Written
                               last: the device tests take it as the sign the fixtures are complete.
- NAME.json                    what the Rust side needs to know (arch, channels, classes, labels).

Weights are seeded (torch.manual_seed) so reruns give the same files.
"""

import argparse
import json
import pathlib
import sys

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from onnx import numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from skimage import data as skdata
from skimage.transform import resize as sk_resize

from ort_common import logits as ort_logits, save_safetensors, session

ROOT = pathlib.Path(__file__).resolve().parent.parent
FASHION_LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
FASHION_MEAN, FASHION_STD = 0.2860, 0.3530


# --- models ---------------------------------------------------------------------------------------


def build(arch):
    """torchvision module for one of our presets (shared::ResNetConfig)."""
    if arch == "resnet18":
        return torchvision.models.resnet18(weights=None), 3, 224
    if arch == "resnet50":
        return torchvision.models.resnet50(weights=None), 3, 224
    if arch == "resnet8":
        # shared's ResNet-8: Small stem (3x3 s1, no max pool), stages [1, 1, 1] of 16/32/64, gray 28x28.
        m = torchvision.models.resnet.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1], num_classes=10)

        def conv(cin, cout, k, s):
            return nn.Conv2d(cin, cout, k, s, k // 2, bias=False)

        m.conv1, m.bn1, m.maxpool = conv(1, 16, 3, 1), nn.BatchNorm2d(16), nn.Identity()
        m.inplanes = 16
        m.layer1 = m._make_layer(torchvision.models.resnet.BasicBlock, 16, 1)
        m.layer2 = m._make_layer(torchvision.models.resnet.BasicBlock, 32, 1, stride=2)
        m.layer3 = m._make_layer(torchvision.models.resnet.BasicBlock, 64, 1, stride=2)
        m.layer4 = nn.Identity()
        m.fc = nn.Linear(64, 10)
        for mod in m.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
        return m, 1, 28
    raise SystemExit(f"unknown model {arch}")


def photos():
    """The photos skimage ships (read from its data folder: no download)."""
    from skimage.io import imread

    folder = pathlib.Path(skdata.__file__).parent
    names = ["chelsea.png", "astronaut.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "horse.png",
             "camera.png", "coins.png", "moon.png", "page.png", "text.png", "brick.png", "grass.png", "gravel.png",
             "hubble_deep_field.jpg", "retina.jpg", "cell.png", "clock_motion.png", "color.png", "logo.png"]
    out = []
    for n in names:
        img = imread(folder / n)
        if img.dtype == bool:
            img = img.astype(np.uint8) * 255
        img = img.astype(np.float32) / (255.0 if img.max() > 1 else 1.0)
        if img.ndim == 2:
            img = np.stack([img] * 3, -1)
        out.append(img[..., :3])
    return out


def imagenet_inputs(n, rng):
    """Resize(256) + CenterCrop(224) + normalize, on photos and random crops of them."""
    tf = torchvision.transforms.Compose([
        torchvision.transforms.Resize(256, antialias=True),
        torchvision.transforms.CenterCrop(224),
        torchvision.transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
    imgs, out = photos(), []
    for i in range(n):
        img = imgs[i % len(imgs)]
        if i >= len(imgs):
            h, w = img.shape[:2]
            ch, cw = rng.integers(h // 3, h + 1), rng.integers(w // 3, w + 1)
            y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            img = img[y:y + ch, x:x + cw]
        out.append(tf(torch.from_numpy(img).permute(2, 0, 1).contiguous()))
    return torch.stack(out)


def gray28_inputs(n, rng):
    """Fashion-MNIST-like: gray random crops of photos, 28x28, Fashion-MNIST normalization."""
    imgs, out = photos(), []
    for i in range(n):
        img = imgs[i % len(imgs)].mean(-1)
        h, w = img.shape
        s = int(rng.integers(min(h, w) // 6, min(h, w) + 1))
        y, x = rng.integers(0, h - s + 1), rng.integers(0, w - s + 1)
        crop = sk_resize(img[y:y + s, x:x + s], (28, 28), anti_aliasing=True)
        out.append((crop - FASHION_MEAN) / FASHION_STD)
    return torch.from_numpy(np.stack(out)[:, None].astype(np.float32))


def make_bn_realistic(model, calib, gen):
    """Running statistics from real activations (train-mode passes), then random affine BN params."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for batch in calib.split(16):
            model(batch)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.6, 1.4, generator=gen)
                m.bias.normal_(0.0, 0.15, generator=gen)
            m.momentum = 0.1
    model.eval()


def folded_copy(model):
    """The same network with every BatchNorm folded into its conv (conv gets a bias)."""
    import copy

    m = copy.deepcopy(model).eval()

    def fold(conv, bn):
        s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=True)
        new.weight.data = conv.weight.data * s[:, None, None, None]
        new.bias.data = bn.bias.data - bn.running_mean * s
        return new

    with torch.no_grad():
        m.conv1, m.bn1 = fold(m.conv1, m.bn1), nn.Identity()
        for layer in [m.layer1, m.layer2, m.layer3, m.layer4]:
            if isinstance(layer, nn.Identity):
                continue
            for blk in layer:
                blk.conv1, blk.bn1 = fold(blk.conv1, blk.bn1), nn.Identity()
                blk.conv2, blk.bn2 = fold(blk.conv2, blk.bn2), nn.Identity()
                if hasattr(blk, "conv3"):  # Bottleneck (ResNet-50)
                    blk.conv3, blk.bn3 = fold(blk.conv3, blk.bn3), nn.Identity()
                if blk.downsample is not None:
                    blk.downsample = nn.Sequential(fold(blk.downsample[0], blk.downsample[1]))
    return m


def export_onnx(model, example, path):
    torch.onnx.export(model, example[:1], str(path), dynamo=False, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, opset_version=17)


class Reader(CalibrationDataReader):
    def __init__(self, inputs):
        self.it = iter([{"input": x[None].numpy()} for x in inputs])

    def get_next(self):
        return next(self.it, None)


def quantize(src, dst, calib, full):
    kw = dict(quant_format=QuantFormat.QDQ, per_channel=True, weight_type=QuantType.QInt8)
    if full:
        # ORT's fastest x86 flavour: u8 activations, Q/DQ around every op it can fuse.
        quantize_static(str(src), str(dst), Reader(calib), activation_type=QuantType.QUInt8, **kw)
    else:
        quantize_static(str(src), str(dst), Reader(calib), activation_type=QuantType.QInt8,
                        op_types_to_quantize=["Conv", "Gemm"],
                        extra_options={"OpTypesToExcludeOutputQuantization": ["Conv", "Gemm"], "WeightSymmetric": True,
                                       "ActivationSymmetric": False}, **kw)


def int8_tensors(qdq_path):
    """Our int8 tensors (docs/weights-format.md), read from the QDQ graph of Conv/Gemm nodes."""
    g = onnx.load(str(qdq_path)).graph
    init = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    out = {}
    for node in g.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        xdq, wdq, bdq = (producer[i] for i in node.input[:3])
        assert xdq.op_type == wdq.op_type == bdq.op_type == "DequantizeLinear", node.name
        wname = wdq.input[0]
        layer = wname.removesuffix("_quantized").removesuffix(".weight")
        w = init[wdq.input[0]]
        w_scale = np.broadcast_to(init[wdq.input[1]], (w.shape[0],)).astype(np.float32)
        w_zp = np.broadcast_to(init[wdq.input[2]], (w.shape[0],)).astype(np.int8)
        assert w.dtype == np.int8 and not w_zp.any(), f"{layer}: weights must be symmetric int8"
        if node.op_type == "Gemm":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            assert attrs.get("transB", 0) == 1, f"{layer}: expected Gemm with transB=1"
        x_scale, x_zp = init[xdq.input[1]], init[xdq.input[2]]
        assert x_zp.dtype == np.int8, f"{layer}: expected int8 activations"
        b = init[bdq.input[0]]
        assert b.dtype == np.int32
        b_scale = init[bdq.input[1]]
        np.testing.assert_allclose(b_scale, x_scale * w_scale, rtol=1e-6)
        out[f"{layer}.weight"] = w
        out[f"{layer}.weight_scale"] = np.ascontiguousarray(w_scale)
        out[f"{layer}.weight_zero_point"] = np.ascontiguousarray(w_zp)
        out[f"{layer}.input_scale"] = np.asarray(x_scale, np.float32).reshape(())
        out[f"{layer}.input_zero_point"] = np.asarray(x_zp, np.int8).reshape(())
        out[f"{layer}.bias"] = b
    return out


def integer_onnx(qdq_path, dst):
    """The integer form of a conv-input QDQ ONNX, as `host export --onnx` writes int8 files
    (host/src/export/onnx.rs, `Int8Ops::Integer`): each `DequantizeLinear` trio feeding a
    Conv/Gemm becomes `ConvInteger`/`MatMulInteger` on the int8 tensors -> `Add` int32 bias ->
    `Cast` -> `Mul` by `input_scale * weight_scale` (f32), each `QuantizeLinear(x, s, zp)` becomes
    `QuantizeLinear(Mul(x, 1/s), 1, zp)` (the format's reciprocal rounding), and every other
    reader of a quantized-dequantized value reads the float value (the format quantizes conv
    inputs only). ONNX Runtime then computes the device's int8 arithmetic exactly."""
    from onnx import TensorProto, helper

    m = onnx.load(str(qdq_path))
    g = m.graph
    init = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    dequantized = {}  # DequantizeLinear(QuantizeLinear(x)) output -> x
    for n in g.node:
        if n.op_type == "DequantizeLinear" and getattr(producer.get(n.input[0]), "op_type", "") == "QuantizeLinear":
            dequantized[n.output[0]] = producer[n.input[0]].input[0]
    nodes, new_init = [], []
    for n in g.node:
        if n.op_type == "DequantizeLinear":
            continue  # weights and biases go in as integers, activations as float
        if n.op_type == "QuantizeLinear":
            inv = np.float32(1.0) / init[n.input[1]].astype(np.float32)
            new_init += [numpy_helper.from_array(np.asarray(inv, np.float32), f"{n.name}.inverse_scale"),
                         numpy_helper.from_array(np.asarray(1.0, np.float32), f"{n.name}.unit_scale")]
            nodes += [helper.make_node("Mul", [n.input[0], f"{n.name}.inverse_scale"], [f"{n.name}.scaled"]),
                      helper.make_node("QuantizeLinear", [f"{n.name}.scaled", f"{n.name}.unit_scale", n.input[2]],
                                       list(n.output), name=n.name)]
            continue
        if n.op_type not in ("Conv", "Gemm"):
            for i, name in enumerate(n.input):
                n.input[i] = dequantized.get(name, name)
            nodes.append(n)
            continue
        xdq, wdq, bdq = (producer[i] for i in n.input[:3])
        xq, x_scale, x_zp = xdq.input
        w, b = init[wdq.input[0]], init[bdq.input[0]].astype(np.int32)
        scale = init[wdq.input[1]].astype(np.float32) * init[x_scale].astype(np.float32)
        shape = [1, w.shape[0], 1, 1] if n.op_type == "Conv" else [w.shape[0]]
        name = n.name or n.output[0]
        new_init += [numpy_helper.from_array(b.reshape(shape), f"{name}.bias_i32"),
                     numpy_helper.from_array(scale.reshape(shape), f"{name}.scale")]
        if n.op_type == "Conv":
            new_init.append(numpy_helper.from_array(w, f"{name}.weight_i8"))
            op = helper.make_node("ConvInteger", [xq, f"{name}.weight_i8", x_zp], [f"{name}.acc"])
            op.attribute.extend(n.attribute)
        else:
            new_init.append(numpy_helper.from_array(np.ascontiguousarray(w.T), f"{name}.weight_i8_t"))
            op = helper.make_node("MatMulInteger", [xq, f"{name}.weight_i8_t", x_zp], [f"{name}.acc"])
        nodes += [op,
                  helper.make_node("Add", [f"{name}.acc", f"{name}.bias_i32"], [f"{name}.biased"]),
                  helper.make_node("Cast", [f"{name}.biased"], [f"{name}.float"], to=TensorProto.FLOAT),
                  helper.make_node("Mul", [f"{name}.float", f"{name}.scale"], [n.output[0]])]
    used = {i for n in nodes for i in n.input}
    keep = [i for i in g.initializer if i.name in used]
    del g.node[:], g.initializer[:]
    g.node.extend(nodes)
    g.initializer.extend(keep + new_init)
    onnx.checker.check_model(m)
    onnx.save(m, str(dst))


def exact_int8_logits(folded, q, inputs):
    """The int8 scheme of docs/weights-format.md computed exactly: each int8 conv/linear
    quantizes its f32 input (`round_half_even(x * (1/scale)) + zp`, clamped), sums the integer
    products in float64 (exact: every partial sum is an integer below 2^53) plus the i32 bias,
    then `acc as f32 * (input_scale * weight_scale[o])` in f32, as the device does; the rest of
    the network (ReLU, residual adds, pools) runs in f32. ONNX Runtime on the QDQ ONNX sums the
    dequantized products in float instead, so it is a step or a few away from this."""
    import copy

    m = copy.deepcopy(folded).eval()

    def quantized(name, mod):
        sx = np.float32(q[f"{name}.input_scale"].reshape(-1)[0])
        zp = float(q[f"{name}.input_zero_point"].reshape(-1)[0])
        inv = np.float32(1.0) / sx
        w = torch.from_numpy(q[f"{name}.weight"].astype(np.float64))
        b = torch.from_numpy(q[f"{name}.bias"].astype(np.float64))
        scale = torch.from_numpy(np.ascontiguousarray(q[f"{name}.weight_scale"] * sx))

        def forward(x):
            xq = torch.clamp(torch.round(x * inv).double() + zp, -128, 127) - zp
            if isinstance(mod, nn.Linear):
                return (xq @ w.T + b).float() * scale
            acc = F.conv2d(xq, w, b, mod.stride, mod.padding)
            return acc.float() * scale.view(1, -1, 1, 1)

        return forward

    for name, mod in m.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)) and f"{name}.weight" in q:
            mod.forward = quantized(name, mod)
    with torch.no_grad():
        return torch.cat([m(b) for b in inputs.split(64)]).numpy()


def ort_run(path, inputs, optimize=True):
    """ORT CPU logits. optimize=False runs the graph as written (QuantizeLinear/DequantizeLinear
    in float, the reference QDQ semantics); ORT's optimizer instead fuses QDQ into integer kernels
    that requantize in their own way (up to ~10 logit steps apart on resnet8)."""
    s = session(path, "all" if optimize else "disable")
    return np.concatenate([ort_logits(s, x[None].numpy()) for x in inputs])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "target" / "device-fixtures"), help="output folder")
    ap.add_argument("--models", default="resnet8,resnet18", help="comma-separated: resnet8, resnet18, resnet50")
    ap.add_argument("--parity-n", type=int, default=0, help="parity inputs (default: 512 for resnet8, 4 for resnet18)")
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    for arch in args.models.split(","):
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(1)
        rng = np.random.default_rng(2)
        model, channels, size = build(arch)
        if arch in ("resnet18", "resnet50"):
            calib, n = imagenet_inputs(48, rng), args.parity_n or 4
            parity_inputs = imagenet_inputs(n, np.random.default_rng(3))
            labels = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
            pre = "imagenet"
        else:
            calib, n = gray28_inputs(256, rng), args.parity_n or 512
            parity_inputs = gray28_inputs(n, np.random.default_rng(3))
            labels = FASHION_LABELS
            pre = "fashion_mnist"
        make_bn_realistic(model, calib, gen)

        sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
        save_safetensors(out / f"{arch}.state_dict.safetensors", sd, {"arch": arch})
        folded = folded_copy(model)
        export_onnx(folded, parity_inputs, out / f"{arch}.onnx")
        export_onnx(model, parity_inputs, out / f"{arch}.torchvision.onnx")
        quantize(out / f"{arch}.onnx", out / f"{arch}.int8.onnx", calib[:32], full=False)
        q = int8_tensors(out / f"{arch}.int8.onnx")
        save_safetensors(out / f"{arch}.int8.safetensors", q, {"arch": arch})
        if arch in ("resnet18", "resnet50"):
            quantize(out / f"{arch}.onnx", out / f"{arch}.int8-ort.onnx", calib[:32], full=True)

        with torch.no_grad():
            logits = torch.cat([model(b) for b in parity_inputs.split(64)]).numpy()
            folded_logits = torch.cat([folded(b) for b in parity_inputs.split(64)]).numpy()
        np.testing.assert_allclose(folded_logits, logits, rtol=1e-3, atol=1e-3 * np.abs(logits).max())
        logits_int8 = ort_run(out / f"{arch}.int8.onnx", parity_inputs, optimize=False)
        exact = exact_int8_logits(folded, q, parity_inputs)
        integer_onnx(out / f"{arch}.int8.onnx", out / f"{arch}.int8.integer.onnx")
        logits_integer = ort_run(out / f"{arch}.int8.integer.onnx", parity_inputs)
        ort_fp32 = ort_run(out / f"{arch}.onnx", parity_inputs)
        agree = float((logits_int8.argmax(1) == logits.argmax(1)).mean())
        save_safetensors(out / f"{arch}.parity.safetensors",
                         {"inputs": parity_inputs.numpy(), "logits": logits, "logits_int8": logits_int8},
                         {"format": "device-parity", "version": 1, "arch": arch, "producer": "tools/make_test_models.py"})
        (out / f"{arch}.json").write_text(json.dumps({
            "arch": arch, "in_channels": channels, "size": size, "num_classes": len(labels), "preprocess": pre,
            "labels": labels}, indent=1))
        # ORT on the integer form of the int8 ONNX in place of ORT on the QDQ one.
        save_safetensors(out / f"{arch}.integer.parity.safetensors",
                         {"inputs": parity_inputs.numpy(), "logits": logits, "logits_int8": logits_integer},
                         {"format": "device-parity", "version": 1, "arch": arch,
                          "producer": "tools/make_test_models.py integer_onnx + onnxruntime"})
        # The same parity file with the exact integer reference in place of ORT's int8 logits.
        # Written last: the device tests take it as the sign that the fixtures are complete.
        save_safetensors(out / f"{arch}.exact.parity.safetensors",
                         {"inputs": parity_inputs.numpy(), "logits": logits, "logits_int8": exact},
                         {"format": "device-parity", "version": 1, "arch": arch,
                          "producer": "tools/make_test_models.py exact_int8_logits"})
        err = np.abs(ort_fp32 - logits).max() / np.abs(logits).max()
        print(f"{arch}: {n} parity inputs, ORT fp32 rel err {err:.2e}, ORT int8 top-1 agreement {agree:.4f}, "
              f"logit std {logits.std():.3f}, ORT on the integer ONNX vs the exact reference: max "
              f"{np.abs(logits_integer - exact).max():.3g}", file=sys.stderr)


if __name__ == "__main__":
    main()
