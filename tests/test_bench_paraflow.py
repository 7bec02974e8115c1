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


def test_a_workdir_refuses_to_resume_with_other_settings(tmp_path):
    import pytest

    wd = tmp_path / "wd"
    wd.mkdir()
    a = bench.parse_args(["--workdir", str(wd), "--set", "condition_on_conversion=true"])
    bench.check_workdir_args(wd, a)
    bench.check_workdir_args(wd, a)  # same settings: resumes
    with pytest.raises(SystemExit, match=r"--settings \['condition_on_conversion=true'\] \(now \[\]\)"):
        bench.check_workdir_args(wd, bench.parse_args(["--workdir", str(wd)]))
    # a workdir recorded before --set existed counts as run without settings
    old = tmp_path / "old"
    old.mkdir()
    rec = {k: v for k, v in vars(bench.parse_args(["--workdir", str(old)])).items() if k in bench.SAMPLE_ARGS}
    del rec["settings"]
    (old / "bench_args.json").write_text(json.dumps(rec))
    bench.check_workdir_args(old, bench.parse_args(["--workdir", str(old)]))
