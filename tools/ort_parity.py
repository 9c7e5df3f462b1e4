"""Check an exported ONNX model against a parity file with ONNX Runtime.

    .venv/bin/python tools/ort_parity.py --onnx model.onnx --parity model.parity.safetensors \
        [--reference logits|logits_int8|none] [--max-rel-err 1e-4] [--max-abs-diff X] \
        [--min-agreement 1.0] [--opt-level all|extended|basic|disable] [--save-logits ort.safetensors]

1. `onnx.checker.check_model(full_check=True)` on the model (opset, types, shapes).
2. ONNX Runtime (CPU execution provider, graph optimizations `--opt-level`, default `all` as
   ORT's own default) runs the parity file's `inputs` (docs/parity-file.md) as one batch.

   `basic` runs a QDQ graph as written (Q/DQ ops and float convolutions): exactly the int8
   semantics of docs/weights-format.md on every CPU. `extended`/`all` fuse DQ -> Conv -> Relu -> Q
   into QLinearConv / QGemm with u8 activations and s8 weights; on x86 CPUs without VNNI
   (AVX2 only) those kernels add u8*s8 products pairwise into saturating int16
   (`vpmaddubsw`), so full-range int8 weights can saturate and move logits by several int8
   steps. `host export` therefore records int8 logits with `basic`.
3. Against `--reference` (a tensor of the parity file): per sample
   `max |ort - ref| / max |ref|` (the worst over samples is `max_rel_err`), `max |ort - ref|`
   (`max_abs_diff`), and top-1 agreement, plus `step`, one int8 quantization step of the
   reference logits ((max - min) / 255, as the device tests use).

Prints one JSON object. Exit status: 0 when every given bound holds, 1 when one fails, 2 on bad
arguments or unreadable files, 3 when onnx / onnxruntime / numpy cannot be imported.
`host export` runs this script (embedded, with tools/ort_common.py) with `--reference none
--save-logits` to obtain ONNX Runtime's logits; the host tests run it from this file.
"""

import argparse
import json
import struct
import sys

try:
    import numpy as np
    import onnx
    from ort_common import DTYPES, OPT_LEVELS, logits, save_safetensors, session
except ImportError as e:  # pragma: no cover - environment problem
    print(json.dumps({"ok": False, "error": f"cannot import {e.name}: {e}"}))
    sys.exit(3)


def read_safetensors(path):
    """All tensors of a safetensors file (the venv has no `safetensors` package) and its metadata."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {})
    base = 8 + n
    out = {}
    for name, h in header.items():
        start, end = h["data_offsets"]
        dtype = np.dtype(DTYPES[h["dtype"]]).newbyteorder("<")
        out[name] = np.frombuffer(data[base + start:base + end], dtype=dtype).reshape(h["shape"]).astype(dtype.newbyteorder("="))
    return out, meta


def compare(got, ref):
    scale = np.maximum(np.abs(ref).max(axis=1), np.finfo(np.float32).tiny)
    rel = (np.abs(got - ref).max(axis=1) / scale).max()
    return {
        "max_rel_err": float(rel),
        "max_abs_diff": float(np.abs(got - ref).max()),
        "top1_agreement": float((got.argmax(1) == ref.argmax(1)).mean()),
        "step": float((ref.max() - ref.min()) / 255.0),
    }


def main():
    ap = argparse.ArgumentParser(prog="ort_parity.py", description="Check an exported ONNX model against a parity file with ONNX Runtime.")
    ap.add_argument("--onnx", required=True, help="the ONNX model")
    ap.add_argument("--parity", required=True, help="the parity file (inputs, logits[, logits_int8])")
    ap.add_argument("--reference", default="logits", help="parity tensor to compare with, or `none`")
    ap.add_argument("--max-rel-err", type=float, help="bound on max |ort - ref| / max |ref| per sample")
    ap.add_argument("--max-abs-diff", type=float, help="bound on max |ort - ref|")
    ap.add_argument("--max-steps", type=float, help="bound on max |ort - ref| in int8 steps of the reference")
    ap.add_argument("--min-agreement", type=float, help="bound on the top-1 agreement (0..1)")
    ap.add_argument("--save-logits", help="write ONNX Runtime's logits here (safetensors, tensor `logits`)")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    ap.add_argument("--opt-level", choices=list(OPT_LEVELS), default="all", help="ONNX Runtime graph optimization level")
    args = ap.parse_args()

    try:
        tensors, meta = read_safetensors(args.parity)
        model = onnx.load(args.onnx)
    except (OSError, ValueError, KeyError) as e:
        print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}))
        return 2
    report = {"onnx": args.onnx, "parity": args.parity, "opt_level": args.opt_level, "opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))}
    try:
        onnx.checker.check_model(model, full_check=True)
        report["checker"] = "ok"
    except onnx.checker.ValidationError as e:
        print(json.dumps({**report, "ok": False, "checker": str(e)}))
        return 1

    x = tensors["inputs"].astype(np.float32)
    got = logits(session(args.onnx, args.opt_level, args.threads), x)
    report["samples"] = int(x.shape[0])
    report["finite"] = bool(np.isfinite(got).all())
    ok = report["finite"]
    if args.save_logits:
        save_safetensors(args.save_logits, {"logits": got.astype(np.float32)}, {"producer": "tools/ort_parity.py"})

    if args.reference != "none":
        if args.reference not in tensors:
            print(json.dumps({**report, "ok": False, "error": f"the parity file has no tensor `{args.reference}`"}))
            return 2
        ref = tensors[args.reference].astype(np.float32)
        r = compare(got, ref)
        report.update({"reference": args.reference, **r})
        checks = {
            "max_rel_err": args.max_rel_err is None or r["max_rel_err"] <= args.max_rel_err,
            "max_abs_diff": args.max_abs_diff is None or r["max_abs_diff"] <= args.max_abs_diff,
            "max_steps": args.max_steps is None or r["max_abs_diff"] <= args.max_steps * r["step"],
            "min_agreement": args.min_agreement is None or r["top1_agreement"] >= args.min_agreement,
        }
        report["failed"] = [k for k, v in checks.items() if not v]
        ok = ok and not report["failed"]
    report["ok"] = bool(ok)
    print(json.dumps(report))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
