"""Side-by-side single-thread benchmark: `device bench` (tract) against ONNX Runtime, one run.

    .venv/bin/python tools/bench_ort.py [--fixtures target/device-fixtures] [--iters 50] [--threads 1]

Needs the fixtures of tools/make_test_models.py (resnet18) and a release build of `device`
(`cargo build --release -p device`, binary found in $CARGO_TARGET_DIR or target/). Rows:

- ORT fp32      NAME.onnx
- ORT int8      NAME.int8-ort.onnx (default QDQ: u8 activations, ORT's fastest x86 int8 path)
- ORT int8 conv NAME.int8.onnx     (QDQ on Conv/Gemm inputs only: the compact int8 scheme)
- ORT int8 int. NAME.int8.integer.onnx (the same in ConvInteger/MatMulInteger, what `host export
                --onnx` writes for int8: ORT computes the device's logits exactly, but slowly)
- tract ONNX    `device bench --conv tract` on NAME.onnx (tract-onnx import, tract's own convs)
- device fp32   `device bench` on a compact Folded fp32 file: the default convs (on x86 with
                AVX-512: Winograd F(2x2,3x3) for 3x3 stride 1, a direct conv for the stem:
                device/src/fp32.rs), and `--conv tract` (tract's im2col + matrix product
                everywhere, what ARM boards run)
- device int8   `device bench` on the compact int8 file
- device fp16   `device bench --precision f16` (only where the CPU has fp16 arithmetic)

Times are model inference only (device's `inference` stage; ORT `session.run`), p50 and mean in ms.
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort

ROOT = pathlib.Path(__file__).resolve().parent.parent


def ort_bench(path, shape, warmup, iters, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    name = s.get_inputs()[0].name
    for _ in range(warmup):
        s.run(None, {name: x})
    ts = []
    for _ in range(iters):
        t = time.perf_counter()
        s.run(None, {name: x})
        ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts), statistics.mean(ts)


def device_bin():
    for d in [os.environ.get("CARGO_TARGET_DIR"), ROOT / "target" / "d", ROOT / "target"]:
        if d and (pathlib.Path(d) / "release" / "device").exists():
            return pathlib.Path(d) / "release" / "device"
    sys.exit("device release binary not found: cargo build --release -p device")


def device_bench(exe, model, warmup, iters, threads, extra=()):
    cmd = [str(exe), "bench", "--model", str(model), "--threads", str(threads), "--warmup", str(warmup), "--iters",
           str(iters), "--json", *extra]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        return None, r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "failed"
    doc = json.loads(r.stdout)
    inf = doc["stages_ms"]["inference"]
    return (inf["p50"], inf["mean"], doc), None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixtures", default=str(ROOT / "target" / "device-fixtures"))
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    args = ap.parse_args()
    fx = pathlib.Path(args.fixtures)
    name = args.model
    exe = device_bin()
    shape = (1, 3, 224, 224)

    # Compact files for the device rows (device convert, from the fixtures).
    compact = {}
    for tag, extra in [("f32", ["--precision", "f32"]), ("int8", ["--precision", "int8", "--int8-params",
                                                                   str(fx / f"{name}.int8.safetensors")])]:
        out = fx / f"{name}.{tag}.evw"
        if not out.exists():
            subprocess.run([str(exe), "convert", "--state-dict", str(fx / f"{name}.state_dict.safetensors"), "--arch",
                            name, "--form", "folded", *extra, "-o", str(out)], check=True)
        compact[tag] = out

    rows = []
    for label, path in [("ORT fp32", fx / f"{name}.onnx"), ("ORT int8 (default QDQ, u8 act.)", fx / f"{name}.int8-ort.onnx"),
                        ("ORT int8 (conv-input QDQ)", fx / f"{name}.int8.onnx"),
                        ("ORT int8 (integer ONNX)", fx / f"{name}.int8.integer.onnx")]:
        if path.exists():
            p50, mean = ort_bench(path, shape, args.warmup, args.iters, args.threads)
            rows.append((label, p50, mean, ""))
    for label, model, extra in [("tract-onnx fp32 (device --conv tract on .onnx)", fx / f"{name}.onnx",
                                 ["--conv", "tract"]),
                                ("device fp32 (compact, --conv tract)", compact["f32"], ["--conv", "tract"]),
                                ("device fp32 (compact, default convs)", compact["f32"], []),
                                ("device int8 (compact)", compact["int8"], []),
                                ("device fp16 (compact fp32, --precision f16)", compact["f32"], ["--precision", "f16"])]:
        res, err = device_bench(exe, model, args.warmup, args.iters, args.threads, extra)
        rows.append((label, res[0], res[1], "") if res else (label, None, None, err))

    if args.json:
        print(json.dumps([{"row": r[0], "p50_ms": r[1], "mean_ms": r[2], "note": r[3]} for r in rows]))
        return
    print(f"{name} 1x3x224x224, {args.threads} thread(s), {args.iters} iterations after {args.warmup} warm-up")
    print(f"{'':44} {'p50 ms':>8} {'mean ms':>8}")
    for label, p50, mean, note in rows:
        if p50 is None:
            print(f"{label:44} {'-':>8} {'-':>8}  {note}")
        else:
            print(f"{label:44} {p50:8.2f} {mean:8.2f}")


if __name__ == "__main__":
    main()
