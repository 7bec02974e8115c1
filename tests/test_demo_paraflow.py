"""The second main job, ``caloflows demo --preset paraflow-quick``, end to end at a tiny size:
Geant4 training / held-out / band files, the quick ParaFlow trained with the band held out, its
student, generation at the held-out conditions, in the band and on the (d, b) diagonal, and the
ParaFlow reports with the fig. 9 maps (sizes overridden; 1-2 GeV photons keep Geant4 fast)."""

import json

import h5py
import numpy as np
import pytest

from caloflows.cli import demo, main
from caloflows.training.checkpoint import load_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # tiny samples: mild extrapolation warnings


def test_paraflow_demo_end_to_end_tiny(tmp_path, monkeypatch, capsys):
    # no PNGs (matplotlib is most of a tiny run's time); the plots are tested with the report itself
    monkeypatch.setitem(demo.PRESETS, "paraflow-quick", {**demo.PRESETS["paraflow-quick"], "n_grid": 20,
                                                         "metrics": "paraflow", "plots": False})
    wd = tmp_path / "demo"
    args = ["demo", "--preset", "paraflow-quick", "--workdir", str(wd), "--n-train", "30", "--n-reference", "12",
            "--n-band", "8", "--energy", "U:1:2", "--epochs", "1", "--jobs", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "caloflows demo (paraflow-quick)" in out and "fig. 9" in out
    # Geant4 files: the band file lies inside the band, the others span the full ranges
    with h5py.File(wd / "geant4_band.h5") as f:
        d = f["conditions"][:, 0]
        assert len(d) == 8 and d.min() >= 0.9 and d.max() <= 1.1
    with h5py.File(wd / "geant4_train.h5") as f:
        d_train = f["conditions"][:, 0]
        assert len(d_train) == 30 and d_train.min() < 0.9 and d_train.max() > 1.1
    # trained without the band (teacher and student), recorded in config.json
    cfg = json.loads((wd / "model" / "config.json").read_text())["config"]
    assert cfg["conditions"]["excluded"] == [{"name": "d", "low": 0.9, "high": 1.1}]
    assert cfg["trained"] == {"teacher": True, "student": True}
    n_out = int((~((d_train >= 0.9) & (d_train <= 1.1))).sum())
    for net in ("teacher", "student"):
        assert load_checkpoint(wd / "model" / "checkpoints" / f"{net}_last.pt")["n_data"] == n_out
    # reports with the fig. 9 maps, for the full range and in the band
    for rep, n in (("report", 12), ("report_band", 8)):
        m = json.loads((wd / rep / "paraflow_metrics.json").read_text())
        assert m["n_generated"] == m["n_reference"] == n
        assert set(m["mean_maps"]) >= {"w", "R9", "n_clusters"}
        assert np.asarray(m["mean_maps"]["w"]["reference"], dtype=float).shape == (4, 4)  # the fig. 9 (d, b) grid
    log = json.loads((wd / "demo_log.json").read_text())
    assert [r["n"] for r in log["model_trend_on_diagonal"]] == [20] * 5
    assert all(np.isfinite(r["mean_R9"]) for r in log["model_trend_on_diagonal"])
    assert {"report_full_range", "report_band"} <= set(log)
    # a second run finds every step done
    assert main(args) == 0
    log2 = json.loads((wd / "demo_log.json").read_text())
    assert all(s.get("skipped") for s in log2["steps"] if not s["step"].startswith("generate on"))


def test_paraflow_only_options_are_refused_for_the_calochallenge_demo(tmp_path, capsys):
    assert main(["demo", "--workdir", str(tmp_path / "d"), "--n-band", "5"]) == 2
    assert "paraflow presets only" in capsys.readouterr().err
