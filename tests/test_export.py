"""ONNX export of the CaloFlow, iCaloFlow and ParaFlow student samplers and the ONNX Runtime sampler (issue 13)."""

import warnings
from dataclasses import asdict

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from caloflows.cli import main  # noqa: E402
from caloflows.errors import ModelDirError  # noqa: E402
from caloflows.export import CaloFlowSampler, OnnxSampler, export_onnx  # noqa: E402
from caloflows.geometry import load_geometry  # noqa: E402
from caloflows.io import ShowerData, read_showers  # noqa: E402
from caloflows.models import load_model  # noqa: E402
from caloflows.models.caloflow import CaloFlow, CaloFlowConfig  # noqa: E402
from caloflows.toy_showers import toy_showers  # noqa: E402
from caloflows.training.loop import TrainConfig  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_xml):
    d = tmp_path_factory.mktemp("export")
    (d / "tiny.xml").write_text(tiny_xml)
    g = load_geometry(str(d / "tiny.xml"))
    inc, sh = toy_showers(g, 600, seed=0)
    tc = asdict(TrainConfig(epochs=2, batch_size=128, base_lr=2e-4, max_lr=3e-3, patience=None))
    cfg = CaloFlowConfig(flow1_transforms=2, flow2_transforms=2, flow2_hidden=24, student_hidden=32,
                         flow1_train=tc, flow2_train=tc, student_train=tc)
    model = CaloFlow(g, cfg)
    torch.manual_seed(0)
    model.fit(ShowerData(inc, sh), d / "model", progress=False)
    model.fit(ShowerData(inc, sh), d / "model", stage="distill", progress=False)
    onnx_path = export_onnx(model, d / "model.onnx")
    return {"dir": d, "model": model, "onnx": onnx_path, "einc": inc}


def _noise(model, n, seed):
    gen = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, model.geometry.n_layers, dtype=torch.float64, generator=gen)
    z2 = torch.randn(n, model.geometry.n_voxels, generator=gen)
    return z1, z2


def _sampler_and_chain(m, einc_mev, seed: int):
    """(E_inc, latent noise, exported sampler's showers, CaloFlow's own chain's showers) for one seed:
    both draw the same noise from ``torch.Generator().manual_seed(seed)``."""
    einc = torch.as_tensor(einc_mev, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    E = m.sample_layer_energies(einc, generator=gen)
    ref = m.geometry.apply_threshold(m.sample_voxels(E, einc, student=True, generator=gen).numpy())
    z1, z2 = _noise(m, len(einc), seed)
    with torch.no_grad():
        out = CaloFlowSampler(m)(z1, z2, einc).numpy()
    return einc, z1, z2, out, ref


def test_sampler_module_reproduces_model_chain(trained):
    """Same generator -> the exported chain equals CaloFlow's own sample chain (no outlier redraw here)."""
    m = trained["model"]
    einc, z1, z2, out, ref = _sampler_and_chain(m, trained["einc"][:300], 5)
    assert np.isfinite(out).all() and (out >= 0).all()
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * ref.max())


def test_onnxruntime_reproduces_torch(trained):
    m = trained["model"]
    einc = np.asarray(trained["einc"][:200], dtype=np.float64)
    z1, z2 = _noise(m, len(einc), 7)
    with torch.no_grad():
        ref = CaloFlowSampler(m)(z1, z2, torch.as_tensor(einc)).numpy()
    s = OnnxSampler(trained["onnx"])
    out = s.run(z1.numpy(), z2.numpy(), einc)
    assert out.shape == ref.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5 * ref.max())
    assert s.metadata["kind"] == "caloflow" and s.metadata["n_voxels"] == m.geometry.n_voxels
    assert s.geometry.same_layout(m.geometry)
    assert s.metadata["constants"]["unit_space"]["u0_max"] == m.unit.u0_max
    # sampling with a seed is reproducible, batch-size independent and uses the given energies
    e1, a = s.sample(np.full(50, 2e4), seed=3, batch_size=50)
    _, b = s.sample(np.full(50, 2e4), seed=3, batch_size=50)
    np.testing.assert_array_equal(a, b)
    assert np.all(e1 == 2e4) and a.shape == (50, m.geometry.n_voxels)
    e2, c = s.sample(20, seed=1)
    assert e2.shape == (20,) and np.isfinite(c).all()


def test_onnx_energy_scale(trained):
    """Showers carry about the energy flow-I assigns: total <= max_ratio * E_inc."""
    s = OnnxSampler(trained["onnx"])
    e, sh = s.sample(np.full(100, 3e4), seed=0)
    assert (sh.sum(1) <= s.metadata["max_ratio"] * e * (1 + 1e-5)).all()
    assert sh.sum(1).mean() > 0


def test_corrupt_and_foreign_onnx_give_clear_errors(trained, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf" * 10)
    with pytest.raises(ModelDirError, match="bad.onnx"):
        OnnxSampler(bad)
    trunc = tmp_path / "trunc.onnx"
    trunc.write_bytes(trained["onnx"].read_bytes()[:5000])
    with pytest.raises(ModelDirError, match="trunc.onnx"):
        OnnxSampler(trunc)
    foreign = tmp_path / "foreign.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(torch.nn.Linear(3, 2), (torch.randn(1, 3),), str(foreign), dynamo=False, opset_version=17)
    with pytest.raises(ModelDirError, match="foreign.onnx.*not a caloflows sampler"):
        OnnxSampler(foreign)
    with pytest.raises(ModelDirError, match="missing.onnx"):
        OnnxSampler(tmp_path / "missing.onnx")


def test_export_cli_refuses_existing_output(trained, capsys):
    d = trained["dir"]
    out = d / "cli.onnx"
    assert main(["export", str(d / "model"), "--out", str(out)]) == 0
    assert OnnxSampler(out).metadata["network"] == "student"
    before = out.read_bytes()
    assert main(["export", str(d / "model"), "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert main(["export", str(d / "model"), "--out", str(out), "--force"]) == 0
    assert main(["export", str(d / "nope"), "--out", str(d / "x.onnx")]) == 2
    assert not (d / "x.onnx").exists()
    # int8 output layers are a torch sampling option: the graph would hold float32 weights
    assert main(["export", str(d / "model"), "--set", "student_weights=int8", "--out", str(d / "q.onnx")]) == 2
    assert "student_weights=int8" in capsys.readouterr().err
    assert not (d / "q.onnx").exists()


def test_generate_backend_onnxruntime_and_shards(trained, tmp_path):
    """`caloflows generate FILE.onnx --backend onnxruntime` writes showers; `--shard i/N` parts of a
    torch run merge into exactly the unsharded file (chunk k depends only on (seed, k))."""
    from caloflows.cli import main

    assert main(["generate", str(trained["onnx"]), "--backend", "onnxruntime", "--n", "40", "--seed", "1",
                 "--out", str(tmp_path / "ort.h5")]) == 0
    d = read_showers(tmp_path / "ort.h5")
    assert d.showers.shape == (40, trained["model"].geometry.n_voxels) and np.isfinite(d.showers).all()
    assert d.attrs["backend"] == "onnxruntime"
    model_dir = str(trained["dir"] / "model")
    common = ["--n", "50", "--batch-size", "10", "--chunk-size", "10", "--seed", "4"]  # 5 chunks
    assert main(["generate", model_dir, *common, "--out", str(tmp_path / "all.h5")]) == 0
    for i in range(3):
        assert main(["generate", model_dir, *common, "--shard", f"{i}/3", "--out", str(tmp_path / f"p{i}.h5")]) == 0
    assert main(["merge", str(tmp_path / "merged.h5"), *(str(tmp_path / f"p{i}.h5") for i in range(3))]) == 0
    a, b = read_showers(tmp_path / "all.h5"), read_showers(tmp_path / "merged.h5")
    np.testing.assert_array_equal(a.incident_energies, b.incident_energies)
    np.testing.assert_array_equal(a.showers, b.showers)
    assert main(["generate", model_dir, "--n", "5", "--shard", "0/2", "--out", str(tmp_path / "x.h5")]) == 2  # no seed


@pytest.mark.parametrize("single_hit", [None, 0.25])
def test_export_with_threshold_aware_cut(trained, tmp_path, single_hit):
    """A model with a generation cut (L2LFlows B.9 in CaloFlow, issue 15), and with the single-hit
    rule for layers below the cut, exports the same chain."""
    import dataclasses

    m = trained["model"]
    old = m.cfg
    cut = float(np.quantile(trained["einc"], 0.5)) * 1e-3
    m.cfg = dataclasses.replace(old, voxel_cut_mev=cut, single_hit_mev=None if single_hit is None else single_hit * cut)
    try:
        einc, z1, z2, out, ref = _sampler_and_chain(m, trained["einc"][:150], 9)
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * ref.max())
        below = (out > 0) & (out < 0.999 * m.cfg.voxel_cut_mev)
        if single_hit is None:
            assert not below.any()
        else:  # only as the one hit of its layer
            g = m.geometry
            for a, b in zip(g.layer_offsets[:-1], g.layer_offsets[1:]):
                rows = below[:, a:b].any(1)
                assert np.all((out[rows, a:b] > 0).sum(1) == 1)
        path = export_onnx(m, tmp_path / "cut.onnx")
        onnx_out = OnnxSampler(path).run(z1.numpy(), z2.numpy(), einc.numpy())
        np.testing.assert_allclose(onnx_out, out, rtol=1e-4, atol=1e-5 * out.max())
    finally:
        m.cfg = old


# ---------------------------------------------------------------------------- iCaloFlow
XML_EQUAL = """<Bins><Bin pid="11" name="electron">
<Layer id="0" r_edges="0,2,5,10" n_bin_alpha="2"/>
<Layer id="1" r_edges="0,2,5,10" n_bin_alpha="2"/>
<Layer id="2" r_edges="0,2,5,10" n_bin_alpha="2"/>
</Bin></Bins>"""


@pytest.fixture(scope="module")
def icalo(tmp_path_factory):
    """A tiny iCaloFlow with one detector parameter: constants fitted on toy showers, weights moved
    away from the initialisation (the round trip does not need training), exported by the CLI."""
    from caloflows.conditions import ConditionSpec
    from caloflows.models.icaloflow import ICaloFlow, ICaloFlowConfig

    d = tmp_path_factory.mktemp("export_icalo")
    (d / "g.xml").write_text(XML_EQUAL)
    g = load_geometry(str(d / "g.xml"))
    cfg = ICaloFlowConfig(edf_transforms=2, edf_hidden=[16], transforms=2, hidden=[16], student_hidden=[16, 16],
                          max_ratio=None)
    m = ICaloFlow(g, cfg, ConditionSpec(("p",), (0.0,), (2.0,)))
    inc, sh = toy_showers(g, 300, seed=0)
    m.fit_constants(ShowerData(inc, sh, np.linspace(0, 2, 300)[:, None], ("p",)))
    torch.manual_seed(1)
    with torch.no_grad():
        for k in ("energy", "student2", "student3"):
            for p in m.nets[k].parameters():
                p.add_(0.1 * torch.randn_like(p))
    m.trained = {k: True for k in m.trained}
    m.save(d / "model")
    assert main(["export", str(d / "model"), "--out", str(d / "icalo.onnx")]) == 0
    return {"dir": d, "model": m, "onnx": d / "icalo.onnx", "einc": inc}


def _module_and_onnxruntime(module, ref, onnx_path, z1, z2, einc, feats):
    """Assert that the sampler ``module`` on fixed noise equals the model's own chain ``ref`` (same
    noise) and that ONNX Runtime running ``onnx_path`` equals the module; returns the OnnxSampler and
    the module's and ONNX Runtime's showers."""
    with torch.no_grad():
        out = module(z1, z2, einc, feats).numpy()
    assert np.isfinite(out).all() and (out >= 0).all() and out.max() > 0
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5 * ref.max())
    s = OnnxSampler(onnx_path)
    ort = s.run(z1.numpy(), z2.numpy(), einc.numpy(), feats.numpy())
    assert ort.shape == out.shape and ort.dtype == np.float32
    np.testing.assert_allclose(ort, out, rtol=1e-4, atol=1e-5 * out.max())
    return s, out, ort


def _generate_onnx_with_conditions(onnx_path, tmp_path, n_voxels: int, names: tuple, conditions: list[str]):
    """`caloflows generate FILE.onnx --backend onnxruntime --condition ...` writes showers with the
    conditions; without them it is a one-line error and writes nothing.  Returns the ShowerData."""
    out = tmp_path / "ort.h5"
    flags = [x for c in conditions for x in ("--condition", c)]
    assert main(["generate", str(onnx_path), "--backend", "onnxruntime", "--n", "30", "--seed", "2", *flags,
                 "--out", str(out)]) == 0
    d = read_showers(out)
    assert d.showers.shape == (30, n_voxels) and np.isfinite(d.showers).all() and d.showers.sum() > 0
    assert d.attrs["backend"] == "onnxruntime" and d.condition_names == names
    assert main(["generate", str(onnx_path), "--backend", "onnxruntime", "--n", "5",
                 "--out", str(tmp_path / "no.h5")]) == 2
    assert not (tmp_path / "no.h5").exists()
    return d


def test_icaloflow_sampler_reproduces_model_chain_and_onnxruntime(icalo):
    """Same generator -> the iCaloFlow sampler module equals ICaloFlow's own student chain; ONNX
    Runtime reproduces the module for fixed noise (flow-1 float64, students float32)."""
    from caloflows.export import ICaloFlowSampler

    m, g = icalo["model"], icalo["model"].geometry
    N = 60
    einc = torch.as_tensor(icalo["einc"][:N], dtype=torch.float64)
    feats = torch.linspace(-1, 1, N, dtype=torch.float32)[:, None]
    gen = torch.Generator().manual_seed(3)
    ref = g.apply_threshold(m._sample_batch(einc, feats.double(), gen, "student").numpy())
    gen = torch.Generator().manual_seed(3)
    z1 = torch.randn(N, g.n_layers, dtype=torch.float64, generator=gen)
    z2 = torch.cat([torch.randn(N, m.n, generator=gen) for _ in range(g.n_layers)], 1)
    s = _module_and_onnxruntime(ICaloFlowSampler(m), ref, icalo["onnx"], z1, z2, einc, feats)[0]
    meta = s.metadata
    assert meta["kind"] == "icaloflow" and meta["n_conditions"] == 1 and meta["condition_spec"]["names"] == ["p"]
    assert meta["constants"]["mean"] == m.consts["mean"] and s.geometry.same_layout(g)
    with pytest.raises(Exception, match="feature column"):
        s.run(z1.numpy(), z2.numpy(), einc.numpy())


def test_icaloflow_export_bakes_in_the_generation_cut(icalo, tmp_path):
    """``caloflows export MODEL --set voxel_cut_mev=0.5``: the graph post-processes every layer at
    0.5 MeV (eqs. B.8-B.9) as the model's own chain with the same setting; the metadata records it."""
    from caloflows.export import ICaloFlowSampler

    out = tmp_path / "cut.onnx"
    assert main(["export", str(icalo["dir"] / "model"), "--out", str(out), "--set", "voxel_cut_mev=0.5"]) == 0
    m = load_model(icalo["dir"] / "model").with_generation_settings(["voxel_cut_mev=0.5"])
    g, N = m.geometry, 60
    einc = torch.as_tensor(icalo["einc"][:N], dtype=torch.float64)
    feats = torch.linspace(-1, 1, N, dtype=torch.float32)[:, None]
    ref = g.apply_threshold(m._sample_batch(einc, feats.double(), torch.Generator().manual_seed(3), "student").numpy())
    gen = torch.Generator().manual_seed(3)
    z1 = torch.randn(N, g.n_layers, dtype=torch.float64, generator=gen)
    z2 = torch.cat([torch.randn(N, m.n, generator=gen) for _ in range(g.n_layers)], 1)
    s, _, ort = _module_and_onnxruntime(ICaloFlowSampler(m), ref, out, z1, z2, einc, feats)
    assert not np.any((ort > 0) & (ort < 0.5 * (1 - 1e-6)))
    assert s.metadata["config"]["voxel_cut_mev"] == 0.5
    plain = icalo["model"]._sample_batch(einc, feats.double(), torch.Generator().manual_seed(3), "student").numpy()
    assert np.any((plain > g.threshold_mev) & (plain < 0.5))  # the cut has something to remove
    assert main(["export", str(icalo["dir"] / "model"), "--out", str(tmp_path / "x.onnx"), "--set", "hidden=[8]"]) == 2
    assert not (tmp_path / "x.onnx").exists()


def test_icaloflow_generate_backend_onnxruntime(icalo, tmp_path):
    # the model is conditioned on p: generating without it is a one-line error, no output
    d = _generate_onnx_with_conditions(icalo["onnx"], tmp_path, icalo["model"].geometry.n_voxels, ("p",),
                                       ["p=0.5:1.5"])
    assert ((d.conditions >= 0.5) & (d.conditions <= 1.5)).all()


# ---------------------------------------------------------------------------- ParaFlow
@pytest.fixture(scope="module")
def paraflow(tmp_path_factory):
    """A tiny ParaFlow (d, b; the settings of test_paraflow_model) trained 2 epochs and distilled
    1 epoch on 200 toy showers, exported by the CLI; a copy of its directory before distillation."""
    import shutil

    from test_paraflow_model import _data, _model

    d = tmp_path_factory.mktemp("export_pf")
    data = _data(200)
    m = _model(data, epochs=2)
    m.fit(data, d / "model", progress=False)
    shutil.copytree(d / "model", d / "teacher_only")
    m.fit(data, d / "model", stage="distill", progress=False, epochs=1)
    assert main(["export", str(d / "model"), "--out", str(d / "pf.onnx")]) == 0
    return {"dir": d, "model": m, "onnx": d / "pf.onnx", "data": data}


def _pf_inputs(m, data, n: int, seed: int):
    """E_inc, parameter features (float32) and the student's latent drawn as ParaFlow._sample_batch draws it."""
    einc = torch.as_tensor(data.incident_energies[:n], dtype=torch.float64)
    feats = torch.as_tensor(m.condition_spec.features(data.conditions[:n]), dtype=torch.float32)
    z2 = torch.randn(n, m.geometry.n_voxels, generator=torch.Generator().manual_seed(seed))
    return einc, feats, torch.zeros(n, m.geometry.n_layers, dtype=torch.float64), z2


def test_paraflow_sampler_reproduces_model_chain_and_onnxruntime(paraflow):
    """Same generator -> the ParaFlow sampler module equals ParaFlow's own student chain
    (sample_latent, clamp, zero_below_kev cut, geometry threshold); ONNX Runtime equals the module."""
    from caloflows.export import ParaFlowSampler

    m, data = paraflow["model"], paraflow["data"]
    einc, feats, z1, z2 = _pf_inputs(m, data, 80, seed=4)
    ref = m.geometry.apply_threshold(
        m._sample_batch(einc, feats.double(), torch.Generator().manual_seed(4), "student").numpy())
    assert (ref == 0).any() and (ref > 0).any()  # the 20 keV cut acts
    s, out, ort = _module_and_onnxruntime(ParaFlowSampler(m), ref, paraflow["onnx"], z1, z2, einc, feats)
    cut = m.cfg.zero_below_kev * 1e-3  # MeV
    assert ((ref > 0) & (ref < 2 * cut)).any()  # crystals near the cut exist ...
    assert not ((out > 0) & (out < cut)).any() and not ((ort > 0) & (ort < cut)).any()  # ... and it acts
    assert np.mean((out > 0) == (ref > 0)) > 0.999
    # the z1 placeholder is ignored; without the features the graph refuses to run
    np.testing.assert_array_equal(s.run(z1.numpy() + 1.0, z2.numpy(), einc.numpy(), feats.numpy()),
                                  s.run(z1.numpy(), z2.numpy(), einc.numpy(), feats.numpy()))
    with pytest.raises(Exception, match="feature column"):
        s.run(z1.numpy(), z2.numpy(), einc.numpy())


def test_paraflow_sampler_scales_rows_above_max_ratio(paraflow):
    """With max_ratio set, rows above max_ratio * E_inc are scaled to the bound (not redrawn);
    the other rows are unchanged."""
    import dataclasses

    from caloflows.export import ParaFlowSampler

    m, data = paraflow["model"], paraflow["data"]
    einc, feats, z1, z2 = _pf_inputs(m, data, 60, seed=6)
    with torch.no_grad():
        free = ParaFlowSampler(m)(z1, z2, einc, feats).double().numpy()
        bound = float(np.median(free.sum(1) / einc.numpy()))
        old = m.cfg
        m.cfg = dataclasses.replace(old, max_ratio=bound)
        try:
            capped = ParaFlowSampler(m)(z1, z2, einc, feats).double().numpy()
        finally:
            m.cfg = old
    ratio = free.sum(1) / einc.numpy()
    assert (capped.sum(1) <= bound * einc.numpy() * (1 + 1e-5)).all()
    np.testing.assert_allclose(capped[ratio <= bound], free[ratio <= bound], rtol=1e-6)
    assert (capped[ratio > bound].sum(1) > 0.99 * bound * einc.numpy()[ratio > bound]).all()


def test_paraflow_metadata_and_generate_with_conditions(paraflow, tmp_path, capsys):
    from caloflows.errors import ConditionsError

    m = paraflow["model"]
    s = OnnxSampler(paraflow["onnx"])
    meta = s.metadata
    assert meta["kind"] == "paraflow" and meta["n_conditions"] == 2 and meta["condition_spec"]["names"] == ["d", "b"]
    assert meta["condition_spec"]["scaling"] == "log" and meta["zero_below_kev"] == m.cfg.zero_below_kev
    assert meta["constants"]["incident_energies"] == m.einc_law() and s.geometry.same_layout(m.geometry)
    capsys.readouterr()
    d = _generate_onnx_with_conditions(paraflow["onnx"], tmp_path, 128, ("d", "b"), ["d=1.0", "b=70"])
    np.testing.assert_array_equal(d.conditions, np.tile([1.0, 70.0], (30, 1)))
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "conditioned on ['d', 'b']" in err
    # E_inc outside eq. 1's domain (<= E_min - 1 GeV): refused as by the torch path
    edge = meta["einc_domain"]["min_exclusive_mev"]
    assert edge == pytest.approx(m.einc_range[0] - 1000.0) and edge > 0
    with pytest.raises(ConditionsError, match="eq. 1 needs E_inc"):
        s.sample(np.full(3, 0.9 * edge), seed=0, conditions=np.zeros((3, 2), dtype=np.float32))


def test_paraflow_export_needs_a_trained_student(paraflow, capsys):
    from caloflows.models import load_model

    d = paraflow["dir"]
    capsys.readouterr()
    assert main(["export", str(d / "teacher_only"), "--out", str(d / "t.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "trained student" in err and not (d / "t.onnx").exists()
    with pytest.raises(ModelDirError, match="ParaFlow model with a trained student"):
        export_onnx(load_model(d / "teacher_only"), d / "t.onnx")
