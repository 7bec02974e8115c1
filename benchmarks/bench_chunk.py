"""Chunk-size rule of the lean sampling path on trained models (issue 13).

Issue 13 asks that per-shower time never grows from batch 100 to batch 10000.  The lean path
(:mod:`caloflows.lean`) runs a batch in chunks of :func:`caloflows.lean.auto_chunk` rows, set by
a byte target (``CHUNK_BYTES``) and a floor (``CHUNK_MIN_ROWS``).  This benchmark times whole
models (``Generator.sample``: flows, preprocessing, post-processing) under several rules in one
process, alternating the rules in every repetition so that a slow spell of the shared machine hits
them alike, and reports per rule and batch the median ms/shower, the ratio batch 10000 / batch 100
and, for every rule against the first, the median of the paired ratios at the largest batch.

    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/bench_chunk.py \\
        --model /work/data/pfbench/run20k/model --data /work/data/pfbench/run20k/geant4_heldout.h5 \\
        --rule old=16777216:64 --rule new=4194304:256 --reps 20 --out chunk_paraflow.json

``--rule NAME=BYTES:MIN_ROWS``; the conditions (E_inc and any detector parameters) are taken from
``--data`` in file order, repeated to the largest batch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np
import torch

import caloflows.lean as L
from caloflows.conditions import Conditions
from caloflows.io import read_showers
from caloflows.models import load_model


def conditions_from(path: str, n: int) -> Conditions:
    data = read_showers(path)
    cond = Conditions.from_data(data)
    return cond[np.arange(n) % len(cond)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="HDF5 file whose E_inc (and conditions) are used")
    p.add_argument("--variant", default=None, help="teacher / student (default: the model's)")
    p.add_argument("--rule", action="append", required=True, help="NAME=BYTES:MIN_ROWS (repeat)")
    p.add_argument("--batches", nargs="+", type=int, default=[100, 10000])
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if os.path.exists(args.out):
        p.error(f"{args.out} exists; choose another --out")
    rules = {}
    for r in args.rule:
        name, _, spec = r.partition("=")
        b, _, lo = spec.partition(":")
        if not (name and b.isdigit() and lo.isdigit() and int(b) > 0 and int(lo) > 0):
            p.error(f"--rule {r!r}: expected NAME=BYTES:MIN_ROWS with positive integers, e.g. new=4194304:256")
        rules[name] = (int(b), int(lo))
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    model = load_model(args.model)
    big = max(args.batches)
    conds = {b: conditions_from(args.data, b) for b in args.batches}

    def run(b: int, seed: int) -> float:
        k = max(1, big // (10 * b))  # small batches repeated, so each timing lasts a while
        t0 = time.perf_counter()
        for i in range(k):
            model.sample(conds[b], batch_size=b, seed=seed + i, variant=args.variant)
        return (time.perf_counter() - t0) / (k * b) * 1e3

    saved = (L.CHUNK_BYTES, L.CHUNK_MIN_ROWS)
    res: dict = {"model": args.model, "kind": model.kind, "variant": args.variant, "threads": args.threads,
                 "torch": torch.__version__, "rules": {k: list(v) for k, v in rules.items()},
                 "load_before": os.getloadavg(), "ms_per_shower": {}}
    try:
        for b in args.batches:  # warm-up (lazy snapshots, allocator)
            run(b, 0)
        for rep in range(args.reps):
            for name, (nbytes, lo) in rules.items():
                L.CHUNK_BYTES, L.CHUNK_MIN_ROWS = nbytes, lo
                for b in args.batches:
                    res["ms_per_shower"].setdefault(name, {}).setdefault(str(b), []).append(run(b, rep))
    finally:
        L.CHUNK_BYTES, L.CHUNK_MIN_ROWS = saved
    res["load_after"] = os.getloadavg()
    first = next(iter(rules))
    summary = {}
    for name, per in res["ms_per_shower"].items():
        med = {b: float(np.median(v)) for b, v in per.items()}
        lo_b, hi_b = str(min(args.batches)), str(big)
        s = {"median_ms": med,
             "ratio_largest_to_smallest_batch": float(np.median(np.array(per[hi_b]) / np.array(per[lo_b])))}
        if name != first:
            s[f"paired_ratio_to_{first}_at_{big}"] = float(np.median(
                np.array(per[hi_b]) / np.array(res["ms_per_shower"][first][hi_b])))
        summary[name] = s
        print(name, json.dumps(s), flush=True)
    res["summary"] = summary
    with open(args.out, "x") as f:
        json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
