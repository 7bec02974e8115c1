"""``caloflows train KIND --data TRAIN.h5 --geometry NAME --out MODEL_DIR``: train a generator.

``KIND`` is one of :data:`caloflows.models.FAMILIES`; each family's extra options come from its
registry entry.  The work is :func:`caloflows.api.train`.
"""

from __future__ import annotations

import json
import time
from typing import Any


def register(sub: Any) -> None:
    from ..models import FAMILIES

    p = sub.add_parser("train", help="train a generator (caloflow, ...) on a shower file")
    models = p.add_subparsers(dest="model", metavar="MODEL", required=True)
    for kind, fam in FAMILIES.items():
        mp = models.add_parser(kind, help=fam.help)
        mp.add_argument("--data", required=True, help="training showers (CaloChallenge HDF5)")
        mp.add_argument("--geometry", required=True, help="geometry name (ds1-photons, ds2-coarse, ...) or binning XML")
        mp.add_argument("--out", required=True, help="model directory to create (or to resume)")
        mp.add_argument("--preset", default="quick",
                        help="model and training sizes: quick (default), full (the paper's), and for caloflow, "
                             "l2lflows and icaloflow medium (the best fidelity in about 1 hour of 2 CPU cores); an unknown "
                             "name is refused")
        mp.add_argument("--epochs", type=int, help="override the preset's number of epochs of every network, the "
                                                    "students' schedule that a later 'distill' uses included "
                                                    "('distill --epochs' overrides that again)")
        mp.add_argument("--device", default="cpu", help="cpu (default) or cuda")
        mp.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
        mp.add_argument("--compile", action="store_true",
                        help="train through torch.compile (about a minute of compilation per network; pays "
                             "for long trainings, see the README's training speed table)")
        mp.add_argument("--force", action="store_true",
                        help="replace the model files of an existing --out (other files are kept)")
        mp.add_argument("--seed", type=int, help="seed of the initialisation, data split, shuffling and noise")
        mp.add_argument("--exclude", action="append", metavar="NAME=LOW:HIGH",
                        help="hold out the training showers with condition NAME in [LOW, HIGH] (interpolation "
                             "test; recorded in config.json and applied by distill; repeatable: any band)")
        mp.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                        help="override one setting, e.g. flow2_hidden=128 or flow2_train.batch_size=500 (repeatable)")
        for o in fam.options:
            if o.kind == "flag":
                mp.add_argument(o.flag, dest=o.dest, action="store_true", help=o.help)
            elif o.kind == "list":
                mp.add_argument(o.flag, dest=o.dest, nargs="+", metavar="DIR", help=o.help)
            else:
                mp.add_argument(o.flag, dest=o.dest, type=float if o.kind == "float" else str, help=o.help)
        mp.set_defaults(func=run, family_options=[o.dest for o in fam.options])


def run(args: Any) -> int:
    from ..api import train

    t0 = time.time()
    summary = train(args.model, args.data, args.out, geometry=args.geometry, preset=args.preset, epochs=args.epochs,
                    seed=args.seed, overrides=args.set, device=args.device, resume=args.resume, force=args.force,
                    options={k: getattr(args, k) for k in args.family_options}, exclude=args.exclude,
                    compile=args.compile)
    print(f"trained {args.model} model in {time.time() - t0:.0f} s -> {args.out}")
    print(json.dumps(summary, indent=1, default=str))
    return 0
