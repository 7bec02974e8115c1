"""Peak memory and wall time of ``caloflows evaluate`` on a large synthetic pair (issue 14; ds2/ds3 timing).

Writes two synthetic CaloChallenge files of N showers each (default ds3: 40500 voxels, float32,
uncompressed unless --gzip, ~25 % non-zero voxels with exponential energies -- NOT physics, the cost depends on sizes;
see ``bench_io_memory.py``) into a temporary directory (default under /tmp, removed afterwards),
then runs ``caloflows evaluate`` in a fresh child process with every metric but the classifiers
(hist, corr, fpd, kpd, prdc) and reports the child's own peak RSS (VmHWM) and the per-metric
timings from metrics.json.

    python benchmarks/bench_evaluate_memory.py --n 20000 [--geometry ds3] [--plots] [--threads 1]

For reference: 20000 ds3 showers are 3.2 GB as float32 per file; loading both whole as the
evaluation did before issue 14 needed > 13 GB (float32 files plus float64 thresholded copies).
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
import json, resource, sys
from caloflows.cli import main
def hwm_mb():  # VmHWM: this process's own peak resident set size
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
rc = main(sys.argv[1:])
ru = resource.getrusage(resource.RUSAGE_SELF)  # CPU seconds: less sensitive to a loaded machine than wall time
print(json.dumps({"rc": rc, "peak_rss_mb": hwm_mb(), "cpu_s": ru.ru_utime + ru.ru_stime}))
"""


def make_file(path: str, n: int, n_voxels: int, geometry: str, seed: int, compression: str | None) -> None:
    from caloflows.io import ShowerWriter

    rng = np.random.default_rng(seed)
    with ShowerWriter(path, n_voxels, compression=compression) as w:
        for a in range(0, n, 500):
            k = min(500, n - a)
            x = (rng.random((k, n_voxels), dtype=np.float32) < 0.25) * rng.exponential(1.0, (k, n_voxels)).astype(np.float32)
            w.append(10 ** rng.uniform(3, 6, k), x)
        w.set_attr("geometry", geometry)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000, help="showers per file")
    ap.add_argument("--geometry", default="ds3")
    ap.add_argument("--metrics", default="hist,corr,fpd,kpd,prdc")
    ap.add_argument("--plots", action="store_true", help="also draw the PNGs (default: --no-plots)")
    ap.add_argument("--threads", type=int, default=1, help="OMP/MKL threads of the evaluation process")
    ap.add_argument("--tmp", default="/tmp", help="where the temporary files go")
    ap.add_argument("--gzip", dest="compression", action="store_const", const="gzip", default=None,
                    help="gzip the files as caloflows writes them (slow to write; default: uncompressed)")
    args = ap.parse_args()

    from caloflows.geometry import load_geometry

    nv = load_geometry(args.geometry).n_voxels
    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="caloflows_bench_eval_") as d:
        t = time.perf_counter()
        for name, seed in (("gen", 1), ("ref", 2)):
            make_file(os.path.join(d, f"{name}.h5"), args.n, nv, args.geometry, seed, args.compression)
        t_write = time.perf_counter() - t
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
                   OPENBLAS_NUM_THREADS=str(args.threads))
        cmd = [sys.executable, "-c", CHILD, "evaluate", f"{d}/gen.h5", f"{d}/ref.h5", "--geometry", args.geometry,
               "--out", f"{d}/report", "--metrics", args.metrics]
        if not args.plots:
            cmd.append("--no-plots")
        t = time.perf_counter()
        out = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if out.returncode != 0:
            sys.exit(f"evaluate failed:\n{out.stderr[-3000:]}")
        child = json.loads(out.stdout.strip().splitlines()[-1])
        if child["rc"] != 0:
            sys.exit(f"evaluate failed (rc {child['rc']}):\n{out.stderr[-3000:]}")
        with open(f"{d}/report/metrics.json") as fh:
            m = json.load(fh)
        res = {
            "geometry": args.geometry, "n_showers_per_file": args.n, "n_voxels": nv,
            "raw_float32_mb_per_file": args.n * nv * 4 / 2**20,
            "file_mb_per_file": os.path.getsize(f"{d}/gen.h5") / 2**20, "write_s": round(t_write, 1),
            "compression": args.compression, "metrics": args.metrics, "plots": args.plots, "threads": args.threads,
            "peak_rss_mb": round(child["peak_rss_mb"]), "wall_s_including_startup": round(wall, 1),
            "cpu_s": round(child["cpu_s"], 1),
            "timing_s": {k: round(v, 1) for k, v in m["timing_s"].items()},
            "voxel_subsamples": m["inputs"]["voxel_subsamples"],
            "load": os.getloadavg(),
        }
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
