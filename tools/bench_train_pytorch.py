"""PyTorch eager reference for `host bench-train`: training images/second of a torchvision ResNet
on synthetic data, printed as one JSON object with the same keys as `host bench-train`.

    .venv/bin/python tools/bench_train_pytorch.py --arch resnet50 --batch-size 256 --amp fp16 --channels-last
    target/release/host bench-train --arch resnet50 --batch-size 256 --amp fp16 --channels-last

Same step as host's: forward, label-smoothed cross-entropy, backward, (fp16: GradScaler unscale
and overflow check), SGD with momentum 0.875 and weight decay 1/32768 on conv/linear weights only,
lr 0.256 x batch/256. One synthetic batch stays on the device (NVIDIA's synthetic loader), `warmup`
untimed steps, then `steps` timed steps with a device synchronization after each.
"""
import argparse
import json
import time

import torch
import torchvision


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet50", help="torchvision model name (resnet18, resnet50, ...)")
    p.add_argument("--batch-size", "-b", type=int, default=256, help="images per step")
    p.add_argument("--image-size", type=int, default=224, help="input side")
    p.add_argument("--num-classes", type=int, default=1000, help="classes of the classifier")
    p.add_argument("--amp", choices=["off", "fp16", "bf16"], default="fp16",
                   help="autocast dtype (fp16 uses torch.amp.GradScaler)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="model and input in torch.channels_last")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device (default: cuda when available)")
    p.add_argument("--warmup-steps", type=int, default=20, help="untimed steps first")
    p.add_argument("--steps", type=int, default=100, help="timed steps")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and batch")
    return p.parse_args()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main():
    args = parse_args()
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format

    model = getattr(torchvision.models, args.arch)(weights=None, num_classes=args.num_classes,
                                                   zero_init_residual=True)
    model = model.to(device, memory_format=fmt)
    decay = [p for n, p in model.named_parameters() if p.dim() > 1]  # conv and linear weights
    no_decay = [p for n, p in model.named_parameters() if p.dim() <= 1]  # BN weight/bias, fc.bias
    lr = 0.256 * args.batch_size / 256
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 1 / 32768}, {"params": no_decay, "weight_decay": 0}],
                          lr=lr, momentum=0.875)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    amp_dtype = {"off": None, "fp16": torch.float16, "bf16": torch.bfloat16}[args.amp]
    default_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16  # unused when disabled
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")

    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device).to(memory_format=fmt)
    y = torch.randint(args.num_classes, (args.batch_size,), device=device)

    def step():
        with torch.autocast(device.type, dtype=amp_dtype or default_dtype, enabled=amp_dtype is not None):
            loss = criterion(model(x), y)
        opt.zero_grad(set_to_none=False)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss.detach()

    model.train()
    for _ in range(args.warmup_steps):
        step()
    sync(device)
    ms = []
    loss = None
    for _ in range(args.steps):
        t0 = time.perf_counter()
        loss = step()
        sync(device)
        ms.append((time.perf_counter() - t0) * 1e3)
    total_s = sum(ms) / 1e3
    s = sorted(ms)
    pct = lambda q: s[round((len(s) - 1) * q)]
    print(json.dumps({
        "framework": f"pytorch eager {torch.__version__}",
        "arch": args.arch,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "amp": args.amp,
        "channels_last": args.channels_last,
        "device": str(device) if device.type == "cpu" else f"cuda:{device.index or 0}",
        "warmup_steps": args.warmup_steps,
        "steps": args.steps,
        "images_per_sec": args.batch_size * args.steps / total_s,
        "step_ms_mean": total_s * 1e3 / args.steps,
        "step_ms_p50": pct(0.5),
        "step_ms_p90": pct(0.9),
        "step_ms_min": s[0],
        "final_loss": float(loss),
    }))


if __name__ == "__main__":
    main()
