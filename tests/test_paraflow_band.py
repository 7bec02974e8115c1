"""Interpolation band (issue 12): ``caloflows train --exclude NAME=LOW:HIGH`` holds the showers of a
condition band out of training (generic over families and condition names), records the band in
config.json and applies it again on resume and in distillation."""

import json
import warnings

import numpy as np
import pytest
import torch

from caloflows import api
from caloflows.cli import main
from caloflows.conditions import Band, ConditionSpec, ConditionsWarning, in_bands, parse_bands
from caloflows.errors import ConditionsError
from caloflows.geometry import load_geometry
from caloflows.io import write_showers
from caloflows.toy_showers import toy_showers
from caloflows.training.checkpoint import load_checkpoint

torch.set_num_threads(1)

GEOMETRY = "paraflow-8x16"
TINY = ["transforms=2", "hidden=[16,16]", "student_hidden=[16,16]", "bins=4", "flow_train.batch_size=64",
        "student_train.batch_size=64"]


def _file(path, n=300, seed=0):
    rng = np.random.default_rng(seed)
    einc, sh = toy_showers(load_geometry(GEOMETRY), n, seed=seed)
    d, b = rng.uniform(0.5, 1.5, n), rng.uniform(50, 90, n)
    write_showers(path, einc, sh.astype(np.float32), conditions=np.column_stack([d, b]), condition_names=("d", "b"))
    return d, b


def test_bands_parse_and_select_closed_intervals():
    assert parse_bands(["d=0.9:1.1", "b=70"]) == (Band("d", 0.9, 1.1), Band("b", 70.0, 70.0))
    v = np.array([[0.9, 60.0], [1.1, 60.0], [1.2, 70.0], [0.89, 71.0]])
    assert in_bands(("d", "b"), v, parse_bands(["d=0.9:1.1"])).tolist() == [True, True, False, False]
    assert in_bands(("d", "b"), v, parse_bands(["d=0.9:1.1", "b=70"])).tolist() == [True, True, True, False]
    with pytest.raises(ConditionsError, match="has no condition 'x'"):
        in_bands(("d", "b"), v, parse_bands(["x=1:2"]))
    with pytest.raises(ConditionsError, match="LOW <= HIGH"):
        parse_bands(["d=1.1:0.9"])
    spec = ConditionSpec(("d",), (0.5,), (1.5,), "log", (Band("d", 0.9, 1.1),))
    assert ConditionSpec.from_dict(spec.to_dict()) == spec
    assert "excluded" not in ConditionSpec(("d",), (0.5,), (1.5,)).to_dict()  # old config.json unchanged


def test_training_data_drops_exactly_the_band(tmp_path):
    f = tmp_path / "pf.h5"
    d, _ = _file(f, n=250)
    kept, n_kept, n_file = api.training_data(f, parse_bands(["d=0.9:1.1"]), GEOMETRY, chunk_size=64)
    inside = (d >= 0.9) & (d <= 1.1)
    assert n_file == 250 and n_kept == (~inside).sum() and 0 < inside.sum() < 250
    np.testing.assert_array_equal(kept.conditions[:, 0], d[~inside])  # order kept, across chunks
    assert not np.any((kept.conditions[:, 0] >= 0.9) & (kept.conditions[:, 0] <= 1.1))
    same, n, _ = api.training_data(f, (), GEOMETRY)
    assert same == f and n == 250  # no band: the path itself (families may stream it)


def test_band_that_removes_everything_is_a_one_line_error(tmp_path, capsys):
    f = tmp_path / "pf.h5"
    _file(f, n=40)
    out = tmp_path / "model"
    rc = main(["train", "paraflow", "--data", str(f), "--geometry", GEOMETRY, "--out", str(out),
               "--exclude", "d=0:2"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "--exclude d=0:2: removes all 40 showers" in err
    assert not (out / "config.json").exists()
    rc = main(["train", "paraflow", "--data", str(f), "--geometry", GEOMETRY, "--out", str(out),
               "--exclude", "thickness=1:2"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "no condition 'thickness'" in err


def test_showers_in_the_band_are_not_used_for_training_or_distillation(tmp_path, capsys):
    f = tmp_path / "pf.h5"
    d, _ = _file(f, n=300)
    n_kept = int((~((d >= 0.9) & (d <= 1.1))).sum())
    out = tmp_path / "model"
    base = ["train", "paraflow", "--data", str(f), "--geometry", GEOMETRY, "--out", str(out), "--epochs", "1"] + \
        [x for s in TINY for x in ("--set", s)]
    assert main(base + ["--exclude", "d=0.9:1.1"]) == 0
    summary = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert summary["excluded"] == {"bands": ["d=0.9:1.1"], "showers_used": n_kept, "showers_in_file": 300}
    rec = json.loads((out / "config.json").read_text())["config"]["conditions"]
    assert rec["excluded"] == [{"name": "d", "low": 0.9, "high": 1.1}]
    # the training loop saw exactly the showers outside the band
    assert load_checkpoint(out / "checkpoints" / "teacher_last.pt")["n_data"] == n_kept
    # distillation reads the band from config.json
    assert main(["distill", str(out), "--data", str(f), "--epochs", "1"]) == 0
    assert load_checkpoint(out / "checkpoints" / "student_last.pt")["n_data"] == n_kept
    # resuming with another band is refused in one line
    capsys.readouterr()
    assert main(base + ["--resume", "--exclude", "d=1.0:1.2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "trained with excluded bands d=0.9:1.1" in err
    # generation inside the band is interpolation, not extrapolation: no range warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConditionsWarning)
        assert main(["generate", str(out), "--n", "5", "--condition", "d=1.0", "--condition", "b=70",
                     "--out", str(tmp_path / "gen.h5"), "--seed", "1"]) == 0
