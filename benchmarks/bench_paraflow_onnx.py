"""ParaFlow student: torch (``model.sample(..., variant="student")``) against its ONNX export run by
ONNX Runtime (:class:`caloflows.export.OnnxGenerator`, the path of ``caloflows generate FILE.onnx
--backend onnxruntime``), in ms per shower at several batch sizes (issue 13).

Both paths are timed end to end on the same conditions (E_inc drawn uniformly in the training
range, ``d`` and ``b`` uniform in theirs): condition check, features, latent noise, the student
and the post-processing.  A repetition generates ``--showers`` showers (at least one batch) in
batches of ``B``; the two paths alternate within a repetition so that they see the same machine
load.  Reports the median and minimum over ``--reps`` repetitions, the export time, the file size,
and the largest difference between the ONNX graph and the torch sampler module for the same latent.
The model directory is only read; the ``.onnx`` goes to a temporary directory (or ``--onnx``).

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/bench_paraflow_onnx.py MODEL_DIR --batches 1 100 1000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from caloflows.conditions import Conditions, ConditionsWarning
from caloflows.export import OnnxGenerator, ParaFlowSampler, export_onnx
from caloflows.models import load_model


def conditions(model, n: int, seed: int) -> Conditions:
    """``n`` showers' E_inc and parameters, uniform over the training ranges."""
    rng = np.random.default_rng(seed)
    lo, hi = model.einc_range
    spec = model.condition_spec
    vals = np.column_stack([rng.uniform(spec.low[k], spec.high[k], n) for k in range(len(spec))])
    return Conditions(rng.uniform(lo, hi, n), vals, spec.names)


def graph_vs_module(model, gen: OnnxGenerator, n: int = 1000) -> float:
    """Largest |ONNX - torch sampler module| / largest crystal for the same latent noise."""
    cond = conditions(model, n, 99)
    feats = torch.as_tensor(model.condition_spec.features(cond.values), dtype=torch.float32)
    z2 = torch.randn(n, model.geometry.n_voxels, generator=torch.Generator().manual_seed(1))
    z1 = torch.zeros(n, model.geometry.n_layers, dtype=torch.float64)
    einc = torch.as_tensor(cond.incident_energies)
    with torch.no_grad():
        ref = ParaFlowSampler(model)(z1, z2, einc, feats).numpy()
    out = gen.sampler.run(z1.numpy(), z2.numpy(), einc.numpy(), feats.numpy())
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", help="trained ParaFlow model directory with a distilled student (read only)")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 100, 1000])
    p.add_argument("--showers", type=int, default=1000, help="showers per repetition (at least one batch)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--onnx", default=None, help="where to write the .onnx (default: a temporary directory)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", ConditionsWarning)
    model = load_model(args.model_dir)
    onnx_path = Path(args.onnx) if args.onnx else Path(tempfile.mkdtemp(prefix="bench_pf_onnx_")) / "paraflow.onnx"
    t0 = time.perf_counter()
    export_onnx(model, onnx_path, force=bool(args.onnx))
    res: dict = {"model_dir": str(args.model_dir), "threads": args.threads, "load_start": os.getloadavg(),
                 "export_seconds": time.perf_counter() - t0, "onnx_megabytes": os.path.getsize(onnx_path) / 2**20,
                 "student_parameters": int(sum(q.numel() for q in model.student.parameters())), "batches": {}}
    gen = OnnxGenerator(onnx_path, threads=args.threads)
    res["max_rel_diff_onnx_vs_module"] = graph_vs_module(model, gen)
    paths = {"torch": lambda c, b, s: model.sample(c, batch_size=b, seed=s, variant="student"),
             "onnxruntime": lambda c, b, s: gen.sample(c, batch_size=b, seed=s)}
    for b in args.batches:
        n = max(b, args.showers - args.showers % b)
        cond = conditions(model, n, b)
        for f in paths.values():
            f(cond[: min(b, 10)], b, 0)  # warm-up
        times: dict = {k: [] for k in paths}
        for r in range(args.reps):
            for k, f in paths.items():
                t = time.perf_counter()
                if b == 1:
                    for i in range(n):
                        f(cond[i:i + 1], 1, r * n + i)
                else:
                    f(cond, b, r)
                times[k].append((time.perf_counter() - t) / n * 1e3)
        row = {k: {"median_ms_per_shower": float(np.median(v)), "min_ms_per_shower": float(np.min(v)),
                   "reps": len(v), "showers_per_rep": n} for k, v in times.items()}
        row["torch_over_onnxruntime"] = row["torch"]["median_ms_per_shower"] / row["onnxruntime"]["median_ms_per_shower"]
        row["load"] = os.getloadavg()
        res["batches"][str(b)] = row
        print(f"[batch {b}] " + json.dumps(row), flush=True)
    res["load_end"] = os.getloadavg()
    print(json.dumps({k: v for k, v in res.items() if k != "batches"}))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
