"""Writes a torchvision ResNet's state_dict exactly as torchvision publishes its checkpoints
(torch.save, `.pth`), with torchvision's own random initialisation: there is no download here.

    python tools/torchvision_weights.py ARCH OUT.pth [--seed N]

ARCH: resnet18, resnet34, resnet50, resnet101 or resnet152 (1000 ImageNet classes). The file is
what `host import --weights OUT.pth --arch ARCH` reads; with real weights
(download.pytorch.org/models/resnet50-11ad3fa6.pth) the same commands apply.
"""
import argparse

import torch
import torchvision


def main():
    p = argparse.ArgumentParser()
    p.add_argument("arch", choices=["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"])
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.manual_seed(a.seed)
    model = getattr(torchvision.models, a.arch)(weights=None)
    torch.save(model.state_dict(), a.out)
    print(f"{a.out}: torchvision {a.arch}, random weights (seed {a.seed}), {sum(t.numel() for t in model.parameters()):,} params")


if __name__ == "__main__":
    main()
