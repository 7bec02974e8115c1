"""``caloflows distill MODEL_DIR --data TRAIN.h5``: train the fast student of a trained teacher.

For CaloFlow: the IAF version of flow-II, by probability density distillation (x- and z-loss).
"""

from __future__ import annotations

import json
import time

from . import UserError


def register(sub) -> None:
    p = sub.add_parser("distill", help="distill the fast IAF student from a trained teacher")
    p.add_argument("model_dir", metavar="MODEL_DIR", help="model directory written by 'caloflows train'")
    p.add_argument("--data", required=True, help="training showers (CaloChallenge HDF5)")
    p.add_argument("--epochs", type=int, help="override the preset's number of student epochs")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--resume", action="store_true", help="continue an interrupted distillation")
    p.add_argument("--force", action="store_true", help="replace an existing student")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..models import model_module
    from ..training.checkpoint import ModelDirError, read_model_config

    if args.epochs is not None and args.epochs < 1:
        raise UserError("--epochs must be at least 1")
    from ..outputs import check_student_free

    check_student_free(args.model_dir, resume=args.resume, force=args.force)
    t0 = time.time()
    try:
        kind = read_model_config(args.model_dir)["kind"]
        mod = model_module(kind)
        if not hasattr(mod, "distill_from_args"):
            raise UserError(f"{args.model_dir}: a {kind!r} model has no student to distill")
        summary = mod.distill_from_args(args)
    except (ModelDirError, ValueError, FloatingPointError) as exc:
        if type(exc).__name__ in ("ShowerFileError", "GeometryError"):
            raise
        raise UserError(str(exc)) from None
    print(f"distilled student in {time.time() - t0:.0f} s -> {args.model_dir}")
    print(json.dumps(summary, indent=1))
    return 0
