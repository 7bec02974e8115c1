"""SuperCalo upsampling study on Geant4 ds2 showers (issue 11; paper arXiv:2308.11700 table III, fig. 5).

For each coarse-graining choice (A = 1 r x 2 alpha x 5 z, B = 3 r x 4 alpha x 1 z):

1. fit the preprocessing constants and train the SUPERCALO flow on the (shower, coarse voxel)
   rows of ``--data``, streamed from the HDF5 file (:class:`caloflows.layerdata.CoarseVoxelRows`);
2. upsample the *true* coarse showers of the held-out ``--reference`` file (choice A is also given
   the true fine layer energies, as in the paper's table III study);
3. compare with the held-out Geant4 showers: the rho separation power per coarse radial bin of
   choice B (eq. 3, fig. 5), the mean and worst separation power of the layer-energy histograms,
   the mean separation power of the voxel-energy histogram, next to the Geant4-vs-Geant4 floor
   (the two halves of the held-out file); upsampling ms/shower; training seconds per epoch.

This is the building-block study only; the full chain (FLOW-1, FLOW-2) and classifiers belong to
``benchmarks/bench_supercalo.py`` once the SuperCalo generator family exists.

    OMP_NUM_THREADS=1 python benchmarks/bench_supercalo_upsampling.py --data train.h5 --reference test.h5 \
        --epochs 4 --out results/supercalo_upsampling.json
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from caloflows.coarsegraining import CoarseGraining
from caloflows.evaluation.features import compute_features
from caloflows.evaluation.histograms import compare_histograms
from caloflows.evaluation.supercalo import rho_histograms
from caloflows.io import read_showers
from caloflows.layerdata import CoarseVoxelRows
from caloflows.superres import SuperCaloPreprocessing
from caloflows.upsampler import PRESETS, fit_upsampler, upsample
from caloflows.flows import count_parameters


def _fidelity(gen: np.ndarray, ref: np.ndarray, einc: np.ndarray, g, halves) -> dict:
    fg, fr = compute_features(gen, einc, g), compute_features(ref, einc, g)
    h0, h1 = halves
    fh = (compute_features(ref[h0], einc[h0], g), compute_features(ref[h1], einc[h1], g))
    hist = compare_histograms(fg, fr, fh)
    el = [v for k, v in hist.items() if k.startswith("E_layer/")]
    rho = rho_histograms(gen, ref, g, "B", reference_halves=(ref[h0], ref[h1]))
    return {
        "rho_separation_power": {k: v.separation_power for k, v in rho.items()},
        "rho_separation_power_geant4_halves": {k: v.ref_band for k, v in rho.items()},
        "E_layer_separation_power_mean": float(np.mean([v.separation_power for v in el])),
        "E_layer_separation_power_max": float(np.max([v.separation_power for v in el])),
        "E_layer_separation_power_geant4_halves_mean": float(np.mean([v.ref_band for v in el])),
        "E_layer1_separation_power": hist["E_layer/0"].separation_power,
        "voxel_separation_power": hist["voxel"].separation_power,
        "voxel_separation_power_geant4_halves": hist["voxel"].ref_band,
        "sparsity_separation_power_mean": float(np.mean([v.separation_power for k, v in hist.items()
                                                         if k.startswith("sparsity/")])),
        "sparsity_separation_power_geant4_halves_mean": float(np.mean([v.ref_band for k, v in hist.items()
                                                                       if k.startswith("sparsity/")])),
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--reference", required=True)
    ap.add_argument("--choices", default="A,B")
    ap.add_argument("--preset", default="quick", choices=sorted(PRESETS))
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--chunk-showers", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    ref = read_showers(args.reference, "ds2")
    g_ref = ref.showers.astype(np.float64)
    einc = ref.incident_energies
    perm = np.random.default_rng(0).permutation(len(einc))
    halves = (np.sort(perm[: len(perm) // 2]), np.sort(perm[len(perm) // 2:]))
    res: dict = {"data": args.data, "reference": args.reference, "n_reference": len(einc), "choices": {},
                 "threads": args.threads, "load_average_start": os.getloadavg()}
    for name in args.choices.split(","):
        cmap = CoarseGraining.parse(name).bind("ds2")
        cfg = PRESETS[args.preset]
        kw = {}
        if args.epochs:
            kw["epochs"] = args.epochs
        if args.batch_size:
            kw["batch_size"] = args.batch_size
        from dataclasses import replace

        cfg = replace(cfg, **kw)
        t0 = time.perf_counter()
        prep = SuperCaloPreprocessing.fit_from_file(args.data, cmap)
        rows = CoarseVoxelRows(args.data, cmap, prep, chunk_showers=args.chunk_showers)
        t_prep = time.perf_counter() - t0
        fit = fit_upsampler(rows, cfg, progress=True)
        coarse = cmap.coarse_grain(g_ref)
        layers = cmap.fine.layer_energies(g_ref)
        upsample(fit, coarse[:2], einc[:2], layers[:2], seed=0)  # warm-up
        t0 = time.perf_counter()
        out = upsample(fit, coarse, einc, layers, seed=1, batch_rows=100 * cmap.n_coarse)
        t_up = time.perf_counter() - t0
        r = {
            "grouping": cmap.grouping.to_dict(),
            "config": cfg.to_dict(),
            "train_rows": rows.n_rows(rows.split(cfg.val_fraction, cfg.seed)[0]),
            "parameters": count_parameters(fit.flow),
            "prep_seconds": t_prep,
            "train_seconds_per_epoch": fit.history["seconds"],
            "val_loss": fit.history["val_loss"],
            "best_epoch": fit.best_epoch,
            "upsample_ms_per_shower_batch100": 1e3 * t_up / len(einc),
            "max_abs_coarse_error_mev": float(np.abs(cmap.coarse_grain(out.showers) - np.where(coarse >= 0.01515, coarse, 0)).max()),
        }
        r.update(_fidelity(out.showers, g_ref, einc, cmap.fine, halves))
        res["choices"][name] = r
        rows.close()
        print(json.dumps({name: {k: v for k, v in r.items() if k not in ("config",)}}, indent=1), flush=True)
    res["load_average_end"] = os.getloadavg()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
