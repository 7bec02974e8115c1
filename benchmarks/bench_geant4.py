"""Geant4 speed reference: seconds per Par04 shower on this machine (foundation issue, sec. 4).

Later benchmarks quote every generator's speed-up against this number, measured in the
same run:

    from bench_geant4 import geant4_seconds_per_shower
    t_g4 = geant4_seconds_per_shower(10.0, n=10)      # seconds per 10 GeV electron shower

The time is the wall time of ``BeamOn(1)`` per shower in a single worker process (one
core; start-up -- geometry, physics tables -- excluded, and reported separately),
including the Python silicon scoring but not the voxelisation/writing.  Expected scale:
about 7 ms per GeV on one core (Geant4 EM showers scale linearly with energy).

    python benchmarks/bench_geant4.py                  # 1, 10, 100 GeV
    python benchmarks/bench_geant4.py --energies 1 10 --n 20 10
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

import numpy as np

__all__ = ["geant4_seconds_per_shower", "geant4_timings"]


def geant4_timings(energies_gev: Sequence[float], n: Sequence[int] | int = 5, particle: str = "e-",
                   seed: int = 0) -> dict:
    """Seconds per shower at each energy, all in one worker process (one core).

    Returns ``{"seconds_per_shower": {E: s}, "ms_per_gev": {E: ms}, "init_seconds": s,
    "tables": "official"|"approximate", "n": {E: n}}``.
    """
    from caloflows.simulation import shower_seeds
    from caloflows.simulation.runner import simulate_deposits

    energies_gev = [float(e) for e in energies_gev]
    ns = [int(n)] * len(energies_gev) if isinstance(n, int) else [int(x) for x in n]
    if len(ns) != len(energies_gev):
        raise ValueError("need one n per energy")
    e_mev = np.concatenate([np.full(k, e * 1e3) for e, k in zip(energies_gev, ns)])
    # one warm-up shower at the lowest energy so first-call costs are not timed
    e_all = np.concatenate([[min(energies_gev) * 1e3], e_mev])
    r = simulate_deposits(particle, e_all, shower_seeds(seed, np.arange(len(e_all))), keep_deposits=False)
    secs = r.seconds[1:]
    out = {"seconds_per_shower": {}, "ms_per_gev": {}, "n": {}, "init_seconds": r.init_seconds,
           "tables": r.tables, "particle": particle}
    o = 0
    for e, k in zip(energies_gev, ns):
        s = float(np.mean(secs[o:o + k]))
        out["seconds_per_shower"][e] = s
        out["ms_per_gev"][e] = 1e3 * s / e
        out["n"][e] = k
        o += k
    return out


def geant4_seconds_per_shower(energy_gev: float, n: int = 5, particle: str = "e-", seed: int = 0) -> float:
    """Mean Geant4 wall seconds per shower of ``energy_gev`` GeV on one core of this machine."""
    return geant4_timings([energy_gev], [n], particle=particle, seed=seed)["seconds_per_shower"][float(energy_gev)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--energies", type=float, nargs="+", default=[1.0, 10.0, 100.0], help="GeV")
    p.add_argument("--n", type=int, nargs="+", default=[40, 10, 3], help="showers per energy (one value or one per energy)")
    p.add_argument("--particle", default="e-")
    p.add_argument("--json", action="store_true", help="print JSON")
    a = p.parse_args(argv)
    n = a.n[0] if len(a.n) == 1 else a.n
    t = geant4_timings(a.energies, n, particle=a.particle)
    if a.json:
        print(json.dumps(t, indent=1))
        return 0
    print(f"Geant4 Par04 ({a.particle}, G4EmStandardPhysics_option1, {t['tables']} tables), one core, "
          f"start-up {t['init_seconds']:.2f} s")
    print(f"{'E [GeV]':>8} {'n':>4} {'s/shower':>10} {'ms/GeV':>8}")
    for e in a.energies:
        print(f"{e:8g} {t['n'][e]:4d} {t['seconds_per_shower'][e]:10.4f} {t['ms_per_gev'][e]:8.2f}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.exit(main())
