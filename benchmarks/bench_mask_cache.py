"""Side-by-side: generation with MADE masks multiplied in on every call (zuko) vs cached.

:class:`caloflows.flows.CachedMaskedLinear` keeps ``mask * weight`` between no-grad calls.
This script times ``model.sample`` of any trained model directory both ways, alternating the
two settings so that machine load affects both alike, and prints ms/shower and the ratio.

    OMP_NUM_THREADS=1 python benchmarks/bench_mask_cache.py runs/demo/model --batches 1 100
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

import numpy as np


@contextlib.contextmanager
def uncached(model):
    """Temporarily turn every cached MADE layer of ``model`` back into zuko's MaskedLinear."""
    from zuko.nn import MaskedLinear

    from caloflows.flows import CachedMaskedLinear

    nets = [m for m in vars(model).values() if hasattr(m, "modules")]
    nets += [m for d in vars(model).values() if isinstance(d, dict) for m in d.values() if hasattr(m, "modules")]
    layers = {id(x): x for n in nets for x in n.modules() if type(x) is CachedMaskedLinear}.values()
    for x in layers:
        x.__class__ = MaskedLinear
    try:
        yield len(layers)
    finally:
        for x in layers:
            x.__class__ = CachedMaskedLinear


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 100])
    p.add_argument("--reps", type=int, default=3, help="alternating repetitions per setting")
    p.add_argument("--energy-mev", type=float, default=10_000.0)
    p.add_argument("--out", default=None, help="JSON file for the numbers")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from caloflows.models import load_model

    model = load_model(a.model_dir)
    res = {"model_dir": a.model_dir, "kind": type(model).__name__, "threads": torch.get_num_threads(), "batches": []}
    for b in a.batches:
        e = np.full(b, a.energy_mev)
        model.sample(e, batch_size=b, seed=0)  # warm-up
        t = {"cached": [], "uncached": []}
        for r in range(a.reps):
            for name in ("uncached", "cached"):
                ctx = uncached(model) if name == "uncached" else contextlib.nullcontext()
                with ctx:
                    t0 = time.perf_counter()
                    model.sample(e, batch_size=b, seed=r + 1)
                    t[name].append(1e3 * (time.perf_counter() - t0) / b)
        row = {"batch": b, **{f"{k}_ms_per_shower": float(np.median(v)) for k, v in t.items()}}
        row["speedup"] = row["uncached_ms_per_shower"] / row["cached_ms_per_shower"]
        res["batches"].append(row)
        print(json.dumps(row), flush=True)
    if a.out:
        from pathlib import Path

        from caloflows.io import atomic_output

        with atomic_output(a.out) as tmp:
            Path(tmp).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
