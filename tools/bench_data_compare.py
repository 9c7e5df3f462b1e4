"""`host bench-data` and its torchvision twin side by side, interleaved (issue #18).

    python tools/bench_data_compare.py DIR [--host target/release/host] [--rounds 3] [--epochs 2]
        [--workers N] [--batch-size 256] [--scaling]

Runs, --rounds times, host bench-data then tools/bench_data_torchvision.py on the same ImageFolder
(DIR/train/<class>/*.jpg), same transforms (RandomResizedCrop(224, 8%-100%, 3/4-4/3) + flip +
normalize), same batch size, threads = workers = --workers (default: the cores). Alternating the
two in every round spreads the noise of a shared machine over both. Prints each run, then the
median img/s of each side and their ratio; --json prints that summary as one JSON object.
With --scaling the host side also measures threads 1..N (its `scaling` table, from the last round).
"""
import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent


def run_json(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("dir", type=pathlib.Path)
    p.add_argument("--host", default=str(HERE.parent / "target/release/host"), help="the host binary")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per run (after one warm-up epoch)")
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--scaling", action="store_true")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    host = [a.host, "bench-data", "--dataset", f"imagefolder:{a.dir}", "--threads", str(a.workers),
            "--batch-size", str(a.batch_size), "--epochs", str(a.epochs)]
    tv = [sys.executable, str(HERE / "bench_data_torchvision.py"), str(a.dir), "--workers", str(a.workers),
          "--batch-size", str(a.batch_size), "--epochs", str(a.epochs), "--json"]
    runs = {"host": [], "torchvision": []}
    scaling = None
    for r in range(a.rounds):
        last = r == a.rounds - 1
        h = run_json(host + (["--scaling"] if a.scaling and last else []))
        runs["host"].append(h["img_per_s"])
        scaling = h.get("scaling") or scaling
        t = run_json(tv)
        runs["torchvision"].append(t["img_per_s"])
        if not a.json:
            print(f"round {r + 1}: host {h['img_per_s']:.0f} img/s ({h['img_per_s_per_core']:.0f}/core, "
                  f"skipped {h['skipped']}), torchvision {t['img_per_s']:.0f} img/s", flush=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    summary = {"dir": str(a.dir), "workers": a.workers, "batch_size": a.batch_size, "epochs": a.epochs,
               "rounds": a.rounds, "host_img_per_s": runs["host"], "torchvision_img_per_s": runs["torchvision"],
               "host_median": med["host"], "torchvision_median": med["torchvision"],
               "ratio": med["host"] / med["torchvision"],
               "host_per_core": med["host"] / a.workers, "torchvision_per_worker": med["torchvision"] / a.workers,
               "host_scaling": scaling}
    if a.json:
        print(json.dumps(summary))
        return
    print(f"median of {a.rounds}: host {med['host']:.0f} img/s ({med['host'] / a.workers:.0f} per core), "
          f"torchvision {med['torchvision']:.0f} img/s ({med['torchvision'] / a.workers:.0f} per worker), "
          f"ratio {summary['ratio']:.2f}x")
    if scaling:
        print("host threads | img/s | img/s per core")
        for s in scaling:
            print(f"{s['threads']:12d} | {s['img_per_s']:5.0f} | {s['img_per_s_per_core']:.0f}")


if __name__ == "__main__":
    main()
