#!/usr/bin/env python3
"""Where an aarch64 `device` spends its instructions, by function, per inference.

    tools/armprofile/profile.py DEVICE MODEL [--cpu cortex-a76] [--precision auto] [--top 25]
                                [--blocks FUNCTION]

Runs `DEVICE bench --model MODEL --model-only --iters N` under qemu-aarch64 with the hotpc
plugin (hotpc.c beside this file, built on first use with the host gcc) for N = 1 and N = 3,
and prints (count(3) - count(1)) / 2 per function: the same per-inference figure as
`cargo xtask armbench`, split by the ELF symbols of DEVICE (a release build keeps them).
Functions inlined into others count as their caller; tract's assembly kernels have no sized
symbols and show as `?other`. `--blocks FUNCTION` lists that function's hottest translated
blocks (address, instructions, executions) to read against `aarch64-linux-gnu-objdump -d`.
One thread (inline counters are exact only for one guest thread). Counts, not time.
"""
import argparse
import bisect
import collections
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SYSROOT = "/usr/aarch64-linux-gnu"


def plugin():
    lib = os.path.join(tempfile.gettempdir(), "armprofile", "libhotpc.so")
    src = os.path.join(HERE, "hotpc.c")
    if not os.path.exists(lib) or os.path.getmtime(lib) < os.path.getmtime(src):
        os.makedirs(os.path.dirname(lib), exist_ok=True)
        subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-fvisibility=hidden", "-o", lib, src], check=True)
    return lib


def run(args, n, out):
    # No address randomization: the binary loads at the same place in both runs.
    cmd = ["setarch", "x86_64", "-R", "qemu-aarch64", "-L", SYSROOT, "-cpu", args.cpu]
    if args.cpu != "cortex-a72":
        # tract reads /proc/cpuinfo (the x86 host's under qemu) for fp16: say it.
        cmd += ["-E", "TRACT_CPU_AARCH64_KIND=a75"]
    cmd += ["-plugin", f"{plugin()},out={out}", args.device, "bench", "--model", args.model,
            "--precision", args.precision, "--model-only", "--json", "--warmup", "0",
            "--iters", str(n), "--threads", "1"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    blocks = collections.Counter()
    sizes = {}
    with open(out) as f:
        for line in f:
            addr, insns, runs = line.split()
            addr = int(addr, 16)
            blocks[addr] += int(insns) * int(runs)
            sizes[addr] = int(insns)
    return blocks, sizes


def symbols(binary):
    nm = subprocess.run(["aarch64-linux-gnu-nm", "-C", "--defined-only", "-S", binary],
                        capture_output=True, text=True, check=True).stdout
    syms = []
    for line in nm.splitlines():
        p = line.split(" ", 3)
        if len(p) == 4 and p[2] in "tTwW":
            syms.append((int(p[0], 16), int(p[1], 16), p[3]))
    syms.sort()
    return syms


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("device")
    ap.add_argument("model")
    ap.add_argument("--cpu", default="cortex-a76")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--blocks", metavar="FUNCTION")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one, _ = run(args, 1, os.path.join(tmp, "n1"))
        three, sizes = run(args, 3, os.path.join(tmp, "n3"))
    syms = symbols(args.device)
    starts = [s[0] for s in syms]
    by_start = set(starts)
    entry = next(s[0] for s in syms if s[2] == "_start")
    # The load address: the page-aligned offset that puts most blocks on function starts.
    candidates = {a - entry for a in three if (a - entry) % 4096 == 0 and a >= entry}
    base = max(candidates, key=lambda b: sum((a - b) in by_start for a in three))

    def function(addr):
        x = addr - base
        i = bisect.bisect_right(starts, x) - 1
        if i >= 0 and x < syms[i][0] + max(syms[i][1], 1):
            return syms[i][2]
        return "?other"

    per = collections.Counter()
    for a in set(three) | set(one):
        per[function(a)] += (three[a] - one.get(a, 0)) / 2
    total = sum(per.values())
    print(f"{args.device} on {args.model}, qemu -cpu {args.cpu}: {total / 1e6:.1f} M instructions per inference")
    for name, v in per.most_common(args.top):
        print(f"{v / 1e6:9.2f} M {100 * v / total:5.1f}%  {name[:60]}..{name[-90:]}")
    if args.blocks:
        print(f"\nblocks of {args.blocks}:")
        rows = [(a - base, sizes[a], (three[a] - one.get(a, 0)) / 2) for a in three if function(a) == args.blocks]
        for a, n, ins in sorted(rows, key=lambda r: -r[2])[:args.top]:
            print(f"  {a:#x}  {n:4d} instructions x {ins / n:12.0f} = {ins / 1e6:8.2f} M")


if __name__ == "__main__":
    sys.exit(main())
