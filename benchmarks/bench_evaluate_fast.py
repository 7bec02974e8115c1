"""Wall time of the fast evaluation subset (issue 3): histograms, separation powers, chi2,
correlations, FPD and KPD -- plus the report (plots, metrics.json, report.html) -- for N
dataset-1-size showers per sample, run through the CLI in a fresh process.

The samples are synthetic toy showers (``caloflows.evaluation.toy``) on the ds1-photons
geometry (368 voxels); the metric cost depends on sizes, not on the physics.

    python benchmarks/bench_evaluate_fast.py --n 10000 [--geometry ds1-photons] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--geometry", default="ds1-photons")
    ap.add_argument("--threads", type=int, default=2, help="OMP/MKL threads of the evaluation process")
    ap.add_argument("--no-plots", action="store_true")
    args = ap.parse_args()

    from caloflows.evaluation.toy import toy_showers
    from caloflows.io import write_showers

    with tempfile.TemporaryDirectory() as d:
        for name, seed in (("gen", 1), ("ref", 2)):
            inc, x = toy_showers(args.geometry, args.n, seed=seed)
            write_showers(os.path.join(d, f"{name}.h5"), inc, x, geometry=args.geometry)
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
                   OPENBLAS_NUM_THREADS=str(args.threads))
        cmd = [sys.executable, "-m", "caloflows", "evaluate", f"{d}/gen.h5", f"{d}/ref.h5",
               "--geometry", args.geometry, "--out", f"{d}/report", "--metrics", "fast"]
        if args.no_plots:
            cmd.append("--no-plots")
        t = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t
        timing = json.load(open(f"{d}/report/metrics.json"))["timing_s"]
    print(json.dumps({"n_showers_per_sample": args.n, "geometry": args.geometry, "threads": args.threads,
                      "wall_s_including_startup": round(wall, 2),
                      "timing_s": {k: round(v, 2) for k, v in timing.items()}}, indent=1))


if __name__ == "__main__":
    main()
