"""Conformance with the official CaloChallenge evaluation (issue 14) and the out-of-range flags.

Each test pins one difference found when running the official ``code/evaluate.py`` side by side:
DNN depth, binning of sparsity/EC_r/width_r, KPD error, E_tot/E_inc separation power per incident
energy (with the empty-histogram convention), and the out-of-range fractions that the official
separation power hides.
"""

import math

import numpy as np
import pytest

from caloflows.evaluation.api import evaluate
from caloflows.evaluation.classifier import build_dnn, official_dnn_parameters
from caloflows.evaluation.distances import kpd, kpd_summary
from caloflows.evaluation.features import HighLevelFeatures, compute_features
from caloflows.evaluation.histograms import (
    eratio_separation_per_energy,
    feature_bins,
    out_of_range_flag,
    separation_power,
)
from caloflows.evaluation.inputs import classifier_inputs
from caloflows.evaluation.params import count_parameters
from caloflows.evaluation.toy import toy_showers
from caloflows.geometry import load_geometry
from caloflows.io import ShowerData


# ------------------------------------------------------------ 1. classifier depth
@pytest.mark.parametrize("kind", ["high", "low"])
def test_dnn_parameter_count_is_the_official_formula_for_ds2(kind):
    g = load_geometry("ds2")
    inc, x = toy_showers(g, 2, seed=0)
    d = classifier_inputs(compute_features(x, inc, g), kind).shape[1]
    assert d == {"high": 362, "low": 6481}[kind]
    # official: Linear(d, 2048) + 2 x Linear(2048, 2048) + Linear(2048, 1)
    want = (d * 2048 + 2048) + 2 * (2048 * 2048 + 2048) + (2048 + 1)
    assert count_parameters(build_dnn(d)) == want == official_dnn_parameters(d)
    if kind == "high":
        assert want == 9_138_177  # the number quoted in the issue for the official network
        assert count_parameters(build_dnn(d, n_hidden_layers=2)) == 4_941_825  # the former caloflows network


# ------------------------------------------------------------ 2. binning
@pytest.mark.parametrize("geo", ["ds1-photons", "ds1-pions", "ds2", "ds3", "ds2-coarse"])
def test_official_sparsity_binning(geo):
    g = load_geometry(geo)
    for lid in (l.id for l in g.layers):
        e, log = feature_bins(f"sparsity/{lid}", np.zeros(3), g)
        np.testing.assert_array_equal(e, np.linspace(0, 1, 21))
        assert not log


@pytest.mark.parametrize("geo", ["ds2", "ds3", "ds2-coarse"])
def test_official_r_binning_ds2_ds3(geo):
    g = load_geometry(geo)
    for lid in (0, 5):
        ref = np.array([1.0, 1000.0])  # the range must not depend on the reference sample
        np.testing.assert_array_equal(feature_bins(f"EC_r/{lid}", ref, g)[0], np.linspace(0, 42, 101))
        np.testing.assert_array_equal(feature_bins(f"width_r/{lid}", ref, g)[0], np.linspace(0, 20, 101))


def test_official_r_binning_ds1():
    for geo, layers in (("ds1-photons", {0: 500, 1: 500, 12: 1500}), ("ds1-pions", {2: 500, 13: 1500, 14: 1500})):
        g = load_geometry(geo)
        for lid, hi in layers.items():
            for kind in ("EC_r", "width_r"):
                np.testing.assert_array_equal(feature_bins(f"{kind}/{lid}", np.array([3.0]), g)[0],
                                              np.linspace(0, hi, 101))


# ------------------------------------------------------------ 3. KPD error
def test_kpd_error_is_half_the_16_84_percentile_range():
    med, err = kpd_summary(np.arange(101.0))
    assert med == 50.0 and err == pytest.approx(33.725)
    rng = np.random.default_rng(3)
    v = rng.normal(2.0, 0.5, 200_001)
    med, err = kpd_summary(v)
    from scipy.stats import norm

    # 0.9826 sigma for a Gaussian (the 83.725 % quantile), i.e. ~1 sigma
    assert med == pytest.approx(2.0, abs=0.01) and err == pytest.approx(0.5 * norm.ppf(0.83725), rel=0.01)


def test_kpd_reports_that_error():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(3000, 3)), rng.normal(size=(3000, 3))
    v, e = kpd(a, b, batch_size=500, n_batches=10, seed=9, normalise=False)
    # reproduce the batches: same generator calls as kpd()
    from caloflows.evaluation.distances import mmd_poly_unbiased

    r = np.random.default_rng(9)
    vals = [mmd_poly_unbiased(a[r.choice(3000, 500, replace=False)], b[r.choice(3000, 500, replace=False)])
            for _ in range(10)]
    assert v == pytest.approx(np.median(vals), rel=1e-12)
    assert e == pytest.approx((np.percentile(vals, 83.725) - np.percentile(vals, 16.275)) / 2, rel=1e-12)


# ------------------------------------------------------------ 4. E_tot/E_inc per energy
def _features(g, inc, e_ratio) -> HighLevelFeatures:
    """Features whose only content is E_tot = e_ratio * E_inc (in the first layer)."""
    n, L, la = len(inc), g.n_layers, sum(l.n_alpha > 1 for l in g.layers)
    el = np.zeros((n, L))
    el[:, 0] = np.asarray(e_ratio) * inc
    z, za = np.zeros((n, L)), np.zeros((n, la))
    return HighLevelFeatures(g, np.asarray(inc, float), None, el, z, z, za, za, za, za, z,
                             tuple(k for k, l in enumerate(g.layers) if l.n_alpha > 1))


def test_eratio_separation_per_energy_two_energy_toy():
    g = load_geometry("ds1-photons")
    e1, e2 = 1024.0, 8192.0  # below / above 4.096 GeV: bins [0.4, 1.4] / [0.9, 1.1], 20 each
    # reference at E1: half in bin 0 (0.40-0.45), half in bin 1; generated all in bin 0 -> S = 1/3
    # at E2 both samples in the same bin of [0.9, 1.1] -> S = 0; E_ratio 0.425 at E2 would be out of range
    ref = _features(g, [e1] * 4 + [e2] * 4, [0.425, 0.425, 0.475, 0.475, 0.905, 0.905, 0.905, 0.905])
    gen = _features(g, [e1] * 2 + [e2] * 3, [0.425, 0.425, 0.905, 0.905, 0.425])
    rows = eratio_separation_per_energy(gen, ref)
    assert [r["e_inc_mev"] for r in rows] == [e1, e2]
    assert rows[0]["separation_power"] == pytest.approx(1 / 3)
    np.testing.assert_allclose(rows[0]["edges"], np.linspace(0.4, 1.4, 21))
    assert rows[1]["separation_power"] == pytest.approx(0.0)
    np.testing.assert_allclose(rows[1]["edges"], np.linspace(0.9, 1.1, 21))
    assert rows[1]["out_of_range_generated"] == pytest.approx(1 / 3) and rows[1]["out_of_range_reference"] == 0.0
    assert (rows[0]["n_gen"], rows[0]["n_ref"], rows[1]["n_gen"], rows[1]["n_ref"]) == (2, 4, 3, 4)
    # pions: no photon-specific narrow bins
    pions = load_geometry("ds1-pions")
    r = eratio_separation_per_energy(_features(pions, [e2], [0.5]), _features(pions, [e2], [0.5]))
    np.testing.assert_allclose(r[0]["edges"], np.linspace(0.4, 1.4, 21))


def test_empty_histogram_convention_is_nan_everywhere():
    # documented choice: S is NaN when either histogram has no entry in range (as the official
    # density-normalised histograms give), and the out-of-range fraction shows why
    assert math.isnan(separation_power([0, 0], [3, 1]))
    assert math.isnan(separation_power([3, 1], [0, 0]))
    g = load_geometry("ds1-photons")
    ref = _features(g, [1024.0, 2048.0], [0.9, 0.9])
    gen = _features(g, [1024.0, 1024.0], [0.9, 3.0])  # no shower at 2048 MeV; 3.0 is out of range
    rows = eratio_separation_per_energy(gen, ref)
    assert rows[0]["separation_power"] == pytest.approx(0.0)
    assert math.isnan(rows[1]["separation_power"]) and rows[1]["n_gen"] == 0
    assert eratio_separation_per_energy(_features(g, np.geomspace(1e3, 1e5, 50), np.ones(50)),
                                        _features(g, np.geomspace(1e3, 1e5, 50), np.ones(50))) is None


# ------------------------------------------------------------ out-of-range flags
def test_out_of_range_flag_statistics():
    assert not out_of_range_flag(0, 1000, 0, 1000)
    assert not out_of_range_flag(5, 1000, 3, 1000)  # within the statistical error
    assert out_of_range_flag(60, 1000, 20, 1000)
    assert not out_of_range_flag(20, 1000, 60, 1000)  # only an excess of the generated sample is flagged


@pytest.fixture(scope="module")
def coarse_8gev():
    g = load_geometry("ds2-coarse")
    inc, x = toy_showers(g, 1200, seed=7, energies=np.full(1200, 8192.0))
    return g, inc, x


def test_layer_scaled_by_two_is_flagged_out_of_range(coarse_8gev):
    g, inc, x = coarse_8gev
    ref = ShowerData(inc[:600], x[:600])
    out = {}
    for f in (1.0, 0.7, 2.0):
        y = x[600:].copy()
        y[:, g.layer_slice(1)] *= f
        out[f] = evaluate(ShowerData(inc[600:], y), ref, g, metrics="hist", plots=False)["histograms"]
    s = {f: h["separation_power"]["E_layer/1"] for f, h in out.items()}
    # x 2: most generated layer-1 energies land above the reference maximum and drop out of the histogram
    # (on Geant4 ds2-coarse showers this made S(E_layer/1) = 0.09 against 0.44 for x 0.7; the toy's
    # in-range remainder still differs, so only the fractions are pinned here) ...
    assert s[2.0]["out_of_range_generated"] > 0.5 and s[2.0]["out_of_range_reference"] == 0.0
    assert s[2.0]["overflow_generated"] == s[2.0]["out_of_range_generated"]
    # ... and the out-of-range flag catches it, listed first
    assert s[2.0]["out_of_range_flag"] and "E_layer/1" in out[2.0]["out_of_range_flagged"]
    assert not any(k.startswith("E_layer/") for k in out[1.0]["out_of_range_flagged"])
    assert not s[0.7]["out_of_range_flag"]


def test_flag_reaches_report_and_cli_summary(coarse_8gev, tmp_path):
    from caloflows.cli.evaluate import summary_lines

    g, inc, x = coarse_8gev
    y = x[600:].copy()
    y[:, g.layer_slice(1)] *= 2.0
    r = evaluate(ShowerData(inc[600:], y), ShowerData(inc[:600], x[:600]), g, metrics="hist", plots=False,
                 out=tmp_path / "rep")
    lines = summary_lines(r)
    assert lines[1].lstrip().startswith("OUT OF RANGE") and "E_layer/1" in lines[1]
    html = (tmp_path / "rep" / "report.html").read_text()
    assert html.index("Out of range:") < html.index("<h2>Summary</h2>")


def test_cli_classifier_layers_option(tmp_path):
    import json

    from caloflows.cli import main
    from caloflows.io import write_showers

    inc, x = toy_showers("ds1-photons", 400, seed=2)
    write_showers(tmp_path / "g.h5", inc[:200], x[:200], geometry="ds1-photons")
    write_showers(tmp_path / "r.h5", inc[200:], x[200:], geometry="ds1-photons")
    for layers, want in ((None, 3), (2, 2)):
        extra = [] if layers is None else ["--classifier-layers", str(layers), "--force"]  # replaces the first report
        assert main(["evaluate", str(tmp_path / "g.h5"), str(tmp_path / "r.h5"), "--out", str(tmp_path / "rep"),
                     "--metrics", "cls-high", "--hidden", "8", "--epochs", "1", "--no-plots", *extra]) == 0
        c = json.loads((tmp_path / "rep" / "metrics.json").read_text())["classifiers"]["cls-high"]
        assert c["config"]["n_hidden_layers"] == want
        assert c["trainable_parameters"] == official_dnn_parameters(30, 8, want)
