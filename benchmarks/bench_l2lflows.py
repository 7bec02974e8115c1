"""Benchmark of the layer-by-layer flows (issue 5): L2LFlows and iCaloFlow on Geant4 ds2 showers.

Steps (every number is written to ``--out`` JSON and printed):

1. Geant4 Par04 ds2 showers from ``caloflows simulate`` (or ``--data/--reference`` files):
   a training file and a held-out file.
2. Train L2LFlows (energy flow + 45 causal flows, streamed per layer from HDF5) and iCaloFlow
   (teachers, then the IAF students by distillation); training seconds per epoch per layer.
3. Generate as many showers as the held-out set, with its incident energies, and evaluate with
   :func:`caloflows.evaluation.evaluate` against it: separation powers of the high-level
   histograms, FPD/KPD, low-level and high-level classifier AUCs -- next to the
   Geant4-vs-Geant4 floor (classifiers: a disjoint Geant4 sample vs the held-out set; the
   histogram/FPD/KPD floors come from the two halves of the held-out set).
4. Generation ms/shower at batch 1, 100, 10000 for L2LFlows and the iCaloFlow student, and
   Geant4's seconds per shower for a sample of the same incident energies, in the same run
   (``benchmarks/bench_geant4.py``).
5. Peak memory (max RSS of a fresh process) of training one ds3 causal flow (L2LFlows) and the
   shared flow-3 of iCaloFlow (a small one) streamed from HDF5 (``cache_mb = 0``) against reading
   the same ds3 file into memory.

Stages (``--stages``) let the parts run as separate processes, e.g. the Geant4 floor while the
models still train, and the timings alone on an idle machine:

    OMP_NUM_THREADS=2 python benchmarks/bench_l2lflows.py --quick      # minutes on 2 cores
    python benchmarks/bench_l2lflows.py --n-train 20000 --n-test 10000 --epochs 30
    # models trained elsewhere (caloflows train ... into WORK/l2lflows and WORK/icaloflow):
    python benchmarks/bench_l2lflows.py --workdir WORK --reuse --data train.h5 --reference test.h5 \
        --stages fidelity --out fidelity.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def simulate(out: Path, n: int, seed: int, geometry: str = "ds2", energy: str = "1:100") -> Path:
    """Geant4 showers through the CLI (skipped if the file exists)."""
    if not out.exists():
        subprocess.run([sys.executable, "-m", "caloflows", "simulate", "--geometry", geometry, "--n", str(n),
                        "--out", str(out), "--seed", str(seed), "--energy", energy, "--no-progress"], check=True)
    return out


def time_generation(model, einc: np.ndarray, batch: int, min_seconds: float, **kw) -> dict:
    """ms per shower for one ``sample`` call of ``batch`` showers (repeated up to ``min_seconds``)."""
    e = np.resize(einc, batch)
    model.sample(e[: min(batch, 2)], batch_size=batch, seed=0, **kw)  # warm-up
    times = []
    t_all = time.perf_counter()
    while not times or (time.perf_counter() - t_all < min_seconds and len(times) < 20):
        t = time.perf_counter()
        model.sample(e, batch_size=batch, seed=len(times), **kw)
        times.append(time.perf_counter() - t)
    return {"batch": batch, "ms_per_shower": 1e3 * float(np.median(times)) / batch, "reps": len(times)}


def peak_rss_mb(code: str) -> float:
    """Peak resident memory (MB, ``VmHWM``) of a fresh Python process running ``code``.

    (``getrusage().ru_maxrss`` is not used: Linux carries it over from the parent across exec.)
    """
    wrapper = code + ("\nprint('MAXRSS', [int(l.split()[1]) for l in open('/proc/self/status') "
                      "if l.startswith('VmHWM')][0] / 1024)")
    r = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, check=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    return float([ln for ln in r.stdout.splitlines() if ln.startswith("MAXRSS")][-1].split()[1])


def ds3_memory(work: Path, n: int, epochs: int) -> dict:
    """Peak memory of streaming training of one ds3 causal flow vs loading the file."""
    from caloflows.geometry import load_geometry
    from caloflows.io import ShowerWriter
    from caloflows.toy_showers import toy_showers

    g = load_geometry("ds3")
    path = work / "ds3_toy.h5"
    if not path.exists():  # synthetic ds3 showers, written chunk by chunk (bounded memory here too)
        with ShowerWriter(path, g.n_voxels, attrs={"geometry": "ds3", "generator": "toy"}) as w:
            for a in range(0, n, 500):
                inc, sh = toy_showers(g, min(500, n - a), seed=a)
                w.append(inc, sh)
    base = peak_rss_mb("import torch, caloflows.models.l2lflows")
    full = peak_rss_mb(f"from caloflows.io import read_showers; d = read_showers({str(path)!r}, geometry='ds3')")
    train = f"""
import torch; torch.set_num_threads(1)
from dataclasses import asdict
from caloflows.models.l2lflows import L2LFlows, L2LFlowsConfig
from caloflows.training.loop import TrainConfig
tc = asdict(TrainConfig(epochs={epochs}, batch_size=256, base_lr=1e-4, max_lr=1e-3, val_fraction=0.1))
cfg = L2LFlowsConfig(cf_hidden=[64], embed_hidden=[256, 128], cf_transforms=2, edf_train=tc, cf_train=tc,
                     chunk_rows=512, cache_mb=0.0, std_rows=2000)
s = L2LFlows('ds3', cfg).train({str(path)!r}, {str(work / 'ds3_model')!r}, layers='20', energy=False, progress=False)
print('SEC', s['layers'][20]['seconds_per_epoch'], s['streaming'][20])
"""
    icf = f"""
import torch; torch.set_num_threads(1)
from dataclasses import asdict
from caloflows.models.icaloflow import ICaloFlow, ICaloFlowConfig
from caloflows.training.loop import TrainConfig
tc = asdict(TrainConfig(epochs={epochs}, batch_size=256, base_lr=1e-4, max_lr=1e-3, val_fraction=0.1))
cfg = ICaloFlowConfig(transforms=1, hidden=[32], student_hidden=[32], edf_train=tc, teacher_train=tc,
                      student_train=tc, chunk_rows=256, cache_mb=0.0, std_rows=2000)
s = ICaloFlow('ds3', cfg).fit({str(path)!r}, {str(work / 'ds3_icaloflow')!r}, progress=False, networks=('teacher3',))
print('SEC', s['teacher3']['seconds_per_epoch'])
"""
    t = time.perf_counter()
    stream = peak_rss_mb(train)
    t_l2l = time.perf_counter() - t
    t = time.perf_counter()
    stream_icf = peak_rss_mb(icf)
    return {"n_showers": n, "file_float32_mb": n * g.n_voxels * 4 / 2**20, "baseline_import_mb": base,
            "read_whole_file_peak_mb": full, "stream_train_layer20_peak_mb": stream,
            "stream_train_seconds": t_l2l, "icaloflow_stream_train_flow3_peak_mb": stream_icf,
            "icaloflow_stream_train_seconds": time.perf_counter() - t}


def _jsonable(o):
    return o.tolist() if hasattr(o, "tolist") else str(o)


def _complete(path: Path, kind: str) -> bool:
    from caloflows.models import load_model

    try:
        m = load_model(path)
    except Exception:  # noqa: BLE001 - anything missing: train again
        return False
    return kind != "icaloflow" or all(m.trained.values())


def _history(path: Path, name: str) -> dict:
    h = json.loads((path / f"history_{name}.json").read_text())
    return {"seconds": float(np.sum(h["seconds"])), "seconds_per_epoch": float(np.mean(h["seconds"])),
            "best_val": float(np.min(h["val_loss"])), "epochs": len(h["epoch"])}


def evaluate_pair(gen, ref, metrics: str, seeds: int, epochs: int) -> dict:
    from caloflows.evaluation.api import EvaluationError, evaluate
    from caloflows.evaluation.classifier import ClassifierConfig

    out = {}
    try:
        r = evaluate(gen, ref, "ds2", metrics=metrics, seeds=seeds, classifier=ClassifierConfig(epochs=epochs),
                     plots=False)
    except EvaluationError as exc:  # too few showers for FPD/KPD: run the rest, record why
        out["skipped"] = str(exc)
        metrics = ",".join(m for m in metrics.split(",") if m not in ("fpd", "kpd"))
        r = evaluate(gen, ref, "ds2", metrics=metrics, seeds=seeds, classifier=ClassifierConfig(epochs=epochs),
                     plots=False)
    for k, v in r.get("classifiers", {}).items():
        out[k] = {"auc_mean": v["auc_mean"], "auc_std": v["auc_std"]}
    for k in ("fpd", "kpd"):
        if k in r:
            out[k] = r[k]
    if "histograms" in r:
        h = r["histograms"]
        out["separation_powers"] = h.get("summary", h) if isinstance(h, dict) else h
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny run: few showers and epochs (minutes on 2 cores)")
    p.add_argument("--data", help="Geant4 ds2 training file (default: simulate)")
    p.add_argument("--reference", help="held-out Geant4 ds2 file (default: simulate)")
    p.add_argument("--n-train", type=int, default=20000)
    p.add_argument("--n-test", type=int, default=10000)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--student-epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=256, help="batch size of the causal flows / teachers / students")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 100, 10000])
    p.add_argument("--cls-epochs", type=int, default=50)
    p.add_argument("--cls-seeds", type=int, default=3)
    p.add_argument("--g4-n", type=int, default=10, help="Geant4 showers timed (drawn from the held-out energies)")
    p.add_argument("--ds3-n", type=int, default=3000, help="synthetic ds3 showers for the memory test (0: skip)")
    p.add_argument("--min-seconds", type=float, default=2.0)
    p.add_argument("--workdir", default=None)
    p.add_argument("--reuse", action="store_true", help="load models already trained in --workdir instead of training")
    p.add_argument("--stages", default="floor,fidelity,speed,ds3",
                   help="comma-separated parts to run: floor (Geant4 vs Geant4), fidelity (trains or loads the "
                        "models), speed, ds3 (default: all)")
    p.add_argument("--eval-threads", type=int, default=None,
                   help="torch threads for generation + evaluation of the fidelity stage (default: OMP_NUM_THREADS); "
                        "the speed stage always uses OMP_NUM_THREADS")
    p.add_argument("--out", default="bench_l2lflows.json")
    a = p.parse_args(argv)
    stages = set(a.stages.split(","))
    known = {"floor", "fidelity", "speed", "ds3"}
    if stages - known:
        p.error(f"unknown stages {sorted(stages - known)}")
    if a.quick:
        a.n_train, a.n_test, a.epochs = min(a.n_train, 400), min(a.n_test, 300), min(a.epochs, 3)
        a.batch_size = min(a.batch_size, 64)
        a.cls_epochs, a.cls_seeds, a.g4_n, a.ds3_n = min(a.cls_epochs, 10), 1, min(a.g4_n, 4), min(a.ds3_n, 1000)
        a.batches = [b for b in a.batches if b <= 1000] + ([1000] if any(b > 1000 for b in a.batches) else [])
    student_epochs = a.student_epochs or max(1, a.epochs // 2)
    import torch

    threads = int(os.environ.get("OMP_NUM_THREADS", "2"))
    torch.set_num_threads(threads)
    from caloflows.io import read_showers
    from caloflows.models.icaloflow import ICaloFlow, ICaloFlowConfig
    from caloflows.models.l2lflows import L2LFlows, L2LFlowsConfig
    from caloflows.models.settings import override_settings

    work = Path(a.workdir or tempfile.mkdtemp(prefix="bench_l2l_"))
    work.mkdir(parents=True, exist_ok=True)
    res: dict = {"settings": vars(a).copy(), "workdir": str(work)}
    if stages == {"ds3"}:  # memory only: no Geant4 data or models needed
        return finish(res, work, stages, a)
    t0 = time.perf_counter()
    train = Path(a.data) if a.data else simulate(work / "g4_train.h5", a.n_train, seed=1)
    ref = Path(a.reference) if a.reference else simulate(work / "g4_test.h5", a.n_test, seed=2)
    res["simulate_seconds"] = time.perf_counter() - t0
    test = read_showers(ref, geometry="ds2")
    tr = read_showers(train, geometry="ds2")
    res["n_train"], res["n_test"] = len(tr), len(test)
    print(f"data: {len(tr)} training, {len(test)} held-out Geant4 ds2 showers ({work})", flush=True)
    if "floor" in stages:  # a disjoint Geant4 sample (from the training file) vs the held-out set
        torch.set_num_threads(a.eval_threads or threads)
        m = min(len(tr), len(test))
        res["fidelity"] = {"geant4_floor": evaluate_pair(tr.subset(slice(0, m)), test, "cls-low,cls-high,fpd,kpd",
                                                         a.cls_seeds, a.cls_epochs)}
        print("geant4 floor", json.dumps({k: v for k, v in res["fidelity"]["geant4_floor"].items()
                                          if k.startswith("cls")}), flush=True)
        torch.set_num_threads(threads)
    if not stages & {"fidelity", "speed"}:
        return finish(res, work, stages, a)

    # ---------------------------------------------------------------- L2LFlows
    d = L2LFlowsConfig.preset("quick", None).to_dict()
    d = override_settings(d, [f"edf_train.epochs={a.epochs * 2}", f"cf_train.epochs={a.epochs}",
                              f"cf_train.batch_size={a.batch_size}"])
    l2l = L2LFlows("ds2", L2LFlowsConfig.from_dict(d))
    t = time.perf_counter()
    if a.reuse and _complete(work / "l2lflows", "l2lflows"):  # rerun of the later stages only
        l2l = L2LFlows.load(work / "l2lflows")
        s = {"layers": {i: _history(work / "l2lflows", f"causal_layer_{i:03d}") for i in range(45)},
             "energy_flow": _history(work / "l2lflows", "energy_flow")}
    else:  # with --reuse, layers already trained in the workdir are kept
        from caloflows.models.l2lflows import ENERGY_FILE, layer_file

        wd = work / "l2lflows"
        todo = [i for i in range(45) if not (a.reuse and (wd / layer_file(i)).exists())]
        s = l2l.train(train, wd, layers=todo, energy=not (a.reuse and (wd / ENERGY_FILE).exists()), progress=False)
        s["layers"].update({i: _history(wd, f"causal_layer_{i:03d}") for i in range(45) if i not in todo})
        s.setdefault("energy_flow", _history(wd, "energy_flow"))
        l2l = L2LFlows.load(wd)
    per_layer = [v["seconds_per_epoch"] for v in s["layers"].values()]
    res["l2lflows_train"] = {"seconds": time.perf_counter() - t, "epochs": a.epochs,
                             "seconds_per_epoch_per_layer_mean": float(np.mean(per_layer)),
                             "seconds_per_epoch_per_layer_max": float(np.max(per_layer)),
                             "energy_flow_seconds_per_epoch": s["energy_flow"]["seconds_per_epoch"],
                             "parameters": l2l.parameter_counts()}
    print("L2LFlows trained:", json.dumps(res["l2lflows_train"]), flush=True)

    # ---------------------------------------------------------------- iCaloFlow
    d = ICaloFlowConfig.preset("quick", None).to_dict()
    d = override_settings(d, [f"edf_train.epochs={a.epochs * 2}", f"teacher_train.epochs={a.epochs}",
                              f"student_train.epochs={student_epochs}", f"teacher_train.batch_size={a.batch_size}",
                              f"student_train.batch_size={a.batch_size}"])
    ic = ICaloFlow("ds2", ICaloFlowConfig.from_dict(d))
    t = time.perf_counter()
    if a.reuse and _complete(work / "icaloflow", "icaloflow"):
        ic = ICaloFlow.load(work / "icaloflow")
        s_ic = {k: _history(work / "icaloflow", k) for k in ("energy", "teacher2", "teacher3", "student2", "student3")}
    else:
        s_ic = ic.fit(train, work / "icaloflow", progress=False)
        s_ic.update(ic.fit(train, work / "icaloflow", stage="distill", progress=False))
    res["icaloflow_train"] = {"seconds": time.perf_counter() - t, "stages": s_ic, "parameters": ic.parameter_counts()}
    print("iCaloFlow trained:", json.dumps({k: v.get("seconds") for k, v in s_ic.items()}), flush=True)

    # ---------------------------------------------------------------- fidelity
    if "fidelity" in stages:
        torch.set_num_threads(a.eval_threads or threads)
        fidelity(res, work, l2l, ic, test, a)
        torch.set_num_threads(threads)

    # ---------------------------------------------------------------- speed
    if "speed" in stages:
        speed(res, l2l, ic, test, a, train, work)

    return finish(res, work, stages, a)


def finish(res: dict, work: Path, stages: set, a) -> int:
    """The ds3 memory stage, then the JSON report."""
    if "ds3" in stages and a.ds3_n > 0:
        res["ds3_streaming_memory"] = ds3_memory(work, a.ds3_n, epochs=1)
        print("ds3 memory", json.dumps(res["ds3_streaming_memory"]), flush=True)
    from caloflows.io import atomic_output

    with atomic_output(a.out) as tmp:
        Path(tmp).write_text(json.dumps(res, indent=1, default=_jsonable))
    print(f"-> {a.out}")
    return 0


def fidelity(res: dict, work: Path, l2l, ic, test, a) -> None:
    """Generated vs held-out Geant4; the generated files are kept in ``work``."""
    from caloflows.io import ShowerData, write_showers

    gens = {}
    for name, model, kw in (("l2lflows", l2l, {}), ("icaloflow_student", ic, {"variant": "student"})):
        t = time.perf_counter()
        out = model.sample(test.incident_energies, batch_size=1000, seed=5, **kw)
        e, x = out.incident_energies, out.showers
        gens[name] = ShowerData(e, x)
        res.setdefault("generate_seconds", {})[name] = time.perf_counter() - t
        write_showers(work / f"generated_{name}.h5", e, x, attrs={"geometry": "ds2", "generator": name})
    metrics = "hist,fpd,kpd,cls-low,cls-high"
    for name, g in gens.items():
        res.setdefault("fidelity", {})[name] = evaluate_pair(g, test, metrics, a.cls_seeds, a.cls_epochs)
        print(name, json.dumps({k: v for k, v in res["fidelity"][name].items() if k.startswith("cls")}), flush=True)


def speed(res: dict, l2l, ic, test, a, train: Path, work: Path) -> None:
    """Generation ms/shower per batch size and Geant4 s/shower for held-out energies, same run;
    seconds per epoch of one causal flow (layer 20, the trained model's settings) on an idle machine."""
    from caloflows.models.l2lflows import L2LFlows, L2LFlowsConfig
    from caloflows.models.settings import override_settings

    d = override_settings(l2l.cfg.to_dict(), ["cf_train.epochs=2"])
    s = L2LFlows("ds2", L2LFlowsConfig.from_dict(d)).train(train, work / "solo_layer20", layers=[20], energy=False,
                                                           progress=False)
    res["l2lflows_solo_layer20_seconds_per_epoch"] = s["layers"][20]["seconds_per_epoch"]
    print("solo layer 20:", res["l2lflows_solo_layer20_seconds_per_epoch"], "s/epoch", flush=True)
    for name, model, kw in (("l2lflows", l2l, {}), ("icaloflow_student", ic, {"variant": "student"})):
        res.setdefault("generation_ms_per_shower", {})[name] = [
            time_generation(model, test.incident_energies, b, a.min_seconds, **kw) for b in a.batches]
        print(name, json.dumps(res["generation_ms_per_shower"][name]), flush=True)
    sys.path.insert(0, HERE)
    try:
        from bench_geant4 import geant4_timings

        rng = np.random.default_rng(0)
        e_gev = rng.choice(test.incident_energies, size=a.g4_n, replace=False) / 1e3
        gt = geant4_timings(list(e_gev), 1)
        res["geant4"] = {"energies_gev": e_gev.tolist(),
                         "seconds_per_shower_mean": float(np.mean(list(gt["seconds_per_shower"].values()))),
                         "tables": gt["tables"]}
        print("geant4", json.dumps(res["geant4"]), flush=True)
    except Exception as exc:  # noqa: BLE001 - report, do not lose the other numbers
        res["geant4"] = {"error": f"{type(exc).__name__}: {exc}"}


if __name__ == "__main__":
    sys.exit(main())
