"""ParaFlow Geant4 detector: what the time per shower goes into, and which tracking settings
speed it up without changing the physics (issue 12, part 3).

0. ``counts`` (``--n-count``): steps per volume (world, plate, crystal) and tracks per particle
   type per shower for each variant -- a load-independent measure of the work;
1. ``profile``: the same ``--n-profile`` photons (fixed E, seeds, gun positions, (d, b)) in one
   worker per variant (:class:`caloflows.simulation.paraflow.G4Settings`), the variants
   interleaved over ``--repeats`` rounds; median seconds per shower per variant.  Variants
   that are not the paper's detector (field off, vacuum crystals) only say where the time goes.
2. ``physics``: ``--n-physics`` photons (U:20:100 GeV, d = 0.5:1.5 X0, b = 50:90 cm, the same
   seeds for every variant) with the baseline and each candidate: converted fraction vs
   1 - exp(-7/9 d), mean w, mean R9, mean cluster count and the mean per-shower total energy;
   the difference candidate - baseline with its standard error (paired by shower: same E,
   gun position, d, b and Geant4 seed).

Run it pinned to one core (the workers inherit the affinity) and say the load::

    uptime; taskset -c 1 python benchmarks/bench_paraflow_g4_speed.py --n-profile 6 --n-physics 300
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time

import numpy as np


def _variants() -> dict:
    from caloflows.simulation.paraflow import DEFAULT_G4, G4Settings

    return {
        "baseline": G4Settings(production_cut_mm=0.7),  # the cut the files' attributes used to state
        "adopted (DEFAULT_G4)": DEFAULT_G4,
        "field_off (profiling only)": G4Settings(production_cut_mm=0.7, field=False),
        "cut_1.0mm": G4Settings(production_cut_mm=1.0),
        "cut_2.0mm": G4Settings(production_cut_mm=2.0),
        "cut_5.0mm": G4Settings(production_cut_mm=5.0),
        "field_accuracy_relaxed": G4Settings(production_cut_mm=0.7, delta_chord_mm=1.0, delta_one_step_mm=0.1,
                                             delta_intersection_mm=0.01),
        "world_kill_1MeV": G4Settings(production_cut_mm=0.7, world_min_ekin_mev=1.0),
        "world_kill_10MeV": G4Settings(production_cut_mm=0.7, world_min_ekin_mev=10.0),
        "lowest_e_100keV": G4Settings(production_cut_mm=0.7, lowest_electron_kev=100.0),
        "combined": G4Settings(production_cut_mm=2.0, delta_chord_mm=1.0, delta_one_step_mm=0.1,
                               delta_intersection_mm=0.01, lowest_electron_kev=100.0),
    }


def _save(res: dict, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(res, f, indent=1, default=float)
    os.replace(tmp, path)


def profile(n: int, repeats: int, energy_gev: float, only: list[str] | None) -> dict:
    from caloflows.simulation.paraflow import simulate_paraflow_raw

    variants = {k: v for k, v in _variants().items() if not only or k in only or k == "baseline"}
    e = np.full(n + 1, energy_gev * 1e3)  # shower 0: warm-up, not timed
    cond = np.tile([1.0, 70.0], (n + 1, 1))
    times: dict[str, list[float]] = {k: [] for k in variants}
    times["vacuum_crystals (profiling only)"] = []
    cpu: dict[str, list[float]] = {k: [] for k in times}
    init: dict[str, float] = {}
    for r in range(repeats):
        for k, st in variants.items():
            res = simulate_paraflow_raw(e, cond, seed=11, settings=st)
            times[k].append(float(np.median(res.seconds[1:])))
            cpu[k].append(float(np.median(res.cpu_seconds[1:])))
            init[k] = res.init_seconds
            print(f"round {r} {k}: {np.median(res.seconds[1:]):.3f} s/shower wall, "
                  f"{np.median(res.cpu_seconds[1:]):.3f} s CPU", flush=True)
        res = simulate_paraflow_raw(e, cond, seed=11, calorimeter=False)
        times["vacuum_crystals (profiling only)"].append(float(np.median(res.seconds[1:])))
        cpu["vacuum_crystals (profiling only)"].append(float(np.median(res.cpu_seconds[1:])))
    desc = {k: v.describe() for k, v in variants.items()}
    return {"n": n, "repeats": repeats, "energy_gev": energy_gev, "d_x0": 1.0, "b_cm": 70.0,
            "median_s_per_shower": {k: float(np.median(v)) for k, v in times.items()},
            "median_cpu_s_per_shower": {k: float(np.median(v)) for k, v in cpu.items()},
            "rounds_s_per_shower": times, "rounds_cpu_s_per_shower": cpu, "init_seconds": init, "settings": desc}


def _count_worker(settings, energies, seeds, conds, gun, env):  # runs in a spawned process
    """Steps per volume and tracks per particle of each shower (a Python stepping action: a
    load-independent measure of the work; the timing runs have no such action)."""
    os.environ.update(env)
    from caloflows.simulation.paraflow import ParaflowSimulation

    sim = ParaflowSimulation("gamma", settings=settings)
    g4 = sim.g4
    counts: dict = {}

    class Steps(g4.G4UserSteppingAction):
        def UserSteppingAction(self, step):  # noqa: N802
            vol = step.GetTrack().GetVolume().GetName()
            charged = step.GetTrack().GetDefinition().GetPDGCharge() != 0
            key = f"steps_{vol}_{'charged' if charged else 'neutral'}"
            counts[key] = counts.get(key, 0) + 1

    class Tracks(g4.G4UserTrackingAction):
        def PreUserTrackingAction(self, track):  # noqa: N802
            key = f"tracks_{track.GetDefinition().GetParticleName()}"
            counts[key] = counts.get(key, 0) + 1

    sa, ta = Steps(), Tracks()
    sim.run_manager.SetUserAction(sa)
    sim.run_manager.SetUserAction(ta)
    rows = []
    for e, sd, c, g in zip(energies, seeds, conds, gun):
        counts.clear()
        sim.shower(float(e), int(sd), float(c[0]), float(c[1]), (float(g[0]), float(g[1])))
        rows.append(dict(counts))
    return rows


def count_steps(n: int, energy_gev: float, names: list[str]) -> dict:
    """Mean steps per volume / tracks per particle per shower for each variant (same photons)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from caloflows.simulation.g4data import configure_geant4_data
    from caloflows.simulation.paraflow import PARAFLOW_Z, gun_positions_mm, shower_seeds

    data = configure_geant4_data(None, elements=PARAFLOW_Z)
    idx = np.arange(n)
    e, c = np.full(n, energy_gev * 1e3), np.tile([1.0, 70.0], (n, 1))
    variants = _variants()
    out = {}
    for k in names:
        with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as ex:
            rows = ex.submit(_count_worker, variants[k], e, shower_seeds(11, idx), c, gun_positions_mm(11, idx),
                             dict(data.env)).result()
        keys = sorted({x for r in rows for x in r})
        out[k] = {x: float(np.mean([r.get(x, 0) for r in rows])) for x in keys}
        out[k]["steps_total"] = float(sum(v for x, v in out[k].items() if x.startswith("steps_")))
        print(k, {x: round(v) for x, v in out[k].items() if x.startswith("steps_total") or "Crystal" in x}, flush=True)
    return {"n": n, "energy_gev": energy_gev, "d_x0": 1.0, "b_cm": 70.0, "mean_per_shower": out}


def _observables(r) -> dict:
    from caloflows.evaluation.paraflow import paraflow_observables
    from caloflows.simulation.paraflow import crop_window

    win, _ = crop_window(r.images)
    obs = paraflow_observables(win.reshape(len(win), -1).astype(np.float64))
    return {"w": obs["w"].astype(float), "R9": obs["R9"].astype(float), "n_clusters": obs["n_clusters"].astype(float),
            "E_sum_over_E_inc": r.images.reshape(len(win), -1).sum(1) / r.energies_mev,
            "converted": np.isfinite(r.conversion_z_mm).astype(float)}


def physics(n: int, candidates: list[str]) -> dict:
    from caloflows.simulation.energies import parse_energy, shower_energies_mev
    from caloflows.simulation.paraflow import (
        conversion_probability,
        parse_conditions,
        shower_conditions,
        simulate_paraflow_raw,
    )

    idx = np.arange(n)
    e = shower_energies_mev(parse_energy("U:20:100"), 5, idx)
    cond = shower_conditions(parse_conditions(None), 5, idx)
    variants = _variants()
    out: dict = {"n": n, "formula_conversion_mean": float(conversion_probability(cond[:, 0]).mean())}
    obs = {}
    for k in ["baseline", *candidates]:
        t = time.perf_counter()
        r = simulate_paraflow_raw(e, cond, seed=5, settings=variants[k])
        o = _observables(r)
        obs[k] = o
        row = {"settings": variants[k].describe(), "wall_s": time.perf_counter() - t,
               "median_s_per_shower": float(np.median(r.seconds)), "mean_s_per_shower": float(np.mean(r.seconds)),
               "mean_cpu_s_per_shower": float(np.mean(r.cpu_seconds)),
               "cpu_s_per_gev": float(np.sum(r.cpu_seconds) / (np.sum(e) / 1e3))}
        for name, v in o.items():
            row[name] = {"mean": float(np.nanmean(v)), "stat_error": float(np.nanstd(v) / np.sqrt(np.isfinite(v).sum()))}
        c = o["converted"]
        row["converted"]["pull_vs_formula"] = float((c.mean() - out["formula_conversion_mean"])
                                                    / max(np.sqrt(c.mean() * (1 - c.mean()) / n), 1e-12))
        for dname, m in (("d<1", cond[:, 0] < 1.0), ("d>=1", cond[:, 0] >= 1.0)):
            row[f"converted_{dname}"] = {"fraction": float(c[m].mean()),
                                         "formula": float(conversion_probability(cond[m, 0]).mean()),
                                         "stat_error": float(np.sqrt(c[m].mean() * (1 - c[m].mean()) / m.sum()))}
        if k != "baseline":
            row["difference_to_baseline"] = {}
            for name, v in o.items():
                dv = v - obs["baseline"][name]
                ok = np.isfinite(dv)
                row["difference_to_baseline"][name] = {
                    "mean": float(dv[ok].mean()), "paired_stat_error": float(dv[ok].std() / np.sqrt(ok.sum())),
                    "unpaired_stat_error": float(np.sqrt(np.nanvar(v) / n + np.nanvar(obs["baseline"][name]) / n))}
        out[k] = row
        print(k, json.dumps({n: row[n] for n in ("mean_cpu_s_per_shower", "w", "R9", "converted")}, default=float),
              flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-profile", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--energy", type=float, default=50.0, help="GeV of the profiling photons")
    ap.add_argument("--only", nargs="*", help="profile only these variants (and the baseline)")
    ap.add_argument("--n-count", type=int, default=0, help="photons for the step / track counts per variant")
    ap.add_argument("--n-physics", type=int, default=0)
    ap.add_argument("--candidates", nargs="*", default=[], help="variants to check against the baseline")
    ap.add_argument("--out", default="benchmarks/results/paraflow_g4_speed.json")
    args = ap.parse_args()
    res: dict = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 "load_before": os.getloadavg(), "affinity": sorted(os.sched_getaffinity(0))}
    if args.n_profile:
        res["profile"] = profile(args.n_profile, args.repeats, args.energy, args.only)
        _save(res, args.out)
    if args.n_count:
        res["counts"] = count_steps(args.n_count, args.energy, [k for k in _variants() if not args.only or k in
                                                                args.only or k == "baseline"])
        _save(res, args.out)
    if args.n_physics:
        res["physics"] = physics(args.n_physics, args.candidates)
    res["load_after"] = os.getloadavg()
    _save(res, args.out)
    print(json.dumps(res.get("profile", {}).get("median_cpu_s_per_shower", {}), indent=1))


if __name__ == "__main__":
    main()
