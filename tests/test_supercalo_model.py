"""SuperCalo generator family (arXiv:2308.11700): exact upsampling, resampling, save/load, CLI modes.

Tiny models on ds2-coarse (9 layers x 8 alpha x 9 r): choice B (3 r x 4 alpha x 1 z, f_z = 1: FLOW-1 is
the coarse CaloFlow's flow-I) and 1 r x 2 alpha x 3 z (f_z = 3: SuperCalo's own fine FLOW-1).
"""

import numpy as np
import pytest
import torch

from caloflows import api
from caloflows import flows as F
from caloflows.cli import main as cli_main
from caloflows.conditions import Conditions, ConditionSpec
from caloflows.errors import ConfigError, ModelDirError, ShowerFileError, UsageError
from caloflows.geometry import load_geometry
from caloflows.io import ShowerData, read_showers, write_showers
from caloflows.lean import int8_supported
from caloflows.models import load_model
from caloflows.models.supercalo import SuperCalo, SuperCaloConfig
from caloflows.toy_showers import toy_showers

torch.set_num_threads(1)

GEOMETRY = "ds2-coarse"
TINY = ["coarse.flow1_transforms=1", "coarse.flow1_hidden=[8]", "coarse.flow2_transforms=1", "coarse.flow2_hidden=16",
        "coarse.student_hidden=16", "coarse.bins=4", "flow1_transforms=1", "flow1_hidden=[8]", "up_transforms=1",
        "up_hidden=[8]", "up_bins=4", "bins=4"]
TRAIN = {"epochs": 1, "batch_size": 64, "val_fraction": 0.2}


def _data(n=60, params=False, seed=0):
    einc, sh = toy_showers(load_geometry(GEOMETRY), n, seed=seed)
    if not params:
        return ShowerData(einc, sh)
    rng = np.random.default_rng(seed)
    d, b = rng.uniform(0.5, 1.5, n), rng.uniform(50, 90, n)
    return ShowerData(einc, (sh * (1.2 - 0.3 * d)[:, None]).astype(np.float32), np.column_stack([d, b]), ("d", "b"))


def _fit(tmp, grouping, params=False, distill=False):
    data = _data(params=params)
    path = tmp / "train.h5"
    write_showers(path, data.incident_energies, data.showers, conditions=data.conditions,
                  condition_names=data.condition_names or None)
    cfg = SuperCaloConfig.preset("quick", GEOMETRY).override(TINY + [f"coarse_graining={grouping}"]).replace_train(**TRAIN)
    spec = ConditionSpec.fit(Conditions.from_data(data)) if params else ConditionSpec()
    m = SuperCalo(GEOMETRY, cfg, spec)
    m.fit(path, tmp / "m", progress=False)
    if distill:
        m.fit(path, tmp / "m", stage="distill", progress=False)
    return m, data, path


@pytest.fixture(scope="module")
def model_b(tmp_path_factory):
    return _fit(tmp_path_factory.mktemp("b"), "B")


@pytest.fixture(scope="module")
def model_a(tmp_path_factory):
    return _fit(tmp_path_factory.mktemp("a"), "1x2x3", distill=True)


def test_coarse_graining_and_nested_model(model_b, model_a):
    mb, ma = model_b[0], model_a[0]
    assert (mb.cmap.n_coarse, mb.cmap.group_size, mb.flow1) == (54, 12, None)  # FLOW-1 = coarse flow-I
    assert (ma.cmap.n_coarse, ma.cmap.group_size) == (108, 6) and ma.flow1 is not None
    assert ma.coarse.geometry.n_voxels == 108 and ma.coarse.geometry.n_layers == 3
    with pytest.raises(ConfigError, match="coarse_graining"):
        SuperCaloConfig.preset("quick", GEOMETRY).override(["coarse_graining=2x2"])
    with pytest.raises(ConfigError, match="coarse_graining='A' does not fit geometry 'ds2-coarse'"):
        SuperCalo(GEOMETRY, SuperCaloConfig.preset("quick", GEOMETRY))  # 5 layers per coarse voxel, 9 layers


def test_a_saved_config_without_a_newer_coarse_setting_takes_it_as_an_override():
    d = SuperCaloConfig.preset("quick", GEOMETRY).to_dict()
    for key in ("voxel_standardise", "voxel_bound"):  # a model directory written before stop 20
        del d["coarse"][key]
    old = SuperCaloConfig.from_dict(d)
    assert old.coarse_config().voxel_standardise is True and old.coarse_config().voxel_bound is None
    new = old.override(["coarse.voxel_standardise=false", "coarse.voxel_bound=14"])
    assert new.coarse_config().voxel_standardise is False and new.coarse_config().voxel_spline_bound == 14.0
    with pytest.raises(ConfigError, match="unknown SuperCalo setting 'coarse.no_such'"):
        old.override(["coarse.no_such=1"])


@pytest.mark.parametrize("which", ["model_b", "model_a"])
def test_upsampled_fine_voxels_sum_exactly_to_their_coarse_voxel(which, request):
    m, data, _ = request.getfixturevalue(which)
    gen = torch.Generator().manual_seed(3)
    einc = torch.as_tensor(data.incident_energies[:6], dtype=torch.float64)
    coarse, E = m.sample_coarse(einc, torch.zeros(6, 0, dtype=torch.float64), gen, "teacher")
    c = coarse.numpy()
    assert (c[c > 0] >= m.cut).all()  # the cut applies to FLOW-2's output
    m.batch_rows = 250  # several SUPERCALO calls per batch of showers
    try:
        fine = m._upsample_rows(c, einc.numpy(), E.numpy(), np.zeros((6, 0)), gen)  # float32 flow, float64 sums
    finally:
        m.batch_rows = SuperCalo.batch_rows
    np.testing.assert_allclose(m.cmap.coarse_grain(fine), c, rtol=1e-12, atol=1e-12)
    assert ((fine == 0) | (fine >= m.cut)).all()
    # the public path (float32 file precision) and the full chain
    up = m.upsample(c, einc.numpy(), seed=1)
    np.testing.assert_allclose(m.cmap.coarse_grain(up.showers.astype(np.float64)), c, rtol=1e-5, atol=1e-6)


def _active_conditions(m, data, n=4):
    from caloflows.superres import build_conditions

    fine = data.showers[:n].astype(np.float64)
    c = m.cmap.coarse_grain(fine)
    cond = build_conditions(data.incident_energies[:n], c, m.geometry.layer_energies(fine), m.cmap, m.prep)
    return c, cond.reshape(n * m.cmap.n_coarse, -1)


@pytest.mark.parametrize("which", ["model_b", "model_a"])
def test_float32_upsampling_matches_float64_and_zuko_on_a_fixed_latent(which, request):
    from caloflows import flows as F
    from caloflows.superres import assemble_fine

    m, data, _ = request.getfixturevalue(which)
    c, cond = _active_conditions(m, data)
    z = torch.randn(len(cond), m.cmap.group_size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    r64 = m.sample_relative(cond, precision="float64", z=z)
    r32 = m.sample_relative(cond, precision="float32", z=z)
    with F.double_precision(m.upflow), torch.no_grad():  # zuko's own inverse, float64
        y = F.inverse_path(m.upflow, z, torch.as_tensor(cond), fast=False)[0]
    np.testing.assert_allclose(r64, m.prep.target_inverse(y), rtol=1e-9, atol=1e-12)
    assert next(m.upflow.parameters()).dtype == torch.float32  # the float64 snapshot is a copy
    f64, f32 = (assemble_fine(r.reshape(len(c), m.cmap.n_coarse, -1), c, m.cmap, m.cut) for r in (r64, r32))
    both = (f64 > 0) & (f32 > 0)
    assert both.sum() > 100 and ((f64 > 0) == (f32 > 0)).mean() > 0.999
    assert np.max(np.abs(f32 - f64)[both] / f64[both]) < 1e-3
    on = c >= m.cut  # exact renormalisation holds for the float32 draw
    np.testing.assert_allclose(m.cmap.coarse_grain(f32)[on], c[on], rtol=1e-6)


def test_rows_below_the_cut_are_not_sampled_and_stay_empty(model_b, monkeypatch):
    m, data, _ = model_b
    fine = data.showers[:3].astype(np.float64)
    c = m.cmap.coarse_grain(fine)
    c[:, ::3] = 0.0  # empty coarse voxels
    c[:, 1::7] = 0.5 * m.cut  # below the cut
    seen = []
    orig = SuperCalo.sample_relative

    def spy(self, cond, generator=None, **kw):
        seen.append(len(cond))
        return orig(self, cond, generator, **kw)

    monkeypatch.setattr(SuperCalo, "sample_relative", spy)
    out = m._upsample_rows(c, data.incident_energies[:3], m.geometry.layer_energies(fine), np.zeros((3, 0)),
                           torch.Generator().manual_seed(1))
    active = (c >= m.cut)
    assert sum(seen) == active.sum() < c.size
    grouped = m.cmap.gather(out)
    assert (grouped[~active] == 0).all() and (grouped[active].sum(-1) > 0).all()


def test_lean_snapshot_is_built_once_and_follows_weight_changes(model_b):
    m = model_b[0]
    s32 = m._lean_upsampler(torch.float32)
    assert m._lean_upsampler(torch.float32) is s32
    s64 = m._lean_upsampler(torch.float64)
    assert s64 is not s32 and m._lean_upsampler(torch.float64) is s64
    p = next(m.upflow.parameters())
    with torch.no_grad():
        p.mul_(1.0)  # a weight update (same values, new version)
    assert m._lean_upsampler(torch.float32) is not s32


@pytest.mark.parametrize("which", ["model_b", "model_a"])
def test_resampling_gives_n_distinct_upsamplings_of_each_coarse_shower(which, request):
    m, data, _ = request.getfixturevalue(which)
    true_coarse = m.cmap.coarse_grain(data.showers[:3].astype(np.float64))
    up = m.upsample(true_coarse, data.incident_energies[:3], resample=5, seed=2,
                    layer_energies=m.geometry.layer_energies(data.showers[:3].astype(np.float64)))
    assert up.showers.shape == (15, m.geometry.n_voxels)
    for j in range(3):
        grp = up.showers[5 * j:5 * j + 5].astype(np.float64)
        np.testing.assert_allclose(m.cmap.coarse_grain(grp), np.repeat(true_coarse[j:j + 1], 5, 0), rtol=1e-5, atol=1e-5)
        assert len({g.tobytes() for g in grp}) == 5  # 5 distinct upsamplings
        assert (up.incident_energies[5 * j:5 * j + 5] == data.incident_energies[j]).all()
    # the full chain: ceil(12 / 5) = 3 coarse showers, each upsampled 5 times
    s = m.sample_resampled(data.incident_energies[:12], 5, batch_size=7, seed=4)
    assert s.showers.shape == (12, m.geometry.n_voxels)
    cg = m.cmap.coarse_grain(s.showers.astype(np.float64))
    for a, b in [(0, 5), (5, 10), (10, 12)]:
        np.testing.assert_allclose(cg[a:b], np.repeat(cg[a:a + 1], b - a, 0), rtol=1e-4, atol=1e-4)
        assert len({x.tobytes() for x in s.showers[a:b]}) == b - a
        assert (s.incident_energies[a:b] == data.incident_energies[a]).all()
    assert not np.allclose(cg[0], cg[5])  # other groups, other coarse showers
    np.testing.assert_array_equal(m.sample_resampled(data.incident_energies[:12], 5, batch_size=7, seed=4).showers,
                                  s.showers)
    assert m.cfg.resample == 1


def test_resampling_runs_the_coarse_networks_at_the_batch_size(model_a, monkeypatch):
    """With N > 1 a pass of the coarse networks draws ``batch_size`` coarse showers (not
    batch_size / N), and SUPERCALO upsamples them in passes of at most ``batch_size`` fine showers."""
    m, data, _ = model_a
    coarse_rows, fine_rows = [], []
    sample_coarse, upsample_rows = m.sample_coarse, m._upsample_rows

    def spy_coarse(einc, *a, **k):
        coarse_rows.append(len(einc))
        return sample_coarse(einc, *a, **k)

    def spy_fine(c, *a, **k):
        fine_rows.append(len(c))
        return upsample_rows(c, *a, **k)

    monkeypatch.setattr(m, "sample_coarse", spy_coarse)
    monkeypatch.setattr(m, "_upsample_rows", spy_fine)
    e = np.resize(data.incident_energies, 38)
    s = m.sample_resampled(e, 5, batch_size=4, seed=1)
    assert s.showers.shape == (38, m.geometry.n_voxels)
    assert coarse_rows == [4, 4]  # 8 coarse showers in passes of 4
    assert fine_rows == [4, 4, 4, 4, 4, 4, 4, 4, 4, 2]  # 20 + 18 fine showers in passes of 4
    cg = m.cmap.coarse_grain(s.showers.astype(np.float64))
    np.testing.assert_allclose(cg[35:38], np.repeat(cg[35:36], 3, 0), rtol=1e-4, atol=1e-4)  # the last group
    coarse_rows.clear()
    m.sample_resampled(e, 1, batch_size=4, seed=1)
    assert coarse_rows == [4] * 9 + [2]


def test_coarse_layer_energies_from_the_coarse_flow1(model_a, monkeypatch):
    """``coarse_layer_energies=coarse``: the chain's coarse layers carry the coarse CaloFlow's flow-I
    energies (FLOW-1's fine energies rescaled to them); the default (the paper) never calls it."""
    m, data, _ = model_a
    drawn = []
    orig = m.coarse.sample_layer_energies

    def spy(*a, **k):
        drawn.append(orig(*a, **k).cpu().numpy())
        return torch.as_tensor(drawn[-1])

    monkeypatch.setattr(m.coarse, "sample_layer_energies", spy)
    e = data.incident_energies[:20]
    m.sample(e, seed=3, variant="teacher")
    assert drawn == []
    old = m.cfg
    try:
        m.with_generation_settings(["coarse_layer_energies=coarse"])
        out = m.sample(e, seed=3, variant="teacher").showers.astype(np.float64)
    finally:
        m.cfg = old
    Ec = drawn[0]
    got = m.cmap.coarse.layer_energies(m.cmap.coarse_grain(out))
    big = Ec > 1.0  # MeV; the readout threshold removes a little of the faintest layers
    assert big.sum() > 10 and np.allclose(got[big], Ec[big], rtol=2e-2)
    # the rescaling itself: shares kept, group sums set, an empty group shared equally
    E = np.array([[1.0, 3.0, 0.0, 0.0, 0.0, 0.0, 2.0, 2.0, 4.0]])
    fine = m._fine_layers_in(E, np.array([[8.0, 3.0, 4.0]]))
    np.testing.assert_allclose(fine, [[2.0, 6.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0]])
    with pytest.raises(ConfigError, match="coarse_layer_energies"):
        m.cfg.override(["coarse_layer_energies=fine"])


def test_save_load_round_trip(model_a, tmp_path):
    m, data, path = model_a
    d = path.parent / "m"
    assert m.stage_done("train") and m.stage_done("distill")
    assert (d / "coarse" / "config.json").exists() and (d / "upsampler.safetensors").exists()
    assert (d / "flow1.safetensors").exists() and (d / "coarse" / "flow2_student.safetensors").exists()
    loaded = load_model(d)
    assert isinstance(loaded, SuperCalo) and loaded.cmap.grouping.factors == (1, 2, 3)
    for v in ("teacher", "student"):
        a = m.sample(data.incident_energies[:5], batch_size=3, seed=7, variant=v)
        b = loaded.sample(data.incident_energies[:5], batch_size=3, seed=7, variant=v)
        np.testing.assert_array_equal(a.showers, b.showers)
    lp = loaded.log_prob(data.showers[:4], data.incident_energies[:4])
    np.testing.assert_allclose(lp, m.log_prob(data.showers[:4], data.incident_energies[:4]), rtol=1e-10)
    assert np.isfinite(lp).all()
    # log p = FLOW-1 + FLOW-2 + sum of SUPERCALO over coarse voxels: perturbing one coarse voxel's fine split changes it
    sh = data.showers[:1].astype(np.float64).copy()
    mem = m.cmap.members[np.argmax(m.cmap.coarse_grain(sh)[0])]
    sh2 = sh.copy()
    sh2[0, mem] = sh[0, mem].sum() / len(mem)
    assert m.log_prob(sh2, data.incident_energies[:1])[0] != pytest.approx(m.log_prob(sh, data.incident_energies[:1])[0])
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(d, broken)
    shutil.rmtree(broken / "coarse")
    with pytest.raises(ModelDirError, match="coarse"):
        load_model(broken)


def test_parameters_flow_into_coarse_model_and_upsampler(tmp_path):
    m, data, _ = _fit(tmp_path, "B", params=True)
    assert m.coarse.condition_spec == m.condition_spec and m.n_params == 2
    # SUPERCALO's conditions: table I (8 + f_z + 9 coarse layers + 3 coarse radial bins) + the 2 parameters
    assert m.upflow(torch.zeros(1, 8 + 1 + 9 + 3 + 2)).log_prob(torch.zeros(1, 12)).shape == (1,)
    cond = Conditions.from_data(data)[:3]
    other = Conditions(cond.incident_energies, cond.values * np.array([1.3, 1.0]), cond.names)
    fine = data.showers[:3]
    base = m.log_prob(fine, cond)
    assert not np.allclose(base, m.log_prob(fine, other))
    coarse = m.cmap.coarse_grain(fine.astype(np.float64))
    up1 = m.upsample(coarse, cond.incident_energies, seed=1, conditions=cond)
    up2 = m.upsample(coarse, cond.incident_energies, seed=1, conditions=other)
    assert not np.array_equal(up1.showers, up2.showers) and up1.condition_names == ("d", "b")


def test_generate_coarse_and_resample_through_the_api(model_b, tmp_path):
    m, data, path = model_b
    mdir = path.parent / "m"
    cm = m.cmap
    cfile = tmp_path / "coarse.h5"
    write_showers(cfile, data.incident_energies[:4], cm.coarse_grain(data.showers[:4]).astype(np.float32),
                  geometry=cm.coarse)
    out = tmp_path / "up.h5"
    r = api.generate(mdir, out, coarse=str(cfile), resample=3, seed=1, progress=False)
    got = read_showers(out)
    assert r["n"] == 12 and got.showers.shape == (12, m.geometry.n_voxels)
    np.testing.assert_allclose(cm.coarse_grain(got.showers[:3]), np.repeat(cm.coarse_grain(data.showers[:1]), 3, 0),
                               rtol=1e-4, atol=1e-4)
    # a fine-geometry file is coarse-grained first (table III study); the CLI path
    out2 = tmp_path / "up2.h5"
    assert cli_main(["generate", str(mdir), "--coarse", str(path), "--out", str(out2), "--seed", "2"]) == 0
    assert read_showers(out2).showers.shape == (len(data), m.geometry.n_voxels)
    out3 = tmp_path / "res.h5"
    assert api.generate(mdir, out3, n=10, resample=4, seed=3, progress=False)["n"] == 10
    cg = cm.coarse_grain(read_showers(out3).showers)
    np.testing.assert_allclose(cg[1:4], np.repeat(cg[:1], 3, 0), rtol=1e-4, atol=1e-4)
    with pytest.raises(UsageError, match="--resample must be at least 1"):
        api.generate(mdir, tmp_path / "x.h5", n=3, resample=0)
    with pytest.raises(UsageError, match="--coarse takes"):
        api.generate(mdir, tmp_path / "x.h5", n=3, coarse=str(cfile))
    bad = tmp_path / "bad.h5"
    write_showers(bad, data.incident_energies[:2], data.showers[:2, :100], geometry=None)
    with pytest.raises(ShowerFileError, match="100 voxels"):
        api.generate(mdir, tmp_path / "x.h5", coarse=str(bad))
    assert not (tmp_path / "x.h5").exists()


def test_coarse_and_resample_refused_for_other_families(tmp_path):
    from caloflows.models.caloflow import CaloFlow, CaloFlowConfig

    data = _data(30)
    cfg = CaloFlowConfig.preset("quick", GEOMETRY).override(
        ["flow1_transforms=1", "flow1_hidden=[8]", "flow2_transforms=1", "flow2_hidden=8", "student_hidden=8",
         "bins=4"]).replace_train(**TRAIN)
    m = CaloFlow(GEOMETRY, cfg)
    m.fit(data, tmp_path / "cf", progress=False)
    with pytest.raises(UsageError, match="--resample applies to supercalo models only.*caloflow"):
        api.generate(tmp_path / "cf", tmp_path / "o.h5", n=4, resample=2)
    with pytest.raises(UsageError, match="--coarse applies to supercalo models only"):
        api.generate(tmp_path / "cf", tmp_path / "o.h5", coarse=str(tmp_path / "cf" / "config.json"))


def test_output_policy_sees_the_nested_coarse_model(model_b, model_a):
    from caloflows.errors import OutputError
    from caloflows.outputs import check_student_free, model_files

    d = model_b[2].parent / "m"
    files = model_files(d)
    assert d / "coarse" / "config.json" in files and d / "coarse" / "flow2_teacher.safetensors" in files
    assert d / "upsampler.safetensors" in files
    check_student_free(d)  # no student yet
    with pytest.raises(OutputError, match="student.safetensors"):  # distilling again needs --force
        check_student_free(model_a[2].parent / "m")


def test_coarse_generation_cut_reaches_the_nested_coarse_model(model_b):
    """``--set coarse.voxel_cut_mev=T`` at generation: FLOW-2's coarse voxels get the
    threshold-aware cut (no coarse voxel of the output between 0 and T, layer sums kept)."""
    m, data, path = model_b
    plain = load_model(path.parent / "m")
    einc = torch.as_tensor(data.incident_energies[:40], dtype=torch.float64)
    p0 = torch.zeros(40, 0, dtype=torch.float64)
    c_plain, E_plain = plain.sample_coarse(einc, p0, torch.Generator().manual_seed(5), "teacher")
    c_plain = c_plain.numpy()
    t = round(float(np.quantile(c_plain[c_plain > 0], 0.2)), 3)  # a cut with something to remove (toy MeV scale)
    assert np.mean((c_plain > 0) & (c_plain < t)) > 0.05
    cut = load_model(path.parent / "m").with_generation_settings([f"coarse.voxel_cut_mev={t}"])
    assert cut.coarse.generation_cut == t and cut.cfg.coarse["voxel_cut_mev"] == t
    c_cut, E_cut = cut.sample_coarse(einc, p0, torch.Generator().manual_seed(5), "teacher")
    c_cut = c_cut.numpy()
    assert not np.any((c_cut > 0) & (c_cut < t))
    full = E_cut.numpy() >= t  # f_z = 1: the fine layer energies are the coarse layer sums
    np.testing.assert_allclose(m.cmap.coarse.layer_energies(c_cut)[full], E_plain.numpy()[full], rtol=1e-9)
    fine = cut.sample(data.incident_energies[:6], seed=1).showers
    cg = m.cmap.coarse_grain(fine.astype(np.float64))
    assert not np.any((cg > 0) & (cg < t * (1 - 1e-5)))
    with pytest.raises(UsageError, match="not a generation setting"):
        load_model(path.parent / "m").with_generation_settings(["up_bins=3"])


def test_fine_voxel_cut_keeps_every_coarse_voxel_and_leaves_no_fine_voxel_below_it(model_a):
    """``--set voxel_cut_mev=T``: FLOW-2's coarse voxels get the threshold-aware cut per coarse layer
    and every coarse voxel's upsampled fine voxels the same cut per coarse voxel (L2LFlows eqs.
    B.8-B.9), so no fine voxel lies in (0, T) and every coarse voxel keeps its energy exactly."""
    m, data, path = model_a
    einc = data.incident_energies[:30]
    plain = load_model(path.parent / "m").sample(einc, seed=2).showers.astype(np.float64)
    t = round(float(np.quantile(plain[plain > 0], 0.3)), 4)  # a cut with something to remove (toy MeV scale)
    assert np.mean((plain > 0) & (plain < t)) > 0.05
    cut = load_model(path.parent / "m").with_generation_settings([f"voxel_cut_mev={t}"])
    assert cut.fine_cut == t and cut.coarse.generation_cut == t  # the coarse half follows unless set itself
    e = torch.as_tensor(einc, dtype=torch.float64)
    c, E = cut.sample_coarse(e, torch.zeros(30, 0, dtype=torch.float64), torch.Generator().manual_seed(4), "teacher")
    c = c.numpy()
    assert not np.any((c > 0) & (c < t))
    fine = cut._upsample_rows(c, einc, E.numpy(), np.zeros((30, 0)), torch.Generator().manual_seed(5))
    assert not np.any((fine > 0) & (fine < t))
    np.testing.assert_allclose(m.cmap.coarse_grain(fine), c, rtol=1e-12, atol=1e-12)  # coarse voxels kept
    out = cut.sample(einc, seed=2).showers
    assert not np.any((out > 0) & (out < t * (1 - 1e-6)))
    both = load_model(path.parent / "m").with_generation_settings([f"voxel_cut_mev={t}", "coarse.voxel_cut_mev=0"])
    assert both.coarse.generation_cut == 0 and both.fine_cut == t  # an explicit coarse cut wins


def test_fine_layer_fit_brings_the_fine_layers_to_flow1s_energies_and_keeps_the_coarse_voxels(model_a, model_b):
    """``--set fine_layer_fit=K`` (choice-A-like f_z > 1): the upsampled fine layers move towards the
    fine layer energies SUPERCALO was conditioned on, every coarse voxel keeps its energy exactly and
    no voxel falls below the cut; with f_z = 1 the fine layers are the coarse ones and nothing changes."""
    m, data, path = model_a
    einc = data.incident_energies[:30]
    e = torch.as_tensor(einc, dtype=torch.float64)
    c, E = m.sample_coarse(e, torch.zeros(30, 0, dtype=torch.float64), torch.Generator().manual_seed(4), "teacher")
    c, E = c.numpy(), E.numpy()
    fitted = load_model(path.parent / "m").with_generation_settings(["fine_layer_fit=30"])
    plain = m._upsample_rows(c, einc, E, np.zeros((30, 0)), torch.Generator().manual_seed(5))
    fit = fitted._upsample_rows(c, einc, E, np.zeros((30, 0)), torch.Generator().manual_seed(5))
    L = m.geometry.layer_energies
    err = lambda f: np.abs(L(f) - E).sum() / E.sum()  # noqa: E731
    assert err(plain) > 0.02 and err(fit) < 0.2 * err(plain)
    np.testing.assert_allclose(m.cmap.coarse_grain(fit), c, rtol=1e-12, atol=1e-12)
    assert not np.any((fit > 0) & (fit < m.cut))
    mb, datab, pathb = model_b
    eb = torch.as_tensor(datab.incident_energies[:10], dtype=torch.float64)
    cb, Eb = mb.sample_coarse(eb, torch.zeros(10, 0, dtype=torch.float64), torch.Generator().manual_seed(4), "teacher")
    args = (cb.numpy(), eb.numpy(), Eb.numpy(), np.zeros((10, 0)))
    fb = load_model(pathb.parent / "m").with_generation_settings(["fine_layer_fit=30"])
    np.testing.assert_array_equal(fb._upsample_rows(*args, torch.Generator().manual_seed(5)),
                                  mb._upsample_rows(*args, torch.Generator().manual_seed(5)))


def test_resample_warns_when_every_nth_energy_is_not_a_fair_sample(model_b, tmp_path):
    """A file cycling through its energies would give every group of N the same E_inc."""
    from caloflows.conditions import ConditionsWarning
    m, data, path = model_b
    e1, e2 = np.sort(data.incident_energies)[[10, 50]]
    einc = np.tile([e1, e2], 50)
    cyc, shuf = tmp_path / "cycled.h5", tmp_path / "shuffled.h5"
    sh = np.zeros((100, m.geometry.n_voxels), np.float32)
    write_showers(cyc, einc, sh)
    write_showers(shuf, np.random.default_rng(0).permutation(einc), sh)
    with pytest.warns(ConditionsWarning, match="shuffle the file's rows"):
        api.generate(path.parent / "m", tmp_path / "a.h5", energies_from=str(cyc), resample=2, seed=1, progress=False)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConditionsWarning)
        api.generate(path.parent / "m", tmp_path / "b.h5", energies_from=str(shuf), resample=2, seed=1, progress=False)


def test_upsampler_student_distils_from_the_warm_started_teacher_and_samples_exactly(model_a, model_b, tmp_path):
    """The SUPERCALO IAF student (beyond the paper): ``caloflows distill`` trains it after the coarse
    student; distillation lowers the student's distillation loss below its warm start (teacher
    weights); ``up_student=true`` samples with it, the fine voxels still summing exactly to their
    coarse voxel; a model without it refuses the setting with a one-line error."""
    import copy

    from caloflows import flows as F

    m, data, path = model_a
    d = path.parent / "m"
    assert m.trained["up_student"] and (d / "upsampler_student.safetensors").exists()
    hist = __import__("json").loads((d / "history_upsampler_student.json").read_text())
    assert len(hist["val_loss"]) == TRAIN["epochs"]
    # the distillation objective on fixed rows: the distilled student beats its warm start
    einc = np.asarray(data.incident_energies, dtype=np.float64)
    inputs = m._up_inputs(einc, np.zeros((len(einc), 0)), with_z=True)
    t, c, z = inputs(np.arange(20), data.showers[:20], torch.Generator().manual_seed(3))
    warm = copy.deepcopy(m.up_student)
    assert F.init_student_from_teacher(warm, m.upflow)
    with torch.no_grad():
        rows = [x.reshape(-1, x.shape[-1]) for x in (t, c, z)]
        before = float(F.distillation_loss(m.upflow, warm, *rows))
        after = float(F.distillation_loss(m.upflow, m.up_student, *rows))
    assert after < before
    # sampling with the student: a loaded model, exact coarse sums, different draws from the teacher's
    st = load_model(d).with_generation_settings(["up_student=true"])
    coarse = m.cmap.coarse_grain(np.asarray(data.showers[:10], dtype=np.float64))
    layers = m.geometry.layer_energies(np.asarray(data.showers[:10], dtype=np.float64))
    up = st.upsample(coarse, einc[:10], layer_energies=layers, seed=1, threshold=False).showers
    np.testing.assert_allclose(m.cmap.coarse_grain(up.astype(np.float64)), coarse, rtol=1e-5, atol=1e-5)
    teach = load_model(d).upsample(coarse, einc[:10], layer_energies=layers, seed=1, threshold=False).showers
    assert not np.allclose(up, teach)
    assert st.sample(einc[:5], seed=2).showers.shape == (5, m.geometry.n_voxels)
    # a model distilled before the SUPERCALO student existed (or not distilled at all)
    nb = load_model(model_b[2].parent / "m").with_generation_settings(["up_student=true"])
    with pytest.raises(ModelDirError, match="SUPERCALO student is not distilled"):
        nb.sample(3, seed=1)
    with pytest.raises(ModelDirError, match="SUPERCALO student is not distilled"):
        nb.upsample(nb.cmap.coarse_grain(np.asarray(data.showers[:2], dtype=np.float64)), einc[:2])


def test_distilling_only_the_upsampler_student_keeps_the_coarse_model(model_b, tmp_path):
    """``fit(stage="distill", networks=("upsampler",))`` distils SUPERCALO's student of a trained
    model and leaves the coarse model without a student (what the benchmark does)."""
    import shutil

    m0, data, path = model_b
    d = tmp_path / "m"
    shutil.copytree(path.parent / "m", d)
    m = load_model(d)
    m.fit(path, d, stage="distill", networks=("upsampler",), progress=False)
    again = load_model(d)
    assert again.trained["up_student"] and not again.coarse.trained["student"]
    for a, b in zip(again.up_student.parameters(), m.up_student.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(UsageError, match="unknown SuperCalo student"):
        m.fit(path, d, stage="distill", networks=("flow1",), progress=False)


def test_compiled_upsampler_splines_give_the_eager_draws(model_a):
    """``up_compile=true``: SUPERCALO's splines through torch.compile give the eager path's samples on a
    fixed latent, for the MAF and for its distilled IAF student."""
    m, data, path = model_a
    _, cond = _active_conditions(m, data)
    z = torch.randn(len(cond), m.cmap.group_size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for student in ("false", "true"):
        eager = load_model(path.parent / "m").with_generation_settings([f"up_student={student}"])
        comp = load_model(path.parent / "m").with_generation_settings([f"up_student={student}", "up_compile=true"])
        r0 = eager.sample_relative(cond, precision="float64", z=z)
        r1 = comp.sample_relative(cond, precision="float64", z=z)
        assert comp._lean_upsampler(torch.float64, student == "true").compiled
        np.testing.assert_allclose(r1, r0, rtol=1e-9, atol=1e-12)


def test_training_only_the_upsampler_again_keeps_the_other_networks(model_a, tmp_path):
    """``fit(networks=("upsampler",))`` trains SUPERCALO again (another schedule) and leaves the coarse
    model, FLOW-1 and their constants as they were."""
    import shutil

    m0, data, path = model_a
    d = tmp_path / "m"
    shutil.copytree(path.parent / "m", d)
    m = load_model(d)
    before = {k: v.clone() for k, v in m.flow1.state_dict().items()}
    up0 = [q.clone() for q in m.upflow.parameters()]
    e0 = m.constants()["flow1"]
    m.cfg = m.cfg.override(["upsampler_train.epochs=2"])
    r = m.fit(path, d, networks=("upsampler",), progress=False)
    assert set(r) == {"upsampler"} and r["upsampler"]["epochs"] == 2
    again = load_model(d)
    assert all(torch.equal(again.flow1.state_dict()[k], v) for k, v in before.items())
    assert again.constants()["flow1"] == e0
    assert any(not torch.equal(a, b) for a, b in zip(again.upflow.parameters(), up0))
    for a, b in zip(again.coarse.teacher.parameters(), m0.coarse.teacher.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(UsageError, match="unknown SuperCalo network"):
        m.fit(path, d, networks=("teacher",), progress=False)


@pytest.mark.skipif(not int8_supported(), reason="no quantized CPU engine in this torch build")
def test_student_weights_int8_reaches_the_coarse_student(model_a):
    """``--set student_weights=int8`` on SuperCalo samples the nested coarse CaloFlow's student with
    int8 output layers (the generic ``Generator._prepare_sampling`` goes into sub-models); the
    teacher variant does not move."""
    m, data, path = model_a
    e = data.incident_energies[:12]
    plain = load_model(path.parent / "m")
    q8 = load_model(path.parent / "m").with_generation_settings(["student_weights=int8"])
    a, b = (x.sample(e, seed=2, variant="student").showers for x in (plain, q8))
    assert not np.array_equal(a, b)
    np.testing.assert_allclose(b.sum(1), a.sum(1), rtol=0.2)
    ta, tb = (x.sample(e, seed=2, variant="teacher").showers for x in (plain, q8))
    np.testing.assert_array_equal(ta, tb)


def _split_data(n=600, seed=0):
    """Showers whose fine split inside every coarse layer (1x2x3: 3 groups of 3 fine layers) is set by
    the coarse layer energy alone: a group holding a fraction u of E_inc (uniform in 0.05-0.3, drawn
    independently of E_inc) puts f = 0.1 + 3.2 (u - 0.05) of it in its first fine layer, 0.1 in the
    second and the rest in the third."""
    g = load_geometry(GEOMETRY)
    rng = np.random.default_rng(seed)
    einc = rng.uniform(1000.0, 16000.0, n)
    u = rng.uniform(0.05, 0.3, (n, 3))
    f = 0.1 + 3.2 * (u - 0.05)
    share = np.stack([f, np.full_like(f, 0.1), 0.9 - f], 2) * rng.uniform(0.97, 1.03, (n, 3, 3))
    E = (einc[:, None, None] * u[..., None] * share / share.sum(2, keepdims=True)).reshape(n, 9)
    sh = np.zeros((n, g.n_voxels), dtype=np.float32)
    for layer in range(9):
        sh[:, g.layer_slice(layer).start] = E[:, layer]
    return ShowerData(einc, sh), u


def test_flow1_given_the_coarse_layers_learns_a_split_that_depends_on_them(tmp_path):
    """``flow1_context=coarse_layers``: FLOW-1 is ``p(fine layers | E_inc, coarse layer energies)``.  On
    showers whose fine split depends only on the coarse energy, it gives held-out showers a far higher
    likelihood than the paper's FLOW-1 (E_inc only) trained the same way, and far less with the coarse
    energies of other showers; drawn fine layers are rescaled to the coarse sums exactly."""
    from caloflows.models.energy_flow import EnergyFlow

    data, _ = _split_data()
    path = tmp_path / "train.h5"
    write_showers(path, data.incident_energies, data.showers)
    test, _ = _split_data(400, seed=1)
    L = torch.as_tensor(load_geometry(GEOMETRY).layer_energies(test.showers.astype(np.float64)))
    e, none = torch.as_tensor(test.incident_energies), torch.zeros(400, 0, dtype=torch.float64)
    loglik = {}
    for context in ("einc", "coarse_layers"):
        cfg = (SuperCaloConfig.preset("quick", GEOMETRY)
               .override(TINY + ["coarse_graining=1x2x3", "coarse_layer_energies=coarse", f"flow1_context={context}",
                                 "flow1_transforms=2", "flow1_hidden=[32,32]", "bins=8"])
               .replace_train(epochs=100, batch_size=64, val_fraction=0.2))
        m = SuperCalo(GEOMETRY, cfg)
        m.fit(path, tmp_path / context, networks=("flow1",), progress=False)
        val = __import__("json").loads((tmp_path / context / "history_flow1.json").read_text())["val_loss"]
        assert min(val) < val[0]  # it trains
        ec = m._energy
        p = m._flow1_params(none, m._coarse_layer_sums(L))
        assert p.shape == ((400, 3) if context == "coarse_layers" else (400, 0))
        with torch.no_grad(), F.double_precision(m.flow1):
            y = ec.forward(L + ec.noise_mean_kev * 1e-3)
            loglik[context] = m.flow1(y, EnergyFlow.context(ec, e, p)).mean().item()
            if context == "coarse_layers":
                other = m.flow1(y, EnergyFlow.context(ec, e, p.roll(1, 0))).mean().item()
        E = m.flow1.sample_energies(e, ec, None, 20, torch.Generator().manual_seed(0), p)
        Ec = m._coarse_layer_sums(L).numpy()
        np.testing.assert_allclose(m._fine_layers_in(E.numpy(), Ec).reshape(400, 3, 3).sum(2), Ec, rtol=1e-10)
    assert loglik["coarse_layers"] > loglik["einc"] + 2.0, loglik  # nats per shower (3.4 measured)
    assert other < loglik["coarse_layers"] - 2.0, (other, loglik)


def test_flow1_given_the_coarse_layers_in_the_chain_and_upsampling(tmp_path):
    """The chain draws the coarse layers from the coarse flow-I, then FLOW-1 given them: the fine showers
    carry those coarse layer energies; ``--coarse`` upsampling conditions FLOW-1 on the given coarse
    showers; the setting needs ``coarse_layer_energies=coarse`` and is kept on save/load."""
    data = _data()
    path = tmp_path / "train.h5"
    write_showers(path, data.incident_energies, data.showers)
    base = SuperCaloConfig.preset("quick", GEOMETRY).override(TINY + ["coarse_graining=1x2x3"])
    with pytest.raises(ConfigError, match="flow1_context=coarse_layers needs coarse_layer_energies=coarse"):
        base.override(["flow1_context=coarse_layers"])
    cfg = base.override(["coarse_layer_energies=coarse", "flow1_context=coarse_layers"]).replace_train(**TRAIN)
    m = SuperCalo(GEOMETRY, cfg)
    m.fit(path, tmp_path / "m", progress=False)
    m = load_model(tmp_path / "m")
    assert m.flow1_given_coarse and m.cfg.flow1_context == "coarse_layers"
    seen = []
    orig = m.flow1.sample_energies

    def spy(einc, consts, bound, max_resample, generator, params):
        seen.append(params.cpu().numpy())
        return orig(einc, consts, bound, max_resample, generator, params)

    m.flow1.sample_energies = spy
    out = m.sample(data.incident_energies[:20], seed=3, variant="teacher").showers.astype(np.float64)
    Ec = m.cmap.coarse.layer_energies(m.cmap.coarse_grain(out))
    # FLOW-1's context holds eq. B.7 of the coarse layer energies the showers end up with (cut aside)
    lec = seen[0][:, -3:]
    big = Ec > 1.0
    assert big.sum() > 10
    np.testing.assert_allclose(lec[big], np.log10(Ec[big] / 1000.0 + 1e-6) + 1.0, atol=2e-3)
    coarse = m.cmap.coarse_grain(data.showers[:8].astype(np.float64))
    up = m.upsample(coarse, data.incident_energies[:8], seed=1)
    np.testing.assert_allclose(seen[-1][:, -3:], np.log10(m.cmap.coarse.layer_energies(coarse) / 1000.0 + 1e-6) + 1.0)
    np.testing.assert_allclose(m.cmap.coarse_grain(up.showers.astype(np.float64)), coarse, rtol=1e-5, atol=1e-6)
    lp = m.log_prob(data.showers[:4], data.incident_energies[:4])
    assert np.isfinite(lp).all()
    with pytest.raises(ConfigError, match="coarse_layer_energies"):
        m.with_generation_settings(["coarse_layer_energies=flow1"])
