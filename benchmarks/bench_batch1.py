"""Batch-1 latency of ``CaloFlow.sample`` (issue 13): this version against an older one, in one process.

Builds a CaloFlow on ds2-coarse (preprocessing constants from toy showers, networks untrained --
latency does not depend on the weights -- student warm-started from the teacher), saves it, and
loads the same model directory with an older copy of the package (``--before DIR``: a directory
holding the older package renamed ``caloflows_before``, see below).  Then it alternates
``model.sample([16 GeV], batch_size=1, seed=k)`` between the two versions ``--reps`` times
(interleaved, so that both see the same machine load) and reports the median and minimum
ms/shower of each, the ratio, and the largest difference between their showers for the same
seed (the two versions draw the same latent noise, so they must agree to float round-off).
Without ``--before`` only this version is timed.  ``--int8`` also times this version with the
generation setting ``student_weights=int8`` (the student's MADE output layers as int8,
:meth:`caloflows.lean.LeanBlock.quantize_output`), in alternating blocks of 25 showers (the first 5
of each block not counted): shower by shower the float32 model's 46 MB would evict the int8 weights
from the cache before every int8 call, which a user running one model does not see.  It also times this
version's parts: flow-I (``sample_layer_energies``) and the student (``sample_voxels``).

    git archive 3d5a913 src/caloflows | tar -x -C /tmp/before && mv /tmp/before/src/caloflows /tmp/before/caloflows_before
    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/bench_batch1.py --before /tmp/before --presets quick full
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from caloflows import flows as F
from caloflows.geometry import load_geometry
from caloflows.io import ShowerData
from caloflows.models.caloflow import CaloFlow, CaloFlowConfig
from caloflows.toy_showers import toy_showers


def build(preset: str, out: Path) -> CaloFlow:
    g = load_geometry("ds2-coarse")
    model = CaloFlow(g, CaloFlowConfig.preset(preset, g))
    inc, sh = toy_showers(g, 1000, seed=0)
    model.fit_constants(ShowerData(inc, sh))
    F.init_student_from_teacher(model.student, model.teacher)
    model.trained = {k: True for k in model.trained}
    model.save(out)
    return model


def stats(ts: list[float]) -> dict:
    a = np.asarray(ts) * 1e3
    return {"median_ms": float(np.median(a)), "min_ms": float(a.min()), "reps": len(a)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", help="directory holding an older package copy named caloflows_before")
    p.add_argument("--presets", nargs="+", default=["quick"], choices=["quick", "full"])
    p.add_argument("--reps", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--int8", action="store_true", help="also time student_weights=int8 (alternating blocks of 25 showers)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    old_cls = None
    if args.before:
        sys.path.insert(0, os.path.abspath(args.before))
        from caloflows_before.models.caloflow import CaloFlow as OldCaloFlow  # type: ignore[import-not-found]

        old_cls = OldCaloFlow
    e = np.array([2.0**14])
    res: dict = {"threads": args.threads, "load_start": os.getloadavg(), "presets": {}}
    for preset in args.presets:
        d = Path(tempfile.mkdtemp(prefix="bench_batch1_"))
        new = build(preset, d / "model")
        old = old_cls.load(d / "model") if old_cls is not None else None
        q8 = CaloFlow.load(d / "model").with_generation_settings(["student_weights=int8"]) if args.int8 else None
        reps = args.reps if preset == "quick" else max(10, args.reps // 10)
        r: dict = {}
        t_new, t_old, t_q8, diff = [], [], [], 0.0
        for k in range(reps + 5):
            t0 = time.perf_counter()
            a = new.sample(e, batch_size=1, seed=k, variant="student").showers
            t1 = time.perf_counter()
            if old is not None:
                b = old.sample(e, batch_size=1, seed=k, variant="student").showers
                diff = max(diff, float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)))
            t2 = time.perf_counter()
            if k >= 5:  # warm-up
                t_new.append(t1 - t0)
                t_old.append(t2 - t1)
        if q8 is not None:  # alternating blocks of 25 (5 warm-up each), each model warm in the cache
            t_new = []
            for k in range(0, reps + 5, 20):
                for mod, ts in ((new, t_new), (q8, t_q8)):
                    for j in range(25):
                        t0 = time.perf_counter()
                        mod.sample(e, batch_size=1, seed=k + j, variant="student")
                        if j >= 5:
                            ts.append(time.perf_counter() - t0)
        r["this_version"] = stats(t_new)
        if old is not None:
            r["before"] = stats(t_old)
            r["speedup_median"] = r["before"]["median_ms"] / r["this_version"]["median_ms"]
            r["max_rel_shower_diff_same_seed"] = diff
        if q8 is not None:
            r["student_weights_int8"] = stats(t_q8)
            r["int8_speedup_median"] = r["this_version"]["median_ms"] / r["student_weights_int8"]["median_ms"]
        einc = torch.tensor(e)
        gen = torch.Generator().manual_seed(0)
        parts = {"flow1": [], "student": []}
        for k in range(reps + 5):
            t0 = time.perf_counter()
            E = new.sample_layer_energies(einc, generator=gen)
            t1 = time.perf_counter()
            new.sample_voxels(E, einc, student=True, generator=gen)
            t2 = time.perf_counter()
            if k >= 5:
                parts["flow1"].append(t1 - t0)
                parts["student"].append(t2 - t1)
        r["parts_this_version"] = {k: stats(v) for k, v in parts.items()}
        r["load"] = os.getloadavg()
        res["presets"][preset] = r
        print(f"[{preset}] " + json.dumps(r), flush=True)
    res["load_end"] = os.getloadavg()
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
