"""Learning curves of every family: high-level classifier AUC against training hours (issue 15).

Each point of a curve was measured once, by a benchmark or a command-line run, and is stored in
a results JSON under ``benchmarks/results/``.  This script copies no number: a *points file*
names, for every point, the results file and the JSON paths of its AUC, its spread and the
training seconds to add up; the script reads them from there, writes the resolved table and
draws one panel per family, one line per curve, with the Geant4-vs-Geant4 AUC as a dashed line.

Points file::

    {"what": "...",
     "panels": [{"title": "CaloFlow teacher, ds2-coarse",
                 "floor": {"source": "fidelity_2026-11-27.json", "auc": "geant4_halves/cls-high/auc_mean"},
                 "points": [{"curve": "cut 0.5 MeV", "label": "3k, quick",
                             "source": "fidelity_2026-11-27.json",
                             "auc": "runs/cut0.5@paper:3000/teacher/cls-high/auc_mean",
                             "auc_std": "runs/cut0.5@paper:3000/teacher/cls-high/auc_std",
                             "seconds": ["runs/cut0.5@paper:3000/training/flow1", "..."]}]}]}

A reference is ``key/key/...`` inside the point's ``source``, or ``OTHER.json#key/key`` inside
another results file (paths relative to the points file); a ``seconds`` entry may be a product
``REF*REF`` (seconds per epoch times epochs) or a plain number.  ``"hours"`` instead of
``"seconds"`` gives the training time directly, from a results file's CPU-hours.

    python benchmarks/plot_learning_curves.py benchmarks/results/learning_curves_points_2026-11-28.json \\
        --out benchmarks/results/learning_curves_2026-11-28.json --plot benchmarks/results/learning_curves_2026-11-28.png
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any


class PointsError(SystemExit):
    """A points file or a results file it names is unusable (one line, naming the file)."""


def _load(path: Path, cache: dict[Path, Any]) -> Any:
    if path not in cache:
        try:
            cache[path] = json.loads(path.read_text())
        except OSError as exc:
            raise PointsError(f"{path}: unreadable ({exc.strerror})") from None
        except ValueError as exc:
            raise PointsError(f"{path}: not JSON ({exc})") from None
    return cache[path]


def resolve(ref: Any, source: Path, base: Path, cache: dict[Path, Any]) -> float:
    """The number that ``ref`` names (see the module docstring); a number stands for itself."""
    if isinstance(ref, (int, float)) and not isinstance(ref, bool):
        return float(ref)
    if not isinstance(ref, str) or not ref:
        raise PointsError(f"{source}: bad reference {ref!r}")
    if "*" in ref:
        out = 1.0
        for part in ref.split("*"):
            out *= resolve(_number_or_ref(part), source, base, cache)
        return out
    fname, sep, path = ref.partition("#")
    file = base / fname if sep else source
    node = _load(file, cache)
    for key in (path if sep else ref).split("/"):
        if not isinstance(node, dict) or key not in node:
            raise PointsError(f"{file}: no entry {key!r} on the path {ref!r}")
        node = node[key]
    if isinstance(node, bool) or not isinstance(node, (int, float)):
        raise PointsError(f"{file}: {ref!r} is not a number ({type(node).__name__})")
    return float(node)


def _number_or_ref(s: str) -> Any:
    try:
        return float(s)
    except ValueError:
        return s


def table(points_file: Path) -> dict:
    """Resolve every point of ``points_file``: AUC, spread, training hours, and each panel's floor."""
    cache: dict[Path, Any] = {}
    spec = _load(points_file, cache)
    base = points_file.parent
    if not isinstance(spec, dict) or not isinstance(spec.get("panels"), list):
        raise PointsError(f"{points_file}: expected an object with a list 'panels'")
    try:
        return {"what": spec.get("what", ""), "points_file": str(points_file),
                "panels": [_panel(panel, points_file, base, cache) for panel in spec["panels"]]}
    except (KeyError, TypeError) as exc:
        raise PointsError(f"{points_file}: a panel or point lacks {exc} (see the module docstring)") from None


def _panel(panel: dict, points_file: Path, base: Path, cache: dict[Path, Any]) -> dict:
    """One panel of the points file, resolved."""
    out: dict[str, Any] = {"title": panel["title"], "curves": {}}
    fl = panel.get("floor")
    if fl:
        src = base / fl["source"]
        out["floor"] = {"auc_mean": resolve(fl["auc"], src, base, cache),
                        "auc_std": resolve(fl["auc_std"], src, base, cache) if "auc_std" in fl else None,
                        "source": fl["source"]}
    for p in panel["points"]:
        src = base / p["source"]
        if ("seconds" in p) == ("hours" in p):
            raise PointsError(f"{points_file}: point {p.get('label')!r} needs exactly one of 'seconds', 'hours'")
        hours = (sum(resolve(s, src, base, cache) for s in p["seconds"]) / 3600 if "seconds" in p
                 else resolve(p["hours"], src, base, cache))
        out["curves"].setdefault(p["curve"], []).append({
            "label": p["label"], "source": p["source"],
            "auc_mean": resolve(p["auc"], src, base, cache),
            "auc_std": resolve(p["auc_std"], src, base, cache) if "auc_std" in p else None,
            "training_hours": hours, "note": p.get("note", "")})
    return out


def draw_curves(ax: Any, curves: dict[str, list[tuple[str, float, float, float]]], floor: float | None) -> None:
    """On ``ax``: one line per curve through its ``(label, hours, AUC, AUC spread)`` points, each
    point annotated with its label, and the Geant4-vs-Geant4 AUC ``floor`` as a dashed line."""
    for curve, pts in curves.items():
        ax.errorbar([p[1] for p in pts], [p[2] for p in pts], yerr=[p[3] for p in pts], fmt="o-", capsize=3,
                    label=curve)
        for label, x, y, _ in pts:
            ax.annotate(label, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    if floor is not None:
        ax.axhline(floor, color="k", ls="--", label="Geant4 vs Geant4")


def plot(res: dict, path: Path) -> None:
    """One panel per family: AUC (with its classifier-seed spread) against training hours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(res["panels"])
    cols = min(n, 2)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 4.3 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, res["panels"]):
        draw_curves(ax, {curve: [(d["label"], d["training_hours"], d["auc_mean"], d["auc_std"] or 0.0)
                                 for d in sorted(pts, key=lambda d: d["training_hours"])]
                         for curve, pts in panel["curves"].items()},
                    panel["floor"]["auc_mean"] if "floor" in panel else None)
        ax.set_title(panel["title"], fontsize=9)
        ax.set_xlabel("training hours (one core; summed over the training stages)")
        ax.set_ylabel("high-level classifier AUC")
        ax.set_ylim(0.45, 1.0)
        ax.set_xlim(left=0.0)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.tight_layout()
    part = path.with_name(path.name + ".part.png")
    fig.savefig(part, dpi=120)
    os.replace(part, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("points", type=Path, help="points file (JSON)")
    p.add_argument("--out", type=Path, required=True, help="resolved table (JSON)")
    p.add_argument("--plot", type=Path, help="figure (PNG)")
    p.add_argument("--force", action="store_true", help="replace existing --out / --plot files")
    a = p.parse_args(argv)
    for f in (a.out, a.plot):
        if f is not None and f.resolve() == a.points.resolve():
            raise PointsError(f"{f}: is the points file; choose another output")
        if f is not None and f.exists() and not a.force:
            raise PointsError(f"{f}: exists; use --force to replace it")
    res = table(a.points)
    tmp = a.out.with_name(a.out.name + ".part")
    tmp.write_text(json.dumps(res, indent=1) + "\n")
    os.replace(tmp, a.out)
    if a.plot:
        plot(res, a.plot)
    for panel in res["panels"]:
        print(panel["title"])
        for curve, pts in panel["curves"].items():
            print("  ", curve, [(d["label"], round(d["training_hours"], 2), round(d["auc_mean"], 3)) for d in pts])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
