"""SuperCalo building blocks (issue 11): coarse-graining maps, B1-B9 rows, upsampling
post-processing, streaming rows, rho and ring evaluation (arXiv:2308.11700)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from caloflows.coarsegraining import CHOICES, CoarseGraining
from caloflows.errors import GeometryError, ShowerFileError
from caloflows.evaluation.supercalo import rho_histograms, rho_values, ring_stats, supercalo_metrics
from caloflows.geometry import Geometry, Layer, coarse_grain, load_geometry
from caloflows.io import write_showers
from caloflows.layerdata import CoarseVoxelRows, InMemoryCoarseVoxelRows
from caloflows.superres import (
    CUT_MEV,
    SuperCaloPreprocessing,
    apply_cut,
    assemble_fine,
    build_conditions,
    build_rows,
    flow1_forward,
    flow1_inverse,
    flow2_conditions,
    flow2_forward,
    flow2_inverse,
    split_conditions,
    upsample_postprocess,
)
from caloflows.toy_showers import toy_showers


def _toy_geometry(n_alpha: int = 6, n_r: int = 2, n_layers: int = 2) -> Geometry:
    edges = tuple(float(x) for x in range(n_r + 1))
    return Geometry("hand", tuple(Layer(i, edges, n_alpha) for i in range(n_layers)))


# ------------------------------------------------------------------ coarse-graining
def test_neighbour_map_of_hand_made_two_layer_geometry():
    # fine: 2 layers x 6 alpha x 2 r; grouping 1 r x 2 alpha x 1 z -> coarse 2 z x 3 alpha x 2 r
    m = CoarseGraining(1, 2, 1).bind(_toy_geometry())
    assert (m.nc_z, m.nc_alpha, m.nc_r, m.n_coarse, m.group_size) == (2, 3, 2, 12, 2)
    # coarse index = (z * 3 + alpha) * 2 + r; slots alpha-1, alpha+1, r-1, r+1, z-1, z+1
    assert m.neighbours[0].tolist() == [4, 2, 0, 1, 0, 6]
    assert m.neighbour_mask[0].tolist() == [True, True, False, True, False, True]
    assert m.neighbours[11].tolist() == [9, 7, 10, 0, 5, 0]  # (z1, a2, r1): alpha+1 wraps to a0
    assert m.neighbour_mask[11].tolist() == [True, True, True, False, True, False]
    assert m.neighbours[8].tolist() == [6, 10, 0, 9, 2, 0]  # (z1, a1, r0)
    assert m.members[0].tolist() == [0, 2] and m.members[11].tolist() == [21, 23]
    assert m.coarse_layer.tolist() == [0] * 6 + [1] * 6
    assert m.coarse_rbin.tolist() == [0, 1] * 6
    assert m.fine_layers[:, 0].tolist() == [0] * 6 + [1] * 6
    # symmetry of every existing slot pair (alpha-1 <-> alpha+1, r-1 <-> r+1, z-1 <-> z+1)
    for i in range(m.n_coarse):
        for s, t in ((0, 1), (2, 3), (4, 5)):
            if m.neighbour_mask[i, s]:
                j = m.neighbours[i, s]
                assert m.neighbour_mask[j, t] and m.neighbours[j, t] == i
    # neighbour energies are gathered and zero-padded
    coarse = np.arange(1, 13, dtype=float)[None]
    nb = m.neighbour_energies(coarse)[0]
    assert nb[0].tolist() == [5.0, 3.0, 0.0, 2.0, 0.0, 7.0]


def test_neighbour_map_with_one_or_two_coarse_angular_bins():
    g = _toy_geometry()
    two = CoarseGraining(1, 3, 1).bind(g)  # 2 coarse angular bins: one alpha neighbour, listed once
    assert two.neighbour_mask[:, 0].sum() == 0 and two.neighbour_mask[:, 1].all()
    assert two.neighbours[0, 1] == two.coarse_index(0, 1, 0)
    one = CoarseGraining(1, 6, 2).bind(g)  # 1 angular bin, 1 layer: only the radial neighbours
    assert one.neighbour_mask.tolist() == [[False, False, False, True, False, False],
                                           [False, False, True, False, False, False]]
    # two layers of the hand-made geometry with two layers per coarse voxel
    assert one.fine_layers.tolist() == [[0, 1], [0, 1]]


@pytest.mark.parametrize("geo,grouping", [("ds2", "A"), ("ds2", "B"), ("ds3", "2x5x3"), ("ds3", (3, 10, 1))])
def test_fine_to_coarse_consistent_with_geometry_coarse_grain(geo, grouping):
    g = load_geometry(geo)
    m = CoarseGraining.parse(grouping).bind(g)
    x = np.random.default_rng(0).random((3, g.n_voxels))
    want = coarse_grain(x, g, m.grouping.factors)
    got = np.stack([np.bincount(m.fine_to_coarse, weights=row, minlength=m.n_coarse) for row in x])
    np.testing.assert_allclose(got, want, rtol=1e-12)
    np.testing.assert_allclose(m.gather(x).sum(-1), want, rtol=1e-12)
    np.testing.assert_array_equal(m.scatter(m.gather(x)), x)
    assert np.all(m.fine_to_coarse[m.members] == np.arange(m.n_coarse)[:, None])
    assert np.all(np.diff(m.members, axis=1) > 0)  # fixed order: increasing fine index
    # the fine layers a coarse voxel spans are those of its members
    fl = g.layer_index[m.members].reshape(m.n_coarse, m.grouping.f_z, -1)
    assert np.all(fl == fl[:, :, :1]) and np.array_equal(fl[:, :, 0], m.fine_layers)


def test_choices_and_dimensions_match_the_paper():
    g = load_geometry("ds2")
    a, b = CHOICES["A"].bind(g), CHOICES["B"].bind(g)
    assert a.coarse.same_layout(load_geometry("ds2-coarse"))
    assert (a.n_coarse, a.group_size, b.n_coarse, b.group_size) == (648, 10, 540, 12)
    prep = SuperCaloPreprocessing(e_coarse_max=1e4)
    assert prep.condition_dim(a) == 31 and prep.condition_dim(b) == 57  # table I


def test_bad_groupings_raise_geometry_error():
    with pytest.raises(GeometryError, match="radial grouping factor 2 does not divide 9"):
        CoarseGraining(2, 2, 5).bind("ds2")
    with pytest.raises(GeometryError, match="regular"):
        CHOICES["A"].bind("ds1-photons")
    with pytest.raises(GeometryError):
        CoarseGraining.parse("1x2")
    with pytest.raises(GeometryError):
        CoarseGraining(0, 1, 1)
    with pytest.raises(GeometryError, match="choice"):
        CoarseGraining.choice("C")


# ------------------------------------------------------------------ preprocessing B1-B9
@pytest.mark.parametrize("choice", ["A", "B"])
def test_rows_round_trip_recovers_fine_voxels(choice):
    m = CHOICES[choice].bind("ds2")
    einc, fine = toy_showers(m.fine, 6, seed=2, energies_mev=np.geomspace(1e3, 1e5, 6))
    prep = SuperCaloPreprocessing.fit(einc, fine, m)
    rows = build_rows(einc, fine, m, prep)
    assert rows.target.shape == (6 * m.n_coarse, m.group_size)
    assert np.isfinite(rows.target).all() and np.isfinite(rows.cond).all()
    rel = prep.target_inverse(rows.target)
    back = assemble_fine(rel, rows.e_coarse, m, threshold=0.0)
    np.testing.assert_allclose(back, fine, rtol=1e-9, atol=1e-12)
    # with the real cut the data (already above threshold) is unchanged too
    np.testing.assert_allclose(assemble_fine(rel, rows.e_coarse, m), fine, rtol=1e-9, atol=1e-12)
    # conditions invert exactly
    c = split_conditions(rows.cond, m, prep)
    coarse = m.coarse_grain(fine.astype(np.float64)).reshape(-1)
    np.testing.assert_allclose(c["einc"], np.repeat(einc, m.n_coarse), rtol=1e-12)
    np.testing.assert_allclose(c["e_coarse"], coarse, rtol=1e-6, atol=1e-9)
    E = m.fine.layer_energies(fine.astype(np.float64))
    np.testing.assert_allclose(c["layer_energies"], E[:, m.fine_layers].reshape(-1, m.grouping.f_z),
                               rtol=1e-6, atol=1e-9)
    nb = m.neighbour_energies(m.coarse_grain(fine.astype(np.float64))).reshape(-1, 6)
    np.testing.assert_allclose(c["neighbours"], nb, rtol=1e-6, atol=1e-9)
    assert np.array_equal(c["coarse_layer"], np.tile(m.coarse_layer, 6))
    assert np.array_equal(c["coarse_rbin"], np.tile(m.coarse_rbin, 6))


def test_rows_with_noise_stay_close_and_relative_energies_sum_to_one():
    m = CHOICES["A"].bind("ds2")
    einc, fine = toy_showers(m.fine, 3, seed=5)
    prep = SuperCaloPreprocessing.fit(einc, fine, m)
    rows = build_rows(einc, fine, m, prep, np.random.default_rng(1))
    rel = prep.target_inverse(rows.target)
    np.testing.assert_allclose(rel.sum(1), 1.0, rtol=1e-9)
    grouped = (rel * rows.e_coarse[:, None]).reshape(3, m.n_coarse, -1)
    diff = m.scatter(grouped) - fine
    assert diff.min() >= -1e-9 and diff.max() <= prep.fine_noise_mev * (1 + 1e-6)  # B8 noise only
    assert (diff > 0).mean() > 0.99  # every voxel got noise
    # empty coarse voxels are no longer exactly empty: no division by zero
    assert (rows.e_coarse > 0).all()


def test_flow1_flow2_preprocessing_invert_and_match_table_one():
    m = CHOICES["A"].bind("ds2")
    einc, fine = toy_showers(m.fine, 5, seed=4)
    fine = fine.astype(np.float64)
    prep = SuperCaloPreprocessing.fit(einc, fine, m)
    E, coarse = m.fine.layer_energies(fine), m.coarse_grain(fine)
    np.testing.assert_allclose(flow1_inverse(flow1_forward(E, prep), prep), apply_cut(E), rtol=1e-7)
    y, noisy = flow2_forward(coarse, prep)
    np.testing.assert_array_equal(noisy, coarse)
    np.testing.assert_allclose(flow2_inverse(y, prep), coarse, rtol=1e-10)
    y_n, noisy = flow2_forward(coarse, prep, np.random.default_rng(0))
    assert np.all((noisy - coarse >= 0) & (noisy - coarse <= prep.chain_noise_mev))
    assert np.isfinite(y_n).all() and y_n.max() <= 6.0  # B4: log10(E / E_max) + 6 <= 6
    c = flow2_conditions(einc, m.coarse.layer_energies(noisy), prep)
    assert c.shape == (5, 10)  # table I: FLOW-2 has 10 conditions for choice A
    np.testing.assert_allclose(10 ** (4 * c[:, 1:]), m.coarse.layer_energies(noisy), rtol=1e-10)
    assert np.isfinite(flow2_conditions(einc, np.zeros((5, 9)), prep)).all()


# ------------------------------------------------------------------ upsampling post-processing
def _random_rel(rng, n, vc, k):
    r = rng.dirichlet(np.full(k, 0.3), size=(n, vc))
    return r


def test_upsampled_fine_voxels_sum_exactly_to_their_coarse_voxel():
    m = CHOICES["A"].bind("ds2")
    _, fine = toy_showers(m.fine, 5, seed=3)
    coarse = m.coarse_grain(fine.astype(np.float64))
    rel = _random_rel(np.random.default_rng(0), 5, m.n_coarse, m.group_size)
    up = upsample_postprocess(rel, coarse)
    s = up.sum(-1)
    big = coarse >= CUT_MEV
    assert big.any() and (~big).any()
    np.testing.assert_allclose(s[big], coarse[big], rtol=1e-12, atol=0)
    assert np.all(s[~big] == 0)
    assert np.all((up == 0) | (up >= CUT_MEV))  # the 15.15 keV cut holds after renormalisation
    # a plain rescale-then-cut would lose energy: the test is sensitive to the renormalisation
    naive = rel * coarse[..., None]
    naive = np.where(naive < CUT_MEV, 0, naive)
    assert not np.allclose(naive.sum(-1)[big], coarse[big], rtol=1e-6)


def test_coarse_graining_then_upsampling_keeps_layer_energies_for_choice_b_only():
    g = load_geometry("ds2")
    _, fine = toy_showers(g, 4, seed=7)
    fine = fine.astype(np.float64)
    E = g.layer_energies(fine)
    rng = np.random.default_rng(2)
    b = CHOICES["B"].bind(g)
    coarse_b = b.coarse_grain(fine)
    up_b = assemble_fine(_random_rel(rng, 4, b.n_coarse, b.group_size), coarse_b, b)
    np.testing.assert_allclose(g.layer_energies(up_b), E, rtol=1e-10)
    np.testing.assert_allclose(b.coarse_grain(up_b), coarse_b, rtol=1e-10)
    a = CHOICES["A"].bind(g)  # choice A spans 5 layers: random upsampling moves energy between them
    up_a = assemble_fine(_random_rel(rng, 4, a.n_coarse, a.group_size), a.coarse_grain(fine), a)
    assert not np.allclose(g.layer_energies(up_a), E, rtol=1e-3)
    np.testing.assert_allclose(up_a.sum(1), fine.sum(1), rtol=1e-10)


def test_conditions_and_assembly_of_selected_coarse_voxels_equal_the_full_ones():
    """Generation builds SUPERCALO conditions and fine voxels only for the coarse voxels above the cut
    (``rows=``); the rows equal the full arrays' bit for bit, and the unlisted coarse voxels come out
    empty, as the cut and renormalisation of the full path leave them."""
    m = CHOICES["A"].bind("ds2")
    einc, fine = toy_showers(m.fine, 6, seed=4)
    fine = fine.astype(np.float64)
    prep = SuperCaloPreprocessing.fit(einc, fine, m)
    coarse = m.coarse_grain(fine)
    layers = m.fine.layer_energies(fine)
    cut = float(np.quantile(coarse[coarse > 0], 0.6))  # empties 60 % of the coarse voxels
    active = (coarse >= cut) & (coarse > 0)
    rows = np.nonzero(active)
    assert 0 < active.sum() < active.size
    full = build_conditions(einc, coarse, layers, m, prep)
    sel = build_conditions(einc, coarse, layers, m, prep, rows=rows)
    np.testing.assert_array_equal(sel, full[rows])
    rel = _random_rel(np.random.default_rng(5), len(coarse), m.n_coarse, m.group_size)
    dense = assemble_fine(rel, coarse, m, cut)
    np.testing.assert_array_equal(assemble_fine(rel[rows], coarse, m, cut, rows=rows), dense)
    off = np.nonzero(~active)  # coarse voxels below the cut are empty either way
    assert np.all(dense[off[0][:, None], m.members[off[1]]] == 0)


# ------------------------------------------------------------------ streaming rows
def _batches(src, **kw):
    return [(t.copy(), c.copy()) for t, c in src.batches(**kw)]


def test_streaming_rows_equal_in_memory_rows(tmp_path):
    m = CHOICES["A"].bind("ds2")
    einc, fine = toy_showers(m.fine, 11, seed=9)
    path = os.path.join(tmp_path, "train.h5")
    write_showers(path, einc, fine, geometry="ds2")
    prep = SuperCaloPreprocessing.fit(einc, fine, m)
    assert SuperCaloPreprocessing.fit_from_file(path, m, chunk_showers=4) == prep
    stream = CoarseVoxelRows(path, m, prep, chunk_showers=3)
    mem = InMemoryCoarseVoxelRows(einc, fine, m, prep, chunk_showers=3)
    train, val = stream.split(0.3, seed=1)
    assert len(train) + len(val) == 11 and not set(train) & set(val)
    kw = dict(batch_size=1000, seed=4, epoch=2, showers=train)
    a, b = _batches(stream, **kw), _batches(mem, **kw)
    assert len(a) == len(train) * m.n_coarse // 1000 and len(a) == len(b)
    for (t1, c1), (t2, c2) in zip(a, b):
        np.testing.assert_array_equal(t1, t2)
        np.testing.assert_array_equal(c1, c2)
    # another epoch: other order and other noise
    c = _batches(mem, batch_size=1000, seed=4, epoch=3, showers=train)
    assert not np.array_equal(a[0][0], c[0][0])
    # without shuffling and noise, the stream is exactly build_rows over the selected showers
    rows = build_rows(einc, fine, m, prep)
    t_all = np.concatenate([t for t, _ in stream.batches(700, showers=val, shuffle=False, drop_last=False,
                                                           noise=False)])
    want = rows.target.reshape(11, m.n_coarse, -1)[val].reshape(-1, m.group_size).astype(np.float32)
    np.testing.assert_array_equal(t_all, want)
    stream.close()


def test_streaming_rows_validate_the_file(tmp_path):
    m = CHOICES["B"].bind("ds2")
    einc, fine = toy_showers(m.fine, 4, seed=1)
    fine[3, 10] = np.nan
    path = os.path.join(tmp_path, "bad.h5")
    import h5py

    with h5py.File(path, "w") as f:
        f["incident_energies"] = einc[:, None]
        f["showers"] = fine
    prep = SuperCaloPreprocessing(e_coarse_max=1e4)
    src = CoarseVoxelRows(path, m, prep, chunk_showers=2)
    with pytest.raises(ShowerFileError, match="shower 3, voxel 10"):
        list(src.batches(100, shuffle=False))
    with pytest.raises(ShowerFileError, match="6480"):
        CoarseVoxelRows(path, CHOICES["A"].bind("ds3"), prep)


# ------------------------------------------------------------------ evaluation additions
def test_rho_known_values():
    g = load_geometry("ds2")
    m = CHOICES["B"].bind(g)
    x = np.zeros((1, g.n_voxels))
    # coarse voxel (z=0, a=0, r=0) and its z+1 neighbour: orthogonal fine vectors -> rho = 0
    x[0, m.members[m.coarse_index(0, 0, 0), 0]] = 1.0
    x[0, m.members[m.coarse_index(1, 0, 0), 1]] = 2.0
    # (z=0, a=1, r=2) and (z=1, a=1, r=2): parallel vectors -> rho = 1
    x[0, m.members[m.coarse_index(0, 1, 2), :3]] = [1.0, 2.0, 3.0]
    x[0, m.members[m.coarse_index(1, 1, 2), :3]] = [2.0, 4.0, 6.0]
    v = rho_values(x, g)
    assert v[0].tolist() == [0.0] and v[1].size == 0 and np.allclose(v[2], [1.0])
    # 45 degrees: e = (1, 0) and (1, 1) -> 1/sqrt(2)
    x2 = np.zeros((1, g.n_voxels))
    x2[0, m.members[m.coarse_index(4, 3, 1), :2]] = [1.0, 0.0]
    x2[0, m.members[m.coarse_index(5, 3, 1), :2]] = [1.0, 1.0]
    np.testing.assert_allclose(rho_values(x2, g)[1], [2 ** -0.5])


def test_rho_separation_power_zero_for_identical_and_large_for_scrambled():
    g = load_geometry("ds2")
    # showers whose transverse pattern is the same in every layer (strong inter-layer correlation)
    rng = np.random.default_rng(3)
    pattern = rng.gamma(0.5, 1.0, size=(40, 1, 144))
    profile = rng.gamma(3.0, 10.0, size=(40, 45, 1))
    ref = (pattern * profile).reshape(40, -1)
    same = rho_histograms(ref, ref, g)
    assert all(r.separation_power == 0.0 for r in same.values())
    # destroy the inter-layer correlation: shuffle fine voxels inside each choice-B coarse voxel
    m = CHOICES["B"].bind(g)
    grp = m.gather(ref.astype(np.float64))
    perm = np.argsort(rng.random(grp.shape), axis=-1)
    scrambled = m.scatter(np.take_along_axis(grp, perm, -1))
    diff = rho_histograms(scrambled, ref, g)
    assert min(r.separation_power for r in diff.values()) > 0.3
    # layer energies untouched by the scramble: rho sees what layer histograms cannot
    np.testing.assert_allclose(g.layer_energies(scrambled), g.layer_energies(ref), rtol=1e-5)


def test_ring_stats_match_numpy_and_plots_written(tmp_path):
    g = load_geometry("ds2")
    _, a = toy_showers(g, 30, seed=1)
    _, b = toy_showers(g, 30, seed=2)
    s = ring_stats(a, g, [9])[0]
    x = g.apply_threshold(a[:, g.layer_slice(9)].astype(np.float64)).reshape(30, 16, 9)
    for r in (0, 4, 8):
        nz = x[:, :, r][x[:, :, r] > 0]
        np.testing.assert_allclose([s.p5[r], s.q1[r], s.median[r], s.q3[r], s.p95[r]],
                                   np.percentile(nz, [5, 25, 50, 75, 95]))
        assert s.f0[r] == pytest.approx((x[:, :, r] == 0).mean())
    res = supercalo_metrics(a, b, g, out=str(tmp_path))
    assert set(res["plots"]) == {"supercalo_rho.png", "supercalo_rings.png"}
    assert sorted(res["rings"]) == ["layer/0", "layer/19", "layer/44", "layer/9"]
    assert all(os.path.getsize(os.path.join(tmp_path, p)) > 1000 for p in res["plots"])
    # a geometry without the grouping: rho skipped with the reason, rings still there
    r2 = supercalo_metrics(a, b, g, grouping="2x2x5")
    assert r2["rho"] == {} and "does not divide" in r2["rho_skipped"]
