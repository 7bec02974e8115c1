"""``caloflows demo --preset paraflow-quick``: the second main job, ParaFlow end to end
(``paraflow.txt``; issue 12).

1. simulate Geant4 photons in the ParaFlow detector (PbWO4 crystals behind an iron plate of
   thickness d at distance b, 4 T field): a training file over d = 0.5:1.5 X0, b = 50:90 cm,
   an independent held-out file over the same ranges, and a held-out file inside the
   interpolation band d = 0.9:1.1 X0 (different seeds);
2. train the quick ParaFlow teacher with the band held out (``train --exclude d=0.9:1.1``) and
   distill its IAF student (the band is held out of distillation too);
3. generate with the student at the (E_inc, d, b) of both held-out files, and on a diagonal of
   (d, b) points (the model's trend of w, R9 and the cluster count);
4. evaluate: the ParaFlow report (paper sec. 4: observables per d / b bin, the fig. 9 (d, b)
   mean maps, average and example images) plus histograms and classifier AUCs on the full
   range, and the ParaFlow report inside the band (interpolation) -- each next to its
   Geant4-vs-Geant4 floor.

Every step is one :mod:`caloflows.api` call and is skipped when its output exists (``--force``
redoes them through the steps' own force).  Sizes (preset ``paraflow-quick``) are chosen from
the measured Geant4 cost (README, ParaFlow section) to fit 25 minutes on 2 free cores.
"""

from __future__ import annotations

import json
import os
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

#: the band held out of training and simulated on its own
BAND = "d=0.9:1.1"
#: where on the diagonal of the model's training (d, b) ranges it generates for its trend table
#: (0: both minima, 1: both maxima; the paper's ranges give (0.5, 50), (0.75, 60), ... (1.5, 90))
GRID_FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)
GEOMETRY = "paraflow-8x16"


def _grid_trend(model_dir: Path, n: int, seed: int) -> list[dict]:
    """Mean w, R9 and cluster count of ``n`` student showers at points of :data:`GRID_FRACTIONS`
    along the diagonal of the training ranges of (d, b)."""
    from ..conditions import Conditions
    from ..evaluation.paraflow import as_images, paraflow_observables
    from ..models import load_model
    from ..models.base import einc_draw

    model = load_model(model_dir)
    rng = np.random.default_rng(seed)
    rows = []
    spec = model.condition_spec
    lo, hi = (np.asarray([getattr(spec, a)[spec.names.index(n)] for n in ("d", "b")]) for a in ("low", "high"))
    for k, f in enumerate(GRID_FRACTIONS):
        d, b = (float(round(x, 4)) for x in lo + f * (hi - lo))
        e = einc_draw(model.einc_law(), n, rng)
        s = model.sample(Conditions(e, np.tile([d, b], (n, 1)), ("d", "b")), seed=seed + k, progress=False)
        o = paraflow_observables(as_images(np.asarray(s.showers, dtype=np.float64)))
        rows.append({"d": d, "b": b, "n": n, **{f"mean_{name}": float(np.nanmean(o[name]))
                                               for name in ("w", "R9", "n_clusters")}})
    return rows


def run_paraflow(args: Any, cfg: dict) -> int:
    """The ParaFlow demo (see the module docstring); ``cfg`` is the preset's sizes."""
    from .. import api
    from ..evaluation.api import MIN_CLASSIFIER_SHOWERS
    from ..evaluation.classifier import ClassifierConfig
    from .demo import _stage_done, _step
    from .evaluate import summary_lines

    wd = Path(args.workdir)
    wd.mkdir(parents=True, exist_ok=True)
    train, ref, band = wd / "geant4_train.h5", wd / "geant4_reference.h5", wd / "geant4_band.h5"
    model = wd / "model"
    gen_ref, gen_band = wd / "generated_reference.h5", wd / "generated_band.h5"
    report, report_band = wd / "report", wd / "report_band"
    force = bool(args.force)
    log: list = []
    t0 = time.perf_counter()
    sim = {"geometry": None, "particle": "gamma", "energy": cfg["energy"], "jobs": args.jobs, "force": force,
           "detector": "paraflow", "progress": None}
    full_range = ["d=0.5:1.5", "b=50:90"]
    for name, path, n, seed, cond in (("simulate training set", train, cfg["n_train"], 1, full_range),
                                      ("simulate held-out reference", ref, cfg["n_reference"], 2, full_range),
                                      (f"simulate held-out band {BAND}", band, cfg["n_band"], 3, [BAND, "b=50:90"])):
        _step(name, partial(api.simulate, n=n, out=str(path), seed=seed, conditions=cond, **sim),
              path.exists() and not force, log)
    resume = (model / "config.json").exists() and not force
    epochs = cfg.get("epochs")
    _step(f"train teacher (--exclude {BAND})",
          lambda: api.train("paraflow", str(train), str(model), geometry=GEOMETRY, preset="quick", epochs=epochs,
                            device=args.device, resume=resume, force=force, exclude=[BAND], seed=cfg["seed"]),
          _stage_done(model, "train") and not force, log)
    resume_student = (model / "checkpoints" / "student_last.pt").exists() and not force
    _step("distill student", lambda: api.distill(str(model), str(train), device=args.device, resume=resume_student,
                                                 force=force, epochs=cfg.get("student_epochs")),
          _stage_done(model, "distill") and not force, log)
    for name, out, src in (("generate at the held-out (E_inc, d, b)", gen_ref, ref),
                           ("generate in the band", gen_band, band)):
        _step(name, partial(api.generate, str(model), str(out), energies_from=str(src), variant="student",
                            device=args.device, force=force, seed=cfg["seed"], progress=False),
              out.exists() and not force, log)
    trend: list = []
    _step("generate on the (d, b) diagonal", lambda: trend.extend(_grid_trend(model, cfg["n_grid"], cfg["seed"])),
          False, log)
    metrics = cfg["metrics"]
    if cfg["n_reference"] // 2 < MIN_CLASSIFIER_SHOWERS:  # tiny runs: no classifier split possible
        metrics = ",".join(m for m in metrics.split(",") if not m.startswith("cls-"))
    band_metrics = ",".join(m for m in ("paraflow", "hist") if m in metrics.split(","))
    result: dict = {}
    band_result: dict = {}

    def evaluate() -> None:
        result.update(api.evaluate(str(gen_ref), str(ref), GEOMETRY, out=str(report), metrics=metrics,
                                   seeds=cfg["classifier_seeds"], device=args.device,
                                   classifier=ClassifierConfig(epochs=cfg["classifier_epochs"]),
                                   label="ParaFlow student", classifier_floor="cls-" in metrics, force=force,
                                   plots=cfg.get("plots", True)))

    def evaluate_band() -> None:
        band_result.update(api.evaluate(str(gen_band), str(band), GEOMETRY, out=str(report_band),
                                        metrics=band_metrics, label=f"ParaFlow student (trained without {BAND})",
                                        force=force, plots=cfg.get("plots", True)))

    _step("evaluate (full range)", evaluate, (report / "metrics.json").exists() and not force, log)
    _step(f"evaluate in the band {BAND}", evaluate_band, (report_band / "metrics.json").exists() and not force, log)
    total = time.perf_counter() - t0
    summary = {"preset": args.preset, "config": cfg, "band": BAND, "steps": log, "total_seconds": round(total, 1),
               "model_trend_on_diagonal": trend}
    for key, res in (("report_full_range", result), ("report_band", band_result)):
        pf = res.get("paraflow")
        if pf:
            summary[key] = {"separation_power": pf["separation_power"], "means": pf["means"],
                            "max_abs_relative_difference_mean_maps": {
                                n: pf.get("mean_maps", {}).get(n, {}).get("max_abs_relative_difference")
                                for n in ("w", "R9", "n_clusters")}}
    (wd / "demo_log.json").write_text(json.dumps(summary, indent=1, default=float))
    if result:
        print("\n".join(summary_lines(result)))
    for key, title in (("report_full_range", "held-out, full (d, b) range"),
                       ("report_band", f"held-out band {BAND} (interpolation)")):
        if key in summary:
            s = summary[key]
            print(f"ParaFlow observables, {title}:")
            for n, v in s["means"].items():
                print(f"  {n:<11} mean student {v['generated']:.4g}  Geant4 {v['reference']:.4g}  "
                      f"separation power {s['separation_power'][n]:.4f}")
            print("  largest |relative difference| of the (d, b) mean maps (fig. 9): " +
                  ", ".join(f"{n} {v:.1%}" if v is not None else f"{n} n/a"
                            for n, v in s["max_abs_relative_difference_mean_maps"].items()))
    if trend:
        print("model trend on the (d, b) diagonal (student): " +
              "; ".join(f"d={r['d']:g} b={r['b']:g}: w {r['mean_w']:.3f} R9 {r['mean_R9']:.3f}" for r in trend))
    print()
    print(f"caloflows demo ({args.preset}): {total / 60:.1f} min")
    print(f"report: {os.path.abspath(report / 'report.html')}  (fig. 9 maps: {report / 'paraflow_mean_maps.png'})")
    print(f"band report: {os.path.abspath(report_band / 'report.html')}")
    return 0
