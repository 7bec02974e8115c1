"""``caloflows train MODEL --data TRAIN.h5 --geometry NAME --out MODEL_DIR``: train a generator.

``MODEL`` is one of :data:`caloflows.models.MODELS`; each model module implements
``train_from_args(args)``.  Adding a model there adds it here.
"""

from __future__ import annotations

import json
import os
import time

from . import UserError

PRESETS = ("quick", "full")


def register(sub) -> None:
    import importlib

    from ..models import MODEL_HELP, MODELS, TRAIN_OPTIONS

    p = sub.add_parser("train", help="train a generator (caloflow, ...) on a shower file")
    models = p.add_subparsers(dest="model", metavar="MODEL", required=True)
    for kind in MODELS:
        mp = models.add_parser(kind, help=MODEL_HELP.get(kind, kind))
        mp.add_argument("--data", required=True, help="training showers (CaloChallenge HDF5)")
        mp.add_argument("--geometry", required=True, help="geometry name (ds1-photons, ds2-coarse, ...) or binning XML")
        mp.add_argument("--out", required=True, help="model directory to create (or to resume)")
        mp.add_argument("--preset", choices=PRESETS, default="quick", help="model and training sizes (default: quick)")
        mp.add_argument("--epochs", type=int, help="override the preset's number of epochs")
        mp.add_argument("--device", default="cpu", help="cpu (default) or cuda")
        mp.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
        mp.add_argument("--force", action="store_true",
                        help="replace the model files of an existing --out (other files are kept)")
        mp.add_argument("--seed", type=int, help="seed of the data split, noise and initialisation")
        mp.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                        help="override one setting, e.g. flow2_hidden=128 or flow2_train.batch_size=500 (repeatable)")
        if kind in TRAIN_OPTIONS:  # model-specific options (e.g. l2lflows --layers)
            mod, fn = TRAIN_OPTIONS[kind].split(":")
            getattr(importlib.import_module(mod), fn)(mp)
        mp.set_defaults(func=run)


def run(args) -> int:
    from ..models import model_module
    from ..training.checkpoint import ModelDirError

    if args.epochs is not None and args.epochs < 1:
        raise UserError("--epochs must be at least 1")
    from ..outputs import check_model_dir, clear_model_dir

    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 checks and clears --out
    if main_rank:
        check_model_dir(args.out, [args.data, *(getattr(args, "gather", None) or [])], resume=args.resume,
                        force=args.force)
    if not getattr(args, "gather", None):
        from ..io import require_energy

        require_energy(args.data)
    if main_rank and args.force and not args.resume:
        clear_model_dir(args.out)
    t0 = time.time()
    try:
        summary = model_module(args.model).train_from_args(args)
    except (ModelDirError, ValueError, FloatingPointError) as exc:
        if type(exc).__name__ in ("ShowerFileError", "GeometryError"):
            raise
        raise UserError(str(exc)) from None
    print(f"trained {args.model} model in {time.time() - t0:.0f} s -> {args.out}")
    print(json.dumps(summary, indent=1))
    return 0
