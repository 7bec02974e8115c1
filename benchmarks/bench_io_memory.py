"""Peak memory of streaming a large ds3-size CaloChallenge file (foundation issue, sec. 3).

Writes a synthetic file of N showers x 40500 voxels (float32, gzip, ~25% non-zero
voxels like real ds3 showers), then, each in a fresh process so that peak RSS is its
own, (a) streams it with ``iter_showers`` in chunks and (b) reads it whole with
``read_showers``.  Prints file size, raw size, and peak RSS of both.

    python benchmarks/bench_io_memory.py --n 10000 --chunk 1000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

CHILD = r"""
import json, sys, time, numpy as np
from caloflows.io import iter_showers, read_showers
def hwm_mb():  # VmHWM is this process's own peak (ru_maxrss can inherit the parent's at fork)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
path, mode, chunk = sys.argv[1], sys.argv[2], int(sys.argv[3])
base = hwm_mb()
t = time.perf_counter()
total = 0.0
if mode == "stream":
    for c in iter_showers(path, chunk, geometry="ds3"):
        total += float(c.showers.sum(dtype=np.float64))
else:
    total = float(read_showers(path, geometry="ds3").showers.sum(dtype=np.float64))
print(json.dumps({"peak_rss_mb": hwm_mb(), "baseline_rss_mb": base, "seconds": time.perf_counter() - t, "sum": total}))
"""


def make_file(path: str, n: int, seed: int = 0) -> None:
    from caloflows.io import ShowerWriter

    rng = np.random.default_rng(seed)
    with ShowerWriter(path, 40500) as w:
        for a in range(0, n, 500):
            k = min(500, n - a)
            x = (rng.random((k, 40500), dtype=np.float32) < 0.25) * rng.exponential(1.0, (k, 40500)).astype(np.float32)
            w.append(rng.uniform(1e3, 1e6, k), x)


def run_child(path: str, mode: str, chunk: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, path, mode, str(chunk)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--chunk", type=int, default=1000)
    ap.add_argument("--skip-full", action="store_true", help="do not read the file whole")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "ds3_synthetic.h5")
        t = time.perf_counter()
        make_file(path, args.n)
        t_write = time.perf_counter() - t
        raw_mb = args.n * 40500 * 4 / 2**20
        res = {"n_showers": args.n, "raw_float32_mb": raw_mb, "file_mb": os.path.getsize(path) / 2**20,
               "write_s": t_write, "chunk": args.chunk}
        res["stream"] = run_child(path, "stream", args.chunk)
        if not args.skip_full:
            res["full_read"] = run_child(path, "full", args.chunk)
    print(json.dumps(res, indent=1))
    s = res["stream"]
    print(f"\nds3 synthetic file: {args.n} showers, {raw_mb:.0f} MB raw float32, {res['file_mb']:.0f} MB gzip")
    print(f"streaming (chunk {args.chunk}): peak RSS {s['peak_rss_mb']:.0f} MB in {s['seconds']:.1f} s")
    if "full_read" in res:
        f = res["full_read"]
        print(f"full read:                 peak RSS {f['peak_rss_mb']:.0f} MB in {f['seconds']:.1f} s  "
              f"(ratio full/stream {f['peak_rss_mb'] / s['peak_rss_mb']:.1f}x)")


if __name__ == "__main__":
    main()
