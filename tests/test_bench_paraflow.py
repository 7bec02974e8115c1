"""The pure parts of ``benchmarks/bench_paraflow.py`` (issue 12): the resumable step records."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_paraflow as bench  # noqa: E402


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
