#!/usr/bin/env python3
"""Golden vectors for `shared::preprocess`, computed with torchvision.

Run from the repository root with the project venv:

    .venv/bin/python tools/gen_preprocess_vectors.py

and it (re)writes `shared/testdata/preprocess/`: raw uint8 input frames (`*.rgb`, `*.gray`,
`*.yuyv`), the expected float outputs (`*.f32`, little-endian f32, CHW), the PIL-pipeline outputs
(`*.pil.u8`, uint8 CHW: ToTensor gives exactly k/255) and `cases.json` describing every case.
`shared/tests/preprocess_torchvision.rs` checks the Rust code against them. The output is
deterministic (the same bytes on every run with the same library versions).

The reference ("float path", what Rust matches) is torchvision v2 on a float tensor of 0..255:

    t = resize(t, [resize], InterpolationMode.BILINEAR, antialias=True)   # shorter side
    t = center_crop(t, [crop])
    t = normalize(t / 255, mean, std)

or, for `resized_crop` cases, `resized_crop(t, top, left, h, w, [out_h, out_w], BILINEAR,
antialias=True)`, then `hflip` if asked, then `/255` and `normalize`. Tolerance: max abs
difference <= 1e-4 (measured: 1.2e-6).

The "PIL path" is the classic `Compose([Resize(r), CenterCrop(c), ToTensor(), Normalize(m, s)])`
on a PIL image (`F.resized_crop` + `F.hflip` on the PIL image for the crop case; `convert("L")`
first for RGB -> 1 channel, `convert("RGB")` for gray -> 3 channels; none for YUYV). PIL uses the
same antialiased bilinear filter but 22-bit fixed-point weights and rounds to uint8 after the
horizontal pass and at the end, so it can differ from the float path by up to one 8-bit step
(0.5 + 0.5). Measured max abs difference float vs PIL after normalization, over all cases and
all output elements: 0.0174 = 0.99 8-bit steps (one step is 1/255/std: 0.0175 for the ImageNet
std 0.224, 0.0111 for the Fashion-MNIST std); printed by this script, stored in `cases.json`
(`pil_max_abs_err`, per case and overall). The Rust test asserts |rust - pil| <= 1 step + 1e-4
per channel (the brief expected about 2 steps, 0.04). For RGB -> 1 channel PIL also rounds
the luma, so up to 1.5 steps are possible there in principle; measured 0.65.

Channel conversions (done on float values in the float path, before resampling):
- RGB -> 1 channel: PIL's luma weights L = 0.299 R + 0.587 G + 0.114 B (not rounded; the PIL
  path uses `convert("L")`, which rounds).
- gray -> 3 channels: replicated.
- YUYV -> RGB: BT.601 limited range, like ffmpeg's default (swscale's yuv2rgb with
  SWS_CS_ITU601 coefficients), in exact arithmetic, clamped to [0, 255], no rounding; both pixels
  of a pair share the pair's U and V:
      Kr = 0.299, Kb = 0.114, Kg = 1 - Kr - Kb
      c = 255/219 (Y - 16), d = U - 128, e = V - 128
      R = c + 255/112 (1 - Kr) e                                   (1.5960268 e)
      G = c - 255/112 (1 - Kb) Kb/Kg d - 255/112 (1 - Kr) Kr/Kg e  (0.3917623 d, 0.8129676 e)
      B = c + 255/112 (1 - Kb) d                                   (2.0172321 d)
  The YUYV input is made here from an RGB photo with the forward BT.601 limited-range
  transform (pair-averaged chroma, rounded to uint8).

Large outputs (224 x 224) are stored subsampled: `rows` and `cols` in `cases.json` list the
output rows and columns kept (every 5th plus the last); the test compares those elements.
"""

import json
import os
import sys

import numpy as np
import torch
import torchvision
from PIL import Image
from skimage import data as skdata
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F1
from torchvision.transforms.v2 import functional as F2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "shared", "testdata", "preprocess")

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
FMNIST_MEAN = [0.2860] * 3
FMNIST_STD = [0.3530] * 3

KR, KB = 0.299, 0.114
KG = 1.0 - KR - KB


def small(img: np.ndarray, w: int, h: int) -> np.ndarray:
    """Downsizes a uint8 photo with PIL LANCZOS (only to make small test inputs)."""
    return np.asarray(Image.fromarray(img).resize((w, h), Image.LANCZOS))


def rgb_to_yuyv(rgb: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3), W even -> YUYV bytes (H, 2W), BT.601 limited range."""
    x = rgb.astype(np.float64)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    yl = KR * r + KG * g + KB * b
    y = 16 + 219 / 255 * yl
    u = 128 + 224 / 255 * (b - yl) / (2 * (1 - KB))
    v = 128 + 224 / 255 * (r - yl) / (2 * (1 - KR))
    u = (u[:, 0::2] + u[:, 1::2]) / 2
    v = (v[:, 0::2] + v[:, 1::2]) / 2
    q = lambda a: np.clip(np.rint(a), 0, 255).astype(np.uint8)
    h, w = y.shape
    out = np.empty((h, w // 2, 4), np.uint8)
    out[..., 0] = q(y[:, 0::2])
    out[..., 1] = q(u)
    out[..., 2] = q(y[:, 1::2])
    out[..., 3] = q(v)
    return out.reshape(h, 2 * w)


def yuyv_to_rgb_float(yuyv: np.ndarray) -> np.ndarray:
    """YUYV bytes (H, 2W) -> float RGB (H, W, 3) in [0, 255], the documented formula."""
    h, w2 = yuyv.shape
    q = yuyv.reshape(h, w2 // 4, 4).astype(np.float64)
    y = np.empty((h, w2 // 2))
    y[:, 0::2], y[:, 1::2] = q[..., 0], q[..., 2]
    d = np.repeat(q[..., 1], 2, axis=1) - 128
    e = np.repeat(q[..., 3], 2, axis=1) - 128
    c = 255 / 219 * (y - 16)
    s = 255 / 112
    r = c + s * (1 - KR) * e
    g = c - s * (1 - KB) * KB / KG * d - s * (1 - KR) * KR / KG * e
    b = c + s * (1 - KB) * d
    return np.clip(np.stack([r, g, b], -1), 0, 255)


def to_float_chw(pixels: np.ndarray, fmt: str, channels: int) -> torch.Tensor:
    """Frame bytes -> float32 tensor (channels, H, W) of 0..255 values, converted as Rust does."""
    if fmt == "Yuyv":
        rgb = yuyv_to_rgb_float(pixels)
    elif fmt == "Rgb8":
        rgb = pixels.astype(np.float64)
    else:
        g = pixels.astype(np.float64)
        return torch.from_numpy(np.repeat(g[None], channels, 0).astype(np.float32))
    if channels == 1:
        luma = KR * rgb[..., 0] + 0.587 * rgb[..., 1] + KB * rgb[..., 2]
        return torch.from_numpy(luma[None].astype(np.float32))
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)).astype(np.float32))


def pil_image(pixels: np.ndarray, fmt: str, channels: int):
    """The PIL image the classic pipeline would see, or None (YUYV has no PIL equivalent)."""
    if fmt == "Rgb8":
        img = Image.fromarray(pixels, "RGB")
        return img.convert("L") if channels == 1 else img
    if fmt == "Gray8":
        img = Image.fromarray(pixels, "L")
        return img.convert("RGB") if channels == 3 else img
    return None


def subsample_axis(n: int):
    """All indices for small outputs, else every 5th and the last."""
    if n <= 96:
        return None
    return sorted(set(range(0, n, 5)) | {n - 1})


def pick(t: torch.Tensor, rows, cols) -> torch.Tensor:
    if rows is not None:
        t = t[:, rows, :]
    if cols is not None:
        t = t[:, :, cols]
    return t


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        os.remove(os.path.join(OUT, f))

    # Inputs: uint8 arrays, (H, W, 3) for RGB, (H, W) for gray, (H, 2W) for YUYV.
    inputs = {
        # 300 x 217: odd sizes, vertical and horizontal upscale for 256 (353 x 256), odd crop slack.
        "chelsea_300x217.rgb": ("Rgb8", 300, 217, small(skdata.chelsea(), 300, 217)),
        # Upscale: smaller than `resize` on both sides.
        "astronaut_120x90.rgb": ("Rgb8", 120, 90, small(skdata.astronaut()[30:300, 100:460], 120, 90)),
        "camera_45x37.gray": ("Gray8", 45, 37, small(skdata.camera(), 45, 37)),
        "camera_28x28.gray": ("Gray8", 28, 28, small(skdata.camera(), 28, 28)),
        "coffee_258x172.yuyv": ("Yuyv", 258, 172, rgb_to_yuyv(small(skdata.coffee(), 258, 172))),
    }
    for name, (_, _, _, px) in inputs.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(np.ascontiguousarray(px).tobytes())

    def pre(resize, crop, mean, std, channels):
        return {"op": "preprocess", "resize": resize, "crop": crop, "mean": mean, "std": std, "channels": channels}

    def rrc(box, out_w, out_h, flip, mean, std, channels):
        return {"op": "resized_crop", "box": box, "out_w": out_w, "out_h": out_h, "flip": flip,
                "mean": mean, "std": std, "channels": channels}

    cases = [
        ("chelsea_imagenet", "chelsea_300x217.rgb", pre(256, 224, IMAGENET_MEAN, IMAGENET_STD, 3)),
        ("chelsea_r64_c56", "chelsea_300x217.rgb", pre(64, 56, IMAGENET_MEAN, IMAGENET_STD, 3)),
        ("chelsea_luma_r20_c16", "chelsea_300x217.rgb", pre(20, 16, FMNIST_MEAN, FMNIST_STD, 1)),
        ("chelsea_rrc_flip", "chelsea_300x217.rgb",
         rrc([41, 23, 187, 151], 64, 56, True, IMAGENET_MEAN, IMAGENET_STD, 3)),
        ("chelsea_rrc_mixed", "chelsea_300x217.rgb",
         rrc([10, 5, 30, 150], 64, 40, False, IMAGENET_MEAN, IMAGENET_STD, 3)),
        ("astronaut_upscale_imagenet", "astronaut_120x90.rgb", pre(256, 224, IMAGENET_MEAN, IMAGENET_STD, 3)),
        ("camera_fmnist_45x37", "camera_45x37.gray", pre(28, 28, FMNIST_MEAN, FMNIST_STD, 1)),
        ("camera_fmnist_28x28", "camera_28x28.gray", pre(28, 28, FMNIST_MEAN, FMNIST_STD, 1)),
        ("camera_gray3_imagenet", "camera_45x37.gray", pre(256, 224, IMAGENET_MEAN, IMAGENET_STD, 3)),
        ("coffee_yuyv_imagenet", "coffee_258x172.yuyv", pre(256, 224, IMAGENET_MEAN, IMAGENET_STD, 3)),
        ("coffee_yuyv_r64_c60", "coffee_258x172.yuyv", pre(64, 60, IMAGENET_MEAN, IMAGENET_STD, 3)),
        ("coffee_yuyv_fmnist", "coffee_258x172.yuyv", pre(28, 28, FMNIST_MEAN, FMNIST_STD, 1)),
    ]

    manifest = []
    worst_pil = 0.0
    for name, input_name, op in cases:
        fmt, w, h, px = inputs[input_name]
        ch = op["channels"]
        mean, std = op["mean"][:ch], op["std"][:ch]
        t = to_float_chw(px, fmt, ch)
        if op["op"] == "preprocess":
            r = F2.resize(t, [op["resize"]], interpolation=InterpolationMode.BILINEAR, antialias=True)
            r = F2.center_crop(r, [op["crop"]])
        else:
            x0, y0, bw, bh = op["box"]
            r = F2.resized_crop(t, y0, x0, bh, bw, [op["out_h"], op["out_w"]],
                                interpolation=InterpolationMode.BILINEAR, antialias=True)
            if op["flip"]:
                r = F2.horizontal_flip(r)
        expected = F2.normalize(r / 255.0, mean, std).contiguous()
        c_, oh, ow = expected.shape
        rows, cols = subsample_axis(oh), subsample_axis(ow)
        entry = {"name": name, "input": input_name, "format": fmt, "width": w, "height": h, **op,
                 "out_shape": [c_, oh, ow], "rows": rows, "cols": cols,
                 "expected": f"{name}.f32", "pil_expected": None, "pil_max_abs_err": None}
        with open(os.path.join(OUT, entry["expected"]), "wb") as f:
            f.write(pick(expected, rows, cols).numpy().astype("<f4").tobytes())

        img = pil_image(px, fmt, ch)
        if img is not None:
            if op["op"] == "preprocess":
                pipe = T.Compose([T.Resize(op["resize"]), T.CenterCrop(op["crop"]), T.ToTensor()])
                p = pipe(img)
            else:
                x0, y0, bw, bh = op["box"]
                p = F1.resized_crop(img, y0, x0, bh, bw, [op["out_h"], op["out_w"]], InterpolationMode.BILINEAR)
                if op["flip"]:
                    p = F1.hflip(p)
                p = F1.to_tensor(p)
            assert p.shape == expected.shape, (name, p.shape, expected.shape)
            err = (T.Normalize(mean, std)(p) - expected).abs().max().item()
            worst_pil = max(worst_pil, err)
            entry["pil_expected"] = f"{name}.pil.u8"
            entry["pil_max_abs_err"] = round(err, 6)
            u8 = torch.round(pick(p, rows, cols) * 255).to(torch.uint8).contiguous()
            with open(os.path.join(OUT, entry["pil_expected"]), "wb") as f:
                f.write(u8.numpy().tobytes())
            print(f"{name:30s} {str(tuple(expected.shape)):16s} PIL vs float max abs err {err:.5f} "
                  f"({err * 255 * min(std):.2f} 8-bit steps)")
        else:
            print(f"{name:30s} {str(tuple(expected.shape)):16s} (no PIL path)")
        manifest.append(entry)

    doc = {
        "generator": "tools/gen_preprocess_vectors.py",
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__,
                     "pillow": Image.__version__, "numpy": np.__version__},
        "pil_max_abs_err": round(worst_pil, 6),
        "cases": manifest,
    }
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"worst PIL vs float max abs err {worst_pil:.5f}; wrote {total} bytes to {OUT}", file=sys.stderr)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
