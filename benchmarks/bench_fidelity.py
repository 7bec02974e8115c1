"""Fidelity study of CaloFlow on Geant4 ds2-coarse (issue 15): learning curves and defect hunting.

Each *run* trains one CaloFlow (flow-I + MAF teacher, optionally the distilled IAF student) with a
preset, a number of training showers and a *variant* (settings overrides), generates as many
showers as the held-out Geant4 file with its E_inc, and evaluates them against it (classifier
AUCs with several seeds, separation powers, the voxel-spectrum diagnostics of the issue).  The
Geant4-vs-Geant4 floor is measured in the same run on the two halves of the held-out file.  A
*post-processing-only* variant (``name@base``) reuses the model of run ``base`` and changes only
the generation settings (e.g. the threshold-aware cut), so it costs no training.

Variants (``VARIANTS``; extend with ``--variant NAME=KEY=VALUE,KEY=VALUE``):

* ``paper``  -- CaloFlow as published: U(0, 1 keV) noise, renormalise, then the 15.15 keV cut.
* ``b3``     -- the paper's model with the L2LFlows B.8-B.9 threshold-aware post-processing.
* ``cutT``   -- the paper's model, threshold-aware cut at T MeV (post-processing only).
* ``gapT``   -- empty voxels dequantised to U(0, T MeV) in training, threshold-aware cut at T.

Example (the issue-15 numbers in the README)::

    taskset -c 0,1 python benchmarks/bench_fidelity.py \\
        --train /data/g4_train10k_ds2-coarse.h5 --test /data/g4_test6k_ds2-coarse.h5 \\
        --runs paper:3000 b3@paper:3000 gap0.5:3000 --cls-seeds 3 --workdir /data/fid \\
        --out benchmarks/results/fidelity_2026-11-27.json

Training time is reported in CPU-hours (process CPU time of the training, all threads) next to
the wall time; the plot ``--plot`` shows high-level AUC against it, one point per run, with the
Geant4 halves as a line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

VARIANTS: dict[str, dict] = {
    "paper": {},
    "b3": {"voxel_cut_mev": 0.5 / 33.0},  # the geometry threshold (0.5 keV / sampling fraction 0.033)
}


def variant_settings(name: str, extra: dict[str, dict]) -> dict:
    """Settings overrides of a variant name (``paper``, ``b3``, ``cutT``, ``gapT`` or a ``--variant``)."""
    if name in extra:
        return extra[name]
    if name in VARIANTS:
        return VARIANTS[name]
    for prefix, keys in (("gap", ("empty_voxel_noise_mev",)), ("cut", ("voxel_cut_mev",))):
        if name.startswith(prefix):
            try:
                t = float(name[len(prefix):])
            except ValueError:
                break
            return {k: t for k in keys}
    raise SystemExit(f"bench_fidelity: unknown variant {name!r}")


POST_KEYS = ("voxel_cut_mev",)  # settings that change generation only


def parse_run(spec: str) -> dict:
    """``variant[@base]:n_train[:preset]`` -> dict."""
    parts = spec.split(":")
    if len(parts) not in (2, 3):
        raise SystemExit(f"bench_fidelity: run {spec!r} is not VARIANT[@BASE]:N_TRAIN[:PRESET]")
    name, base = (parts[0].split("@", 1) + [None])[:2]
    return {"spec": spec, "variant": name, "base": base, "n_train": int(parts[1]),
            "preset": parts[2] if len(parts) == 3 else "quick"}


def voxel_diagnostics(showers: np.ndarray, n_layers: int) -> dict:
    """The issue's numbers: fraction of non-zero voxels below 0.1 / 0.5 / 1 MeV, occupancy and
    zero fraction per layer."""
    nz = showers[showers > 0]
    per = showers.reshape(len(showers), n_layers, -1)
    return {"nonzero_fraction": float((showers > 0).mean()),
            **{f"nonzero_below_{t}MeV": float((nz < t).mean()) if len(nz) else float("nan") for t in (0.1, 0.5, 1.0)},
            "occupancy_per_layer": (per > 0).mean((0, 2)).round(5).tolist(),
            "empty_layer_fraction": (per.sum(2) == 0).mean(0).round(5).tolist()}


def summarise(r: dict) -> dict:
    """The numbers of one evaluation that the study reports."""
    out: dict = {}
    for k, v in r.get("classifiers", {}).items():
        out[k] = {"auc_mean": v["auc_mean"], "auc_std": v["auc_std"], "aucs": [x["auc"] for x in v["runs"]],
                  "best_epochs": [x["best_epoch"] for x in v["runs"]]}
    sp = r.get("histograms", {}).get("separation_power", {})
    if sp:
        vals = {k: v["separation_power"] for k, v in sp.items() if np.isfinite(v.get("separation_power", np.nan))}
        worst = sorted(vals.items(), key=lambda kv: -kv[1])[:8]
        out["worst_separation_powers"] = [[k, round(v, 4), round(sp[k].get("reference_halves", np.nan), 4)] for k, v in worst]
        out["separation_power"] = {k: round(v, 5) for k, v in vals.items()}
        out["flagged"] = r["histograms"].get("out_of_range_flagged", [])
    return out


def evaluate(gen, ref, seeds: int, epochs: int, metrics: str) -> dict:
    from caloflows.evaluation.api import evaluate as ev
    from caloflows.evaluation.classifier import ClassifierConfig

    t = time.time()
    r = ev(gen, ref, "ds2-coarse", metrics=metrics, seeds=seeds, classifier=ClassifierConfig(epochs=epochs, progress=False),
           plots=False)
    s = summarise(r)
    s["seconds"] = round(time.time() - t, 1)
    return s


def train_run(run: dict, train_file: Path, workdir: Path, settings: dict, student: bool, seed: int,
              overrides: tuple[str, ...] = ()) -> dict:
    """Train (or reuse) the model of one run; returns its directory and training cost."""
    import torch

    from caloflows.geometry import load_geometry
    from caloflows.io import read_showers
    from caloflows.models.caloflow import CaloFlow, CaloFlowConfig

    d = workdir / f"{run['variant']}_{run['n_train']}_{run['preset']}_s{seed}"
    info: dict = {"dir": str(d)}
    cfgfile = d / "config.json"
    flags = json.loads(cfgfile.read_text())["config"]["trained"] if cfgfile.exists() else {}
    trained = bool(flags.get("teacher"))
    if trained and (not student or flags.get("student")):
        info["reused"] = True
    else:
        g = load_geometry("ds2-coarse")
        data = read_showers(train_file)
        n = min(run["n_train"], len(data))
        data = data.subset(np.arange(n))
        cfg = CaloFlowConfig.preset(run["preset"], g).override([f"{k}={json.dumps(v)}" for k, v in settings.items()]
                                                               + list(overrides))
        cfg = cfg.replace_train(seed=seed)
        model = CaloFlow(g, cfg)
        c0, t0 = time.process_time(), time.time()
        if not trained:
            model.fit(data, d, progress=False)
        else:
            model = CaloFlow.load(d)
        info["train_cpu_s"], info["train_wall_s"] = time.process_time() - c0, time.time() - t0
        if student:
            c0, t0 = time.process_time(), time.time()
            model.fit(data, d, stage="distill", progress=False)
            info["distill_cpu_s"], info["distill_wall_s"] = time.process_time() - c0, time.time() - t0
        info["threads"] = torch.get_num_threads()
        info["n_train"] = n
    for name in ("flow1", "flow2_teacher", "flow2_student"):
        f = d / f"history_{name}.json"
        if f.exists():
            h = json.loads(f.read_text())
            info[name] = {"epochs": len(h["epoch"]), "seconds": round(float(np.sum(h["seconds"])), 1),
                          "val_loss_first": h["val_loss"][0], "val_loss_best": float(np.min(h["val_loss"]))}
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", required=True, type=Path, help="Geant4 ds2-coarse training file")
    p.add_argument("--test", required=True, type=Path, help="Geant4 ds2-coarse held-out file (>= 5k showers)")
    p.add_argument("--runs", nargs="*", default=[], help="VARIANT[@BASE]:N_TRAIN[:PRESET] ...")
    p.add_argument("--variant", action="append", default=[], help="NAME=KEY=VALUE[,KEY=VALUE] extra variant")
    p.add_argument("--workdir", type=Path, required=True, help="model directories (reused when trained)")
    p.add_argument("--student", action="store_true", help="also distil and evaluate the IAF student")
    p.add_argument("--evaluate", default="teacher,student", help="which of teacher,student to evaluate")
    p.add_argument("--cls-seeds", type=int, default=3)
    p.add_argument("--cls-epochs", type=int, default=30)
    p.add_argument("--metrics", default="hist,cls-high,cls-low")
    p.add_argument("--low-seeds", type=int, default=1, help="seeds of cls-low (the costlier classifier)")
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="settings override for every run (e.g. flow2_train.epochs=2 for a smoke run)")
    p.add_argument("--floor", action="store_true", help="measure the Geant4 halves floor of the held-out file")
    p.add_argument("--train-only", action="store_true", help="train the runs' models, evaluate nothing")
    p.add_argument("--threads", type=int, default=2, help="torch threads for training and classifiers "
                   "(sampling always uses 1: the sequential MAF inverse is faster single-threaded)")
    p.add_argument("--out", type=Path, required=True, help="results JSON (updated after every run)")
    p.add_argument("--plot", type=Path, help="AUC vs training CPU-hours plot (PNG)")
    a = p.parse_args(argv)

    import torch

    from caloflows.io import ShowerData, read_showers
    from caloflows.models.caloflow import CaloFlow

    torch.set_num_threads(a.threads)
    extra = {}
    for v in a.variant:
        name, _, kv = v.partition("=")
        extra[name] = {k: json.loads(x) for k, x in (item.split("=", 1) for item in kv.split(","))}
    a.workdir.mkdir(parents=True, exist_ok=True)
    if a.train_only:
        for spec in a.runs:
            run = parse_run(spec)
            base = run["base"] or run["variant"]
            info = train_run({**run, "variant": base}, a.train, a.workdir, variant_settings(base, extra), a.student,
                             a.seed, tuple(a.set))
            print(spec, "trained", {k: v for k, v in info.items() if k.endswith("_s")}, flush=True)
        return 0
    test = read_showers(a.test)
    res = json.loads(a.out.read_text()) if a.out.exists() else {}
    res.update({"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPU cores, {platform.processor() or 'cpu'}",
                "train_file": str(a.train), "test_file": str(a.test), "n_test": len(test),
                "overrides": a.set, "classifier": {"seeds_high": a.cls_seeds, "seeds_low": a.low_seeds, "epochs": a.cls_epochs}})
    res.setdefault("runs", {})
    res["geant4_test"] = voxel_diagnostics(np.asarray(test.showers), 9)

    def save() -> None:
        tmp = a.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(res, indent=1))
        tmp.replace(a.out)

    def ev(gen) -> dict:
        out = {}
        ms = a.metrics.split(",")
        hi = [m for m in ms if m != "cls-low"]
        out.update(evaluate(gen, test, a.cls_seeds, a.cls_epochs, ",".join(hi)))
        if "cls-low" in ms:
            out.update({k: v for k, v in evaluate(gen, test, a.low_seeds, a.cls_epochs, "cls-low").items() if k == "cls-low"})
        return out

    if a.floor and "geant4_halves" not in res:
        h = len(test) // 2
        A = ShowerData(test.incident_energies[:h], test.showers[:h])
        B = ShowerData(test.incident_energies[h:2 * h], test.showers[h:2 * h])
        r = {}
        r.update(evaluate(A, B, a.cls_seeds, a.cls_epochs, ",".join(m for m in a.metrics.split(",") if m != "cls-low")))
        if "cls-low" in a.metrics:
            r["cls-low"] = evaluate(A, B, a.low_seeds, a.cls_epochs, "cls-low")["cls-low"]
        r["note"] = f"Geant4 vs Geant4: two halves of the held-out file ({h} vs {h} showers)"
        res["geant4_halves"] = r
        save()
        print("geant4 halves", {k: v["auc_mean"] for k, v in r.items() if isinstance(v, dict) and "auc_mean" in v}, flush=True)

    for spec in a.runs:
        run = parse_run(spec)
        base = run["base"] or run["variant"]
        settings = variant_settings(base, extra)
        post = variant_settings(run["variant"], extra) if run["base"] else {}
        if any(k not in POST_KEYS for k in post):
            raise SystemExit(f"bench_fidelity: {spec}: only {POST_KEYS} can change without training")
        entry = res["runs"].get(spec, {})
        entry.update({"variant": run["variant"], "base": base, "preset": run["preset"], "settings": {**settings, **post}})
        torch.manual_seed(a.seed)
        entry["training"] = train_run({**run, "variant": base}, a.train, a.workdir, settings, a.student, a.seed,
                                     tuple(a.set))
        model = CaloFlow.load(entry["training"]["dir"])
        for k, v in post.items():
            model.cfg = type(model.cfg).from_dict({**model.cfg.to_dict(), k: v})
        for variant in [v for v in a.evaluate.split(",") if v == "teacher" or a.student]:
            t0 = time.time()
            torch.set_num_threads(1)
            gen = model.sample(test.incident_energies, batch_size=2000, seed=a.seed + 17, variant=variant)
            torch.set_num_threads(a.threads)
            r = {"generate_s": round(time.time() - t0, 1), "voxels": voxel_diagnostics(gen.showers, 9)}
            r.update(ev(gen))
            entry[variant] = r
            print(spec, variant, {k: v["auc_mean"] for k, v in r.items() if isinstance(v, dict) and "auc_mean" in v},
                  flush=True)
            res["runs"][spec] = entry
            save()
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    save()
    if a.plot:
        plot(res, a.plot)
    return 0


def plot(res: dict, path: Path) -> None:
    """High-level AUC vs training CPU-hours, one marker per run (teacher and student)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for spec, e in res["runs"].items():
        t = e["training"]
        hist = {k: t[k]["seconds"] for k in ("flow1", "flow2_teacher", "flow2_student") if k in t}
        for v, m in (("teacher", "o"), ("student", "s")):
            if v in e and "cls-high" in e[v]:
                # training cost of what this variant needs (wall seconds of its epochs; the process
                # CPU time when this run trained it)
                sec = hist.get("flow1", 0.0) + hist.get("flow2_teacher", 0.0)
                if v == "student":
                    sec += hist.get("flow2_student", 0.0)
                c = e[v]["cls-high"]
                ax.errorbar(sec / 3600, c["auc_mean"], yerr=c["auc_std"], fmt=m, capsize=3, label=f"{spec} {v}")
    if "geant4_halves" in res and "cls-high" in res["geant4_halves"]:
        ax.axhline(res["geant4_halves"]["cls-high"]["auc_mean"], color="k", ls="--", label="Geant4 vs Geant4")
    ax.set_xlabel("training hours (wall, 2 shared cores)")
    ax.set_ylabel("high-level classifier AUC")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
