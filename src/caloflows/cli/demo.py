"""``caloflows demo``: the README's main job, the whole loop on the embedded default.

1. simulate a Geant4 reference in the ``ds2-coarse`` layout (648 voxels) with discrete
   incident energies in powers of two (dataset-1 style): one training file and one
   independent held-out file (different seeds);
2. train a CaloFlow teacher (flow-I + MAF flow-II) on the training file;
3. distill the IAF student;
4. generate as many showers as the held-out reference, with its incident energies;
5. evaluate student vs Geant4 held-out, next to Geant4 vs Geant4 (two halves of the
   held-out file), and write the HTML report.

Each step is the same CLI command a user would type; steps whose output already exists
are skipped (delete the work directory, or pass ``--force``, to start over).
Sizes come from ``--preset``: ``quick`` (< 20 min on 2 cores) or ``full`` (paper-size
flows, many more showers; for a GPU machine).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from . import UserError

#: sizes of the main job per preset
PRESETS = {
    "quick": {"n_train": 3000, "n_reference": 2000, "energy": "pow2:1:16", "classifier_seeds": 1,
              "classifier_epochs": 30, "metrics": "hist,corr,fpd,kpd,prdc,cls-low,cls-logit,cls-high"},
    "full": {"n_train": 70000, "n_reference": 30000, "energy": "pow2:1:64", "classifier_seeds": 5,
             "classifier_epochs": 50, "metrics": "all"},
}


def register(sub) -> None:
    p = sub.add_parser("demo", help="the main job: simulate -> train -> distill -> generate -> evaluate",
                       description=__doc__)
    p.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    p.add_argument("--workdir", default="runs/demo", help="where data, model and report go (default runs/demo)")
    p.add_argument("--n-train", type=int, help="override the preset's number of training showers")
    p.add_argument("--n-reference", type=int, help="override the preset's number of held-out showers")
    p.add_argument("--jobs", type=int, default=None, help="Geant4 worker processes (default: all cores)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--force", action="store_true", help="redo every step even if its output exists")
    p.set_defaults(func=run)


def _step(name: str, argv: list[str], done: Path, force: bool, log: list) -> None:
    from . import main

    if done.exists() and not force:
        print(f"== {name}: {done} exists, skipped", flush=True)
        log.append({"step": name, "skipped": True})
        return
    print(f"== {name}: caloflows {' '.join(argv)}", flush=True)
    t = time.perf_counter()
    rc = main(argv)
    dt = time.perf_counter() - t
    log.append({"step": name, "seconds": round(dt, 1), "argv": argv})
    if rc != 0:
        raise UserError(f"demo step '{name}' failed (exit {rc}); see the message above")
    print(f"== {name}: done in {dt:.0f} s", flush=True)


def run(args) -> int:
    cfg = dict(PRESETS[args.preset])
    if args.n_train:
        cfg["n_train"] = args.n_train
    if args.n_reference:
        cfg["n_reference"] = args.n_reference
    wd = Path(args.workdir)
    wd.mkdir(parents=True, exist_ok=True)
    train = wd / "geant4_train.h5"
    ref = wd / "geant4_reference.h5"
    model = wd / "model"
    gen = wd / "generated_student.h5"
    report = wd / "report"
    # --force redoes every step through the steps' own --force (which replaces only files the
    # commands wrote: model files, a caloflows report), never by deleting directories here
    force = ["--force"] if args.force else []
    jobs = [] if args.jobs is None else ["--jobs", str(args.jobs)]
    dev = ["--device", args.device]
    log: list = []
    t0 = time.perf_counter()
    sim = ["simulate", "--geometry", "ds2-coarse", "--particle", "e-", "--energy", cfg["energy"], *jobs, *force]
    _step("simulate training set", [*sim, "--n", str(cfg["n_train"]), "--seed", "1", "--out", str(train)],
          train, args.force, log)
    _step("simulate held-out reference", [*sim, "--n", str(cfg["n_reference"]), "--seed", "2", "--out", str(ref)],
          ref, args.force, log)
    # an interrupted earlier run is resumed; --force starts over
    resume = ["--resume"] if (model / "config.json").exists() and not args.force else force
    _step("train teacher", ["train", "caloflow", *resume, "--data", str(train), "--geometry", "ds2-coarse", "--out",
                            str(model), "--preset", args.preset, *dev], model / "flow2_teacher.safetensors", args.force, log)
    _step("distill student", ["distill", str(model), "--data", str(train), *dev, *force], model / "flow2_student.safetensors",
          args.force, log)
    _step("generate", ["generate", str(model), "--energies", str(ref), "--student", "--out", str(gen), *dev, *force],
          gen, args.force, log)
    _step("evaluate", ["evaluate", str(gen), str(ref), "--geometry", "ds2-coarse", "--out", str(report),
                       "--metrics", cfg["metrics"], "--seeds", str(cfg["classifier_seeds"]),
                       "--epochs", str(cfg["classifier_epochs"]), "--classifier-floor", "--label",
                       "CaloFlow student", *dev, *force], report / "metrics.json", args.force, log)
    total = time.perf_counter() - t0
    (wd / "demo_log.json").write_text(json.dumps({"preset": args.preset, "config": cfg, "steps": log,
                                                  "total_seconds": round(total, 1)}, indent=1))
    print()
    print(f"caloflows demo ({args.preset}): {total / 60:.1f} min")
    print(f"report: {os.path.abspath(report / 'report.html')}")
    print("(the evaluate step above printed every number next to its Geant4-vs-Geant4 floor; "
          f"all numbers: {report / 'metrics.json'})")
    return 0
