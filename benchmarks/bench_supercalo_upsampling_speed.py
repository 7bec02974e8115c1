"""SUPERCALO sampling speed and float32 accuracy (issue 11, step "fast upsampling").

In one process, on one trained SuperCalo model (``--model`` directory, or the ``quick`` preset
trained here for ``--epochs`` on ``--data``):

1. **upsampling ms per fine shower**, before / after side by side: ``legacy`` = the previous path
   (every (shower, coarse voxel) row through ``caloflows.flows.flow_sample`` in float64 inside
   ``double_precision``, 100k rows per call) against the current :meth:`SuperCalo._upsample_rows`
   (lean sequential MAF inverse snapshot built once, float32, rows batched across showers in
   chunks of ``lean_chunk``, rows whose coarse voxel is below the cut skipped) in float32 and float64,
   and a sweep of the lean row chunk;
2. **float32 vs float64 on a fixed latent**: the same latent noise through both precisions, the
   max relative fine-voxel difference, voxels that cross the cut, and the exact-sum check (fine
   voxels of every coarse voxel above the cut sum to it, max relative error);
3. **full chain ms/shower** for resampling N = 1, 5, 10 with the coarse teacher and student.

Times: median of ``--repeat`` calls, 1 torch thread (run under ``taskset -c 1``); the load average
is recorded before and after.

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/bench_supercalo_upsampling_speed.py --model M \
        --data test.h5 --n 100 --out benchmarks/results/supercalo_upsampling_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import numpy as np
import torch

from caloflows import flows as F
from caloflows.io import read_showers
from caloflows.models.supercalo import SuperCalo, SuperCaloConfig
from caloflows.superres import assemble_fine, build_conditions


def legacy_upsample_rows(m: SuperCalo, coarse, einc, layers, feats, generator, batch_rows: int = 100_000):
    """The sampling path before this change (kept here for the side-by-side timing)."""
    cmap = m.cmap
    out = np.empty((len(coarse), m.geometry.n_voxels))
    per = max(1, batch_rows // cmap.n_coarse)
    for a in range(0, len(coarse), per):
        s = slice(a, a + per)
        cond = m._with_params(build_conditions(einc[s], coarse[s], layers[s], cmap, m.prep), feats[s])
        n = len(cond)
        ct = torch.as_tensor(cond.reshape(n * cmap.n_coarse, -1), dtype=torch.float64)
        with F.double_precision(m.upflow):
            y = F.flow_sample(m.upflow, ct, generator=generator)
        rel = m.prep.target_inverse(y).reshape(n, cmap.n_coarse, cmap.group_size)
        out[s] = assemble_fine(rel, coarse[s], cmap, m.cut)
    return out


def median_ms(fn, n_showers: int, repeat: int) -> float:
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(1e3 * (time.perf_counter() - t0) / n_showers)
    return statistics.median(ts)


def precision_check(m: SuperCalo, coarse, einc, layers, feats, seed: int = 0) -> dict:
    """float32 vs float64 SUPERCALO on the same latent noise (active rows only)."""
    cmap, k, Vc, cut = m.cmap, m.cmap.group_size, m.cmap.n_coarse, m.cut
    cond = m._with_params(build_conditions(einc, coarse, layers, cmap, m.prep), feats).reshape(len(coarse) * Vc, -1)
    active = ((coarse >= cut) & (coarse > 0)).reshape(-1)
    z = torch.randn(int(active.sum()), k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    fine = {}
    for p in ("float32", "float64"):
        rel = np.full((len(active), k), 1.0 / k)
        rel[active] = m.sample_relative(cond[active], precision=p, z=z)
        fine[p] = assemble_fine(rel.reshape(len(coarse), Vc, k), coarse, cmap, cut)
    a, b = fine["float32"], fine["float64"]
    both = (a > 0) & (b > 0)
    rel_diff = np.abs(a - b)[both] / b[both]
    sums = cmap.coarse_grain(a)
    on = coarse >= cut
    sum_err = np.abs(sums[on] - coarse[on]) / coarse[on]
    return {"rows_active": int(active.sum()), "rows_total": int(active.size),
            "max_rel_fine_voxel_diff": float(rel_diff.max(initial=0.0)),
            "median_rel_fine_voxel_diff": float(np.median(rel_diff)) if rel_diff.size else 0.0,
            "voxels_crossing_cut": int(((a > 0) != (b > 0)).sum()), "voxels_nonzero": int((b > 0).sum()),
            "max_rel_coarse_sum_error_float32": float(sum_err.max(initial=0.0)),
            "max_rel_layer_energy_diff": float(np.max(np.abs(m.geometry.layer_energies(a) - m.geometry.layer_energies(b))
                                                      / np.maximum(m.geometry.layer_energies(b), 1e-300)))}


def save(res: dict, path: str | None) -> None:
    """Write the JSON (after every section, so a run stopped early keeps what it measured)."""
    if path:
        with open(path, "w") as f:
            json.dump(res, f, indent=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="trained SuperCalo model directory")
    ap.add_argument("--data", required=True, help="fine ds2 showers: coarse-grained for the upsampling timing "
                                                  "(and training data without --model)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--n-train", type=int, default=300)
    ap.add_argument("--n", type=int, default=100, help="showers per timed call")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--chunks", type=int, nargs="*", default=[2048, 4096, 8192, 16384])
    ap.add_argument("--resample", type=int, nargs="+", default=[1, 5, 10])
    ap.add_argument("--out")
    a = ap.parse_args()
    torch.set_num_threads(1)
    res: dict = {"load_before": os.getloadavg(), "n": a.n, "repeat": a.repeat, "threads": 1,
                 "note": "taken under load (shared 2-core machine); median of repeats"}
    if a.model:
        m = SuperCalo.load(a.model)
        res["model"] = a.model
    else:
        d = read_showers(a.data)
        tmp = tempfile.mkdtemp()
        m = SuperCalo("ds2", SuperCaloConfig.preset("quick", "ds2").replace_train(epochs=a.epochs))
        from caloflows.io import ShowerData
        m.fit(ShowerData(d.incident_energies[:a.n_train], d.showers[:a.n_train]), os.path.join(tmp, "m"),
              progress=False)
        m.fit(ShowerData(d.incident_energies[:a.n_train], d.showers[:a.n_train]), os.path.join(tmp, "m"),
              stage="distill", progress=False)
        res["model"] = f"quick preset, {a.epochs} epoch(s) on {a.n_train} showers of {a.data}"
    res["grouping"] = m.cmap.grouping.to_dict()
    res["upsampler"] = {"transforms": m.cfg.up_transforms, "hidden": list(m.cfg.up_hidden),
                        "parameters": m.parameter_counts()["upsampler"]}
    d = read_showers(a.data)
    fine = np.asarray(d.showers[-a.n:], dtype=np.float64)
    einc = np.asarray(d.incident_energies[-a.n:], dtype=np.float64)
    coarse = m.cmap.coarse_grain(fine)
    layers = m.geometry.layer_energies(fine)
    feats = np.zeros((a.n, 0))
    res["active_row_fraction"] = float(((coarse >= m.cut) & (coarse > 0)).mean())
    res["precision_check"] = precision_check(m, coarse, einc, layers, feats)
    print(json.dumps(res["precision_check"], indent=1), flush=True)
    save(res, a.out)
    gen = torch.Generator().manual_seed(1)
    for mm in m.networks().values():
        mm.eval()
    ups = {}
    ups["before (zuko->lean per call, float64, all rows)"] = median_ms(
        lambda: legacy_upsample_rows(m, coarse, einc, layers, feats, gen), a.n, a.repeat)
    for p in ("float64", "float32"):
        m._upsample_rows(coarse[:2], einc[:2], layers[:2], feats[:2], gen, precision=p)  # snapshot built once
        ups[f"after ({p}, lean snapshot, active rows, chunk {m.lean_chunk})"] = median_ms(
            lambda p=p: m._upsample_rows(coarse, einc, layers, feats, gen, precision=p), a.n, a.repeat)
    res["upsampling_ms_per_shower"] = ups
    print(json.dumps(ups, indent=1), flush=True)
    save(res, a.out)
    chunk = {}
    for ch in a.chunks:
        m.lean_chunk = ch
        m.__dict__.pop("_lean_up", None)
        m._upsample_rows(coarse[:2], einc[:2], layers[:2], feats[:2], gen)
        chunk[str(ch)] = median_ms(lambda: m._upsample_rows(coarse, einc, layers, feats, gen), a.n, a.repeat)
    res["upsampling_ms_per_shower_by_chunk_float32"] = chunk
    print("chunks", chunk, flush=True)
    m.lean_chunk = type(m).lean_chunk
    m.__dict__.pop("_lean_up", None)
    chain = {}
    e = einc.copy()
    for v in ("teacher", "student"):
        for N in a.resample:
            m.sample_resampled(e[:N], N, batch_size=a.n, seed=0, variant=v)  # warm-up
            chain[f"{v} N={N}"] = median_ms(
                lambda N=N, v=v: m.sample_resampled(e, N, batch_size=a.n, seed=0, variant=v), a.n, a.repeat)
            print(v, N, chain[f"{v} N={N}"], flush=True)
            res["full_chain_ms_per_shower"] = chain
            save(res, a.out)
    res["full_chain_ms_per_shower"] = chain
    res["load_after"] = os.getloadavg()
    print(json.dumps(res, indent=1))
    save(res, a.out)


if __name__ == "__main__":
    main()
