"""``caloflows simulate``: Geant4 reference showers of the Par04 calorimeter.

    caloflows simulate --geometry ds2 --particle e- --energy 1:100 --n 200 --out x.h5
    caloflows simulate --geometry ds2,ds2-coarse --energy pow2:1:64 --n 700 --out run_{geometry}.h5
    caloflows simulate ... --seed 7 --shard 3/10     # one of 10 batch jobs; merge with `caloflows merge`
    caloflows simulate --detector paraflow --n 1000 --out pf.h5   # photons, U:20:100, d=0.5:1.5, b=50:90
    caloflows simulate --detector paraflow --condition d=1.0 --condition b=70 --store full --n 100 --out x.h5
"""

from __future__ import annotations

import sys
import time

from . import UserError


def register(sub) -> None:
    p = sub.add_parser(
        "simulate",
        help="simulate Par04 (W/Si) showers with Geant4 and write CaloChallenge HDF5 files",
        description=(
            "Simulate electron/positron/photon showers in the Par04 W/Si calorimeter with Geant4 "
            "(G4EmStandardPhysics_option1) and voxelise them into CaloChallenge geometries. "
            "Without official Geant4 data sets, approximate tables are generated once into "
            "$CALOFLOWS_G4DATA_CACHE (default ~/.cache/caloflows/g4data); files record which were used."
        ),
    )
    p.add_argument("--detector", default="par04", choices=["par04", "paraflow"],
                   help="par04: W/Si CaloChallenge calorimeter (default); paraflow: 24 x 24 PbWO4 crystals behind an "
                        "iron plate in a 4 T field (paraflow.txt), written as the 8 x 16 window (geometry paraflow-8x16)")
    p.add_argument("--geometry", default=None,
                   help="par04: ds2, ds3, ds2-coarse, or several separated by commas (same showers in each; default ds2)")
    p.add_argument("--particle", default=None, choices=["e-", "e+", "gamma"],
                   help="primary particle (default e- for par04, gamma for paraflow)")
    p.add_argument("--energy", default=None,
                   help="GeV: A:B log-uniform, U:A:B uniform, pow2:A:B powers of two in turn (dataset-1 style), "
                        "E fixed, or E1,E2,... in turn (default 1:100 for par04, U:20:100 for paraflow)")
    p.add_argument("--condition", action="append", default=None, metavar="NAME=A:B",
                   help="paraflow: plate thickness d (X0) and distance b (cm), uniform A:B per shower or a fixed "
                        "value; repeat for each (default d=0.5:1.5, b=50:90)")
    p.add_argument("--store", default="window", choices=["window", "full"],
                   help="paraflow: 'full' also keeps the 24 x 24 matrix as dataset showers_full (default window)")
    p.add_argument("--n", type=int, required=True, help="number of showers of the whole run (all shards)")
    p.add_argument("--out", required=True,
                   help="output HDF5 file; with several geometries '{geometry}' in it is replaced by the "
                        "name (else _<name> is added before the suffix)")
    p.add_argument("--seed", type=int, default=0, help="run seed: shower k depends only on (seed, k) (default 0)")
    p.add_argument("--shard", default=None, metavar="i/N", help="simulate only part i of N of the run")
    p.add_argument("--jobs", type=int, default=None, help="local worker processes (default: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--force", action="store_true", help="replace existing output files")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..api import simulate
    from ..simulation import SimulationError
    from ..simulation.energies import EnergySpecError

    t0 = time.time()
    try:
        paths = simulate(
            args.geometry, args.particle, args.energy, args.n, args.out,
            seed=args.seed, shard=args.shard, jobs=args.jobs,
            progress=False if args.no_progress else None, force=args.force,
            detector=args.detector, conditions=args.condition, store=args.store,
        )
    except (EnergySpecError, SimulationError) as exc:
        raise UserError(str(exc)) from None
    except ValueError as exc:
        raise UserError(str(exc)) from None
    except PermissionError as exc:
        raise UserError(f"{exc.filename}: permission denied") from None
    dt = time.time() - t0
    for p in paths:
        print(f"wrote {p}")
    print(f"simulated in {dt:.1f} s", file=sys.stderr)
    return 0
