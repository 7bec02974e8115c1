"""CaloFlow's empty-voxel dequantisation and threshold-aware generation cut (issue 15)."""

import json

import numpy as np
import pytest
import torch

from caloflows.errors import ConfigError
from caloflows.geometry import load_geometry
from caloflows.models.caloflow import CaloFlow, CaloFlowConfig
from caloflows.toy_showers import toy_showers


@pytest.fixture(scope="module")
def geometry(tmp_path_factory, tiny_xml):
    d = tmp_path_factory.mktemp("gap")
    (d / "tiny.xml").write_text(tiny_xml)
    return load_geometry(str(d / "tiny.xml"))


def _model(g, **kw):
    cfg = CaloFlowConfig(flow1_transforms=1, flow2_transforms=1, flow2_hidden=8, student_hidden=8, **kw)
    return CaloFlow(g, cfg)


def test_settings_are_checked(geometry):
    with pytest.raises(ConfigError, match="empty_voxel_noise_mev"):
        CaloFlowConfig.from_dict({"empty_voxel_noise_mev": -1.0})
    with pytest.raises(ConfigError, match="voxel_cut_mev"):
        CaloFlowConfig.from_dict({"voxel_cut_mev": "high"})
    assert _model(geometry).generation_cut is None
    assert _model(geometry, empty_voxel_noise_mev=0.3).generation_cut == 0.3
    assert _model(geometry, empty_voxel_noise_mev=0.3, voxel_cut_mev=0.5).generation_cut == 0.5


def test_empty_voxels_are_dequantised_to_the_gap_and_conditions_stay_clean(geometry):
    inc, sh = toy_showers(geometry, 200, seed=1)
    sh[:, ::3] = 0.0  # make sure there are empty voxels
    t = 0.5
    base, gap = _model(geometry), _model(geometry, empty_voxel_noise_mev=t)
    x = torch.as_tensor(sh, dtype=torch.float64)
    f0, E0 = base.flow2_fractions(x, generator=torch.Generator().manual_seed(0))
    f1, E1 = gap.flow2_fractions(x, generator=torch.Generator().manual_seed(0))
    # conditions: the layer energies with the 1 keV noise only, identical in both schemes
    torch.testing.assert_close(E0, E1)
    clean = base._layer_sums(x)
    assert torch.all(E1 - clean <= 1e-3 * torch.as_tensor(geometry.layer_sizes)) and torch.all(clean <= E1)
    # fractions times the dequantised layer sum give back the voxels: empty -> (0, t), others +- 1 keV
    idx = base._layer_index
    total = base._layer_sums(x + (x <= 0) * t)  # upper bound of the dequantised sum
    v = f1 * total[:, idx]
    empty = x <= 0
    assert (f1[empty] > 0).all()
    frac_empty_vs_layer = f1[empty] * base._layer_sums(x)[:, idx][empty]
    assert (frac_empty_vs_layer <= t * 1.0001).all()
    assert torch.all(v >= 0)
    # the paper scheme keeps empty voxels at the keV scale
    assert (f0[empty] * E0[:, idx][empty] <= 1e-3 * 1.0001).all()


def test_generation_cut_keeps_layer_sums_and_clears_the_gap(geometry):
    g = geometry
    m = _model(g, empty_voxel_noise_mev=0.2)
    rng = np.random.default_rng(3)
    frac = torch.as_tensor(rng.random((50, g.n_voxels)) ** 4)
    E = torch.as_tensor(rng.uniform(0.05, 20.0, (50, g.n_layers)))
    v = m.voxels_from_fractions(frac, E).numpy()
    assert not ((v > 0) & (v < 0.2 * (1 - 1e-12))).any()  # nothing survives inside the gap
    sums = np.stack([v[:, a:b].sum(1) for a, b in zip(g.layer_offsets[:-1], g.layer_offsets[1:])], 1)
    ok = E.numpy() >= 0.2
    np.testing.assert_allclose(sums[ok], E.numpy()[ok], rtol=1e-12)
    assert (sums[~ok] == 0).all()  # a layer below the cut cannot hold a voxel above it
    # the paper's renormalisation (no cut) keeps every voxel
    p = _model(g).voxels_from_fractions(frac, E).numpy()
    assert (p > 0).sum() > (v > 0).sum()


def test_gap_model_trains_samples_and_reloads(geometry, tmp_path):
    from dataclasses import asdict

    from caloflows.io import ShowerData
    from caloflows.training.loop import TrainConfig

    inc, sh = toy_showers(geometry, 300, seed=0)
    tc = asdict(TrainConfig(epochs=2, batch_size=100, patience=None))
    m = _model(geometry, empty_voxel_noise_mev=0.1, flow1_train=tc, flow2_train=tc, student_train=tc)
    m.fit(ShowerData(inc, sh), tmp_path / "m", progress=False)
    va = json.loads((tmp_path / "m" / "history_flow2_teacher.json").read_text())["val_loss"]
    assert np.isfinite(va).all() and va[-1] < va[0]
    a = m.sample(inc[:40], seed=2, variant="teacher").showers
    assert not ((a > 0) & (a < 0.1 * (1 - 1e-6))).any()
    back = CaloFlow.load(tmp_path / "m")
    assert back.cfg.empty_voxel_noise_mev == 0.1
    np.testing.assert_array_equal(back.sample(inc[:40], seed=2, variant="teacher").showers, a)


def test_empty_layers_are_dequantised_for_flow1_and_the_conditions(geometry):
    inc, sh = toy_showers(geometry, 100, seed=2)
    a, b = geometry.layer_offsets[2], geometry.layer_offsets[3]
    sh[:50, a:b] = 0.0  # the last layer is empty in half of the showers
    x = torch.as_tensor(sh, dtype=torch.float64)
    t = 0.4
    base, gap = _model(geometry), _model(geometry, empty_layer_noise_mev=t)
    E0 = base.flow1_energies(x, generator=torch.Generator().manual_seed(0))
    E1 = gap.flow1_energies(x, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(E1[50:], E0[50:])  # non-empty layers untouched
    d = (E1 - E0)[:50, 2]
    assert (d > 0).all() and (d < t).all() and d.std() > t / 10  # empty layers spread over (0, t)
    torch.testing.assert_close(E1[:, :2], E0[:, :2])
    # flow-II is conditioned on the same dequantised energies (what flow-I generates)
    _, Ec = gap.flow2_fractions(x, generator=torch.Generator().manual_seed(0))
    assert (Ec[:50, 2] > 1e-3 * 4).all() and (Ec[50:, 2] == E0[50:, 2]).all()
    # the mid-point version (densities) sees an empty layer as t / 2 above its keV noise
    mid = gap.flow1_energies(x + 0.5e-3, noise=False)
    torch.testing.assert_close(mid[:50, 2] - base._layer_sums(x + 0.5e-3)[:50, 2], torch.full((50,), t / 2, dtype=torch.float64))
    assert gap.generation_cut == t


def test_generate_set_changes_the_cut_of_a_trained_model(geometry, tmp_path):
    from dataclasses import asdict

    from caloflows import api
    from caloflows.errors import UsageError
    from caloflows.io import ShowerData, read_showers, write_showers
    from caloflows.training.loop import TrainConfig

    inc, sh = toy_showers(geometry, 200, seed=4)
    tc = asdict(TrainConfig(epochs=1, batch_size=100, patience=None))
    m = _model(geometry, flow1_train=tc, flow2_train=tc, student_train=tc)
    m.fit(ShowerData(inc, sh), tmp_path / "m", progress=False)
    write_showers(tmp_path / "e.h5", inc[:60], sh[:60], geometry=geometry)
    cut = float(np.quantile(sh[sh > 0], 0.3))
    api.generate(tmp_path / "m", tmp_path / "a.h5", energies_from=str(tmp_path / "e.h5"), seed=1, progress=False,
                 variant="teacher", settings=[f"voxel_cut_mev={cut}"])
    a = read_showers(tmp_path / "a.h5")
    assert not ((a.showers > 0) & (a.showers < cut * (1 - 1e-6))).any()
    assert a.attrs["generation_settings"] == f"voxel_cut_mev={cut}"
    api.generate(tmp_path / "m", tmp_path / "b.h5", energies_from=str(tmp_path / "e.h5"), seed=1, progress=False,
                 variant="teacher")
    b = read_showers(tmp_path / "b.h5")
    assert ((b.showers > 0) & (b.showers < cut)).any()  # without the cut the flow fills the gap
    with pytest.raises(UsageError, match="not a generation setting"):
        api.generate(tmp_path / "m", tmp_path / "c.h5", n=5, seed=1, progress=False, settings=["flow2_hidden=3"])
    assert not (tmp_path / "c.h5").exists()


def test_the_generation_cut_keeps_or_empties_whole_layers(geometry):
    """What ``benchmarks/bench_flow1.py`` relies on: with the threshold-aware cut c a layer keeps its
    flow-I energy E_i exactly when E_i >= c and ends empty when E_i < c, whatever flow-II's fractions."""
    from caloflows.postprocess import threshold_renormalise_layers

    rng = np.random.default_rng(3)
    n, L = 400, geometry.n_layers
    frac = np.concatenate([rng.dirichlet(np.ones(k), size=n) for k in geometry.layer_sizes], 1)
    E = rng.choice([0.0, 0.2, 0.49, 0.5, 0.7, 3.0, 40.0], size=(n, L))
    out = threshold_renormalise_layers(frac, E, geometry.layer_offsets, 0.5)
    sums = geometry.layer_energies(out)
    np.testing.assert_allclose(sums, np.where(E < 0.5, 0.0, E), rtol=1e-12, atol=0)
    assert np.all((out == 0) | (out >= 0.5 * (1 - 1e-12)))


def test_single_hit_keeps_sub_cut_layers_in_their_brightest_voxel(geometry):
    """``single_hit_mev`` (issue 15): a layer with single_hit <= E_i < c keeps E_i in its brightest
    voxel; below single_hit it ends empty; layers with E_i >= c are as without the rule."""
    from caloflows.postprocess import threshold_renormalise_layers

    rng = np.random.default_rng(4)
    n, L, off = 300, geometry.n_layers, geometry.layer_offsets
    frac = np.concatenate([rng.dirichlet(np.ones(k), size=n) for k in geometry.layer_sizes], 1)
    E = rng.choice([0.0, 0.05, 0.2, 0.49, 0.5, 3.0, 40.0], size=(n, L))
    plain = threshold_renormalise_layers(frac, E, off, 0.5)
    out = threshold_renormalise_layers(frac, E, off, 0.5, single_hit=0.2)
    np.testing.assert_allclose(geometry.layer_energies(out), np.where(E < 0.2, 0.0, E), rtol=1e-12, atol=0)
    for i in range(L):
        a, b = off[i], off[i + 1]
        sub = (E[:, i] >= 0.2) & (E[:, i] < 0.5)
        assert sub.any()
        hits = out[sub, a:b]
        assert np.all((hits > 0).sum(1) == 1)  # one voxel ...
        np.testing.assert_array_equal(hits.argmax(1), frac[sub, a:b].argmax(1))  # ... the brightest
        np.testing.assert_array_equal(out[~sub, a:b], plain[~sub, a:b])  # elsewhere unchanged
    m = CaloFlow(geometry, CaloFlowConfig(voxel_cut_mev=0.5, single_hit_mev=0.2))
    v = m.voxels_from_fractions(torch.as_tensor(frac), torch.as_tensor(E))
    np.testing.assert_array_equal(v.numpy(), out)


@pytest.mark.parametrize("name", ["ds2-coarse", "ds1-photons"])  # equal layers (one call) / unequal (a loop)
def test_the_layer_cut_equals_the_per_layer_cut_bit_for_bit(name):
    from caloflows.postprocess import threshold_renormalise, threshold_renormalise_layers

    g = load_geometry(name)
    rng = np.random.default_rng(5)
    n, off = 50, g.layer_offsets
    frac = np.concatenate([rng.dirichlet(np.full(k, 0.3), size=n) for k in g.layer_sizes], 1)
    E = rng.choice([0.0, 0.3, 2.0, 7.0, 300.0], size=(n, g.n_layers))
    ref = np.concatenate([threshold_renormalise(frac[:, off[i]:off[i + 1]], E[:, i], 2.0) for i in range(g.n_layers)], 1)
    np.testing.assert_array_equal(threshold_renormalise_layers(frac, E, off, 2.0), ref)
    t = threshold_renormalise_layers(torch.as_tensor(frac), torch.as_tensor(E), off, 2.0)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float64
    np.testing.assert_array_equal(t.numpy(), ref)


def test_medium_preset_trains_flow1_longer_and_cuts_on_par04_geometries():
    quick, medium = (CaloFlowConfig.preset(p, load_geometry("ds2-coarse")) for p in ("quick", "medium"))
    assert medium.flow1_train["epochs"] == 5 * quick.flow1_train["epochs"] == 100
    assert medium.voxel_cut_mev == 2.0 and quick.voxel_cut_mev is None
    assert (medium.flow2_hidden, medium.flow2_train) == (quick.flow2_hidden, quick.flow2_train)
    assert (medium.voxel_standardise, medium.voxel_spline_bound) == (False, 14.0)  # stop 21
    assert quick.voxel_standardise and quick.voxel_spline_bound == quick.bound == 5.0
    assert medium.student_train == {**quick.student_train, "epochs": 24}
    assert CaloFlowConfig.preset("medium", load_geometry("ds1-photons")).voxel_cut_mev is None
    with pytest.raises(ConfigError, match="unknown CaloFlow preset 'huge'"):
        CaloFlowConfig.preset("huge", load_geometry("ds2-coarse"))


def test_unstandardised_flow2_inputs_stay_inside_the_spline_domain(geometry):
    """``voxel_standardise=false, voxel_bound=14`` (stop 20): flow-II sees the logit fractions as they
    are (constants 0 / 1), every input inside its splines' domain [-14, 14]; standardised, the rare
    hits of sparse voxels fall outside [-5, 5], where zuko's splines are the identity."""
    from caloflows.io import ShowerData
    from caloflows.lean import LeanBlock

    inc, sh = toy_showers(geometry, 300, seed=4)
    data = ShowerData(inc, sh)
    x, e = torch.as_tensor(sh, dtype=torch.float64), torch.as_tensor(inc, dtype=torch.float64).ravel()
    std = _model(geometry)
    std.fit_constants(data)
    y_std = std.flow2_inputs(x, e, generator=torch.Generator().manual_seed(0))[0]
    m = _model(geometry, voxel_standardise=False, voxel_bound=14.0)
    m.fit_constants(data)
    assert set(m.std2.mean) == {0.0} and set(m.std2.std) == {1.0}
    y = m.flow2_inputs(x, e, generator=torch.Generator().manual_seed(0))[0]
    assert y.abs().max() <= 14.0 and (y_std.abs() > 5.0).any()
    assert LeanBlock(m.teacher.transform.transforms[0], iaf=False).bound == 14.0  # the splines' domain
    assert LeanBlock(std.teacher.transform.transforms[0], iaf=False).bound == 5.0
    with pytest.raises(ConfigError, match="voxel_bound >= 14"):
        CaloFlowConfig(voxel_standardise=False).validate()
