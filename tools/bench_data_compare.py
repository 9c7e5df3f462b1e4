"""`host bench-data` and its torchvision twin side by side, interleaved (issue #18).

    python tools/bench_data_compare.py DIR [--host target/release/host] [--rounds 3] [--epochs 2]
        [--workers N] [--batch-size 256] [--scaling]

Runs, --rounds times, host bench-data then tools/bench_data_torchvision.py on the same ImageFolder
(DIR/train/<class>/*.jpg), same transforms (RandomResizedCrop(224, 8%-100%, 3/4-4/3) + flip +
normalize), same batch size, threads = workers = --workers (default: the cores). Alternating the
two in every round spreads the noise of a shared machine over both. Prints each run, then the
median img/s of each side and their ratio; --json prints that summary as one JSON object.
With --scaling the host side also measures threads 1..N (its `scaling` table, from the last round).

Each run's CPU time (user + system of the process and its reaped children, i.e. the DataLoader
workers too; start-up and the warm-up epoch included) gives images per CPU-second, a figure that
holds when other jobs take cores away from the wall-clock one.
"""
import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_json(cmd):
    """The last stdout line of `cmd` as JSON, with `cpu_s`: the CPU seconds the run took."""
    before = cpu_seconds()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["cpu_s"] = cpu_seconds() - before
    return r


def img_per_cpu_s(r, epochs):
    """Images decoded in the run (warm-up epoch included) per CPU-second."""
    return r["images"] * (epochs + 1) / r["cpu_s"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("dir", type=pathlib.Path)
    p.add_argument("--host", default=str(HERE.parent / "target/release/host"), help="the host binary")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per run (after one warm-up epoch)")
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--scaling", action="store_true", help="then host bench-data --scaling (threads 1..N)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    host = [a.host, "bench-data", "--dataset", f"imagefolder:{a.dir}", "--threads", str(a.workers),
            "--batch-size", str(a.batch_size), "--epochs", str(a.epochs)]
    tv = [sys.executable, str(HERE / "bench_data_torchvision.py"), str(a.dir), "--workers", str(a.workers),
          "--batch-size", str(a.batch_size), "--epochs", str(a.epochs), "--json"]
    runs = {"host": [], "torchvision": []}
    cpu = {"host": [], "torchvision": []}
    for r in range(a.rounds):
        h = run_json(host)
        runs["host"].append(h["img_per_s"])
        cpu["host"].append(img_per_cpu_s(h, a.epochs))
        t = run_json(tv)
        runs["torchvision"].append(t["img_per_s"])
        cpu["torchvision"].append(img_per_cpu_s(t, a.epochs))
        if not a.json:
            print(f"round {r + 1}: host {h['img_per_s']:.0f} img/s ({h['img_per_s_per_core']:.0f}/core, "
                  f"{cpu['host'][-1]:.0f} per CPU-s, skipped {h['skipped']}), torchvision {t['img_per_s']:.0f} img/s "
                  f"({cpu['torchvision'][-1]:.0f} per CPU-s)", flush=True)
    scaling = run_json(host + ["--scaling"])["scaling"] if a.scaling else None
    med = {k: statistics.median(v) for k, v in runs.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    summary = {"dir": str(a.dir), "workers": a.workers, "batch_size": a.batch_size, "epochs": a.epochs,
               "rounds": a.rounds, "host_img_per_s": runs["host"], "torchvision_img_per_s": runs["torchvision"],
               "host_median": med["host"], "torchvision_median": med["torchvision"],
               "ratio": med["host"] / med["torchvision"],
               "host_img_per_cpu_s": cpu["host"], "torchvision_img_per_cpu_s": cpu["torchvision"],
               "cpu_ratio": med_cpu["host"] / med_cpu["torchvision"],
               "host_per_core": med["host"] / a.workers, "torchvision_per_worker": med["torchvision"] / a.workers,
               "host_scaling": scaling}
    if a.json:
        print(json.dumps(summary))
        return
    print(f"median of {a.rounds}: host {med['host']:.0f} img/s ({med['host'] / a.workers:.0f} per core), "
          f"torchvision {med['torchvision']:.0f} img/s ({med['torchvision'] / a.workers:.0f} per worker), "
          f"ratio {summary['ratio']:.2f}x; per CPU-second host {med_cpu['host']:.0f}, "
          f"torchvision {med_cpu['torchvision']:.0f}, ratio {summary['cpu_ratio']:.2f}x")
    if scaling:
        print("host threads | img/s | img/s per core")
        for s in scaling:
            print(f"{s['threads']:12d} | {s['img_per_s']:5.0f} | {s['img_per_s_per_core']:.0f}")


if __name__ == "__main__":
    main()
