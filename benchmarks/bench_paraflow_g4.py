"""ParaFlow Geant4 detector: simulation speed and physics checks with statistics (issue 12).

Parts (results written to a JSON file after each part, so a partial run keeps its numbers):

1. conversions: ``--n-conv`` photons (U:20:100 GeV) per d in {0.5, 0.75, 1.0, 1.25, 1.5} X0,
   calorimeter replaced by vacuum: fraction converting in the plate vs 1 - exp(-7/9 d/X0),
   inclusive and for 20-40 / 80-100 GeV (the pair cross section approaches its high-energy
   limit from below);
2. timing: Geant4 seconds per shower (``BeamOn(1)`` in one worker, one core) at 20, 60 and
   100 GeV for (d, b) = (1.0 X0, 70 cm);
3. a sharded run: ``--n`` photons (U:20:100, d = 0.5:1.5, b = 50:90, ``--store full``) with
   ``--jobs`` local workers; wall time and wall time x jobs / n;
4. physics of that sample: mean w, R9 and cluster count per d bin and per b bin (with
   standard errors) and on the (d, b) grid, the slopes vs d and b, energy fraction outside
   the 8 x 16 window (mean per (d, b) cell, maximum cell), converted fraction vs formula,
   sigma_y / sigma_x of converted and unconverted showers (the field bends along y),
   and the Geant4-vs-Geant4 floor: :func:`paraflow_report` on the two halves of the sample.

    python benchmarks/bench_paraflow_g4.py --n 2000 --jobs 2 --out-dir /tmp/paraflow_bench
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

import numpy as np


def _save(res: dict, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(res, f, indent=1, default=float)
    os.replace(tmp, path)


def conversions(n: int, seed: int, ds: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5),
                energy: str = "U:20:100") -> dict:
    """Fraction of ``n`` photons (``energy``) converting in a plate of d X0 (calorimeter replaced
    by vacuum) for each d of ``ds``, with its binomial error and pull vs 1 - exp(-7/9 d)."""
    from caloflows.simulation.energies import parse_energy, shower_energies_mev
    from caloflows.simulation.paraflow import conversion_probability, simulate_paraflow_raw

    e = shower_energies_mev(parse_energy(energy), seed, np.arange(n))
    out = {}
    for d in ds:
        t = time.perf_counter()
        r = simulate_paraflow_raw(e, np.tile([d, 70.0], (n, 1)), calorimeter=False, seed=seed + int(100 * d))
        conv = np.isfinite(r.conversion_z_mm)
        row = {"formula": float(conversion_probability(d)), "n": n, "wall_s": time.perf_counter() - t}
        for name, m in (("all", np.ones(n, bool)), ("20-40GeV", e < 40e3), ("80-100GeV", e >= 80e3)):
            f = float(conv[m].mean())
            row[name] = {"fraction": f, "stat_error": float(np.sqrt(f * (1 - f) / m.sum())), "n": int(m.sum())}
        row["pull_all"] = (row["all"]["fraction"] - row["formula"]) / max(row["all"]["stat_error"], 1e-12)
        out[f"d={d:g}"] = row
        print(f"d={d:g} X0: converted {row['all']['fraction']:.4f} +- {row['all']['stat_error']:.4f}, "
              f"formula {row['formula']:.4f} (20-40 GeV {row['20-40GeV']['fraction']:.4f}, "
              f"80-100 GeV {row['80-100GeV']['fraction']:.4f})", flush=True)
    return out


def timing(n_each: int, seed: int, es: tuple[float, ...] = (20.0, 60.0, 100.0)) -> dict:
    """Geant4 seconds per shower (``BeamOn(1)``, this process, one core) at the energies ``es``
    (GeV) for (d, b) = (1.0 X0, 70 cm), ``n_each`` showers each after one warm-up shower."""
    from caloflows.simulation.paraflow import simulate_paraflow_raw

    e = np.concatenate([[es[0] * 1e3]] + [np.full(n_each, x * 1e3) for x in es])  # first shower: warm-up
    r = simulate_paraflow_raw(e, np.tile([1.0, 70.0], (len(e), 1)), seed=seed)
    secs = r.seconds[1:]
    out = {"init_seconds": r.init_seconds, "tables": r.tables, "n_each": n_each, "seconds_per_shower": {},
           "ms_per_gev": {}, "median_seconds": {}}
    for i, x in enumerate(es):
        s = secs[i * n_each:(i + 1) * n_each]
        out["seconds_per_shower"][f"{x:g}"] = float(s.mean())
        out["median_seconds"][f"{x:g}"] = float(np.median(s))
        out["ms_per_gev"][f"{x:g}"] = float(1e3 * s.mean() / x)
    print("Geant4 s/shower:", out["seconds_per_shower"], "ms/GeV:", out["ms_per_gev"], flush=True)
    return out


def sharded_run(n: int, jobs: int, path: str, seed: int) -> dict:
    from caloflows.simulation.paraflow import simulate_paraflow

    t = time.perf_counter()
    simulate_paraflow("U:20:100", n, path, jobs=jobs, store="full", seed=seed, progress=False)
    wall = time.perf_counter() - t
    print(f"simulated {n} showers with {jobs} jobs in {wall:.0f} s", flush=True)
    return {"n": n, "jobs": jobs, "wall_s": wall, "wall_x_jobs_per_shower_s": wall * jobs / n, "path": path}


def field_asymmetry(path: str) -> dict:
    """With the 4 T field along x, e+ and e- of a conversion bend along y: the energy-weighted
    spread sigma_y / sigma_x of the 24 x 24 matrix (``--store full``, rows along y), median and
    mean with standard error, for converted and unconverted showers of the file."""
    import h5py

    with h5py.File(path) as f:
        if "showers_full" not in f:
            raise SystemExit(f"{path}: no showers_full (simulate with store='full')")
        img = f["showers_full"][()].astype(np.float64).reshape(-1, 24, 24)
        conv = f["converted"][()].astype(bool)
    yy, xx = np.meshgrid(np.arange(24.0), np.arange(24.0), indexing="ij")
    e = img.sum((1, 2))
    ok = e > 0
    img, conv, e = img[ok], conv[ok], e[ok]
    my, mx = (img * yy).sum((1, 2)) / e, (img * xx).sum((1, 2)) / e
    sy = np.sqrt((img * (yy - my[:, None, None]) ** 2).sum((1, 2)) / e)
    sx = np.sqrt((img * (xx - mx[:, None, None]) ** 2).sum((1, 2)) / e)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = sy / sx
    out: dict = {}
    for name, m in (("converted", conv), ("unconverted", ~conv)):
        r = ratio[m & np.isfinite(ratio)]
        out[name] = {"n": int(r.size), "median_sigma_y_over_sigma_x": float(np.median(r)) if r.size else None,
                     "mean_sigma_y_over_sigma_x": float(r.mean()) if r.size else None,
                     "stat_error": float(r.std(ddof=1) / np.sqrt(r.size)) if r.size > 1 else None}
    print(f"sigma_y / sigma_x (bending / across), median: converted {out['converted']['median_sigma_y_over_sigma_x']}, "
          f"unconverted {out['unconverted']['median_sigma_y_over_sigma_x']}", flush=True)
    return out


def _fit(x: np.ndarray, y: np.ndarray) -> dict:
    ok = np.isfinite(y)
    A = np.stack([x[ok], np.ones(ok.sum())], 1)
    coef, res, *_ = np.linalg.lstsq(A, y[ok], rcond=None)
    resid = y[ok] - A @ coef
    cov = np.linalg.inv(A.T @ A) * (resid @ resid) / max(ok.sum() - 2, 1)
    return {"slope": float(coef[0]), "slope_error": float(np.sqrt(cov[0, 0]))}


def physics(path: str, report_dir: str) -> dict:
    import h5py

    from caloflows.evaluation.paraflow import B_EDGES, D_EDGES, mean_maps, paraflow_observables, paraflow_report
    from caloflows.io import read_showers

    d = read_showers(path)
    with h5py.File(path) as f:
        full = f["showers_full"][()].astype(np.float64)
        conv = f["converted"][()].astype(bool)
    obs = paraflow_observables(d.showers)
    c = d.conditions
    out = {"n": len(d)}
    for col, nm, edges in ((0, "d", D_EDGES), (1, "b", B_EDGES)):
        rows = []
        for j in range(len(edges) - 1):
            m = (c[:, col] >= edges[j]) & (c[:, col] < edges[j + 1] if j < len(edges) - 2 else c[:, col] <= edges[j + 1])
            row = {"bin": [edges[j], edges[j + 1]], "n": int(m.sum())}
            for o in ("w", "R9", "n_clusters"):
                v = obs[o][m]
                row[o] = float(np.nanmean(v))
                row[o + "_err"] = float(np.nanstd(v) / np.sqrt(max(m.sum(), 1)))
            rows.append(row)
        out[f"per_{nm}_bin"] = rows
        out[f"slope_vs_{nm}"] = {o: _fit(c[:, col], obs[o].astype(float)) for o in ("w", "R9", "n_clusters")}
    maps = mean_maps(obs, c)
    out["mean_maps"] = {k: np.asarray(v).tolist() for k, v in maps.items()}
    frac_out = 1.0 - d.showers.sum(1) / full.sum(1)
    fmap = mean_maps({"w": frac_out, "R9": frac_out, "n_clusters": frac_out}, c)["w"]
    out["outside_window"] = {"mean": float(frac_out.mean()), "max_single_shower": float(frac_out.max()),
                             "mean_per_cell": fmap.tolist(), "max_cell_mean": float(np.nanmax(fmap)),
                             "cell_d_1.25-1.5_b_80-90": float(fmap[-1, -1])}
    from caloflows.simulation.paraflow import conversion_probability

    out["converted_fraction"] = {"sample": float(conv.mean()),
                                 "formula_mean_over_d": float(conversion_probability(c[:, 0]).mean()),
                                 "stat_error": float(np.sqrt(conv.mean() * (1 - conv.mean()) / len(conv)))}
    out["field_asymmetry"] = field_asymmetry(path)
    h = len(d) // 2
    rep = paraflow_report(d.subset(np.arange(h)), d.subset(np.arange(h, 2 * h)), report_dir, gen_label="Geant4 half 1")
    out["geant4_halves"] = {"separation_power": rep["separation_power"],
                            "max_abs_rel_diff_mean_maps": {o: rep["mean_maps"][o]["max_abs_relative_difference"]
                                                           for o in ("w", "R9", "n_clusters")},
                            "report_dir": report_dir}
    print(json.dumps({k: out[k] for k in ("slope_vs_d", "slope_vs_b", "outside_window", "converted_fraction")}, indent=1,
                     default=float), flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000, help="showers of the sharded run")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--n-conv", type=int, default=1500, help="photons per d value for the conversion check")
    p.add_argument("--n-timing", type=int, default=8, help="showers per energy for the timing")
    p.add_argument("--seed", type=int, default=12)
    p.add_argument("--out-dir", default="/tmp/paraflow_bench")
    p.add_argument("--results", default=None, help="JSON results (default benchmarks/results/paraflow_g4_<date>.json)")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: conv,timing,run")
    a = p.parse_args(argv)
    os.makedirs(a.out_dir, exist_ok=True)
    res_path = a.results or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                         f"paraflow_g4_{datetime.date.today().isoformat()}.json")
    skip = set(filter(None, a.skip.split(",")))
    res: dict = {"args": vars(a), "started": datetime.datetime.utcnow().isoformat(), "load_at_start": os.getloadavg()}
    if "conv" not in skip:
        res["conversions"] = conversions(a.n_conv, a.seed)
        _save(res, res_path)
    if "timing" not in skip:
        res["timing"] = timing(a.n_timing, a.seed)
        _save(res, res_path)
    path = os.path.join(a.out_dir, f"paraflow_g4_n{a.n}_seed{a.seed}.h5")
    if "run" not in skip and not os.path.exists(path):
        res["run"] = sharded_run(a.n, a.jobs, path, a.seed)
        res["load_after_run"] = os.getloadavg()
        _save(res, res_path)
    res["physics"] = physics(path, os.path.join(a.out_dir, "geant4_halves_report"))
    res["finished"] = datetime.datetime.utcnow().isoformat()
    _save(res, res_path)
    print(f"results: {res_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
