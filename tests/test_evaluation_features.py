"""High-level features against values computed by hand on tiny hand-built showers (review sec. 8.1),
for every catalogued geometry."""

import math

import numpy as np
import pytest

from caloflows.evaluation.features import compute_features
from caloflows.geometry import available_geometries, load_geometry

GEOMETRIES = ["ds1-photons", "ds1-pions", "ds2", "ds3", "ds2-coarse"]


def test_catalogue_is_covered():
    # crystal-grid geometries (ParaFlow) are covered in test_paraflow.py
    assert set(GEOMETRIES) == {n for n, g in available_geometries().items() if not g.is_grid}


def _hand_shower(g):
    """Per layer k (except the last, left empty): E1 = 30 + k MeV in (alpha 0, r bin 1),
    E2 = 10 MeV in (alpha n_alpha // 2, r bin 0) and a sub-threshold voxel in the last (alpha, r)
    bin.  Returns the shower and the expected values computed from the raw bin edges."""
    x = np.zeros((1, g.n_voxels), dtype=np.float32)
    exp = []
    offset = 0
    for k, layer in enumerate(g.layers):
        edges, na = layer.r_edges, layer.n_alpha
        nr = len(edges) - 1
        if k == len(g.layers) - 1:
            exp.append(dict(E=0.0, r=0.0, wr=0.0, eta=0.0, phi=0.0, weta=0.0, wphi=0.0, sp=1.0, na=na))
            break
        i1, j1, i2, j2 = min(1, nr - 1), 0, 0, na // 2
        e1, e2 = 30.0 + k, 10.0
        x[0, offset + j1 * nr + i1] += e1
        x[0, offset + j2 * nr + i2] += e2
        x[0, offset + (na - 1) * nr + (nr - 1)] += 0.5 * g.threshold_mev  # below threshold: removed
        r1, r2 = 0.5 * (edges[i1] + edges[i1 + 1]), 0.5 * (edges[i2] + edges[i2 + 1])
        a1 = -math.pi + (j1 + 0.5) * 2 * math.pi / na
        a2 = -math.pi + (j2 + 0.5) * 2 * math.pi / na
        E = e1 + e2

        def cw(l1, l2):
            m = (e1 * l1 + e2 * l2) / E
            return m, math.sqrt(max((e1 * l1**2 + e2 * l2**2) / E - m * m, 0.0))

        r, wr = cw(r1, r2)
        eta, weta = cw(r1 * math.cos(a1), r2 * math.cos(a2))
        phi, wphi = cw(r1 * math.sin(a1), r2 * math.sin(a2))
        n_hit = len({(j1, i1), (j2, i2)})
        exp.append(dict(E=E, r=r, wr=wr, eta=eta, phi=phi, weta=weta, wphi=wphi, sp=1 - n_hit / (na * nr), na=na))
        offset += na * nr
    return x, exp


@pytest.mark.parametrize("name", GEOMETRIES)
def test_features_hand_computed(name):
    g = load_geometry(name)
    x, exp = _hand_shower(g)
    f = compute_features(x, np.array([1000.0]), g)
    assert len(exp) == g.n_layers
    tot = sum(e["E"] for e in exp)
    assert f.e_tot[0] == pytest.approx(tot, rel=1e-12)
    assert f.e_ratio[0] == pytest.approx(tot / 1000.0, rel=1e-12)
    assert f.voxels.max() > 0 and np.count_nonzero(f.voxels) == 2 * (g.n_layers - 1)  # threshold applied
    ja = 0
    for k, e in enumerate(exp):
        assert f.e_layers[0, k] == pytest.approx(e["E"], rel=1e-12)
        assert f.ec_r[0, k] == pytest.approx(e["r"], rel=1e-9, abs=1e-9)
        assert f.width_r[0, k] == pytest.approx(e["wr"], rel=1e-7, abs=1e-6)
        assert f.sparsity[0, k] == pytest.approx(e["sp"], rel=1e-12)
        if e["na"] > 1:
            assert f.alpha_layers[ja] == k
            assert f.ec_eta[0, ja] == pytest.approx(e["eta"], rel=1e-9, abs=1e-9)
            assert f.ec_phi[0, ja] == pytest.approx(e["phi"], rel=1e-9, abs=1e-9)
            assert f.width_eta[0, ja] == pytest.approx(e["weta"], rel=1e-7, abs=1e-6)
            assert f.width_phi[0, ja] == pytest.approx(e["wphi"], rel=1e-7, abs=1e-6)
            ja += 1
    assert ja == len(f.alpha_layers) == f.ec_eta.shape[1]
    table = f.table()
    assert table["E_ratio"][0] == pytest.approx(tot / 1000.0)
    assert len(table) == 1 + 4 * g.n_layers + 4 * len(f.alpha_layers)


def test_literal_numbers_ds1_photons_layer1():
    """Written out fully for layer 1 of dataset-1 photons (10 alpha bins, r edges 0, 2, 4, ...)."""
    g = load_geometry("1-photons")
    x = np.zeros((1, 368), dtype=np.float32)
    off = 8  # layer 0 holds 1 x 8 voxels
    x[0, off + 0 * 16 + 1] = 30.0  # alpha bin 0 (centre -0.9 pi), r bin 1 (centre 3 mm)
    x[0, off + 5 * 16 + 0] = 10.0  # alpha bin 5 (centre 0.1 pi), r bin 0 (centre 1 mm)
    x[0, off + 9 * 16 + 15] = 0.99  # below the 1 MeV threshold
    f = compute_features(x, np.array([2048.0]), g)
    eta1, phi1 = 3 * math.cos(-0.9 * math.pi), 3 * math.sin(-0.9 * math.pi)  # -2.8532, -0.9271
    eta2, phi2 = math.cos(0.1 * math.pi), math.sin(0.1 * math.pi)  # 0.9511, 0.3090
    assert f.e_layers[0].tolist() == [0.0, 40.0, 0.0, 0.0, 0.0]
    assert f.ec_r[0, 1] == pytest.approx((30 * 3 + 10 * 1) / 40)  # 2.5 mm
    assert f.width_r[0, 1] == pytest.approx(math.sqrt((30 * 9 + 10 * 1) / 40 - 2.5**2))  # sqrt(0.75)
    assert f.ec_eta[0, 0] == pytest.approx((30 * eta1 + 10 * eta2) / 40)  # -1.9021
    assert f.ec_eta[0, 0] == pytest.approx(-1.90211, abs=1e-5)
    assert f.ec_phi[0, 0] == pytest.approx((30 * phi1 + 10 * phi2) / 40)  # -0.6180
    assert f.ec_phi[0, 0] == pytest.approx(-0.618034, abs=1e-5)
    assert f.sparsity[0, 1] == pytest.approx(1 - 2 / 160)
    assert f.sparsity[0, 0] == 1.0
    assert f.e_ratio[0] == pytest.approx(40 / 2048)
    # layers 1 and 2 are the only ones binned in alpha
    assert f.alpha_layers == (1, 2)
    # an empty layer has centre 0 and width 0 (denominator regularised by 1e-16)
    assert f.ec_eta[0, 1] == 0.0 and f.width_eta[0, 1] == 0.0


def test_threshold_ds2_style():
    g = load_geometry("ds2-coarse")
    x = np.zeros((2, g.n_voxels), dtype=np.float32)
    x[:, 0] = [0.02, 0.01]  # above / below 0.5 keV / 0.033 = 0.01515 MeV
    f = compute_features(x, np.array([1e3, 1e3]), g)
    assert f.e_layers[:, 0] == pytest.approx([0.02, 0.0])
    raw = compute_features(x, np.array([1e3, 1e3]), g, apply_threshold=False)
    assert raw.e_layers[:, 0] == pytest.approx([0.02, 0.01])


def test_subset_matches_recomputation():
    from caloflows.evaluation.toy import toy_showers

    g = load_geometry("ds1-pions")
    inc, x = toy_showers(g, 50, seed=3)
    f = compute_features(x, inc, g)
    s = f.subset(slice(10, 20))
    r = compute_features(x[10:20], inc[10:20], g)
    for k in s.table():
        np.testing.assert_allclose(s.table()[k], r.table()[k])
