"""Lean sampling path vs zuko for a CaloFlow student flow alone (issue 13).

Times latent -> data sampling of an IAF student of ds2-coarse size (648 voxels, 10 conditions;
``quick``: 6 MADE blocks of 128 hidden units, ``full``: 8 of 1296) with

* zuko's inverse (:func:`caloflows.flows.inverse_path`, the path before issue 13),
* the lean path (:class:`caloflows.lean.LeanFlow`) at fixed chunk sizes and the automatic one,
* the lean path with the spline functions under ``torch.compile`` (optional, ``--compile``),
* the lean path with the spline as it was before stop 20 (optional, ``--reference-spline``): all
  ``K + 1`` knots normalised (softmax, cumsum) and all derivatives transformed, then the bin
  gathered, as zuko does; timed in the same loop as the current two-knot lookup,

at batch sizes 1 / 100 / 1000 / 10000, in float32, one thread by default.  Timings are the
median of ``--reps`` repetitions (wall clock).  Weights are random (speed does not depend on them).
``--shape`` times the student flow of another model family instead (:data:`SHAPES`: features,
conditions, MADE blocks, hidden layers), e.g. the ParaFlow quick student or one layer step of the
iCaloFlow quick flow-3 student, to choose the chunk size for them too.

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/bench_lean.py --out bench_lean.json
    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/bench_lean.py --shape paraflow-quick --no-zuko \
        --batches 100 10000 --chunks 128 256 512 1024 --out lean_paraflow.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch

from caloflows import flows as F
from caloflows import lean as L

#: student flows by name: (features, conditions, MADE blocks, hidden layers of each block)
SHAPES: dict[str, tuple[int, int, int, tuple[int, ...]]] = {
    "ds2-coarse-quick": (648, 10, 6, (128,)),  # CaloFlow quick flow-II student (the --preset default)
    "ds2-coarse-full": (648, 10, 8, (1296,)),  # CaloFlow full flow-II student
    "paraflow-quick": (128, 3, 4, (64, 64)),  # ParaFlow quick student: 8 x 16 crystals | E_inc, d, b
    "icaloflow-quick-flow3": (144, 191, 4, (192,)),  # iCaloFlow quick flow-3 student, one ds2 layer
}


def allknots_inverse(wh: torch.Tensor, d: torch.Tensor, y: torch.Tensor, bound: float, slope: float) -> torch.Tensor:
    """The lean inverse spline before stop 20: every knot normalised, then the bin gathered."""
    ls = math.log(slope)
    kn, dv = L._knots(wh, bound, ls), L._derivatives(d, ls)
    k = (kn[..., 1, :] < y.unsqueeze(-1)).sum(-1, keepdim=True) - 1
    return L._inverse_in_bin(*L._bin(kn, dv, k), y)


class ReferenceSpline:
    """Context: the lean path's inverse spline replaced by :func:`allknots_inverse`."""

    def __enter__(self):
        self.saved = L._inverse_wh
        L._inverse_wh = allknots_inverse

    def __exit__(self, *exc):
        L._inverse_wh = self.saved


def median_time(fn, reps: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=["quick", "full"], default="quick", help="ds2-coarse-quick or -full")
    p.add_argument("--shape", choices=sorted(SHAPES), help="another student flow (overrides --preset)")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 100, 1000, 10000])
    p.add_argument("--chunks", nargs="*", type=int, default=[64, 128, 256, 512, 1024, 4096])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd splines")
    p.add_argument("--no-zuko", action="store_true")
    p.add_argument("--reference-spline", action="store_true",
                   help="also time the automatic chunk with the pre-stop-20 all-knots spline (lean_auto_allknots)")
    p.add_argument("--out", default="bench_lean.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    shape = args.shape or f"ds2-coarse-{args.preset}"
    D, C, blocks, hidden = SHAPES[shape]
    torch.manual_seed(0)
    flow = F.build_iaf(D, C, blocks, hidden)
    with torch.no_grad():
        for q in flow.parameters():
            q.add_(0.05 * torch.randn_like(q))
    res: dict = {"shape": shape, "features": D, "conditions": C, "blocks": blocks, "hidden": list(hidden),
                 "threads": args.threads, "torch": torch.__version__,
                 "load_before": os.getloadavg(), "ms_per_row": {}}
    variants: list[tuple[str, object]] = []
    if not args.no_zuko:
        variants.append(("zuko", None))
    variants += [(f"lean_chunk{c}", L.LeanFlow.from_flow(flow, chunk=c)) for c in args.chunks]
    variants.append(("lean_auto", L.LeanFlow.from_flow(flow)))
    if args.reference_spline:
        variants.append(("lean_auto_allknots", L.LeanFlow.from_flow(flow)))
    if args.compile:
        variants.append(("lean_compiled", L.LeanFlow.from_flow(flow, compiled=True)))
    for b in args.batches:
        z, c = torch.randn(b, D), torch.randn(b, C)
        for name, lean in variants:
            if name.startswith("lean_chunk") and int(name[10:]) > b and b > 1:
                continue  # same as a whole-batch chunk
            reps = max(1, args.reps if b * (1 if lean is not None else 3) <= 1000 else args.reps // 2)
            if lean is None:
                def fn():
                    with torch.no_grad():
                        F.inverse_path(flow, z, c)
            elif name.endswith("_allknots"):
                def fn(lean=lean):
                    with torch.inference_mode(), ReferenceSpline():
                        lean.sample(z, c)
            else:
                def fn(lean=lean):
                    with torch.inference_mode():
                        lean.sample(z, c)
            t0 = time.perf_counter()
            t = median_time(fn, reps)
            res["ms_per_row"].setdefault(name, {})[b] = t / b * 1e3
            print(f"batch {b:>6} {name:>14}: {t / b * 1e3:.4f} ms/row ({reps} reps, {time.perf_counter() - t0:.0f} s)",
                  flush=True)
    res["auto_chunk"] = L.LeanFlow.from_flow(flow).chunk_rows(torch.float32)
    if args.reference_spline:
        res["allknots_over_current"] = {b: res["ms_per_row"]["lean_auto_allknots"][b] / res["ms_per_row"]["lean_auto"][b]
                                        for b in args.batches}
    res["load_after"] = os.getloadavg()
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
