"""Block-triangular MADE output layer of the lean path (issue 13): time per shower against the
dense layer, for the number of feature groups (:data:`caloflows.lean.OUTPUT_GROUPS`; here applied at
every batch size: ``OUTPUT_GROUPS_ROWS`` is set to 1).

For three IAF students on ds2-coarse (648 voxels, 8 bins, spline domain 14, 10 conditions):
quick (6 blocks of 128 hidden units) with zuko's cyclic degrees and with spread degrees
(``made_degrees``), and full (8 blocks of 1296, cyclic -- for H >= D both rules are the same),
it builds one :class:`caloflows.lean.LeanFlow` per group count (1 = dense), then times
``LeanFlow.sample`` interleaved over the group counts (so all see the same machine load) at
batch 1 and 2560 (ten 256-row chunks), and reports the median ms per shower and its ratio to
the dense layer.  Untrained weights: the cost does not depend on them.

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/bench_output_groups.py --out groups.json
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from caloflows import flows as F
from caloflows import lean as L
from caloflows.io import atomic_output

STUDENTS = {"quick-cyclic": (128, "cyclic", 6), "quick-spread": (128, "spread", 6), "full": (1296, "cyclic", 8)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--groups", nargs="+", type=int, default=[1, 4, 8, 16])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 2560])
    p.add_argument("--students", nargs="+", default=list(STUDENTS), choices=list(STUDENTS))
    p.add_argument("--reps", type=int, default=60, help="repetitions at batch 1 (larger batches: reps / 20, >= 3)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="bench_output_groups.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    L.OUTPUT_GROUPS_ROWS = 1  # the grouping under test at batch 1 too
    res = {"threads": args.threads, "load_before": os.getloadavg()[0], "students": {}}
    for name in args.students:
        hidden, degrees, blocks = STUDENTS[name]
        torch.manual_seed(0)
        f = F.build_iaf(648, 10, blocks, (hidden,), 8, 14.0, degrees=degrees)
        leans = {}
        for g in args.groups:
            L.OUTPUT_GROUPS = g
            leans[g] = L.LeanFlow.from_flow(f)
        r = res["students"][name] = {"hidden": hidden, "degrees": degrees, "blocks": blocks,
                                     "weights_kept": {}, "batches": {}}
        for g, lf in leans.items():
            b0 = lf.blocks[0]
            full = b0.w_out_t.numel()
            kept = sum(c[0] * (c[2] - c[1] + c[4] - c[3]) for c in b0._out_chunks) if b0._out_chunks else full
            r["weights_kept"][g] = kept / full
        for B in args.batches:
            reps = args.reps if B == 1 else max(3, args.reps // 20)
            z, c = torch.randn(B, 648), torch.randn(B, 10)
            ts: dict[int, list[float]] = {g: [] for g in leans}
            with torch.inference_mode():
                for lf in leans.values():
                    lf.sample(z, c)
                for _ in range(reps):
                    for g, lf in leans.items():
                        t = time.perf_counter()
                        lf.sample(z, c)
                        ts[g].append(time.perf_counter() - t)
            med = {g: float(np.median(v)) * 1e3 / B for g, v in ts.items()}
            r["batches"][B] = {"ms_per_shower": med, "over_dense": {g: med[g] / med[args.groups[0]] for g in med}}
            print(f"{name:>13} batch {B:>5}: ms/shower " + ", ".join(f"G={g}: {v:.4f}" for g, v in med.items()) +
                  " | / dense " + ", ".join(f"{v / med[args.groups[0]]:.3f}" for v in med.values()), flush=True)
    res["load_after"] = os.getloadavg()[0]
    with atomic_output(args.out) as tmp, open(tmp, "w") as fh:
        json.dump(res, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
