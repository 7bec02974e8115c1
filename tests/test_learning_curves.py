"""``benchmarks/plot_learning_curves.py`` (issue 15): points are read from results files, never copied."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import plot_learning_curves as lc  # noqa: E402


def _write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


def _results(tmp_path: Path) -> Path:
    _write(tmp_path / "run.json", {"runs": {"a:3000": {"auc": 0.8, "std": 0.01,
                                                       "training": {"flow1": {"seconds": 1800.0}}},
                                            "b": {"auc": 0.7, "per_epoch": 90.0, "epochs": 40}},
                                   "floor": {"auc": 0.5}})
    _write(tmp_path / "other.json", {"flow2": {"seconds": 3600.0}})
    return tmp_path / "run.json"


def test_points_are_resolved_from_their_results_files(tmp_path):
    _results(tmp_path)
    spec = {"panels": [{"title": "T", "floor": {"source": "run.json", "auc": "floor/auc"},
                        "points": [
                            {"curve": "c", "label": "3k", "source": "run.json", "auc": "runs/a:3000/auc",
                             "auc_std": "runs/a:3000/std",
                             "seconds": ["runs/a:3000/training/flow1/seconds", "other.json#flow2/seconds", 360]},
                            {"curve": "c", "label": "10k", "source": "run.json", "auc": "runs/b/auc",
                             "seconds": ["runs/b/per_epoch*runs/b/epochs"]}]}]}
    res = lc.table(_write(tmp_path / "points.json", spec))
    (panel,) = res["panels"]
    assert panel["floor"]["auc_mean"] == 0.5
    a, b = panel["curves"]["c"]
    assert (a["auc_mean"], a["auc_std"]) == (0.8, 0.01)
    assert a["training_hours"] == pytest.approx(1.6)  # 1800 + 3600 + 360 s
    assert b["training_hours"] == pytest.approx(1.0) and b["auc_std"] is None  # 90 s x 40 epochs


def test_a_missing_entry_or_file_is_one_line_naming_the_file(tmp_path):
    _results(tmp_path)
    base = {"curve": "c", "label": "x", "source": "run.json", "seconds": [1]}
    bad_key = {"panels": [{"title": "T", "points": [dict(base, auc="runs/a:3000/nope")]}]}
    with pytest.raises(lc.PointsError, match=r"run\.json: no entry 'nope'"):
        lc.table(_write(tmp_path / "p1.json", bad_key))
    not_number = {"panels": [{"title": "T", "points": [dict(base, auc="runs/a:3000/training")]}]}
    with pytest.raises(lc.PointsError, match="is not a number"):
        lc.table(_write(tmp_path / "p2.json", not_number))
    missing = {"panels": [{"title": "T", "points": [dict(base, auc="gone.json#x")]}]}
    with pytest.raises(lc.PointsError, match=r"gone\.json: unreadable"):
        lc.table(_write(tmp_path / "p3.json", missing))
    no_auc = {"panels": [{"title": "T", "points": [base]}]}
    with pytest.raises(lc.PointsError, match=r"p5\.json: a panel or point lacks 'auc'"):
        lc.table(_write(tmp_path / "p5.json", no_auc))
    both = {"panels": [{"title": "T", "points": [dict(base, auc="runs/b/auc", hours=1.0)]}]}
    with pytest.raises(lc.PointsError, match="exactly one of"):
        lc.table(_write(tmp_path / "p4.json", both))


def test_outputs_never_replace_the_points_file_or_an_existing_file(tmp_path):
    _results(tmp_path)
    points = _write(tmp_path / "points.json", {"panels": [{"title": "T", "points": [
        {"curve": "c", "label": "x", "source": "run.json", "auc": "runs/b/auc", "hours": 2}]}]})
    with pytest.raises(lc.PointsError, match="is the points file"):
        lc.main([str(points), "--out", str(points), "--force"])
    out = _write(tmp_path / "out.json", {"keep": 1})
    with pytest.raises(lc.PointsError, match="exists"):
        lc.main([str(points), "--out", str(out)])
    assert json.loads(out.read_text()) == {"keep": 1}
    assert lc.main([str(points), "--out", str(out), "--force"]) == 0
    assert json.loads(out.read_text())["panels"][0]["curves"]["c"][0]["training_hours"] == 2.0


def test_draw_curves_one_line_per_curve_and_the_geant4_floor():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    lc.draw_curves(ax, {"a": [("3k", 0.3, 0.8, 0.01), ("10k", 1.0, 0.7, 0.02)], "b": [("x", 2.0, 0.6, 0.0)]}, 0.5)
    curves = {c.get_label(): c.lines[0] for c in ax.containers}  # errorbar: the label is on its container
    assert list(curves) == ["a", "b"]
    assert list(curves["a"].get_xdata()) == [0.3, 1.0] and list(curves["a"].get_ydata()) == [0.8, 0.7]
    (floor,) = [ln for ln in ax.get_lines() if ln.get_label() == "Geant4 vs Geant4"]
    assert list(floor.get_ydata()) == [0.5, 0.5]
    assert [t.get_text() for t in ax.texts] == ["3k", "10k", "x"]
    plt.close(fig)
