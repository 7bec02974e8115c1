"""The pure parts of ``benchmarks/bench_paraflow.py`` (issue 12): E_inc clipping onto a model's
training range and the resumable step records."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_paraflow as bench  # noqa: E402


def test_clip_energies_moves_only_rows_outside_the_range():
    from caloflows.io import ShowerData

    d = ShowerData(np.array([19_990.0, 50_000.0, 100_004.0]), np.ones((3, 128)), np.array([[1.0, 70.0]] * 3),
                   ("d", "b"))
    c, info = bench.clip_energies(d, 20_000.0, 100_000.0)
    assert c.incident_energies.tolist() == [20_000.0, 50_000.0, 100_000.0]
    assert info["n_clipped"] == 2 and info["max_shift_mev"] == pytest.approx(10.0)
    assert c.conditions.tolist() == d.conditions.tolist() and c.condition_names == ("d", "b")
    same, info = bench.clip_energies(d, 10_000.0, 200_000.0)
    assert same is d and info["n_clipped"] == 0


def test_steps_are_recorded_and_skipped_on_resume(tmp_path):
    calls = []

    def step() -> dict:
        calls.append(1)
        return {"value": np.float64(2.5)}

    out = tmp_path / "res.json"
    s = bench.Steps(tmp_path / "wd", out, {"benchmark": "bench_paraflow"})
    assert s.run("a", step)["value"] == 2.5
    s2 = bench.Steps(tmp_path / "wd", out, {"benchmark": "bench_paraflow"})
    assert s2.run("a", step)["value"] == 2.5 and len(calls) == 1  # second run: read back, not redone
    s2.write({"headline": 1})
    res = json.loads(out.read_text())
    assert res["steps"]["a"]["value"] == 2.5 and res["summary"] == {"headline": 1}
    assert not list(tmp_path.rglob("*.tmp"))
