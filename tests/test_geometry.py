"""Voxel geometry: counts, ordering, centres, coarse-graining (review sec. 2, 8.1)."""

import math
from pathlib import Path

import numpy as np
import pytest

from caloflows.geometry import (
    GeometryError,
    available_geometries,
    coarse_grain,
    geometry_from_dict,
    load_geometry,
    parse_binning_xml,
)

BINNING = Path(__file__).resolve().parents[2] / "shared" / "calochallenge" / "binning"
XML = {
    "ds1-photons": "binning_dataset_1_photons.xml",
    "ds1-pions": "binning_dataset_1_pions.xml",
    "ds2": "binning_dataset_2.xml",
    "ds3": "binning_dataset_3.xml",
}


@pytest.mark.parametrize(
    "name,voxels,layers",
    [("ds1-photons", 368, 5), ("ds1-pions", 533, 7), ("ds2", 6480, 45), ("ds3", 40500, 45), ("ds2-coarse", 648, 9)],
)
def test_catalogue_counts(name, voxels, layers):
    g = load_geometry(name)
    assert g.n_voxels == voxels
    assert g.n_layers == layers
    assert len(g.r_centers) == len(g.eta_centers) == len(g.layer_index) == voxels


@pytest.mark.parametrize("alias,name", [("1-photons", "ds1-photons"), ("1-pions", "ds1-pions"), ("2", "ds2"), ("3", "ds3")])
def test_aliases(alias, name):
    assert load_geometry(alias) is load_geometry(name)


def test_layer_sizes_table2():
    # review table 2
    assert load_geometry("ds1-photons").layer_sizes == (8, 160, 190, 5, 5)
    assert load_geometry("ds1-pions").layer_sizes == (8, 100, 100, 5, 150, 160, 10)
    assert set(load_geometry("ds2").layer_sizes) == {144}
    assert set(load_geometry("ds3").layer_sizes) == {900}


@pytest.mark.skipif(not BINNING.exists(), reason="shared binning XMLs not present")
@pytest.mark.parametrize("name", sorted(XML))
def test_xml_matches_catalogue(name):
    g = parse_binning_xml(BINNING / XML[name])
    ref = load_geometry(name)
    assert g.same_layout(ref)
    assert g.threshold_mev == pytest.approx(ref.threshold_mev)
    assert load_geometry(str(BINNING / XML[name])).n_voxels == ref.n_voxels


def test_ordering_radius_fastest():
    g = load_geometry("ds2")
    # voxel 0..8: radial bins of first angular slice of layer 0
    assert np.allclose(g.r_centers[:9], (np.arange(9) + 0.5) * 4.65)
    assert np.all(g.alpha_centers[:9] == g.alpha_centers[0])
    assert g.alpha_centers[9] > g.alpha_centers[0]
    assert np.all(g.layer_index[:144] == 0) and g.layer_index[144] == 1
    # a shower with energy only in (layer 3, alpha 5, r 7) lands there after reshaping
    x = np.zeros((1, g.n_voxels))
    x[0, 3 * 144 + 5 * 9 + 7] = 1.0
    grid = g.to_grid(x)
    assert grid[0, 3, 5, 7] == 1.0 and grid.sum() == 1.0
    assert np.array_equal(g.from_grid(grid), x)


def test_centres_convention():
    g = load_geometry("ds2")
    l0 = g.layers[0]
    assert l0.alpha_centers[0] == pytest.approx(-math.pi + math.pi / 16)
    i = 2 * 9 + 4  # alpha bin 2, r bin 4
    r = 4.5 * 4.65
    a = -math.pi + 2.5 * 2 * math.pi / 16
    assert g.r_centers[i] == pytest.approx(r)
    assert g.eta_centers[i] == pytest.approx(r * math.cos(a))
    assert g.phi_centers[i] == pytest.approx(r * math.sin(a))
    # single angular bin: alpha centre 0, eta = r, phi = 0
    p = load_geometry("ds1-photons")
    assert p.alpha_centers[0] == pytest.approx(0.0)
    assert p.eta_centers[:8] == pytest.approx(p.r_centers[:8])
    assert p.r_centers[:3] == pytest.approx([2.5, 7.5, 20.0])


def test_layer_energies_and_split():
    g = load_geometry("ds1-pions")
    rng = np.random.default_rng(0)
    x = rng.random((4, g.n_voxels))
    e = g.layer_energies(x)
    parts = g.split_layers(x)
    assert e.shape == (4, 7)
    for i, p in enumerate(parts):
        assert p.shape == (4, g.layers[i].n_alpha, g.layers[i].n_r)
        assert np.allclose(p.sum(axis=(1, 2)), e[:, i])
    assert np.allclose(e.sum(1), x.sum(1))
    with pytest.raises(GeometryError, match="expected \\(N, 533\\)"):
        g.layer_energies(np.ones((2, 368)))


def test_coarse_grain_ds2_to_ds2_coarse():
    g = load_geometry("ds2")
    c = g.coarsen(1, 2, 5)
    assert c.same_layout(load_geometry("ds2-coarse"))
    rng = np.random.default_rng(1)
    x = rng.random((3, g.n_voxels))
    y = coarse_grain(x, g, (1, 2, 5))
    assert y.shape == (3, 648)
    assert np.allclose(y.sum(1), x.sum(1))
    grid = g.to_grid(x)
    # coarse voxel (layer 1, alpha 3, r 4) = fine layers 5..9, alpha 6..7, r 4
    assert y[0, 1 * 72 + 3 * 9 + 4] == pytest.approx(grid[0, 5:10, 6:8, 4].sum())
    # coarse angular bin centre is the mean of its two fine bins
    assert c.layers[0].alpha_centers[3] == pytest.approx(g.layers[0].alpha_centers[6:8].mean())
    with pytest.raises(GeometryError, match="does not divide"):
        coarse_grain(x, g, (2, 1, 1))
    with pytest.raises(GeometryError, match="regular"):
        load_geometry("ds1-photons").coarsen(1, 1, 1)


def test_threshold():
    g = load_geometry("ds2")
    assert g.threshold_mev == pytest.approx(0.01515, rel=1e-3)
    assert load_geometry("ds1-photons").threshold_mev == 1.0
    x = np.array([[0.01, 0.02]])
    assert np.array_equal(g.apply_threshold(x, 0.015), [[0.0, 0.02]])


def test_roundtrip_dict_and_errors(tmp_path):
    g = load_geometry("ds1-photons")
    assert geometry_from_dict(g.to_dict()).same_layout(g)
    with pytest.raises(GeometryError, match="unknown geometry 'ds9'"):
        load_geometry("ds9")
    with pytest.raises(GeometryError, match="not found"):
        load_geometry(str(tmp_path / "nope.xml"))
    bad = tmp_path / "bad.xml"
    bad.write_text("<Bins><Bin><Layer id='0' r_edges='0,x' n_bin_alpha='1'/></Bin></Bins>")
    with pytest.raises(GeometryError, match="bad.xml: malformed"):
        load_geometry(str(bad))
    assert set(available_geometries()) == {"ds1-photons", "ds1-pions", "ds2", "ds3", "ds2-coarse", "paraflow-8x16", "paraflow-24x24"}
