"""Known-answer tests of the histogram, correlation, distance and manifold metrics."""

import math

import numpy as np
import pytest
import torch

from caloflows.evaluation.correlations import layer_correlations, pearson_matrix
from caloflows.evaluation.distances import (
    adapted_sizes,
    fpd,
    frechet_distance,
    kpd,
    mmd_poly_unbiased,
    normalise_features,
)
from caloflows.evaluation.features import compute_features
from caloflows.evaluation.histograms import (
    chi2_homogeneity,
    compare_histograms,
    energy_groups,
    eratio_per_energy,
    feature_bins,
    separation_power,
)
from caloflows.evaluation.inputs import LOGIT_ALPHA, classifier_inputs
from caloflows.evaluation.manifold import log_voxels, prdc
from caloflows.evaluation.params import count_parameters
from caloflows.evaluation.toy import toy_showers
from caloflows.geometry import load_geometry


@pytest.fixture(scope="module")
def photons():
    g = load_geometry("ds1-photons")
    inc, x = toy_showers(g, 4000, seed=11)
    return g, inc, x


# ------------------------------------------------------------ separation power
def test_separation_power_known_values():
    assert separation_power([1, 2, 3], [2, 4, 6]) == 0.0  # same shape after normalisation
    assert separation_power([5, 0], [0, 7]) == pytest.approx(1.0)  # no overlap
    # h1 = (0.5, 0.5), h2 = (1, 0): 1/2 [0.25/1.5 + 0.25/0.5] = 1/3
    assert separation_power([1, 1], [1, 0]) == pytest.approx(1 / 3)
    # one sample entirely out of range: undefined (NaN) as in the official code; the
    # out-of-range fraction of HistogramResult reports it instead
    assert math.isnan(separation_power([0, 0], [1, 2]))
    assert math.isnan(separation_power([0, 0], [0, 0]))


def test_identical_samples_have_zero_separation_power(photons):
    g, inc, x = photons
    f = compute_features(x, inc, g)
    res = compare_histograms(f, f)
    assert len(res) == len(f.table()) + 1
    for r in res.values():
        assert r.separation_power == 0.0 or math.isnan(r.separation_power)
    assert res["E_ratio"].separation_power == 0.0 and res["voxel"].separation_power == 0.0


def test_disjoint_samples_have_separation_power_one(photons):
    g, inc, x = photons
    ref = compute_features(x, inc, g)
    gen = compute_features(x * 3.0, inc, g)  # every energy tripled: E_dep/E_inc ~ 2.7 vs 0.9
    res = compare_histograms(gen, ref)
    # every E_dep/E_inc of the generated sample lands above 1.5: S undefined, out-of-range fraction 1, flagged
    assert math.isnan(res["E_ratio"].separation_power)
    assert res["E_ratio"].gen_out_of_range == 1.0 and res["E_ratio"].ref_out_of_range < 0.01
    assert res["E_ratio"].out_of_range_flag
    for lid in ref.layer_ids:  # layer energies shift by 0.48 decades (on spectra 2.5 decades wide)
        assert res[f"E_layer/{lid}"].separation_power > 0.05
    # shapes of the shower (centres, sparsity) barely change: S well below 1
    assert res[f"EC_r/{ref.layer_ids[1]}"].separation_power < 0.1
    # in range but well separated (E_dep/E_inc ~ 1.26 vs 0.88, RMS ~ 0.09): S close to 1
    near = compare_histograms(compute_features(x * 1.45, inc, g), ref)
    assert 0.9 < near["E_ratio"].separation_power <= 1.0


def test_reference_halves_band(photons):
    g, inc, x = photons
    f = compute_features(x, inc, g)
    h = (f.subset(slice(0, 2000)), f.subset(slice(2000, 4000)))
    res = compare_histograms(f, f, h)
    band = res["E_ratio"].ref_band
    assert 0 < band < 0.05  # statistical noise of two independent halves
    gen = compute_features(x * 3.0, inc, g)
    assert math.isnan(compare_histograms(gen, f, h)["E_ratio"].separation_power)
    gen = compute_features(x * 1.1, inc, g)
    assert compare_histograms(gen, f, h)["E_ratio"].separation_power > 5 * band


def test_binning_conventions(photons):
    g, _, _ = photons
    e, log = feature_bins("E_ratio", np.ones(3), g)
    assert len(e) == 101 and e[0] == 0.5 and e[-1] == 1.5 and not log
    e, log = feature_bins("E_layer/1", np.array([3.0, 500.0]), g)
    assert len(e) == 40 and e[0] == 1.0 and e[-1] == pytest.approx(500.0) and log
    e, _ = feature_bins("EC_eta/12", np.zeros(3), load_geometry("ds1-pions"))
    assert (e[0], e[-1]) == (-500.0, 500.0)
    e, _ = feature_bins("width_phi/3", np.zeros(3), load_geometry("ds2"))
    assert (e[0], e[-1]) == (0.0, 30.0)
    e, _ = feature_bins("sparsity/3", np.zeros(3), g)  # official: linspace(0, 1, 21) for every layer
    np.testing.assert_array_equal(e, np.linspace(0, 1, 21))


# ------------------------------------------------------------------ chi2
def test_chi2_homogeneity_known_values():
    assert chi2_homogeneity([10, 20, 0], [10, 20, 0]) == (0.0, 1)
    # equal totals: chi2 = sum (a - b)^2 / (a + b) = 100/30 + 100/30
    chi2, ndf = chi2_homogeneity([10, 20], [20, 10])
    assert chi2 == pytest.approx(200 / 30) and ndf == 1
    # scaling one histogram does not change chi2 when shapes agree
    assert chi2_homogeneity([10, 20, 30], [20, 40, 60])[0] == pytest.approx(0.0)


def test_eratio_per_energy_discrete(photons):
    g, inc, x = photons
    f = compute_features(x, inc, g)
    groups = energy_groups(inc)
    assert len(groups) == len(np.unique(inc)) and all(a == b for a, b in groups)
    same = eratio_per_energy(f, f)
    assert same["chi2"] == 0.0 and same["ndf"] > 0
    assert all(r["mean_ratio"] == 1.0 and r["rms_ratio"] == 1.0 for r in same["groups"])
    shifted = compute_features(x * 1.05, inc, g)
    c = eratio_per_energy(shifted, f, ref_halves=(f.subset(slice(0, 2000)), f.subset(slice(2000, None))))
    assert all(r["mean_ratio"] == pytest.approx(1.05, abs=0.01) for r in c["groups"])
    assert all(r["rms_ratio"] == pytest.approx(1.05, abs=0.03) for r in c["groups"])
    assert c["chi2_per_ndf"] > 2 * c["reference_halves"]["chi2_per_ndf"]
    assert 0.3 < c["reference_halves"]["chi2_per_ndf"] < 2.0  # halves of one sample: chi2/NDF ~ 1


def test_energy_groups_continuous():
    inc = 10 ** np.random.default_rng(0).uniform(3, 6, 5000)
    groups = energy_groups(inc)
    assert len(groups) == 10 and groups[0][0] == inc.min() and groups[-1][1] == inc.max()


# ------------------------------------------------------------ correlations
def test_pearson_matrix():
    rng = np.random.default_rng(1)
    e = rng.normal(size=(500, 4))
    e[:, 1] = 2 * e[:, 0] + 1
    e[:, 3] = 5.0  # constant layer: undefined
    c = pearson_matrix(e)
    np.testing.assert_allclose(c[:3, :3], np.corrcoef(e[:, :3], rowvar=False), atol=1e-12)
    assert c[0, 1] == pytest.approx(1.0)
    assert np.isnan(c[3]).all()
    r = layer_correlations(e, e)
    assert r["max_abs_difference"] == 0.0


# ---------------------------------------------------------------- FPD / KPD
def test_frechet_distance_gaussians():
    mu = np.array([1.0, 2.0, 0.0])
    assert frechet_distance(np.zeros(3), np.eye(3), mu, np.eye(3)) == pytest.approx(5.0)
    a, b = np.diag([1.0, 4.0]), np.diag([9.0, 1.0])
    # diagonal covariances: sum (sqrt(a) - sqrt(b))^2 = (1 - 3)^2 + (2 - 1)^2
    assert frechet_distance(np.zeros(2), a, np.zeros(2), b) == pytest.approx(5.0)


def test_mmd_matches_brute_force():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(300, 4)), rng.normal(0.5, 1, size=(200, 4))

    def k(a, b):
        return (a @ b.T / 4 + 1) ** 4

    kxx, kyy = k(x, x), k(y, y)
    want = ((kxx.sum() - np.trace(kxx)) / (300 * 299) + (kyy.sum() - np.trace(kyy)) / (200 * 199)
            - 2 * k(x, y).mean())
    assert mmd_poly_unbiased(x, y) == pytest.approx(want, rel=1e-10)


@pytest.fixture(scope="module")
def gauss_halves():
    rng = np.random.default_rng(5)
    return rng.normal(size=(10000, 5)), rng.normal(size=(10000, 5))


def test_fpd_halves_consistent_with_zero_and_shift_recovered(gauss_halves):
    a, b = gauss_halves
    n, d = len(a), a.shape[1]
    v, e = fpd(a, b, min_samples=2000, max_samples=n, normalise=False)
    # two finite samples of one distribution: FPD is only the finite-sample floor
    # E[FD] = 2d/n + d(d+1)/(2n) = 0.0025, which vanishes for n -> infinity
    floor = 2 * d / n + d * (d + 1) / (2 * n)
    assert 0 <= v < 3 * floor
    shift = np.array([0.3, 0, 0, 0, 0])
    v2, e2 = fpd(a, b + shift, min_samples=2000, max_samples=n, normalise=False)
    assert v2 == pytest.approx(0.09 + v, abs=5 * floor)  # |mu|^2 = 0.09 on top of the floor
    assert v2 > 10 * v


def test_kpd_halves_consistent_with_zero(gauss_halves):
    a, b = gauss_halves
    v, e = kpd(a, b, batch_size=2000, normalise=False)
    assert abs(v) < 3 * e
    v2, e2 = kpd(a, b + 0.2, batch_size=2000, normalise=False)
    assert v2 > 5 * max(e2, abs(v))  # error: half the 16.3-83.7 % range (~1 sigma, jetnet)


def test_normalisation_and_adapted_sizes():
    r = np.array([[1.0, -4.0], [2.0, 2.0]])
    x, y = normalise_features(r, 2 * r)
    np.testing.assert_allclose(np.abs(x).max(axis=0), 1.0)
    np.testing.assert_allclose(y, 2 * x)
    assert adapted_sizes(100_000, 30) == {"fpd_min_samples": 10000, "fpd_max_samples": 50000, "kpd_batch_size": 10000}
    assert adapted_sizes(10_000, 30) == {"fpd_min_samples": 2000, "fpd_max_samples": 10000, "kpd_batch_size": 5000}


# ---------------------------------------------------------------------- PRDC
def test_prdc_identical_and_disjoint():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(600, 6))
    same = prdc(x, x.copy())
    assert same["precision"] == 1.0 and same["recall"] == 1.0 and same["coverage"] == 1.0
    assert 0.9 < same["density"] < 1.3
    far = prdc(x, x + 100.0)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}
    twin = prdc(x, rng.normal(size=(600, 6)))
    assert 0.5 < twin["precision"] <= 1 and 0.5 < twin["coverage"] <= 1


def test_log_voxels():
    np.testing.assert_allclose(log_voxels(np.array([[0.0, 1.0, 100.0]])), [[-1.0, 0.0, 2.0]])


# ------------------------------------------------------------------ inputs
def test_classifier_inputs(photons):
    g, inc, x = photons
    f = compute_features(x[:50], inc[:50], g)
    low = classifier_inputs(f, "low")
    np.testing.assert_allclose(low[:, 0], np.log10(inc[:50]))
    np.testing.assert_allclose(low[:, 1:] * inc[:50, None], f.voxels, rtol=1e-6)
    normed = classifier_inputs(f, "low-normed")
    assert normed.shape == (50, 1 + g.n_voxels + g.n_layers)
    for k in range(g.n_layers):
        s = normed[:, 1 + g.layer_slice(k).start : 1 + g.layer_slice(k).stop].sum(axis=1)
        np.testing.assert_allclose(s[f.e_layers[:, k] > 0], 1.0, rtol=1e-6)
    np.testing.assert_allclose(normed[:, -g.n_layers:], np.log10(f.e_layers + 1e-8))
    logit = classifier_inputs(f, "logit")
    u = 1 / (1 + np.exp(-logit[:, 1 + g.n_layers:]))  # invert the logit
    frac = (u - LOGIT_ALPHA) / (1 - 2 * LOGIT_ALPHA)
    np.testing.assert_allclose(frac, normed[:, 1 : 1 + g.n_voxels], atol=1e-9)
    high = classifier_inputs(f, "high")
    la = len(f.alpha_layers)
    assert high.shape == (50, 1 + g.n_layers + 4 * la + 1 + 3 * g.n_layers)
    np.testing.assert_allclose(high[:, 1 + g.n_layers], f.ec_eta[:, 0] / 100)
    np.testing.assert_allclose(high[:, 1 + g.n_layers + 4 * la], np.log10(f.e_tot + 1e-8))
    with pytest.raises(ValueError, match="unknown classifier input"):
        classifier_inputs(f, "nope")


def test_count_parameters():
    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    assert count_parameters(m) == 3 * 4 + 4 + 4 * 2 + 2
    m[0].weight.requires_grad_(False)
    assert count_parameters(m) == 4 + 4 * 2 + 2
    shared = torch.nn.Linear(2, 2)
    assert count_parameters(torch.nn.Sequential(shared, shared)) == 6
