"""Tests of the Geant4 reference-shower simulation (caloflows.simulation, caloflows simulate).

Fast tests check the energy/seed bookkeeping, the approximate-table physics (Tsai cross
section against the PDG radiation lengths) and the voxelisation.  Tests marked ``geant4``
run real Geant4 showers in worker processes (few showers, about a minute in all).
"""

from __future__ import annotations

import math
import os

import h5py
import numpy as np
import pytest

from caloflows.geometry import coarse_grain, load_geometry
from caloflows.io import merge_files, read_showers
from caloflows.simulation import (
    output_paths,
    parse_energy,
    parse_shard,
    shard_range,
    shower_energies_mev,
    shower_seeds,
)
from caloflows.simulation.energies import EnergySpecError
from caloflows.simulation.g4data import tsai_k_dsigma_dk_mb, write_brem_table
from caloflows.simulation.par04 import X0_W_MM, voxelise

N_AVOGADRO = 6.02214076e23


# ------------------------------------------------------------------ energies and seeds
def test_parse_energy_forms():
    s = parse_energy("1:100")
    assert s.kind == "loguniform" and (s.lo_gev, s.hi_gev) == (1.0, 100.0)
    p = parse_energy("pow2:1:64")
    assert p.values_gev == (1, 2, 4, 8, 16, 32, 64)
    assert parse_energy("pow2:0.25:5").values_gev == (0.25, 0.5, 1, 2, 4)
    assert parse_energy("10").values_gev == (10.0,)
    assert parse_energy("1,3").values_gev == (1.0, 3.0)
    for bad in ["", "a:b", "10:1", "-1", "pow2:3:3.5", "1:2:3", "0"]:
        with pytest.raises(EnergySpecError):
            parse_energy(bad)


def test_energies_are_a_function_of_seed_and_index_only():
    spec = parse_energy("1:100")
    full = shower_energies_mev(spec, 7, np.arange(50))
    np.testing.assert_array_equal(shower_energies_mev(spec, 7, [10, 11, 12]), full[10:13])
    assert np.all((full >= 1e3) & (full <= 1e5))
    # log-uniform: ln E uniform on [0, ln 100]
    many = shower_energies_mev(spec, 1, np.arange(4000))
    u = np.log(many / 1e3) / math.log(100)
    assert abs(u.mean() - 0.5) < 0.02 and abs(u.var() - 1 / 12) < 0.01
    assert not np.array_equal(shower_energies_mev(spec, 8, np.arange(50)), full)
    seeds = shower_seeds(7, np.arange(50))
    np.testing.assert_array_equal(shower_seeds(7, [3, 4]), seeds[3:5])
    assert len(np.unique(seeds)) == 50 and seeds.min() > 0 and seeds.max() < 2**31
    disc = shower_energies_mev(parse_energy("pow2:1:4"), 0, np.arange(6))
    np.testing.assert_array_equal(disc, [1e3, 2e3, 4e3, 1e3, 2e3, 4e3])


def test_shards_partition_the_run():
    for n, k in [(10, 3), (7, 7), (100, 8)]:
        ranges = [shard_range(n, (i, k)) for i in range(k)]
        assert ranges[0][0] == 0 and ranges[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert parse_shard("2/5") == (2, 5) and parse_shard(None) == (0, 1)
    for bad in ["5/5", "x", "1/0", "-1/2"]:
        with pytest.raises(ValueError):
            parse_shard(bad)


def test_output_paths():
    g2, gc = load_geometry("ds2"), load_geometry("ds2-coarse")
    assert output_paths("a/x.h5", [g2]) == ["a/x.h5"]
    assert output_paths("a/x.h5", [g2, gc]) == ["a/x_ds2.h5", "a/x_ds2-coarse.h5"]
    assert output_paths("run_{geometry}.h5", [g2, gc]) == ["run_ds2.h5", "run_ds2-coarse.h5"]


# ----------------------------------------------------------- approximate table physics
@pytest.mark.parametrize("z,a,x0_g_cm2", [(74, 183.84, 6.76), (14, 28.0855, 21.82)])
def test_tsai_cross_section_gives_pdg_radiation_length(z, a, x0_g_cm2):
    """Energy-weighted integral of k dsigma/dk over y = k/E at high energy equals A/(N_A X0)
    (Tsai 1974 eq. 3.9 integrates to his X0 formula, up to his neglected 1/18 term)."""
    t = 1e6  # 1 TeV: complete screening
    kappa = np.linspace(1e-9, 1 - 1e-9, 20001)
    val = tsai_k_dsigma_dk_mb(z, t, kappa)
    integral_mb = np.trapezoid(val, kappa) * t / (t + 0.511)
    expected_mb = a / (N_AVOGADRO * x0_g_cm2) / 1e-27
    assert integral_mb == pytest.approx(expected_mb, rel=0.03)


def test_brem_table_format():
    lines = write_brem_table(74).splitlines()
    k, nx, ny = (int(v) for v in lines[0].split())
    assert k == 2
    kap = np.array(lines[1].split(), dtype=float)
    logt = np.array(lines[2].split(), dtype=float)
    rows = np.array([r.split() for r in lines[3:]], dtype=float)
    assert len(kap) == nx and len(logt) == ny and rows.shape == (ny, nx)
    assert np.all(np.diff(kap) > 0) and kap[-1] == 1.0 and np.all(np.diff(logt) > 0)
    assert logt[0] == pytest.approx(math.log(1e-3)) and logt[-1] == pytest.approx(math.log(1e4))
    assert np.all(rows >= 0) and np.all(np.isfinite(rows))
    # 10 GeV, kappa -> 0 (complete screening, beta = 1), by hand for W (ln Z = 4.304, f = 0.2817):
    # alpha r_e^2 {4/3 [Z^2 (20.863 - 5.739 - 1.127) + Z (28.340 - 11.477)] + 4/9 (Z^2 + Z)} / Z^2
    # = 0.57946 mb x 106330 / 5476 = 11.25 mb
    assert rows[-1, 0] == pytest.approx(11.25, rel=2e-3)
    # the spectrum k dsigma/dk falls towards the tip kappa -> 1 at high energy
    assert rows[-1, -1] < rows[-1, 0]


# ------------------------------------------------------------------- data detection
def _restore_env(saved: dict) -> None:
    os.environ.clear()
    os.environ.update(saved)


def test_official_data_sets_are_preferred(tmp_path):
    from caloflows.simulation.g4data import configure_geant4_data

    root = tmp_path / "g4data"
    (root / "G4EMLOW8.8" / "brem_SB").mkdir(parents=True)
    (root / "PhotonEvaporation6.1.2").mkdir()
    saved = dict(os.environ)
    try:
        for k in ("G4LEDATA", "G4LEVELGAMMADATA", "G4ENSDFSTATEDATA"):
            os.environ.pop(k, None)
        os.environ["GEANT4_DATA_DIR"] = str(root)
        cfg = configure_geant4_data(tmp_path / "cache")
        assert cfg.tables == "official"
        assert os.environ["G4LEDATA"] == str(root / "G4EMLOW8.8")
        assert os.environ["G4LEVELGAMMADATA"] == str(root / "PhotonEvaporation6.1.2")
        # missing ENSDFSTATE: an empty stand-in (accepted by Geant4)
        assert (tmp_path / "cache").rglob("ENSDFSTATE.dat")
        assert os.path.getsize(os.path.join(os.environ["G4ENSDFSTATEDATA"], "ENSDFSTATE.dat")) == 0
        # a cache of approximate tables is never mistaken for official data
        (root / "G4EMLOW8.8" / "CALOFLOWS_APPROXIMATE").write_text("")
        os.environ.pop("G4LEDATA")
        os.environ["GEANT4_DATA_DIR"] = str(tmp_path / "nothing")
        from caloflows.simulation import g4data

        assert g4data._find_official() is None or "G4EMLOW8.8" not in g4data._find_official()["G4LEDATA"]
    finally:
        _restore_env(saved)


# ---------------------------------------------------------------------- voxelisation
def test_voxelise_places_deposits_in_the_right_voxels():
    g = load_geometry("ds2")
    lay = g.layers[0]
    # one deposit per case: (x, y, readout layer, E)
    x = np.array([5.0, -5.0, 1.0, 100.0])
    y = np.array([0.1, -0.1, 20.0, 0.0])
    layer = np.array([0, 3, 44, 2])
    e = np.array([1.0, 2.0, 3.0, 4.0])
    v = voxelise(x, y, layer, e, g)
    assert v.sum() == pytest.approx(6.0)  # the deposit at r = 100 mm is outside the readout
    for xi, yi, li, ei in zip(x[:3], y[:3], layer[:3], e[:3]):
        r, a = math.hypot(xi, yi), math.atan2(yi, xi)
        ir = int(np.searchsorted(lay.r_edges, r, side="right") - 1)
        ia = int(np.argmin(np.abs(lay.alpha_centers - a)))
        flat = g.layer_offsets[li] + ia * lay.n_r + ir
        assert v[flat] == ei
        assert g.r_centers[flat] == pytest.approx(r, abs=max(np.diff(lay.r_edges)))
        # eta = x, phi = y (CaloChallenge convention)
        assert np.sign(g.eta_centers[flat]) == np.sign(xi) or xi == 0
        assert np.sign(g.phi_centers[flat]) == np.sign(yi)


def test_voxelise_coarse_geometry_equals_coarse_graining():
    rng = np.random.default_rng(0)
    n = 5000
    x, y = rng.normal(0, 8, n), rng.normal(0, 8, n)
    layer = rng.integers(0, 45, n)
    e = rng.exponential(1.0, n)
    g2, gc = load_geometry("ds2"), load_geometry("ds2-coarse")
    fine = voxelise(x, y, layer, e, g2)
    coarse = voxelise(x, y, layer, e, gc)
    np.testing.assert_allclose(coarse_grain(fine[None], g2, (1, 2, 5))[0], coarse, rtol=1e-12, atol=1e-12)
    g3 = load_geometry("ds3")
    inside = np.hypot(x, y) < g3.r_max
    assert voxelise(x, y, layer, e, g3).sum() == pytest.approx(e[inside].sum())


# ------------------------------------------------------------------------ Geant4 runs
@pytest.fixture(scope="module")
def g4_cache(tmp_path_factory):
    """Approximate tables generated into a fresh cache (unless official data are installed)."""
    d = tmp_path_factory.mktemp("g4data")
    old = os.environ.get("CALOFLOWS_G4DATA_CACHE")
    os.environ["CALOFLOWS_G4DATA_CACHE"] = str(d)
    yield d
    if old is None:
        os.environ.pop("CALOFLOWS_G4DATA_CACHE", None)
    else:
        os.environ["CALOFLOWS_G4DATA_CACHE"] = old


@pytest.mark.geant4
def test_approximate_tables_are_generated(tmp_path):
    from caloflows.simulation.g4data import APPROX_VERSION, configure_geant4_data

    saved = {k: os.environ.get(k) for k in ("G4LEDATA", "G4LEVELGAMMADATA", "G4ENSDFSTATEDATA", "GEANT4_DATA_DIR")}
    try:
        cfg = configure_geant4_data(tmp_path, force_approximate=True)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert cfg.tables == "approximate" and cfg.attrs()["geant4_tables"] == "approximate"
    le = tmp_path / APPROX_VERSION / "G4EMLOW"
    assert (tmp_path / APPROX_VERSION / "G4ENSDFSTATE" / "ENSDFSTATE.dat").exists()
    for z in (1, 14, 74):
        assert (le / "brem_SB" / f"br{z}").stat().st_size > 1000
        for kind in ("cs", "high", "low"):
            assert (le / "epics2017" / "phot" / f"pe-{kind}-{z}.dat").exists()
    # pe-high of W: one shell, Sandia coefficients; sigma(1 MeV) of the right size (XCOM: ~5 b)
    n1, n2, e_thr, e_b, *a = np.array((le / "epics2017" / "phot" / "pe-high-74.dat").read_text().split(), dtype=float)
    assert (n1, n2) == (1, 1) and len(a) == 6 and 0 < e_b < e_thr
    sigma_1mev = sum(c / 1.0 ** (i + 1) for i, c in enumerate(a))
    assert 2.0 < sigma_1mev < 10.0
    cs = (le / "epics2017" / "phot" / "pe-cs-74.dat").read_text().split()
    n = int(cs[3])
    pairs = np.array(cs[4:], dtype=float).reshape(-1, 2)
    assert len(pairs) == n and int(cs[2]) == n and np.all(np.diff(pairs[:, 0]) > 0) and np.all(pairs[:, 1] > 0)
    # Geant4 reads this table with spline interpolation: the spline must stay positive
    from scipy.interpolate import CubicSpline

    x = np.geomspace(pairs[0, 0], pairs[-1, 0], 100_000)
    assert CubicSpline(pairs[:, 0], pairs[:, 1])(x).min() > 0


@pytest.fixture(scope="module")
def raw_showers(g4_cache):
    """10 GeV (8 showers) and 100 GeV (3 showers) electrons: raw silicon deposits."""
    from caloflows.simulation import runner

    e = [10e3] * 8 + [100e3] * 3
    return runner.simulate_deposits("e-", e, shower_seeds(11, np.arange(len(e))))


def _profile(deposits):
    return sum(np.bincount(l, weights=e, minlength=45) for _, _, l, e in deposits)


def _shower_max_x0(profile):
    """Depth of the maximum of the mean longitudinal profile in X0 of tungsten (a readout layer
    holds 2 x 1.4 mm W = 0.80 X0), from a parabola through the peak layer and its neighbours."""
    i = int(np.argmax(profile))
    a, b, c = profile[i - 1], profile[i], profile[i + 1]
    off = 0.5 * (a - c) / (a - 2 * b + c)
    return (i + 0.5 + off) * 2 * 1.4 / X0_W_MM


@pytest.mark.geant4
def test_physics_sanity(raw_showers):
    r = raw_showers
    assert len(r.deposits) == 11
    e10, e100 = r.deposits[:8], r.deposits[8:]
    # silicon fraction of the energy (before the 1/0.033 scaling): 2-2.5 % with option 1
    frac = [d[3].sum() * 0.033 / 10e3 for d in e10]
    assert 0.020 < np.mean(frac) < 0.026
    # more than 95 % inside the ds2 radial extent
    rmax = load_geometry("ds2").r_max
    for x, y, _, e in r.deposits:
        assert e[np.hypot(x, y) < rmax].sum() / e.sum() > 0.95
    # shower maximum moves with ln E: ~5 X0 at 10 GeV, ~8.5 X0 at 100 GeV.  The bounds allow
    # for the fluctuation of the peak of a few-shower mean profile (about +-0.8 X0 for 3
    # showers at 100 GeV, measured over independent seeds)
    t10, t100 = _shower_max_x0(_profile(e10)), _shower_max_x0(_profile(e100))
    assert 4.0 < t10 < 7.0
    assert 6.8 < t100 < 10.5
    assert t100 - t10 > 1.0


@pytest.fixture(scope="module")
def sim_runs(g4_cache, tmp_path_factory):
    """The same run of 6 showers: unsharded on 2 workers (ds2 and ds2-coarse), as 2 shards
    on 1 worker each, and again unsharded on 1 worker."""
    from caloflows.simulation import simulate

    d = tmp_path_factory.mktemp("sim")
    kw = dict(particle="e-", energy="1:8", n=6, seed=5, progress=False)
    full = simulate(["ds2", "ds2-coarse"], out=str(d / "full_{geometry}.h5"), jobs=2, **kw)
    shards = [simulate("ds2-coarse", out=str(d / f"s{i}.h5"), shard=f"{i}/2", jobs=1, **kw)[0] for i in range(2)]
    merge_files(shards, d / "merged.h5")
    again = simulate("ds2-coarse", out=str(d / "again.h5"), jobs=1, **kw)[0]
    return {"full": full, "shards": shards, "merged": str(d / "merged.h5"), "again": again, "dir": d}


def _datasets(path):
    with h5py.File(path, "r") as f:
        return f["incident_energies"][()], f["showers"][()]


@pytest.mark.geant4
def test_shard_merge_equals_unsharded_run(sim_runs):
    inc_full, sh_full = _datasets(sim_runs["full"][1])
    inc_m, sh_m = _datasets(sim_runs["merged"])
    assert sh_full.shape == (6, 648)
    assert inc_full.tobytes() == inc_m.tobytes()
    assert sh_full.tobytes() == sh_m.tobytes()  # bitwise
    np.testing.assert_array_equal(inc_full[:, 0], shower_energies_mev(parse_energy("1:8"), 5, np.arange(6)))
    inc_s1, _ = _datasets(sim_runs["shards"][1])
    np.testing.assert_array_equal(inc_s1, inc_full[3:])


@pytest.mark.geant4
def test_seeds_reproducible(sim_runs):
    assert _datasets(sim_runs["again"])[1].tobytes() == _datasets(sim_runs["full"][1])[1].tobytes()
    # different showers within a run differ
    sh = _datasets(sim_runs["again"])[1]
    assert not np.array_equal(sh[0], sh[1])


@pytest.mark.geant4
def test_output_files_valid_and_record_provenance(sim_runs):
    ds2 = read_showers(sim_runs["full"][0], geometry="ds2")
    coarse = read_showers(sim_runs["full"][1], geometry="ds2-coarse")
    g2 = load_geometry("ds2")
    assert ds2.showers.shape == (6, 6480)
    # the threshold is applied per written voxel
    nz = ds2.showers[ds2.showers > 0]
    assert nz.min() >= g2.threshold_mev
    # same showers in both geometries: the coarse file holds at least the fine energy (fewer
    # sub-threshold losses) and at most the un-thresholded total
    e_fine, e_coarse = ds2.showers.sum(1), coarse.showers.sum(1)
    assert np.all(e_coarse >= e_fine * (1 - 1e-6)) and np.all(e_coarse <= e_fine * 1.05)
    np.testing.assert_array_equal(ds2.incident_energies, coarse.incident_energies)
    ratio = e_fine / ds2.incident_energies
    assert np.all((ratio > 0.4) & (ratio < 0.95))
    for a in (ds2.attrs, coarse.attrs):
        assert "G4EmStandardPhysics_option1" in a["physics_list"]
        assert a["geant4_tables"] in ("official", "approximate")
        assert a["particle"] == "e-" and int(a["seed"]) == 5 and a["energy_spec"] == "1:8"
    assert ds2.attrs["geometry"] == "ds2" and coarse.attrs["geometry"] == "ds2-coarse"


@pytest.mark.geant4
def test_cli_simulate_and_info(g4_cache, tmp_path, capsys):
    from caloflows.cli import main

    out = tmp_path / "x.h5"
    rc = main(["simulate", "--geometry", "ds2-coarse", "--particle", "gamma", "--energy", "pow2:1:2",
               "--n", "2", "--out", str(out), "--jobs", "1", "--no-progress"])
    assert rc == 0 and out.exists()
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "geant4_tables" in text and "G4EmStandardPhysics_option1" in text
    d = read_showers(out)
    np.testing.assert_array_equal(d.incident_energies, [1e3, 2e3])


def test_cli_simulate_rejects_bad_input(tmp_path, capsys):
    from caloflows.cli import main

    out = tmp_path / "bad.h5"
    for args in (["--geometry", "ds1-photons"], ["--energy", "3:x"], ["--shard", "2/2"], ["--particle", "mu-"]):
        try:
            rc = main(["simulate", "--n", "2", "--out", str(out), *args])
        except SystemExit as exc:  # argparse choices
            rc = exc.code
        assert rc == 2
        err = capsys.readouterr().err
        assert "error" in err and "Traceback" not in err
    assert not out.exists() and os.listdir(tmp_path) == []
