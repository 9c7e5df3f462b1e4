"""torchvision's twin of `host bench-data` (issue #18): ImageFolder + DataLoader with the ResNet
v1.5 training transforms, images per second.

    python tools/bench_data_torchvision.py DIR [--workers N] [--batch-size 256] [--epochs 3] [--json]

DIR is an ImageFolder root (DIR/train/<class>/*.jpg, or DIR/<class>/*.jpg). Transforms:
RandomResizedCrop(224, scale=(0.08, 1), ratio=(3/4, 4/3)) + RandomHorizontalFlip + ToTensor +
Normalize(ImageNet mean/std), PIL's default loader (full-size decode), DataLoader with
--workers processes (default: the cores), shuffled, batch --batch-size. The first epoch warms
up (worker start, page cache); img/s is over the following epochs.
"""
import argparse
import json
import os
import pathlib
import time

import torch
import torchvision
from torchvision import transforms


def main():
    p = argparse.ArgumentParser()
    p.add_argument("dir", type=pathlib.Path)
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=3, help="timed epochs after one warm-up epoch")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    root = a.dir / "train" if (a.dir / "train").is_dir() else a.dir
    t = transforms.Compose([
        transforms.RandomResizedCrop(a.size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])
    ds = torchvision.datasets.ImageFolder(str(root), transform=t)
    torch.manual_seed(0)
    dl = torch.utils.data.DataLoader(ds, batch_size=a.batch_size, shuffle=True, num_workers=a.workers,
                                     persistent_workers=a.workers > 0, drop_last=False)
    per_epoch = []
    for epoch in range(a.epochs + 1):
        start, n = time.perf_counter(), 0
        for x, y in dl:
            n += x.shape[0]
        if epoch > 0:
            per_epoch.append(n / (time.perf_counter() - start))
    ips = sum(per_epoch) / len(per_epoch)
    r = {"engine": "torchvision", "torch": torch.__version__, "torchvision": torchvision.__version__,
         "images": len(ds), "workers": a.workers, "batch_size": a.batch_size, "epochs": a.epochs,
         "img_per_s": ips, "img_per_s_per_epoch": per_epoch,
         "img_per_s_per_worker": ips / max(a.workers, 1)}
    if a.json:
        print(json.dumps(r))
    else:
        print(f"torchvision ImageFolder + DataLoader, {a.workers} workers: {ips:.0f} img/s "
              f"({', '.join(f'{v:.0f}' for v in per_epoch)} per epoch), {len(ds)} images")


if __name__ == "__main__":
    main()
