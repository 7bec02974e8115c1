"""SuperCalo benchmark on Geant4 ds2 showers (issue 11; Pang, Raine, Shih, arXiv:2308.11700 tables III, V, VI).

One run, on a Geant4 ds2 training file and a held-out file (``--train``, ``--test``; the first
``--n-train`` / ``--n-test`` showers), trains (or, with ``--reuse``, loads from ``--workdir``)

* SuperCalo with coarse-graining choice A (1 r x 2 alpha x 5 z) and choice B (3 r x 4 alpha x 1 z)
  (``quick`` preset, every ``*_train`` schedule set to ``--epochs``, the layer-energy flows to
  ``--energy-epochs``; the coarse flow-II student is distilled too),
* L2LFlows and iCaloFlow (teachers + distilled IAF students; ``quick`` presets as in
  ``bench_l2lflows.py``)

on the same showers, and reports side by side, against the held-out Geant4 showers:

(a) **upsampling** of the *true* held-out coarse showers with A and B (table III; A gets the true
    fine layer energies), (b) the **full chain** E_inc -> FLOW-1 -> FLOW-2 (``--variant``: the coarse
    MAF teacher or IAF student) -> SUPERCALO, (c) **resampling** N = 1, 5, 10 (tables V/VI: n/N
    coarse showers, each upsampled N times); next to L2LFlows, the iCaloFlow student and Geant4 vs
    Geant4 (the two halves of the held-out set).

For every sample: low- and high-level classifier AUC and JSD (:func:`caloflows.evaluation.evaluate`,
``--cls-seeds`` runs, ``--cls-epochs``), FPD / KPD (x 1e3), the worst histogram separation powers,
the rho separation powers per coarse radial bin (eq. 3); for every generator: ms/shower at
``--batches`` (1 torch thread; resampling: batches of at least N), trainable parameters, training
seconds per epoch per network.  The JSON (``--out``) holds all of it and a ``table`` of one row per
sample; the table is also printed.

    # smoke run: 600 / 300 showers, 1 epoch, 1 classifier seed (FPD/KPD need >= 1452 reference showers: skipped)
    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/bench_supercalo.py --quick \
        --train /work/data/g4_train10k_ds2.h5 --test /work/data/g4_test6k_ds2.h5 --out smoke.json
    # the issue's run: 10k / 6k showers
    OMP_NUM_THREADS=2 python benchmarks/bench_supercalo.py --train g4_train10k_ds2.h5 --test g4_test6k_ds2.h5 \
        --n-train 10000 --n-test 6000 --epochs 10 --cls-seeds 3 --workdir WORK --out bench_supercalo.json
    # stop 17, one core per process: choice A with the quick preset's schedules (--epochs not given),
    # no student, generated with the 2 MeV cut of the other families' medium presets; then the
    # resampling factors on the same trained model (--reuse) on the other core
    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/bench_supercalo.py --train ... --test ... --choices A \
        --skip layerwise,speed,distill,floor --resample 1 --compile --metrics hist,cls-high,supercalo \
        --cls-epochs 30 --generation-set voxel_cut_mev=2 --workdir WORK --out a.json
    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/bench_supercalo.py ... --reuse --skip ...,upsample \
        --resample 5 10 --workdir WORK --out a_resampled.json

``--upsampler teacher student`` generates every SuperCalo row with the SUPERCALO MAF and with its
distilled IAF student (beyond the paper; distilled first, ``--set upsampler_student_train.*``, when the
model has none, also a ``--reuse``d one); the student's rows get the suffix ``_upstudent``:

    # stop 18: distil the student of the stop-17 model on 4000 showers, its fidelity rows, then speed
    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/bench_supercalo.py ... --n-train 4000 --choices A --reuse \
        --skip layerwise,distill,floor,speed --resample 1 10 --upsampler student \
        --set upsampler_student_train.epochs=3 --metrics hist,cls-high,supercalo --cls-seeds 1 --cls-epochs 30 \
        --generation-set voxel_cut_mev=2 --workdir WORK --out student.json
    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/bench_supercalo.py ... --reuse --skip layerwise,distill,floor,fidelity \
        --resample 1 5 10 --batches 100 1000 --upsampler teacher student --generation-set voxel_cut_mev=2 ...

Every option that changes what is trained or generated (``--set``, ``--generation-set``, ``--epochs``)
is recorded in the JSON's ``settings``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
METRICS = "hist,fpd,kpd,cls-low,cls-high,supercalo"
CHOICES = ("A", "B")


def log(*a) -> None:
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def _history(path: Path) -> dict:
    h = json.loads(path.read_text())
    return {"seconds_per_epoch": float(np.mean(h["seconds"])), "epochs": len(h["epoch"]),
            "best_val": float(np.min(h["val_loss"]))}


def _histories(d: Path) -> dict:
    """Seconds per epoch of every network trained in a model directory (and its sub-models)."""
    out = {}
    for p in sorted(d.rglob("history_*.json")):
        name = str(p.relative_to(d).with_suffix("")).replace("history_", "").replace(os.sep, ".")
        out[name] = _history(p)
    return out


def ms_per_shower(fn, n: int, min_seconds: float, max_reps: int = 20) -> dict:
    """Median ms/shower of ``fn()`` producing ``n`` showers (repeated for ``min_seconds``, after a warm-up)."""
    fn()
    times: list[float] = []
    t_all = time.perf_counter()
    while not times or (time.perf_counter() - t_all < min_seconds and len(times) < max_reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return {"batch": n, "ms_per_shower": 1e3 * statistics.median(times) / n, "reps": len(times)}


def evaluate_sample(gen, ref, a) -> dict:
    """Every metric of one generated sample against the held-out Geant4 showers (reduced to the summary)."""
    from caloflows.evaluation.api import EvaluationError, evaluate
    from caloflows.evaluation.classifier import ClassifierConfig
    from caloflows.io import ShowerData

    t = time.perf_counter()
    out: dict = {"n_generated": len(gen)}
    g = ShowerData(gen.incident_energies, gen.showers)
    kw = dict(seeds=a.cls_seeds, classifier=ClassifierConfig(epochs=a.cls_epochs), plots=False, seed=a.seed)
    try:
        r = evaluate(g, ref, "ds2", metrics=a.metrics, **kw)
    except EvaluationError as exc:  # e.g. too few showers for FPD/KPD: the rest, and why
        out["skipped"] = str(exc)
        r = evaluate(g, ref, "ds2", metrics=a.metrics.replace("fpd,", "").replace("kpd,", ""), **kw)
    out["evaluate_seconds"] = time.perf_counter() - t
    out["timing_s"] = r.get("timing_s", {})
    for k, v in r.get("classifiers", {}).items():
        out[k] = {x: v.get(x) for x in ("auc_mean", "auc_std", "jsd_mean", "jsd_std")}
    for k in ("fpd", "kpd"):
        if k in r:
            out[k] = {x: r[k][x] for x in ("value_x1e3", "error_x1e3", "reference_halves_x1e3")}
    h = r.get("histograms", {})
    sp = {k: v["separation_power"] for k, v in h.get("separation_power", {}).items()
          if v["separation_power"] is not None and np.isfinite(v["separation_power"])}
    worst = sorted(sp.items(), key=lambda kv: -kv[1])[:5]
    out["worst_separation_powers"] = [{"feature": k, "separation_power": v,
                                       "reference_halves": h["separation_power"][k]["reference_halves"]}
                                      for k, v in worst]
    out["mean_separation_power_by_kind"] = h.get("mean_separation_power_by_kind", {})
    sc = r.get("supercalo", {})
    out["rho_separation_power"] = {k: {"generated": v["separation_power"], "reference_halves": v["reference_halves"]}
                                   for k, v in sc.get("rho", {}).items()}
    out["f0_max_abs_diff"] = {k: v["f0_max_abs_diff"] for k, v in sc.get("rings", {}).items()}
    return out


def row(name: str, ev: dict, speed: list | None) -> dict:
    """One line of the side-by-side table."""
    g = lambda k, x="auc_mean": ev.get(k, {}).get(x)  # noqa: E731
    rho = ev.get("rho_separation_power", {})
    r = {"sample": name, "auc_low": g("cls-low"), "auc_high": g("cls-high"), "jsd_low": g("cls-low", "jsd_mean"),
         "jsd_high": g("cls-high", "jsd_mean"), "fpd_x1e3": g("fpd", "value_x1e3"), "kpd_x1e3": g("kpd", "value_x1e3"),
         "worst_sep": (ev["worst_separation_powers"][0]["feature"], ev["worst_separation_powers"][0]["separation_power"])
         if ev.get("worst_separation_powers") else None,
         "rho_sep": {k: v["generated"] for k, v in rho.items()}}
    for s in speed or []:
        r[f"ms_b{s['batch']}"] = s["ms_per_shower"]
    return r


def print_table(rows: list[dict]) -> None:
    f = lambda v: "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))  # noqa: E731
    cols = ["auc_low", "auc_high", "jsd_low", "jsd_high", "fpd_x1e3", "kpd_x1e3"]
    ms = sorted({k for r in rows for k in r if k.startswith("ms_b")}, key=lambda k: int(k[4:]))
    print(f"{'sample':34s} " + " ".join(f"{c:>9s}" for c in cols + ms) + "  worst S / rho S (max)")
    for r in rows:
        w = r.get("worst_sep")
        rho = max(r["rho_sep"].values()) if r.get("rho_sep") else None
        print(f"{r['sample']:34s} " + " ".join(f"{f(r.get(c)):>9s}" for c in cols + ms)
              + f"  {w[0] if w else '-'} {f(w[1]) if w else ''} / {f(rho)}")


def train_supercalo(choice: str, train: Path, work: Path, a) -> tuple:
    from caloflows.models.supercalo import SuperCalo, SuperCaloConfig

    d = work / f"supercalo_{choice}"
    distill = "distill" not in a.skip_set
    if a.reuse and (d / "config.json").exists():
        m = SuperCalo.load(d)
        if m.variant_ready("teacher") and (m.variant_ready("student") or not distill):
            log(f"SuperCalo {choice}: reused {d}")
            _distill_upsampler(m, train, d, a)
            return m, _histories(d), None
    cfg = SuperCaloConfig.preset("quick", "ds2").override([f"coarse_graining={choice}"])
    if a.epochs is not None:
        cfg = cfg.replace_train(epochs=a.epochs).override([f"coarse.student_train.epochs={max(1, a.epochs // 2)}"])
    if a.energy_epochs is not None:
        cfg = cfg.override([f"flow1_train.epochs={a.energy_epochs}", f"coarse.flow1_train.epochs={a.energy_epochs}"])
    if a.compile:
        cfg = cfg.replace_train(compile=True)
    cfg = cfg.override(a.set)
    m = SuperCalo("ds2", cfg)
    t = time.perf_counter()
    m.fit(train, d, progress=False)
    if distill:
        m.fit(train, d, stage="distill", progress=False)
    sec = time.perf_counter() - t
    log(f"SuperCalo {choice}: trained in {sec:.0f} s")
    _distill_upsampler(m, train, d, a)
    return m, _histories(d), sec


def _distill_upsampler(m, train: Path, d: Path, a) -> None:
    """``--upsampler student``: distil the SUPERCALO IAF student of a model that has none yet (its
    schedule from ``--set upsampler_student_train.*``, also for a reused model; its seconds per epoch
    land in the model's histories)."""
    if "student" not in a.upsampler or m.trained["up_student"]:
        return
    m.cfg = m.cfg.override([x for x in a.set if x.startswith("upsampler_student_train.")])
    if a.compile:
        m.cfg = m.cfg.replace_train(compile=True)
    t = time.perf_counter()
    m.fit(train, d, stage="distill", networks=("upsampler",), progress=True)
    log(f"SUPERCALO student of {d.name}: distilled in {time.perf_counter() - t:.0f} s")


def _epochs(**schedules: int | None) -> list[str]:
    """``NAME.epochs=E`` settings for the schedules given a number (None: the preset's)."""
    return [f"{k}.epochs={v}" for k, v in schedules.items() if v is not None]


def train_layerwise(train: Path, work: Path, a) -> dict:
    """L2LFlows and iCaloFlow as in bench_l2lflows.py (quick presets, --epochs)."""
    from caloflows.models.icaloflow import ICaloFlow, ICaloFlowConfig
    from caloflows.models.l2lflows import L2LFlows, L2LFlowsConfig
    from caloflows.models.settings import override_settings

    out = {}
    d = work / "l2lflows"
    t = time.perf_counter()
    try:
        if not a.reuse:
            raise FileNotFoundError
        l2l = L2LFlows.load(d)
    except Exception:  # noqa: BLE001 - not there / incomplete: train
        cfg = override_settings(L2LFlowsConfig.preset("quick", None).to_dict(),
                                _epochs(edf_train=a.energy_epochs, cf_train=a.epochs))
        L2LFlows("ds2", L2LFlowsConfig.from_dict(cfg)).train(train, d, progress=False)
        l2l = L2LFlows.load(d)
    out["l2lflows"] = (l2l, _histories(d), time.perf_counter() - t, {})
    log(f"L2LFlows ready ({time.perf_counter() - t:.0f} s)")
    d = work / "icaloflow"
    t = time.perf_counter()
    ic = None
    if a.reuse:
        try:
            ic = ICaloFlow.load(d)
            ic = ic if all(ic.trained.values()) else None
        except Exception:  # noqa: BLE001
            ic = None
    if ic is None:
        cfg = override_settings(ICaloFlowConfig.preset("quick", None).to_dict(),
                                _epochs(edf_train=a.energy_epochs, teacher_train=a.epochs,
                                        student_train=None if a.epochs is None else max(1, a.epochs // 2)))
        ic = ICaloFlow("ds2", ICaloFlowConfig.from_dict(cfg))
        ic.fit(train, d, progress=False)
        ic.fit(train, d, stage="distill", progress=False)
    out["icaloflow_student"] = (ic, _histories(d), time.perf_counter() - t, {"variant": "student"})
    log(f"iCaloFlow ready ({time.perf_counter() - t:.0f} s)")
    return out


def subset_file(src: str, n: int, dst: Path) -> Path:
    """The first ``n`` showers of ``src`` as a file of its own (training streams from it)."""
    from caloflows.io import read_showers, write_showers

    if dst.exists():
        return dst
    d = read_showers(src, geometry="ds2")
    if len(d) < n:
        raise SystemExit(f"{src}: has {len(d)} showers, fewer than --n-train {n}")
    write_showers(dst, d.incident_energies[:n], d.showers[:n], geometry="ds2", attrs={"source": str(src)})
    return dst


def save(res: dict, path: str) -> None:
    """Write the JSON atomically (also after every stage: a later failure keeps what was measured)."""
    from caloflows.io import atomic_output

    with atomic_output(path) as tmp:
        Path(tmp).write_text(json.dumps(res, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", required=True, help="Geant4 ds2 training file")
    p.add_argument("--test", required=True, help="held-out Geant4 ds2 file")
    p.add_argument("--n-train", type=int, default=10_000)
    p.add_argument("--n-test", type=int, default=6_000)
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs of every network but the energy flows (IAF students: half; default: the quick "
                        "preset's schedules)")
    p.add_argument("--energy-epochs", type=int, default=None,
                   help="epochs of the (cheap) layer-energy flows: SuperCalo FLOW-1, the coarse flow-I, the "
                        "L2LFlows/iCaloFlow energy flows (an undertrained FLOW-1 is slow to sample: its "
                        "rejection loop redraws; default: the quick preset's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="SuperCalo training setting on top of the quick preset and --epochs (repeatable), "
                        "e.g. coarse.flow2_train.epochs=40")
    p.add_argument("--generation-set", action="append", default=[], metavar="KEY=VALUE",
                   help="generation setting of every model (repeatable), e.g. voxel_cut_mev=2: the "
                        "threshold-aware cut at the MIP scale (issue 15)")
    p.add_argument("--compile", action="store_true", help="train every network through torch.compile")
    p.add_argument("--metrics", default=METRICS, help=f"evaluation metrics (default {METRICS})")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 600 / 300 showers, 1 epoch, 1 classifier seed of 5 epochs, batches 1 and 100")
    p.add_argument("--variant", choices=("teacher", "student"), default="teacher",
                   help="SuperCalo's coarse FLOW-2 in the full chain (default: the MAF teacher)")
    p.add_argument("--upsampler", nargs="+", choices=("teacher", "student"), default=["teacher"],
                   help="SUPERCALO network(s) to generate with, side by side: the MAF (paper) and/or its "
                        "distilled IAF student (distilled first if the model has none); rows of the "
                        "student get the suffix _upstudent")
    p.add_argument("--resample", type=int, nargs="+", default=[1, 5, 10])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 100, 1000])
    p.add_argument("--min-seconds", type=float, default=2.0, help="timing: repeat each call for this long (median)")
    p.add_argument("--cls-seeds", type=int, default=3)
    p.add_argument("--cls-epochs", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir")
    p.add_argument("--reuse", action="store_true", help="load the models already trained in --workdir")
    p.add_argument("--choices", nargs="+", default=list(CHOICES), help="SuperCalo coarse-grainings (default: A B)")
    p.add_argument("--skip", default="",
                   help="comma-separated parts to leave out: supercalo, upsample (table III), chain (full chain "
                        "and resampling), distill (the coarse IAF student; then --variant teacher), layerwise, "
                        "floor (Geant4 halves), fidelity (all evaluations: train/load and time only), speed")
    p.add_argument("--out", default="bench_supercalo.json")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    a = p.parse_args(argv)
    if os.path.exists(a.out) and not a.force:
        raise SystemExit(f"--out {a.out} exists (use --force to replace it)")
    if a.quick:
        a.n_train, a.n_test, a.epochs = min(a.n_train, 600), min(a.n_test, 300), 1
        a.energy_epochs = a.energy_epochs or 20
        a.cls_seeds, a.cls_epochs, a.min_seconds = 1, min(a.cls_epochs, 5), min(a.min_seconds, 0.3)
        a.batches = [b for b in a.batches if b <= 100] or [1]
    skip = a.skip_set = set(filter(None, a.skip.split(",")))
    if "distill" in skip and a.variant == "student":
        raise SystemExit("--skip distill needs --variant teacher (the student is what distillation makes)")
    for f in (a.train, a.test):
        if not os.path.exists(f):
            raise SystemExit(f"{f}: no such file")
    if os.path.abspath(a.out) in (os.path.abspath(a.train), os.path.abspath(a.test)):
        raise SystemExit(f"--out {a.out} is an input file")
    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    torch.set_num_threads(threads)
    from caloflows.io import ShowerData, read_showers

    work = Path(a.workdir or tempfile.mkdtemp(prefix="bench_supercalo_"))
    work.mkdir(parents=True, exist_ok=True)
    res: dict = {"settings": vars(a).copy(), "workdir": str(work), "load_start": os.getloadavg(),
                 "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                 "note": "smoke run: sizes/epochs far below the issue's (not its numbers)" if a.quick else ""}
    t_start = time.perf_counter()
    train = subset_file(a.train, a.n_train, work / f"train_{a.n_train}.h5")
    t = read_showers(a.test, geometry="ds2")
    if len(t) < a.n_test:
        raise SystemExit(f"{a.test}: has {len(t)} showers, fewer than --n-test {a.n_test}")
    test = ShowerData(np.asarray(t.incident_energies[:a.n_test]), np.asarray(t.showers[:a.n_test]))
    einc = np.asarray(test.incident_energies, dtype=np.float64)
    # generation energies in random order: with resampling, groups of N share the first row's E_inc, so
    # held-out files written in a repeating energy pattern (1, 2, 4, 8, 16 GeV, ...) must not be sampled
    # in file order (every N-th energy could be the same one)
    einc_mix = einc[np.random.default_rng(a.seed + 11).permutation(len(einc))]
    fine = np.asarray(test.showers, dtype=np.float64)
    log(f"data: {a.n_train} training showers ({train}), {len(test)} held-out; load {os.getloadavg()[0]:.1f}")
    ev: dict = {}
    models: dict = {}
    if not {"floor", "fidelity"} & skip:
        perm = np.random.default_rng(a.seed).permutation(len(test))
        h0, h1 = perm[: len(test) // 2], perm[len(test) // 2:]
        ev["geant4_halves"] = evaluate_sample(test.subset(h0), test.subset(h1), a)
        log("Geant4 vs Geant4 halves", json.dumps(row("geant4_halves", ev["geant4_halves"], None)))
    choices = () if "supercalo" in skip else tuple(a.choices)
    for choice in choices:
        m, hist, sec = train_supercalo(choice, train, work, a)
        m.with_generation_settings(a.generation_set)
        models[f"supercalo_{choice}"] = m
        res.setdefault("training", {})[f"supercalo_{choice}"] = {"seconds": sec, "networks": hist,
                                                                 "parameters": m.parameter_counts()}
        if "fidelity" in skip:
            continue
        for up_net in a.upsampler:
            m.cfg.up_student = up_net == "student"
            sfx = "_upstudent" if m.cfg.up_student else ""
            # (a) upsampling of the true held-out coarse showers (table III)
            if "upsample" not in skip:
                t0 = time.perf_counter()
                up = m.upsample(m.cmap.coarse_grain(fine), einc, seed=a.seed + 5,
                                layer_energies=m.geometry.layer_energies(fine))
                key = f"upsample_{choice}{sfx}"
                res.setdefault("generate_seconds", {})[key] = time.perf_counter() - t0
                ev[key] = evaluate_sample(up, test, a)
                log(key, json.dumps(row(key, ev[key], None)))
            # (b) full chain = N 1, (c) resampling
            for N in () if "chain" in skip else a.resample:
                t0 = time.perf_counter()
                g = m.sample_resampled(einc_mix, N, batch_size=1000, seed=a.seed + 7, variant=a.variant)
                key = f"supercalo_{choice}_{a.variant}_N{N}{sfx}"
                res.setdefault("generate_seconds", {})[key] = time.perf_counter() - t0
                ev[key] = evaluate_sample(g, test, a)
                log(key, json.dumps(row(key, ev[key], None)))
                res["fidelity"] = ev
                save(res, a.out)
        m.cfg.up_student = False
    if "layerwise" not in skip:
        for name, (m, hist, sec, kw) in train_layerwise(train, work, a).items():
            m.with_generation_settings(a.generation_set)
            models[name] = (m, kw)
            res.setdefault("training", {})[name] = {"seconds": sec, "networks": hist, "parameters": m.parameter_counts()}
            if "fidelity" in skip:
                continue
            t0 = time.perf_counter()
            g = m.sample(einc, batch_size=1000, seed=a.seed + 7, **kw)
            res.setdefault("generate_seconds", {})[name] = time.perf_counter() - t0
            ev[name] = evaluate_sample(g, test, a)
            log(name, json.dumps(row(name, ev[name], None)))
            res["fidelity"] = ev
            save(res, a.out)
    res["fidelity"] = ev
    speed: dict = {}
    if "speed" not in skip:  # 1 torch thread, same process, held-out energies
        torch.set_num_threads(1)
        res["load_speed_start"] = os.getloadavg()
        for choice, up_net in ((c, u) for c in choices for u in a.upsampler):
            m = models[f"supercalo_{choice}"]
            m.cfg.up_student = up_net == "student"
            sfx = "_upstudent" if m.cfg.up_student else ""
            c = m.cmap.coarse_grain(fine)
            L = m.geometry.layer_energies(fine)
            speed[f"upsample_{choice}{sfx}"] = [
                ms_per_shower(lambda b=b, m=m, c=c, L=L: m.upsample(c[:b], einc[:b], layer_energies=L[:b], seed=1,
                                                                    batch_size=b), b, a.min_seconds)
                for b in a.batches if b <= len(c)]
            for N in () if "chain" in skip else a.resample:
                key = f"supercalo_{choice}_{a.variant}_N{N}{sfx}"
                # batch b: b coarse showers per pass, as for N = 1, upsampled into b N fine showers
                # (before stop 23 a call made b fine showers, so the coarse pass at N = 10 had b / 10 rows)
                speed[key] = [ms_per_shower(lambda b=b, N=N, m=m: m.sample_resampled(np.resize(einc_mix, b * N), N,
                                                                                batch_size=b, seed=1,
                                                                                variant=a.variant), b * N,
                                            a.min_seconds) | {"batch": b, "fine_showers_per_call": b * N}
                              for b in a.batches]
                log(key, json.dumps(speed[key]))
                res["generation_ms_per_shower"] = speed
                save(res, a.out)
            m.cfg.up_student = False
        for name, v in models.items():
            if isinstance(v, tuple):
                m, kw = v
                speed[name] = [ms_per_shower(lambda b=b, m=m, kw=kw: m.sample(np.resize(einc_mix, b), batch_size=b, seed=1, **kw), b,
                                             a.min_seconds) for b in a.batches]
                log(name, json.dumps(speed[name]))
                res["generation_ms_per_shower"] = speed
                save(res, a.out)
        res["load_speed_end"] = os.getloadavg()
        torch.set_num_threads(threads)
    res["generation_ms_per_shower"] = speed
    res["table"] = [row(k, v, speed.get(k)) for k, v in ev.items()]
    res["seconds_total"] = time.perf_counter() - t_start
    res["load_end"] = os.getloadavg()
    print_table(res["table"])
    save(res, a.out)
    log(f"-> {a.out} ({res['seconds_total']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
