"""Learning curve of a layer-by-layer family (L2LFlows / iCaloFlow): high-level AUC against training CPU-hours.

Issue 15 asks for AUC against training time for one L2LFlows setting per curve, with the
Geant4-vs-Geant4 line on the same plot.  An L2LFlows training is an hour of the 2-core machine, so
its points come from separate command-line runs (``caloflows train`` under ``/usr/bin/time -v``,
``caloflows generate``, ``caloflows evaluate --metrics hist,cls-high --seeds 3
--classifier-floor``); this script joins them.  Each point is ``LABEL=METRICS_JSON:TIME_LOGS``:
the evaluation's ``metrics.json`` and the ``/usr/bin/time -v`` logs of the training jobs
(several logs, joined by ``+``, for a training split over ``--layers`` jobs: their CPU times add
up).  A ``CURVE/`` prefix on the label groups points into one curve (one line per curve).

Writes a JSON table (AUC mean/std per point, CPU-hours, wall hours, the mean separation powers
of the feature families, the Geant4 floor) and, with ``--plot``, the figure::

    python benchmarks/plot_layerwise_curve.py \\
        "inputs in domain + cut/10 epochs=b14_cut05/metrics.json:fix_train.log" \\
        "inputs in domain + cut/25 epochs=e25_cut05/metrics.json:e25_a.log+e25_b.log" \\
        --out benchmarks/results/l2lflows_epochs_ds2_10k.json --plot l2lflows_epochs.png
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections import defaultdict
from pathlib import Path

FAMILIES = ("E_layer", "EC_r", "EC_eta", "EC_phi", "width_r", "width_eta", "width_phi", "sparsity", "voxel")


def time_log(path: Path) -> dict:
    """CPU (user + system) and wall seconds from a ``/usr/bin/time -v`` log."""
    text = path.read_text(errors="replace")
    cpu = 0.0
    for key in ("User time (seconds)", "System time (seconds)"):
        m = re.search(re.escape(key) + r":\s*([0-9.]+)", text)
        if m is None:
            raise SystemExit(f"{path}: no '{key}' line (not a /usr/bin/time -v log)")
        cpu += float(m.group(1))
    m = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\):\s*([0-9:.]+)", text)
    wall = 0.0
    if m:
        for part in m.group(1).split(":"):
            wall = wall * 60 + float(part)
    return {"cpu_s": cpu, "wall_s": wall}


def family_means(metrics: dict) -> dict:
    """Mean separation power per feature family (``E_layer/3`` -> ``E_layer``), as in the README tables."""
    sp = metrics["histograms"]["separation_power"]
    acc: dict[str, list[float]] = defaultdict(list)
    for name, v in sp.items():
        fam = name.split("/")[0]
        if fam in FAMILIES and v.get("separation_power") is not None:
            acc[fam].append(float(v["separation_power"]))
    return {f: sum(v) / len(v) for f, v in acc.items()}


def point(spec: str) -> tuple[str, str, dict]:
    label, _, rest = spec.partition("=")
    mfile, _, logs = rest.partition(":")
    if not (label and mfile and logs):
        raise SystemExit(f"{spec!r}: expected LABEL=METRICS_JSON:TIME_LOG[+TIME_LOG...]")
    curve, _, name = label.rpartition("/")
    try:
        m = json.loads(Path(mfile).read_text())
        cls = m["classifiers"]["cls-high"]
        m["histograms"]["separation_power"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"{mfile}: not a caloflows evaluate report with cls-high and histograms ({exc!r})") from None
    t = []
    for log in logs.split("+"):
        try:
            t.append(time_log(Path(log)))
        except OSError as exc:
            raise SystemExit(f"{log}: unreadable time log ({exc.strerror})") from None
    return curve or name, name, {
        "metrics": mfile, "auc_mean": cls["auc_mean"], "auc_std": cls["auc_std"],
        "auc_seeds": [r["auc"] for r in cls["runs"]],
        "floor_auc_mean": cls.get("reference_halves", {}).get("auc_mean"),
        "floor_auc_std": cls.get("reference_halves", {}).get("auc_std"),
        "training_cpu_hours": sum(x["cpu_s"] for x in t) / 3600,
        "training_wall_hours_longest_job": max(x["wall_s"] for x in t) / 3600,
        "mean_separation_power": family_means(m)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("points", nargs="+", help="[CURVE/]LABEL=METRICS_JSON:TIME_LOG[+TIME_LOG...]")
    p.add_argument("--out", type=Path, required=True, help="results JSON")
    p.add_argument("--plot", type=Path, help="AUC vs training CPU-hours (PNG)")
    p.add_argument("--force", action="store_true", help="replace existing --out / --plot files")
    a = p.parse_args(argv)
    for f in (a.out, a.plot):
        if f is not None and f.exists() and not a.force:
            raise SystemExit(f"{f}: exists; use --force to replace it")
    curves: dict[str, dict[str, dict]] = defaultdict(dict)
    for spec in a.points:
        c, name, d = point(spec)
        curves[c][name] = d
    res = {"curves": curves}
    tmp = a.out.with_name(a.out.name + ".part")
    tmp.write_text(json.dumps(res, indent=1) + "\n")
    os.replace(tmp, a.out)  # no half-written results file
    if a.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from plot_learning_curves import draw_curves

        fig, ax = plt.subplots(figsize=(6, 4))
        floors = [d["floor_auc_mean"] for pts in curves.values() for d in pts.values()
                  if d["floor_auc_mean"] is not None]
        draw_curves(ax, {c: [(n, d["training_cpu_hours"], d["auc_mean"], d["auc_std"]) for n, d in pts.items()]
                         for c, pts in curves.items()},
                    sum(floors) / len(floors) if floors else None)
        ax.set_xlabel("training CPU-hours (2-core machine)")
        ax.set_ylabel("high-level classifier AUC (3 seeds)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        part = a.plot.with_name(a.plot.name + ".part.png")
        fig.savefig(part, dpi=120)
        os.replace(part, a.plot)
    print(json.dumps({c: {n: round(d["auc_mean"], 3) for n, d in pts.items()} for c, pts in curves.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
