"""``caloflows evaluate`` end to end on small synthetic files, the Python API, every bad-input
error, and the atomic report directory."""

import json
import re

import numpy as np
import pytest
import torch

from caloflows.cli import main
from caloflows.evaluation import EvaluationError, EvaluationWarning, evaluate, parse_metrics
from caloflows.evaluation.classifier import ClassifierConfig
from caloflows.evaluation.toy import toy_showers
from caloflows.io import ShowerData, write_showers


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    out = {}
    for name, seed, n in (("gen", 1, 400), ("ref", 2, 400), ("other", 3, 400)):
        inc, x = toy_showers("ds1-photons", n, seed=seed)
        if name == "other":
            x = x * 0.9
        out[name] = d / f"{name}.h5"
        write_showers(out[name], inc, x, geometry="ds1-photons")
    inc, x = toy_showers("ds1-pions", 100, seed=4)
    out["pions"] = d / "pions.h5"
    write_showers(out["pions"], inc, x, geometry="ds1-pions")
    inc, x = toy_showers("ds1-photons", 400, seed=5, energies=np.full(400, 65536.0))
    out["one_energy"] = d / "one_energy.h5"
    write_showers(out["one_energy"], inc, x, geometry="ds1-photons")
    out["empty"] = d / "empty.h5"
    write_showers(out["empty"], np.zeros(0), np.zeros((0, 368), np.float32))
    inc, x = toy_showers("ds1-photons", 20, seed=6)
    x[3, 17] = np.nan
    out["nan"] = d / "nan.h5"
    write_showers(out["nan"], inc, x, validate=False)
    inc, x = toy_showers("ds1-photons", 50, seed=7)
    out["few"] = d / "few.h5"
    write_showers(out["few"], inc, x)
    return out


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    return err


def test_cli_end_to_end(files, tmp_path, capsys):
    out = tmp_path / "report"
    rc = main([
        "evaluate", str(files["gen"]), str(files["ref"]), "--geometry", "1-photons", "--out", str(out),
        "--metrics", "hist,corr,fpd,kpd,prdc,cls-high,multiclass", "--epochs", "2", "--hidden", "16",
        "--seeds", "2", "--compare", str(files["other"]), "--classifier-floor",
    ])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "FPD x1e3" in printed and "cls-high: AUC" in printed
    names = {p.name for p in out.iterdir()}
    assert {"metrics.json", "report.html", "hist_E_layer.png", "average_showers.png", "correlations.png",
            "eratio_per_energy.png", "separation_powers.png"} <= names
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".report")]  # no temp dir left
    m = json.loads((out / "metrics.json").read_text())
    assert m["inputs"]["geometry"] == "ds1-photons" and m["inputs"]["n_generated"] == 400
    assert set(m) >= {"histograms", "correlations", "fpd", "kpd", "prdc", "classifiers", "multiclass"}
    assert len(m["classifiers"]["cls-high"]["runs"]) == 2
    assert len(m["classifiers"]["cls-high"]["reference_halves"]["runs"]) == 2
    assert m["classifiers"]["cls-high"]["reference_halves"]["runs"][0]["n_test"] == 80  # 2 x 20 % of 200
    assert m["multiclass"]["models"][0] == "gen" and len(m["multiclass"]["models"]) == 2
    assert 0 <= m["histograms"]["separation_power"]["E_ratio"]["separation_power"] <= 1
    assert m["histograms"]["separation_power"]["E_ratio"]["reference_halves"] is not None
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "Separation powers" in html
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", html)  # nothing fetched from outside
    for p in m["plots"]:
        assert (out / p).read_bytes()[:4] == b"\x89PNG"


def test_api_with_showerdata_no_report():
    inc, x = toy_showers("ds2-coarse", 300, seed=8)
    inc2, x2 = toy_showers("ds2-coarse", 300, seed=9)
    r = evaluate(ShowerData(inc, x), ShowerData(inc2, x2), "ds2-coarse", metrics="hist,corr")
    assert r["inputs"]["geometry"] == "ds2-coarse" and "report_dir" not in r
    assert r["histograms"]["eratio_per_energy"]["groups"]  # continuous energies: quantile groups
    assert r["correlations"]["generated"].shape == (9, 9)
    # noise of S ~ 1/N1 + 1/N2: halves of 150 vs samples of 300 -> floor rescaled by 1/2
    assert r["inputs"]["floor_scale"] == pytest.approx(0.5)
    k = r["histograms"]["mean_separation_power_by_kind"]["E_ratio"]
    assert k["reference_halves_scaled"] == pytest.approx(0.5 * k["reference_halves"])
    # identical samples: every separation power 0 and correlation difference 0
    same = evaluate(ShowerData(inc, x), ShowerData(inc, x), "ds2-coarse", metrics="hist,corr")
    sp = [v["separation_power"] for v in same["histograms"]["separation_power"].values()]
    assert np.nanmax(sp) == 0.0 and same["correlations"]["max_abs_difference"] == 0.0
    assert same["warnings"] == []


def test_geometry_from_file_attribute(files):
    r = evaluate(files["gen"], files["ref"], metrics="corr")
    assert r["inputs"]["geometry"] == "ds1-photons"


def test_parse_metrics():
    assert parse_metrics("fast") == ["hist", "corr", "fpd", "kpd"]
    assert parse_metrics("hist,cls-low,hist") == ["hist", "cls-low"]
    assert len(parse_metrics("all")) == 10
    with pytest.raises(EvaluationError, match="unknown metric 'hists'"):
        parse_metrics("hists")


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "case, args, pattern",
    [
        ("voxels", ["@gen", "@pions"], r"gen\.h5 has 368 voxels per shower but .*pions\.h5 has 533"),
        ("geometry", ["@gen", "@ref", "--geometry", "ds2-coarse"], r"368 voxels per shower but geometry 'ds2-coarse' has 648"),
        ("empty", ["@empty", "@ref"], r"empty\.h5: file holds no showers"),
        ("nan", ["@gen", "@nan"], r"nan\.h5: shower 3, voxel 17 is NaN"),
        ("few", ["@few", "@ref", "--metrics", "cls-low"], r"few\.h5: 50 showers are too few for the classifier split"),
        ("floor", ["@gen", "@few", "--metrics", "hist,cls-low"], r"few\.h5: 50 showers are too few for the classifier"),
        ("floor2", ["@ref", "@gen", "--metrics", "cls-low", "--classifier-floor", "--max-showers", "150"],
         r"gen\.h5: 150 showers are too few for the classifier floor"),
        ("metric", ["@gen", "@ref", "--metrics", "hist,foo"], r"unknown metric 'foo'"),
        ("multiclass", ["@gen", "@ref", "--metrics", "multiclass"], r"multiclass needs at least one more generated sample"),
        ("missing", ["@gen", "@nosuchfile"], r"nosuchfile\.h5: file not found"),
        ("badgeom", ["@gen", "@ref", "--geometry", "ds9"], r"unknown geometry 'ds9'"),
    ],
)
def test_bad_input_one_line_error(files, tmp_path, capsys, case, args, pattern):
    def path(a):
        if not a.startswith("@"):
            return a
        return str(files.get(a[1:], tmp_path / f"{a[1:]}.h5"))

    out = tmp_path / "report"
    rc = main(["evaluate", *map(path, args), "--out", str(out)])
    err = _err(capsys)
    assert rc == 2
    assert err.startswith("caloflows: error: ") and len(err.splitlines()) == 1, err
    assert re.search(pattern, err), err
    assert not out.exists() and not list(tmp_path.glob(".report*"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_requested_without_gpu(files, tmp_path, capsys):
    rc = main(["evaluate", str(files["gen"]), str(files["ref"]), "--out", str(tmp_path / "r"),
               "--metrics", "cls-low", "--device", "cuda"])
    assert rc == 2 and "no CUDA GPU" in _err(capsys)


def test_incident_energy_mismatch_warns(files, tmp_path, capsys):
    out = tmp_path / "r"
    rc = main(["evaluate", str(files["one_energy"]), str(files["ref"]), "--out", str(out), "--metrics", "corr",
               "--no-plots"])
    assert rc == 0
    err = _err(capsys)
    assert "caloflows: warning:" in err and "incident-energy distribution differs" in err
    assert "KS D=" in err and "energies missing from generated" in err
    m = json.loads((out / "metrics.json").read_text())
    assert m["warnings"] and "KS" in m["warnings"][0]
    with pytest.warns(EvaluationWarning, match="differs from the reference"):
        evaluate(files["one_energy"], files["ref"], metrics="corr")


def test_failed_run_leaves_no_report_and_keeps_old(files, tmp_path, monkeypatch):
    out = tmp_path / "report"
    out.mkdir()
    (out / "metrics.json").write_text("{\"old\": true}")
    (out / ".caloflows-report").write_text("{}")  # an earlier caloflows report (issue 10: only those are replaced)
    import caloflows.evaluation.plots as P

    def boom(*a, **k):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(P, "plot_correlations", boom)
    with pytest.raises(RuntimeError, match="plotting failed"):
        evaluate(files["gen"], files["ref"], metrics="corr", out=out, force=True)
    assert json.loads((out / "metrics.json").read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["report"]
    monkeypatch.undo()
    evaluate(files["gen"], files["ref"], metrics="corr", out=out, plots=False, force=True)  # replaces the old report
    assert "correlations" in json.loads((out / "metrics.json").read_text())
    assert [p.name for p in tmp_path.iterdir()] == ["report"]


def test_classifier_config_and_trainable_parameters(files):
    r = evaluate(files["gen"], files["ref"], metrics="cls-low",
                 classifier=ClassifierConfig(hidden=8, epochs=1, progress=False), model_parameters=1234)
    c = r["classifiers"]["cls-low"]
    assert c["config"]["hidden"] == 8 and c["n_features"] == 369
    # official depth: Linear(369, 8), two hidden Linear(8, 8), Linear(8, 1)
    assert c["trainable_parameters"] == 369 * 8 + 8 + 2 * (8 * 8 + 8) + 8 + 1
    assert r["inputs"]["model_trainable_parameters"] == 1234


XML = "/work/shared/calochallenge/binning/binning_dataset_1_photons.xml"


@pytest.mark.skipif(not __import__("os").path.exists(XML), reason="CaloChallenge binning XML not available")
def test_geometry_from_binning_xml(files):
    r = evaluate(files["gen"], files["ref"], XML, metrics="hist")
    named = evaluate(files["gen"], files["ref"], "1-photons", metrics="hist")
    assert r["histograms"]["separation_power"] == named["histograms"]["separation_power"]
