"""Writes torchvision's ResNet state_dict names and shapes, the reference for shared's graph walk.

Run once (outputs are committed): .venv/bin/python tools/gen_state_dict_names.py
Each line of shared/testdata/torchvision/<arch>.txt is `name dim0xdim1x...` in state_dict order
(`-` for a scalar), and the last line is `params N`, sum(p.numel() for p in model.parameters()).
"""
import pathlib

import torchvision.models as m

OUT = pathlib.Path(__file__).resolve().parent.parent / "shared" / "testdata" / "torchvision"
OUT.mkdir(parents=True, exist_ok=True)
for arch in ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2"]:
    model = getattr(m, arch)(weights=None)
    lines = [f"{k} {'x'.join(map(str, v.shape)) or '-'}" for k, v in model.state_dict().items()]
    lines.append(f"params {sum(p.numel() for p in model.parameters())}")
    (OUT / f"{arch}.txt").write_text("\n".join(lines) + "\n")
    print(arch, lines[-1])
