"""``caloflows distill MODEL_DIR --data TRAIN.h5``: train the fast student of a trained teacher
(:func:`caloflows.api.distill`; CaloFlow / iCaloFlow: IAF students by probability density distillation)."""

from __future__ import annotations

import json
import time
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("distill", help="distill the fast IAF student from a trained teacher")
    p.add_argument("model_dir", metavar="MODEL_DIR", help="model directory written by 'caloflows train'")
    p.add_argument("--data", required=True, help="training showers (CaloChallenge HDF5)")
    p.add_argument("--epochs", type=int, help="override the preset's number of student epochs")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--resume", action="store_true", help="continue an interrupted distillation")
    p.add_argument("--compile", action="store_true", help="train the student through torch.compile")
    p.add_argument("--force", action="store_true", help="replace an existing student")
    p.set_defaults(func=run)


def run(args: Any) -> int:
    from ..api import distill

    t0 = time.time()
    summary = distill(args.model_dir, args.data, epochs=args.epochs, device=args.device, resume=args.resume,
                      force=args.force, compile=args.compile)
    print(f"distilled student in {time.time() - t0:.0f} s -> {args.model_dir}")
    print(json.dumps(summary, indent=1, default=str))
    return 0
