"""CaloFlow: flow-I / flow-II teacher / IAF student on a tiny geometry, files and CLI."""

import json

import h5py
import numpy as np
import pytest
import torch
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score

from caloflows import flows as F
from caloflows.cli import main
from caloflows.geometry import load_geometry
from caloflows.io import ShowerData, read_showers, write_showers
from caloflows.models import load_model
from caloflows.models.caloflow import CaloFlow, CaloFlowConfig
from caloflows.toy_showers import toy_showers
from caloflows.training.checkpoint import ModelDirError
from caloflows.training.loop import TrainConfig

torch.set_num_threads(1)


def _tc(epochs, **kw):
    from dataclasses import asdict

    return asdict(TrainConfig(epochs=epochs, batch_size=128, base_lr=2e-4, max_lr=3e-3, **kw))


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_xml):
    d = tmp_path_factory.mktemp("caloflow")
    (d / "tiny.xml").write_text(tiny_xml)
    g = load_geometry(str(d / "tiny.xml"))
    inc, sh = toy_showers(g, 3000, seed=0)
    cfg = CaloFlowConfig(flow1_transforms=3, flow2_transforms=3, flow2_hidden=32, student_hidden=48,
                         flow1_train=_tc(12), flow2_train=_tc(12), student_train=_tc(4))
    model = CaloFlow(g, cfg)
    data = ShowerData(inc[:2500], sh[:2500])
    held = ShowerData(inc[2500:], sh[2500:])
    model.fit_constants(data)
    torch.manual_seed(0)
    before = float(_heldout_loss(model, held))
    model.fit(data, d / "model", progress=False)
    after = float(_heldout_loss(model, held))
    model.fit(data, d / "model", stage="distill", progress=False)
    return {"dir": d, "g": g, "model": model, "data": data, "held": held, "before": before, "after": after}


@torch.no_grad()
def _heldout_loss(model, held):
    gen = torch.Generator().manual_seed(1)
    y, c = model.flow2_inputs(torch.as_tensor(held.showers), torch.as_tensor(held.incident_energies, dtype=torch.float32),
                              generator=gen)
    return -model.teacher(c).log_prob(y).mean() / y.shape[1]


def test_tiny_teacher_lowers_validation_loss(setup):
    assert setup["after"] < setup["before"] - 0.1
    h = json.loads((setup["dir"] / "model" / "history_flow2_teacher.json").read_text())
    assert min(h["val_loss"]) < h["val_loss"][0]
    for f in ("loss_flow1.png", "loss_flow2_teacher.png", "loss_flow2_student.png", "config.json", "constants.json"):
        assert (setup["dir"] / "model" / f).exists()


def test_preprocessing_invertible_on_data(setup):
    m = setup["model"]
    sh = torch.as_tensor(setup["held"].showers[:50], dtype=torch.float64) + 1e-4  # no empty layer
    e = torch.as_tensor(setup["held"].incident_energies[:50])
    y, c = m.flow2_inputs(sh, e, noise=False)
    frac = m.logit.inverse(m.std2.inverse(y))
    E = m._layer_sums(sh)
    back = torch.cat([frac[:, s] * E[:, i:i + 1] for i, s in enumerate(m.geometry.layer_slice(j) for j in range(3))], 1)
    assert torch.allclose(back, sh, rtol=1e-6, atol=1e-8)
    y1, _ = m.flow1_inputs(sh, e, noise=False)
    E1, tot = m.decode_flow1(y1, e)
    assert torch.allclose(E1, E, rtol=1e-6)


def test_both_flow2_directions_invertible_float64(setup):
    m = setup["model"]
    y, c = m.flow2_inputs(torch.as_tensor(setup["held"].showers[:20], dtype=torch.float64),
                          torch.as_tensor(setup["held"].incident_energies[:20]))
    for flow in (m.teacher, m.student, m.flow1):
        yy, cc = (y, c) if flow is not m.flow1 else m.flow1_inputs(
            torch.as_tensor(setup["held"].showers[:20], dtype=torch.float64), torch.as_tensor(setup["held"].incident_energies[:20]))
        with F.double_precision(flow):
            z = F.forward_path(flow, yy, cc)[-1]
            back = F.inverse_path(flow, z, cc)[0]
        assert (back - yy).abs().max().item() < 1e-5


def test_flow1_samples_have_exact_layer_sums(setup):
    m = setup["model"]
    e = torch.full((500,), 4096.0, dtype=torch.float64)
    with F.double_precision(m.flow1):
        y = F.flow_sample(m.flow1, torch.log10(e / 33.3e3)[:, None])
    E, tot = m.decode_flow1(y, e)
    assert (E >= 0).all()
    assert torch.allclose(E.sum(1), tot, rtol=1e-12)
    # outliers above the E_dep/E_inc bound are drawn again
    E2 = m.sample_layer_energies(e)
    assert (E2.sum(1) / e <= m.unit.u0_max + 1e-12).all()
    m.cfg.max_ratio = 0.9
    try:
        E3 = m.sample_layer_energies(e)
        assert (E3.sum(1) / e <= 0.9 + 1e-12).all()
        assert (E3.sum(1) / e > 0.5).double().mean() > 0.5  # resampled, not collapsed
    finally:
        m.cfg.max_ratio = None


@pytest.mark.parametrize("student", [True, False])
def test_generated_voxels_sum_to_sampled_layer_energies(setup, student):
    m = setup["model"]
    e = torch.as_tensor(np.repeat([1024.0, 16384.0], 50))
    E = m.sample_layer_energies(e)
    v = m.sample_voxels(E, e, student=student)
    sums = torch.stack([v[:, m.geometry.layer_slice(i)].sum(1) for i in range(m.geometry.n_layers)], 1)
    assert (v >= 0).all()
    assert torch.allclose(sums, E, rtol=1e-10)
    # after the threshold cut only voxels below the threshold are lost
    out = m.sample(e.numpy(), batch_size=64, seed=3, variant="student" if student else "teacher")
    inc, sh = out.incident_energies, out.showers
    assert sh.shape == (100, m.geometry.n_voxels) and np.array_equal(inc, e.numpy())
    assert ((sh == 0) | (sh >= m.geometry.threshold_mev)).all()


def _features(inc, sh, g):
    E = g.layer_energies(sh.astype(np.float64))
    frac = sh / np.maximum(E[:, g.layer_index], 1e-12)
    return np.column_stack([np.log10(inc), np.log10(E + 1e-3), frac])


def _auc(a, b, g, seed=0):
    xa, xb = _features(*a, g), _features(*b, g)
    x = np.vstack([xa, xb])
    y = np.r_[np.ones(len(xa)), np.zeros(len(xb))]
    idx = np.random.default_rng(seed).permutation(len(x))
    tr, te = idx[: len(x) // 2], idx[len(x) // 2:]
    clf = HistGradientBoostingClassifier(max_iter=100, random_state=seed).fit(x[tr], y[tr])
    return roc_auc_score(y[te], clf.predict_proba(x[te])[:, 1]), len(te)


def test_student_matches_teacher(setup):
    m, g = setup["model"], setup["g"]
    e = setup["data"].incident_energies[:3000] if len(setup["data"]) >= 3000 else np.resize(setup["data"].incident_energies, 3000)
    t = m.sample(e, batch_size=3000, seed=11, variant="teacher")
    t = (t.incident_energies, t.showers)
    s = m.sample(e, batch_size=3000, seed=12, variant="student")
    s = (s.incident_energies, s.showers)
    auc, n_test = _auc(t, s, g)
    # null distribution of the AUC for two equal samples: sd = sqrt((n1+n2+1)/(12 n1 n2)) ~ 0.0075 here;
    # allow a small learned mismatch of the tiny 4-epoch student on top of 5 sd
    sd = np.sqrt((n_test + 1) / (12 * (n_test / 2) ** 2))
    print("AUC teacher-vs-student", auc, "sd", sd)
    assert auc < 0.5 + 5 * sd + 0.05, auc
    # the same test does detect a mismatch: an untrained student
    raw = CaloFlow(g, m.cfg)
    raw.flow1, raw.teacher = m.flow1, m.teacher
    raw.set_constants(m.constants())
    raw.trained = {"flow1": True, "teacher": True, "student": True}
    r = raw.sample(e, batch_size=3000, seed=13, variant="student")
    auc_bad, _ = _auc(t, (r.incident_energies, r.showers), g)
    print("AUC teacher-vs-untrained-student", auc_bad)
    assert auc_bad > auc + 0.05, (auc_bad, auc)


def test_save_load_roundtrip_same_samples(setup):
    m = setup["model"]
    m2 = CaloFlow.load(setup["dir"] / "model")
    assert m2.trained == {"flow1": True, "teacher": True, "student": True}
    a = m.sample(50, batch_size=20, seed=5)
    b = load_model(setup["dir"] / "model").sample(50, batch_size=20, seed=5)
    assert np.array_equal(a.incident_energies, b.incident_energies) and np.allclose(a.showers, b.showers, rtol=1e-5, atol=1e-6)
    # E_inc drawn from the training distribution (discrete powers of two)
    assert set(np.unique(a.incident_energies)) <= set(np.unique(setup["data"].incident_energies))
    lp = m2.log_prob(setup["held"].showers[:10], setup["held"].incident_energies[:10])
    assert lp.shape == (10,) and np.isfinite(lp).all()


def test_bad_model_directories(setup, tmp_path):
    import shutil

    src = setup["dir"] / "model"
    with pytest.raises(ModelDirError, match="trained for geometry"):
        CaloFlow.load(src, geometry="ds2-coarse")
    bad = tmp_path / "bad"
    shutil.copytree(src, bad, ignore=shutil.ignore_patterns("checkpoints"))
    (bad / "flow2_student.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(ModelDirError, match="flow2_student.safetensors: corrupt"):
        CaloFlow.load(bad)
    (bad / "flow2_student.safetensors").unlink()
    with pytest.raises(ModelDirError, match="weight file not found"):
        CaloFlow.load(bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["kind"] = "l2lflows"
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelDirError, match="not a 'caloflow' model"):
        CaloFlow.load(bad)
    with pytest.raises(ValueError, match="unknown CaloFlow setting"):
        CaloFlowConfig().override(["nope=1"])
    assert CaloFlowConfig().override(["flow2_train.epochs=3", "flow2_hidden=7"]).flow2_train["epochs"] == 3


def test_cli_train_distill_generate_and_errors(setup, tmp_path, capsys):
    g = setup["g"]
    xml = str(setup["dir"] / "tiny.xml")
    inc, sh = toy_showers(g, 400, seed=4)
    write_showers(tmp_path / "train.h5", inc, sh)
    write_showers(tmp_path / "ref.h5", inc[:30], sh[:30])
    out = tmp_path / "m"
    small = ["--set", "flow2_hidden=8", "--set", "student_hidden=8", "--set", "flow2_transforms=2", "--set", "flow1_transforms=2"]
    assert main(["train", "caloflow", "--data", str(tmp_path / "train.h5"), "--geometry", xml, "--out", str(out),
                 "--epochs", "1", *small]) == 0
    assert main(["distill", str(out), "--data", str(tmp_path / "train.h5"), "--epochs", "1"]) == 0
    assert main(["generate", str(out), "--energies", str(tmp_path / "ref.h5"), "--out", str(tmp_path / "gen.h5"),
                 "--batch-size", "7", "--seed", "1"]) == 0
    gen = read_showers(tmp_path / "gen.h5", geometry=g)
    assert gen.showers.shape == (30, g.n_voxels) and np.array_equal(gen.incident_energies, inc[:30])
    assert main(["generate", str(out), "--n", "5", "--teacher", "--out", str(tmp_path / "gen2.h5")]) == 0
    assert len(read_showers(tmp_path / "gen2.h5")) == 5
    # resume of a finished run is a no-op that keeps the model usable
    assert main(["train", "caloflow", "--data", str(tmp_path / "train.h5"), "--geometry", xml, "--out", str(out),
                 "--epochs", "1", "--resume"]) == 0
    capsys.readouterr()
    # bad inputs: one line, exit status 2, no output file
    bad = tmp_path / "nan.h5"
    with h5py.File(bad, "w") as f:
        f["incident_energies"] = inc[:20, None]
        s2 = sh[:20].copy()
        s2[3, 4] = np.nan
        f["showers"] = s2
    cases = [
        (["train", "caloflow", "--data", str(bad), "--geometry", xml, "--out", str(tmp_path / "x")], "NaN"),
        (["train", "caloflow", "--data", str(tmp_path / "train.h5"), "--geometry", "ds2-coarse", "--out", str(tmp_path / "x")], "648"),
        (["train", "caloflow", "--data", str(tmp_path / "missing.h5"), "--geometry", xml, "--out", str(tmp_path / "x")], "not found"),
        (["generate", str(tmp_path / "nomodel"), "--n", "3", "--out", str(tmp_path / "g3.h5")], "model directory not found"),
        (["generate", str(out), "--out", str(tmp_path / "g4.h5")], "--n"),
        (["distill", str(tmp_path), "--data", str(tmp_path / "train.h5")], "not a caloflows model directory"),
    ]
    for argv, msg in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("caloflows: error:") and msg in err and "\n" not in err, err
    assert not (tmp_path / "g3.h5").exists() and not (tmp_path / "g4.h5").exists()


def test_made_degrees_setting_and_masks_travel_with_the_weights(setup, tmp_path):
    """``made_degrees=spread`` (issue 15) reaches flow-II, is validated, and a model directory keeps
    the masks it was trained with whatever its config says (a directory written before the setting
    existed loads as it was saved)."""
    g = setup["g"]
    assert g.n_voxels > 8  # flow-II narrower than its dimension: the rule matters
    cfg = CaloFlowConfig(flow1_transforms=2, flow2_transforms=2, flow2_hidden=8, student_hidden=8,
                         made_degrees="spread")
    m = CaloFlow(g, cfg)
    m.fit_constants(setup["data"])
    cyc = CaloFlow(g, CaloFlowConfig(flow1_transforms=2, flow2_transforms=2, flow2_hidden=8, student_hidden=8))
    mask = [b.hyper[0].mask for b in F.flow_blocks(m.teacher)]
    assert not torch.equal(mask[0], F.flow_blocks(cyc.teacher)[0].hyper[0].mask)
    assert F.flow_blocks(m.student)[0].hyper[0].mask.sum() == mask[0].sum()
    m.trained = {k: True for k in m.trained}
    m.save(tmp_path / "m")
    conf = json.loads((tmp_path / "m" / "config.json").read_text())
    del conf["config"]["caloflow"]["made_degrees"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(conf))
    m2 = CaloFlow.load(tmp_path / "m")
    assert m2.cfg.made_degrees == "cyclic"  # the old default ...
    assert all(torch.equal(a, b.hyper[0].mask) for a, b in zip(mask, F.flow_blocks(m2.teacher)))  # ... old masks
    a, b = m.sample(20, batch_size=20, seed=3), m2.sample(20, batch_size=20, seed=3)
    assert np.allclose(a.showers, b.showers, rtol=1e-5, atol=1e-6)
    with pytest.raises(Exception, match="made_degrees"):
        CaloFlowConfig().override(["made_degrees=random"]).validate()
