"""ParaFlow (``paraflow.txt``): detector conditions, crop window, eq. 1, observables (sec. 4),
the grid geometry, and (marked ``geant4``) the Geant4 detector: shard merging and physics."""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest
from scipy import ndimage

from caloflows.conditions import scale_condition, unscale_condition
from caloflows.errors import ConditionsError, EnergySpecError
from caloflows.evaluation.paraflow import (
    B_EDGES,
    D_EDGES,
    brightest_crystals,
    cluster_shares,
    compare_observables,
    hot_extent,
    mean_maps,
    n_clusters,
    paraflow_observables,
    paraflow_report,
    r9,
    shower_width,
)
from caloflows.geometry import geometry_from_dict, guess_geometry, load_geometry
from caloflows.io import ShowerWriter, merge_files, read_showers, write_showers
from caloflows.simulation.energies import parse_energy, shower_energies_mev, shower_uniforms
from caloflows.simulation.paraflow import (
    X0_FE_CM,
    bin_crystals,
    conversion_probability,
    crop_window,
    gun_positions_mm,
    parse_conditions,
    shower_conditions,
)


# ------------------------------------------------------------------ crop window
def _brute_window(img, rows=16, cols=8):
    best, org = -1.0, None
    for r in range(img.shape[0] - rows + 1):
        for c in range(img.shape[1] - cols + 1):
            s = img[r:r + rows, c:c + cols].sum()
            if s > best:
                best, org = s, (r, c)
    return best, org


def test_crop_window_finds_the_maximum_sum_window():
    rng = np.random.default_rng(0)
    imgs = rng.exponential(1.0, (20, 24, 24)) * (rng.random((20, 24, 24)) < 0.2)
    imgs[3] = 0.0
    imgs[3, 20, 3] = 7.0  # single crystal near the top-left: window clipped at the edges
    win, org = crop_window(imgs.astype(np.float32))
    assert win.shape == (20, 16, 8) and win.dtype == np.float32
    for k in range(20):
        best, o = _brute_window(imgs[k])
        assert math.isclose(float(win[k].sum(dtype=np.float64)), best, rel_tol=1e-5)
        r, c = org[k]
        np.testing.assert_array_equal(win[k], imgs[k, r:r + 16, c:c + 8].astype(np.float32))
    assert org[3].tolist() == [5, 0] and win[3].sum() == 7.0  # the first window (row-major) holding it
    # asymmetric window: 16 rows along y (bending), 8 columns along x
    img = np.zeros((24, 24))
    img[2:18, 10] = 1.0  # a 16-crystal stripe along y fits exactly
    w, o = crop_window(img)
    assert w.sum() == 16 and o[0, 0] == 2
    with pytest.raises(ValueError):
        crop_window(np.zeros((10, 10)))


def test_bin_crystals_places_deposits():
    # crystal (row iy, column ix) has its centre at x = (ix - 11.5) 22 mm, y = (iy - 11.5) 22 mm
    img = bin_crystals(np.array([0.1, -0.1, 22 * 11.9, 300.0]), np.array([-0.1, 5.0, 0.0, 0.0]), np.array([1.0, 2.0, 3.0, 4.0]))
    assert img[11, 12] == 1.0 and img[12, 11] == 2.0 and img[12, 23] == 3.0 and img.sum() == 6.0  # 300 mm is outside


# ------------------------------------------------------------------ eq. 1
def test_eq1_maps_ranges_to_minus_one_one_and_inverts():
    for lo, hi in [(0.5, 1.5), (50.0, 90.0), (20e3, 100e3)]:
        c = np.linspace(lo, hi, 101)
        t = scale_condition(c, lo, hi)
        assert t[0] == pytest.approx(-1.0, abs=1e-12) and t[-1] == pytest.approx(1.0, abs=1e-12)
        assert np.all(np.diff(t) > 0) and np.all((t >= -1 - 1e-12) & (t <= 1 + 1e-12))
        np.testing.assert_allclose(unscale_condition(t, lo, hi), c, rtol=1e-12)
    # the paper's formula at one value: d = 1 X0 in [0.5, 1.5]: 2 log(1.5)/log(2) - 1
    assert float(scale_condition(1.0, 0.5, 1.5)) == pytest.approx(2 * math.log(1.5) / math.log(2) - 1)
    with pytest.raises(ConditionsError):
        scale_condition(1.0, 2.0, 1.0)
    with pytest.raises(ConditionsError):
        scale_condition(-1.0, 0.5, 1.5)  # below c_min - 1: log undefined


# ------------------------------------------------------------------ observables
def _img(*crystals):
    a = np.zeros((1, 16, 8))
    for r, c, e in crystals:
        a[0, r, c] = e
    return a


def test_one_bright_crystal():
    o = paraflow_observables(_img((7, 3, 25e3)))
    assert o["R9"][0] == 1.0 and o["w"][0] == 0.0 and o["n_clusters"][0] == 1
    assert o["E_1"][0] == 25e3 and o["E_2"][0] == 0.0


def test_two_separated_crystals_are_two_clusters():
    a = _img((2, 1, 10e3), (12, 6, 10e3))
    assert n_clusters(a)[0] == 2
    # width: barycentre in the middle, each crystal at half the distance
    assert shower_width(a)[0] == pytest.approx(0.5 * math.hypot(10, 5))
    assert r9(a)[0] == pytest.approx(0.5)
    e1, e2 = brightest_crystals(a)
    assert e1[0] == 10e3 and e2[0] == 10e3
    # diagonal neighbours are within eps = 1.5 crystal widths: one cluster
    assert n_clusters(_img((5, 5, 1e3), (6, 6, 1e3)))[0] == 1
    # two apart (distance 2): two clusters; a crystal at or below 400 MeV does not count or bridge
    assert n_clusters(_img((5, 5, 1e3), (5, 7, 1e3)))[0] == 2
    assert n_clusters(_img((5, 5, 1e3), (5, 6, 400.0), (5, 7, 1e3)))[0] == 2
    assert n_clusters(_img((5, 5, 1e3), (5, 6, 401.0), (5, 7, 1e3)))[0] == 1
    assert n_clusters(_img((5, 5, 300.0)))[0] == 0


def test_r9_and_width_known_values():
    a = _img((8, 4, 10.0), (9, 4, 5.0), (8, 7, 5.0))  # 3x3 around (8, 4) holds 15 of 20
    assert r9(a)[0] == pytest.approx(0.75)
    # barycentre: y = (80 + 45 + 40)/20 = 8.25, x = (40 + 20 + 35)/20 = 4.75
    yb, xb = 8.25, 4.75
    w = (10 * math.hypot(8 - yb, 4 - xb) + 5 * math.hypot(9 - yb, 4 - xb) + 5 * math.hypot(8 - yb, 7 - xb)) / 20
    assert shower_width(a)[0] == pytest.approx(w)
    # brightest crystal in the window corner: the 3x3 is clipped (2x2 inside)
    b = _img((0, 0, 4.0), (1, 1, 1.0), (0, 2, 3.0))
    assert r9(b)[0] == pytest.approx(5.0 / 8.0)
    assert np.isnan(r9(np.zeros((1, 128))))[0]


def test_dbscan_clusters_equal_8_connected_components():
    rng = np.random.default_rng(1)
    imgs = rng.exponential(300.0, (200, 16, 8))
    got = n_clusters(imgs)
    want = [ndimage.label(im > 400.0, structure=np.ones((3, 3)))[1] for im in imgs]
    np.testing.assert_array_equal(got, want)
    assert got.max() >= 3


def test_hot_extent_and_cluster_shares_known_values():
    a = np.concatenate([_img((3, 4, 1e3), (9, 4, 2e3)), _img((5, 5, 1e3), (6, 5, 500.0)), _img((5, 5, 300.0)),
                        _img((0, 0, 1e3), (15, 7, 1e3), (7, 3, 1e3))])
    # rows 3..9 -> 7; rows 5..6 -> 2; nothing above 400 MeV -> 0; rows 0..15 -> 16
    np.testing.assert_array_equal(hot_extent(a), [7, 2, 0, 16])
    np.testing.assert_array_equal(hot_extent(a, e_min_mev=999.0), [7, 1, 0, 16])
    n = n_clusters(a)
    np.testing.assert_array_equal(n, [2, 1, 0, 3])
    cond = np.array([[0.6, 60.0], [0.6, 60.0], [1.4, 60.0], [1.5, 60.0]])
    s = cluster_shares(n, cond)
    assert s["all"] == [0.25, 0.25, 0.25, 0.25]
    assert s["d=0.5-0.75"] == [0.0, 0.5, 0.5, 0.0]
    assert s["d=1.25-1.5"] == [0.5, 0.0, 0.0, 0.5]  # d = 1.5 belongs to the last (closed) bin
    assert all(math.isnan(x) for x in s["d=0.75-1"])
    assert cluster_shares(np.array([0, 5, 2]), top=5)["all"] == pytest.approx([1 / 3, 0, 1 / 3, 0, 0, 1 / 3])


def test_compare_and_mean_maps():
    rng = np.random.default_rng(2)
    n = 800
    cond = np.stack([rng.uniform(0.5, 1.5, n), rng.uniform(50, 90, n)], axis=1)
    imgs = rng.exponential(500.0, (n, 128))
    obs = paraflow_observables(imgs)
    res = compare_observables(obs, obs, cond, cond)
    assert len(res) == 5 * (1 + 4 + 4)
    assert all(r.separation_power == 0.0 for r in res.values())
    assert "w/d=0.5-0.75" in res and "R9/b=80-90" in res
    # a shifted sample separates
    other = dict(obs, w=obs["w"] + 1.0)
    assert compare_observables(other, obs)["w"].separation_power > 0.5
    # mean maps: observable = d * b gives the cell means of d * b
    fake = {"w": cond[:, 0] * cond[:, 1], "R9": cond[:, 0], "n_clusters": np.ones(n)}
    m = mean_maps(fake, cond)
    assert m["w"].shape == (4, 4) and m["count"].sum() == n
    i, j = 2, 3
    sel = (cond[:, 0] >= D_EDGES[i]) & (cond[:, 0] < D_EDGES[i + 1]) & (cond[:, 1] >= B_EDGES[j]) & (cond[:, 1] <= B_EDGES[j + 1])
    assert m["w"][i, j] == pytest.approx((cond[sel, 0] * cond[sel, 1]).mean())
    assert np.all(m["n_clusters"] == 1.0)


def test_paraflow_report_writes_metrics_and_plots(tmp_path):
    rng = np.random.default_rng(3)
    n = 300
    for name, scale in (("gen", 520.0), ("ref", 500.0)):
        cond = np.stack([rng.uniform(0.5, 1.5, n), rng.uniform(50, 90, n)], axis=1)
        imgs = rng.exponential(scale, (n, 128)).astype(np.float32)
        imgs[:, 60] += rng.uniform(10e3, 50e3, n).astype(np.float32)
        write_showers(tmp_path / f"{name}.h5", rng.uniform(20e3, 100e3, n), imgs, conditions=cond,
                      condition_names=["d", "b"], geometry="paraflow-8x16")
    out = paraflow_report(str(tmp_path / "gen.h5"), str(tmp_path / "ref.h5"), tmp_path / "rep")
    m = json.loads((tmp_path / "rep" / "paraflow_metrics.json").read_text())
    assert set(m["separation_power"]) >= {"w", "R9", "n_clusters", "E_1", "E_2", "w/d=1-1.25"}
    assert m["mean_maps"]["w"]["max_abs_relative_difference"] > 0
    ref_n = n_clusters(read_showers(tmp_path / "ref.h5").showers)
    assert m["cluster_shares"]["reference"]["all"] == pytest.approx(cluster_shares(ref_n)["all"])
    assert set(m["cluster_shares"]["generated"]) == {"all", "d=0.5-0.75", "d=0.75-1", "d=1-1.25", "d=1.25-1.5"}
    assert m["hot_extent_rows"]["reference"]["all"] >= 1.0
    for f in out["plots"]:
        assert (tmp_path / "rep" / f).stat().st_size > 1000
    assert len(out["plots"]) == 8
    # files of another geometry are refused with a one-line error
    write_showers(tmp_path / "ds.h5", [1e3], np.ones((1, 648), np.float32), geometry="ds2-coarse")
    from caloflows.errors import EvaluationError

    with pytest.raises(EvaluationError, match="paraflow-8x16"):
        paraflow_report(str(tmp_path / "ds.h5"), str(tmp_path / "ref.h5"), tmp_path / "rep2")


# ------------------------------------------------------------------ geometry, io
def test_grid_geometry_in_the_catalogue():
    g = load_geometry("paraflow-8x16")
    assert g.kind == "grid" and g.is_grid and g.n_voxels == 128 and g.image_shape == (16, 8)
    assert g.cell_mm == 22.0 and g.threshold_mev == 0.0
    # flat index = row * 8 + column; centres in crystal widths around the window centre
    assert g.x_centers[:3].tolist() == [-3.5, -2.5, -1.5] and g.y_centers[8] == -6.5
    np.testing.assert_array_equal(g.eta_centers, g.x_centers)
    np.testing.assert_array_equal(g.phi_centers, g.y_centers)
    np.testing.assert_allclose(g.r_centers, np.hypot(g.x_centers, g.y_centers))
    h = geometry_from_dict(g.to_dict())
    assert h.same_layout(g) and h.kind == "grid" and not h.same_layout(load_geometry("ds2-coarse"))
    assert guess_geometry(128) is g and load_geometry("paraflow-24x24").image_shape == (24, 24)
    with pytest.raises(Exception):
        load_geometry("ds2").x_centers


def test_io_condition_units_and_extra_datasets_merge(tmp_path):
    paths = []
    for i in range(2):
        p = tmp_path / f"p{i}.h5"
        with ShowerWriter(p, 128, condition_names=("d", "b"), condition_units=("X0", "cm")) as w:
            w.append([1e3 + i, 2e3], np.full((2, 128), i, np.float32), [[1.0, 60.0], [0.6, 80.0]],
                     extra={"showers_full": np.full((2, 576), i + 1, np.float32), "converted": np.array([1, 0], np.int8)})
        paths.append(p)
    merge_files(paths, tmp_path / "m.h5")
    d = read_showers(tmp_path / "m.h5", geometry="paraflow-8x16")
    assert d.condition_names == ("d", "b") and d.condition_units == ("X0", "cm")
    with h5py.File(tmp_path / "m.h5") as f:
        assert f["showers_full"].shape == (4, 576) and f["showers_full"][2, 0] == 2 and f["converted"][()].tolist() == [1, 0, 1, 0]


# ------------------------------------------------------------------ energies, conditions
def test_uniform_energy_spec_and_condition_streams():
    s = parse_energy("U:20:100")
    assert s.kind == "uniform" and s.describe() == "uniform 20-100 GeV"
    e = shower_energies_mev(s, 4, np.arange(4000)) / 1e3
    assert e.min() >= 20 and e.max() < 100 and abs(e.mean() - 60) < 1.0 and abs(e.std() - 80 / math.sqrt(12)) < 0.8
    np.testing.assert_array_equal(shower_energies_mev(s, 4, [7, 8]) / 1e3, e[7:9])
    for bad in ("U:3", "U:5:2", "U:a:3"):
        with pytest.raises(EnergySpecError):
            parse_energy(bad)
    u = shower_uniforms(1, np.arange(10), stream=1)
    np.testing.assert_array_equal(shower_uniforms(1, [3], stream=1), u[3:4])
    assert not np.array_equal(shower_uniforms(1, np.arange(10), stream=2), u)
    with pytest.raises(ValueError):
        shower_uniforms(1, [0], stream=0)


def test_parse_conditions_and_per_shower_values():
    c = parse_conditions(None)
    assert (c["d"].lo, c["d"].hi, c["b"].lo, c["b"].hi) == (0.5, 1.5, 50.0, 90.0)
    v = shower_conditions(c, 9, np.arange(3000))
    assert v[:, 0].min() >= 0.5 and v[:, 0].max() < 1.5 and v[:, 1].min() >= 50 and v[:, 1].max() < 90
    assert abs(v[:, 0].mean() - 1.0) < 0.02 and abs(v[:, 1].mean() - 70) < 1.0
    np.testing.assert_array_equal(shower_conditions(c, 9, [5, 6]), v[5:7])
    fixed = shower_conditions(parse_conditions(["d=1.2", "b=66"]), 0, np.arange(4))
    assert np.all(fixed == [1.2, 66.0])
    for bad in (["x=1"], ["d=1:0.5"], ["d"], ["d=a"], ["b=0.5"], ["b=128"], ["d=1", "d=2"], ["d=0"]):
        with pytest.raises(ConditionsError):
            parse_conditions(bad)
    g = gun_positions_mm(0, np.arange(4000))
    assert abs(g.std(axis=0) - 44.0).max() < 2.0 and abs(g.mean(axis=0)).max() < 2.5


def test_cli_simulate_paraflow_rejects_bad_input(tmp_path, capsys):
    from caloflows.cli import main

    assert main(["simulate", "--detector", "paraflow", "--n", "2", "--condition", "d=9:1",
                 "--out", str(tmp_path / "x.h5")]) != 0
    assert "d=" in capsys.readouterr().err
    assert main(["simulate", "--detector", "paraflow", "--geometry", "ds2", "--n", "2", "--out", str(tmp_path / "x.h5")]) != 0
    assert main(["simulate", "--condition", "d=1", "--n", "2", "--out", str(tmp_path / "x.h5")]) != 0
    assert main(["simulate", "--detector", "paraflow", "--n", "2", "--energy", "U:9", "--out", str(tmp_path / "x.h5")]) != 0
    assert not (tmp_path / "x.h5").exists()


# ------------------------------------------------------------------ Geant4
@pytest.fixture(scope="module")
def g4_cache():
    """Geant4 data (official or the shared approximate-table cache)."""
    from caloflows.simulation.g4data import configure_geant4_data
    from caloflows.simulation.paraflow import PARAFLOW_Z

    return configure_geant4_data(elements=PARAFLOW_Z)


@pytest.mark.geant4
def test_paraflow_shards_merge_bit_identically(g4_cache, tmp_path):
    from caloflows.simulation.paraflow import simulate_paraflow

    kw = dict(energy="U:20:25", n=4, seed=2, store="full", progress=False)
    full = simulate_paraflow(out=tmp_path / "full.h5", jobs=2, **kw)[0]
    shards = [simulate_paraflow(out=tmp_path / f"s{i}.h5", jobs=1, shard=f"{i}/2", **kw)[0] for i in range(2)]
    merge_files(shards, tmp_path / "m.h5")
    with h5py.File(full) as a, h5py.File(tmp_path / "m.h5") as b:
        assert set(a.keys()) == set(b.keys()) >= {"showers", "showers_full", "conditions", "converted", "window_origin"}
        for k in a.keys():
            assert a[k][()].tobytes() == b[k][()].tobytes(), k
        full_img = a["showers_full"][()].reshape(-1, 24, 24)
        win, org = crop_window(full_img)
        np.testing.assert_array_equal(win.reshape(-1, 128), a["showers"][()])
        np.testing.assert_array_equal(org, a["window_origin"][()])
        # < 1 % of the energy outside the window (paper sec. 3), most of it deposited
        frac_out = 1 - a["showers"][()].sum(1) / full_img.sum((1, 2))
        assert np.all(frac_out < 0.02) and frac_out.mean() < 0.01
        assert np.all(full_img.sum((1, 2)) / a["incident_energies"][:, 0] > 0.85)
    d = read_showers(full, geometry="paraflow-8x16")
    assert d.condition_names == ("d", "b") and d.condition_units == ("X0", "cm") and d.attrs["geometry"] == "paraflow-8x16"
    with pytest.raises(Exception, match="exists"):
        simulate_paraflow(out=full, jobs=1, **kw)


@pytest.mark.geant4
def test_conversion_fraction_follows_seven_ninths_law(g4_cache):
    """1 - exp(-7/9 d/X0) at d = 0.5 and 1.5 X0 within 3 sigma (binomial) plus the approach of
    the pair cross section to its high-energy limit (a few % at 20-100 GeV); vacuum instead of
    crystals: conversions only."""
    from caloflows.simulation.paraflow import simulate_paraflow_raw

    n = 400
    e = shower_energies_mev(parse_energy("U:20:100"), 0, np.arange(n))
    for d, b in ((0.5, 55.0), (1.5, 85.0)):  # the worker starts with a (1 X0, 70 cm) plate
        r = simulate_paraflow_raw(e, np.tile([d, b], (n, 1)), calorimeter=False, seed=int(d * 10))
        conv = np.isfinite(r.conversion_z_mm)
        f, p = conv.mean(), float(conversion_probability(d))
        sigma = math.sqrt(p * (1 - p) / n)
        assert abs(f - p) < 3 * sigma + 0.03 * p, (d, f, p)
        # conversions lie inside the re-dimensioned plate (centre -b, half-thickness d X0 / 2)
        z = r.conversion_z_mm[conv]
        assert np.all(np.abs(z + 10 * b) <= 0.5 * d * X0_FE_CM * 10 + 1e-6)
        assert np.ptp(z) > 0.8 * d * X0_FE_CM * 10  # spread over the whole thickness
    # plates changing from shower to shower inside one worker
    conds = np.array([[0.5, 52.0], [1.5, 88.0]] * 100)
    r = simulate_paraflow_raw(e[:200], conds, calorimeter=False, seed=3)
    conv = np.isfinite(r.conversion_z_mm)
    assert np.all(np.abs(r.conversion_z_mm[conv] + 10 * conds[conv, 1]) <= 0.5 * conds[conv, 0] * X0_FE_CM * 10 + 1e-6)
    assert conv[1::2].mean() > conv[0::2].mean() + 0.15


@pytest.mark.geant4
def test_converted_showers_are_wider_along_the_bending_direction(g4_cache):
    """4 T along x bends e+ and e- along y: converted photons (d = 1.5 X0, b = 90 cm) spread
    their energy along y much more than along x; unconverted ones are round."""
    from caloflows.simulation.paraflow import simulate_paraflow_raw

    n = 16
    r = simulate_paraflow_raw(np.full(n, 20e3), np.tile([1.5, 90.0], (n, 1)), seed=5)
    yy, xx = np.meshgrid(np.arange(24.0), np.arange(24.0), indexing="ij")
    e = r.images.sum((1, 2))
    my = (r.images * yy).sum((1, 2)) / e
    mx = (r.images * xx).sum((1, 2)) / e
    sy = np.sqrt((r.images * (yy - my[:, None, None]) ** 2).sum((1, 2)) / e)
    sx = np.sqrt((r.images * (xx - mx[:, None, None]) ** 2).sum((1, 2)) / e)
    conv = np.isfinite(r.conversion_z_mm)
    assert 5 <= conv.sum() <= 15
    assert np.median(sy[conv] / sx[conv]) > 1.5
    assert np.median(sy[~conv] / sx[~conv]) < 1.3
    assert shower_width(crop_window(r.images)[0])[conv].mean() > shower_width(crop_window(r.images)[0])[~conv].mean()


@pytest.mark.geant4
@pytest.mark.slow
def test_approximate_tables_cover_pbwo4_and_iron(tmp_path):
    """Without official data, tables are generated for every element of the detector (O, Fe, W, Pb)."""
    import os

    from caloflows.simulation.g4data import APPROX_VERSION, configure_geant4_data
    from caloflows.simulation.paraflow import PARAFLOW_Z

    saved = {k: os.environ.get(k) for k in ("G4LEDATA", "G4LEVELGAMMADATA", "G4ENSDFSTATEDATA", "GEANT4_DATA_DIR")}
    try:
        cfg = configure_geant4_data(tmp_path, elements=PARAFLOW_Z, force_approximate=True)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert cfg.tables == "approximate"
    le = tmp_path / APPROX_VERSION / "G4EMLOW"
    for z in (8, 26, 74, 82):
        assert (le / "brem_SB" / f"br{z}").stat().st_size > 1000
        assert (le / "epics2017" / "phot" / f"pe-cs-{z}.dat").exists()


def test_evaluate_runs_on_grid_geometry_files(tmp_path):
    """The CaloChallenge-style evaluation accepts paraflow-8x16 files (geometry from the file
    attribute): histograms in crystal widths, correlations, average images."""
    from caloflows.evaluation.api import evaluate

    rng = np.random.default_rng(4)
    n = 200
    for name in ("g", "r"):
        imgs = rng.exponential(300.0, (n, 128)).astype(np.float32)
        imgs[:, 60] += rng.uniform(10e3, 50e3, n).astype(np.float32)
        write_showers(tmp_path / f"{name}.h5", rng.uniform(20e3, 100e3, n), imgs, conditions=rng.uniform(0.5, 1.5, (n, 2)),
                      condition_names=["d", "b"], geometry="paraflow-8x16")
    res = evaluate(str(tmp_path / "g.h5"), str(tmp_path / "r.h5"), metrics="hist,corr", out=tmp_path / "rep")
    assert res["inputs"]["geometry"] == "paraflow-8x16" and res["inputs"]["n_voxels"] == 128
    assert (tmp_path / "rep" / "average_showers.png").stat().st_size > 1000
    text = json.dumps(res, default=str)
    assert "EC_eta" in text and "voxel" in text


def test_high_level_features_on_the_grid():
    """CaloChallenge features of a grid geometry: eta = x, phi = y in crystal widths around the
    window centre, r = distance from it (hand-computed for two crystals)."""
    from caloflows.evaluation.features import compute_features

    g = load_geometry("paraflow-8x16")
    x = np.zeros((1, 128), np.float32)
    x[0, 8 * 8 + 4] = 30.0  # row 8, column 4: x = 0.5, y = 0.5
    x[0, 2 * 8 + 0] = 10.0  # row 2, column 0: x = -3.5, y = -5.5
    f = compute_features(x, np.array([100.0]), g)
    assert f.e_layers[0, 0] == 40.0
    assert f.ec_eta[0, 0] == pytest.approx((30 * 0.5 - 10 * 3.5) / 40)
    assert f.ec_phi[0, 0] == pytest.approx((30 * 0.5 - 10 * 5.5) / 40)
    r1, r2 = math.hypot(0.5, 0.5), math.hypot(3.5, 5.5)
    assert f.ec_r[0, 0] == pytest.approx((30 * r1 + 10 * r2) / 40)
    assert f.width_eta[0, 0] == pytest.approx(math.sqrt((30 * 0.25 + 10 * 12.25) / 40 - ((30 * 0.5 - 35) / 40) ** 2))
    assert f.sparsity[0, 0] == pytest.approx(1 - 2 / 128)
