"""Whole-model sampling with the lean path's spline eager or through ``torch.compile``, side by side.

``CALOFLOWS_COMPILE=1`` (``caloflows.lean.LeanFlow.compiled``) evaluates the rational-quadratic
spline of every lean block through ``torch.compile``.  ``bench_lean.py`` measured it 10-30 % faster
on synthetic flows; this benchmark measures a whole CaloFlow student (``Generator.sample``: flows,
pre- and post-processing) at one batch size, float32 and int8 output layers
(``student_weights``), the two spline paths alternated in every repetition of one process, and
the showers of both from the same seed (relative voxel difference).  Untrained networks (timing
does not depend on the weights).

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/bench_compile_spline.py --out compile.json
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_batch1 import build  # noqa: E402

from caloflows.models.caloflow import CaloFlow  # noqa: E402
from caloflows.training.checkpoint import write_json  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="quick", choices=["quick", "full"])
    p.add_argument("--batch", type=int, default=10_000)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--weights", nargs="+", default=["int8", "float32"], choices=["int8", "float32"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True, help="results JSON (an existing file is refused without --force)")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    a = p.parse_args(argv)
    if os.path.exists(a.out) and not a.force:
        sys.exit(f"--out {a.out}: exists (use --force to replace it)")
    warnings.filterwarnings("ignore")
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory(prefix="bench_compile_") as tmp:
        res = _measure(a, Path(tmp))
    res["load_end"] = os.getloadavg()
    write_json(a.out, res)
    return 0


def _measure(a: argparse.Namespace, d: Path) -> dict:
    """Build the untrained model in ``d`` and time both spline paths for every ``--weights``."""
    build(a.preset, d / "m")
    e = np.full(a.batch, 2.0**14)
    res: dict = {"preset": a.preset, "batch": a.batch, "threads": a.threads, "torch": torch.__version__,
                 "load_start": os.getloadavg(), "weights": {}}
    for w in a.weights:
        q = CaloFlow.load(d / "m").with_generation_settings([f"student_weights={w}"])
        q.sample(e[:512], batch_size=a.batch, seed=0, variant="student")  # builds the lean snapshots
        leans = [v[1] for v in q.student.__dict__["_caloflows_lean"].values()]

        def run(compiled: bool, seed: int, q=q, leans=leans) -> tuple[float, np.ndarray]:
            for lean in leans:
                lean.compiled = compiled
            t = time.perf_counter()
            s = q.sample(e, batch_size=a.batch, seed=seed, variant="student").showers
            return (time.perf_counter() - t) * 1e3 / a.batch, s

        t0 = time.perf_counter()
        run(True, 0)
        warm = time.perf_counter() - t0
        _, x = run(False, 5)
        _, y = run(True, 5)
        both = (x > 0) & (y > 0)
        rel = np.abs(x[both] - y[both]) / x[both]
        te, tc = [], []
        for r in range(a.reps):
            te.append(run(False, r)[0])
            tc.append(run(True, r)[0])
        te_a, tc_a = np.array(te), np.array(tc)
        res["weights"][w] = {"eager_ms_per_shower": float(np.median(te_a)), "compiled_ms_per_shower": float(np.median(tc_a)),
                             "paired_ratio_compiled_over_eager": float(np.median(tc_a / te_a)),
                             "eager_all": te, "compiled_all": tc, "compile_warmup_seconds": warm,
                             "max_rel_voxel_diff": float(rel.max()), "median_rel_voxel_diff": float(np.median(rel)),
                             "nonzero_in_one_only": int(((x > 0) != (y > 0)).sum())}
        print(w, res["weights"][w], flush=True)
    return res


if __name__ == "__main__":
    raise SystemExit(main())
