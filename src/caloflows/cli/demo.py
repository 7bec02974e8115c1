"""``caloflows demo``: the README's main jobs, the whole loop on the embedded default.

``--preset paraflow-quick`` runs the second main job instead, ParaFlow end to end
(:mod:`caloflows.cli.demo_paraflow`).  The default (CaloFlow):

1. simulate a Geant4 reference in the ``ds2-coarse`` layout (648 voxels) with discrete
   incident energies in powers of two (dataset-1 style): one training file and one
   independent held-out file (different seeds);
2. train a CaloFlow teacher (flow-I + MAF flow-II) on the training file;
3. distill the IAF student;
4. generate as many showers as the held-out reference, with its incident energies;
5. evaluate student vs Geant4 held-out, next to Geant4 vs Geant4 (two halves of the
   held-out file), and write the HTML report.

Each step is one call of :mod:`caloflows.api` (the same function the CLI command calls); a
step is skipped when its output exists (the model directory is asked which stages are done);
pass ``--force`` to start over.
Sizes come from ``--preset``: ``quick`` (< 20 min on 2 cores) or ``full`` (paper-size
flows, many more showers; for a GPU machine).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: sizes of the main job per preset
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"n_train": 3000, "n_reference": 2000, "energy": "pow2:1:16", "classifier_seeds": 1,
              "classifier_epochs": 30, "metrics": "hist,corr,fpd,kpd,prdc,cls-low,cls-logit,cls-high"},
    "full": {"n_train": 70000, "n_reference": 30000, "energy": "pow2:1:64", "classifier_seeds": 5,
             "classifier_epochs": 50, "metrics": "all"},
    # ParaFlow (caloflows.cli.demo_paraflow): 3200 Geant4 photons of 20-100 GeV at 0.27-0.45 s each per
    # worker on a free core (measured CPU time with the 2 mm cut / older unloaded wall time; README)
    # -> 7-12 min with 2 workers; training, generation and evaluation ~4-6 min
    "paraflow-quick": {"n_train": 2000, "n_reference": 800, "n_band": 400, "n_grid": 500, "energy": "U:20:100",
                       "classifier_seeds": 1, "classifier_epochs": 30, "seed": 4,
                       "metrics": "paraflow,hist,cls-low,cls-high"},
}


def register(sub) -> None:
    p = sub.add_parser("demo", help="the main job: simulate -> train -> distill -> generate -> evaluate",
                       description=__doc__)
    p.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    p.add_argument("--workdir", default="runs/demo", help="where data, model and report go (default runs/demo)")
    p.add_argument("--n-train", type=int, help="override the preset's number of training showers")
    p.add_argument("--n-reference", type=int, help="override the preset's number of held-out showers")
    p.add_argument("--n-band", type=int, help="paraflow presets: override the number of held-out showers in the band")
    p.add_argument("--energy", help="paraflow presets: override the incident-energy spec (default U:20:100)")
    p.add_argument("--epochs", type=int, help="paraflow presets: override the teacher's and student's epochs")
    p.add_argument("--jobs", type=int, default=None, help="Geant4 worker processes (default: all cores)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--force", action="store_true", help="redo every step even if its output exists")
    p.set_defaults(func=run)


def _step(name: str, fn: Callable[[], Any], done: bool, log: list) -> None:
    if done:
        print(f"== {name}: already done, skipped", flush=True)
        log.append({"step": name, "skipped": True})
        return
    print(f"== {name}", flush=True)
    t = time.perf_counter()
    fn()
    dt = time.perf_counter() - t
    log.append({"step": name, "seconds": round(dt, 1)})
    print(f"== {name}: done in {dt:.0f} s", flush=True)


def _stage_done(model_dir: Path, stage: str) -> bool:
    """Ask the model directory whether ``stage`` is complete."""
    from ..errors import CaloflowsError
    from ..models import load_model

    if not (model_dir / "config.json").exists():
        return False
    try:
        return load_model(model_dir).stage_done(stage)
    except CaloflowsError:
        return False


def run(args: Any) -> int:
    from .. import api
    from ..errors import UsageError
    from .evaluate import summary_lines

    cfg = dict(PRESETS[args.preset])
    for key in ("n_train", "n_reference", "n_band", "epochs"):
        v = getattr(args, key, None)
        if v is not None and v < 1:
            raise UsageError(f"--{key.replace('_', '-')} must be at least 1, got {v}")
    if args.n_train:
        cfg["n_train"] = args.n_train
    if args.n_reference:
        cfg["n_reference"] = args.n_reference
    if args.preset.startswith("paraflow"):
        from .demo_paraflow import run_paraflow

        if args.n_band:
            cfg["n_band"] = args.n_band
        if args.energy:
            cfg["energy"] = args.energy
        if args.epochs:
            cfg["epochs"] = cfg["student_epochs"] = args.epochs
        return run_paraflow(args, cfg)
    if args.n_band or args.energy or args.epochs:
        raise UsageError("--n-band, --energy and --epochs apply to the paraflow presets only")
    wd = Path(args.workdir)
    wd.mkdir(parents=True, exist_ok=True)
    train = wd / "geant4_train.h5"
    ref = wd / "geant4_reference.h5"
    model = wd / "model"
    gen = wd / "generated_student.h5"
    report = wd / "report"
    # --force redoes every step through the steps' own force (which replaces only files the steps
    # wrote: model files, a caloflows report), never by deleting directories here
    force = bool(args.force)
    log: list = []
    t0 = time.perf_counter()
    sim = {"geometry": "ds2-coarse", "particle": "e-", "energy": cfg["energy"], "jobs": args.jobs, "force": force}
    _step("simulate training set", lambda: api.simulate(n=cfg["n_train"], out=str(train), seed=1, **sim),
          train.exists() and not force, log)
    _step("simulate held-out reference", lambda: api.simulate(n=cfg["n_reference"], out=str(ref), seed=2, **sim),
          ref.exists() and not force, log)
    resume = (model / "config.json").exists() and not force  # an interrupted earlier run; --force starts over
    _step("train teacher", lambda: api.train("caloflow", str(train), str(model), geometry="ds2-coarse",
                                             preset=args.preset, device=args.device, resume=resume, force=force),
          _stage_done(model, "train") and not force, log)
    resume_student = (model / "checkpoints" / "flow2_student_last.pt").exists() and not force
    _step("distill student", lambda: api.distill(str(model), str(train), device=args.device, resume=resume_student,
                                                 force=force), _stage_done(model, "distill") and not force, log)
    _step("generate", lambda: api.generate(str(model), str(gen), energies_from=str(ref), variant="student",
                                           device=args.device, force=force), gen.exists() and not force, log)
    result: dict = {}

    def evaluate() -> None:
        from ..evaluation.classifier import ClassifierConfig

        result.update(api.evaluate(str(gen), str(ref), "ds2-coarse", out=str(report), metrics=cfg["metrics"],
                                   seeds=cfg["classifier_seeds"], device=args.device,
                                   classifier=ClassifierConfig(epochs=cfg["classifier_epochs"]),
                                   label="CaloFlow student", classifier_floor=True, force=force))

    _step("evaluate", evaluate, (report / "metrics.json").exists() and not force, log)
    if result:
        print("\n".join(summary_lines(result)))
    total = time.perf_counter() - t0
    (wd / "demo_log.json").write_text(json.dumps({"preset": args.preset, "config": cfg, "steps": log,
                                                  "total_seconds": round(total, 1)}, indent=1))
    print()
    print(f"caloflows demo ({args.preset}): {total / 60:.1f} min")
    print(f"report: {os.path.abspath(report / 'report.html')}")
    print(f"(every number next to its Geant4-vs-Geant4 floor; all numbers: {report / 'metrics.json'})")
    return 0
