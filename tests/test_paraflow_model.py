"""The ParaFlow model family (``paraflow.txt`` sec. 3) on the one-layer 8 x 16 crystal grid: training,
invertibility, eq. 1 conditions, condition checks, the CLI with --condition, and the distilled student."""

import json
import warnings

import h5py
import numpy as np
import pytest
import torch

from caloflows import flows as F
from caloflows.cli import main
from caloflows.conditions import Conditions, ConditionSpec, ConditionsWarning, scale_condition
from caloflows.errors import ConditionsError
from caloflows.geometry import load_geometry
from caloflows.io import ShowerData, read_showers, write_showers
from caloflows.models import generator_class, load_model
from caloflows.models.paraflow import ParaFlow, ParaFlowConfig, einc_feature
from caloflows.toy_showers import toy_showers
from caloflows.training.schedules import make_scheduler

torch.set_num_threads(1)

GEOMETRY = "paraflow-8x16"
TINY = ["transforms=2", "hidden=[16,16]", "student_hidden=[16,16]", "bins=4"]


def _data(n: int, seed: int = 0) -> ShowerData:
    rng = np.random.default_rng(seed)
    einc, sh = toy_showers(load_geometry(GEOMETRY), n, seed=seed)
    d, b = rng.uniform(0.5, 1.5, n), rng.uniform(50, 90, n)
    sh = (sh * (1.2 - 0.3 * d)[:, None]).astype(np.float32)  # the parameters change the showers
    return ShowerData(einc, sh, np.column_stack([d, b]), ("d", "b"))


def _model(data: ShowerData, epochs: int = 4) -> ParaFlow:
    cfg = ParaFlowConfig.preset("quick", GEOMETRY).override(TINY).replace_train(epochs=epochs, batch_size=64)
    return ParaFlow(GEOMETRY, cfg, ConditionSpec.fit(Conditions.from_data(data), ParaFlow.condition_scaling))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny teacher + student trained on 300 toy showers with d and b (and its data)."""
    out = tmp_path_factory.mktemp("pf") / "model"
    data = _data(300)
    model = _model(data)
    model.fit(data, out, progress=False)
    model.fit(data, out, stage="distill", progress=False, epochs=3)
    return model, data, out


def test_presets_follow_the_paper_and_work_on_one_layer():
    g = load_geometry(GEOMETRY)
    assert g.n_layers == 1 and g.n_voxels == 128
    full = ParaFlowConfig.preset("full", GEOMETRY)
    assert (full.transforms, list(full.hidden), full.bins, full.noise_kev) == (10, [196, 196], 10, 20.0)
    t = full.flow_train
    assert (t["batch_size"], t["max_lr"], t["schedule"], t["patience"]) == (1000, 1e-3, "cosine_plateau", 15)
    spec = ConditionSpec(("d", "b"), (0.5, 50.0), (1.5, 90.0), "log")
    n = ParaFlow(GEOMETRY, full, spec).parameter_counts()["teacher"]
    assert 7.5e6 < n < 8.5e6  # paper sec. 3: "approximately 8 million parameters"
    # the MADEs use ReLU (zuko's default MADE activation)
    acts = {type(m) for m in ParaFlow(GEOMETRY, ParaFlowConfig.preset("quick", GEOMETRY).override(TINY)).teacher.modules()
            if not list(m.children()) and not isinstance(m, torch.nn.Linear)}
    assert torch.nn.ReLU in acts


def test_einc_feature_is_eq1_and_the_cosine_schedule_restarts():
    assert einc_feature([20e3, 100e3], 20e3, 100e3).tolist() == [-1.0, 1.0]
    # eq. 1 in the paper's unit (GeV): its "+1" is 1 GeV, so 21 GeV sits at -0.68, not at +0.22 as in MeV
    np.testing.assert_allclose(einc_feature([21e3, 50e3], 20e3, 100e3), scale_condition([21.0, 50.0], 20.0, 100.0))
    assert einc_feature([21e3], 20e3, 100e3)[0] == pytest.approx(2 * np.log(2) / np.log(81) - 1)
    np.testing.assert_allclose(einc_feature([50e3], 20e3, 100e3, unit_mev=1.0), scale_condition([50e3], 20e3, 100e3))
    opt = torch.optim.Adam(torch.nn.Linear(2, 2).parameters(), lr=1.0)
    sched = make_scheduler(opt, "cosine", base_lr=1e-5, max_lr=1e-3, steps_per_epoch=2, epochs=10, cycle_epochs=2)
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-3) and lrs[2] == pytest.approx(0.5 * (1e-3 + 1e-5))
    assert lrs[3] < lrs[2] and lrs[4] == pytest.approx(1e-3)  # warm restart after cycle_epochs


def test_training_lowers_the_validation_loss(tmp_path):
    both = _data(360, seed=0)
    data, held = both.subset(slice(0, 300)), both.subset(slice(300, 360))
    model = _model(data, epochs=5)
    model.fit_constants(data)  # same preprocessing, untrained flow
    cond = Conditions.from_data(held)
    before = model.log_prob(held.showers, cond).mean()
    summary = model.fit(data, tmp_path / "m", progress=False)
    after = model.log_prob(held.showers, cond).mean()
    assert after > before + 5.0  # nats per shower (128 crystals) on held-out showers
    assert summary["teacher"]["epochs"] == 5 and np.isfinite(summary["teacher"]["best_val"])


def test_x_to_z_to_x_in_float64(trained):
    model, data, _ = trained
    s = torch.as_tensor(np.asarray(data.showers[:20], dtype=np.float64)) + 5e-3  # above the noise floor
    e = torch.as_tensor(data.incident_energies[:20], dtype=torch.float64)
    p = torch.as_tensor(model.condition_spec.features(data.conditions[:20]))
    with torch.no_grad(), F.double_precision(model.teacher):
        y = model.encode(s, e, noise=False)
        z = model.teacher(model.context(e, p)).transform(y)
    back = model.sample_latent(z, e, p, "teacher")
    np.testing.assert_allclose(back.numpy(), s.numpy(), rtol=1e-7, atol=1e-9)


def test_conditions_are_required_and_checked(trained, tmp_path):
    model, data, out = trained
    loaded = load_model(out)
    assert loaded.condition_spec.scaling == "log" and loaded.condition_spec.names == ("d", "b")
    bare = tmp_path / "bare.h5"
    write_showers(bare, data.incident_energies[:20], data.showers[:20])
    with pytest.raises(ConditionsError, match=r"conditioned on \['d', 'b'\]"):
        loaded.fit(bare, tmp_path / "m2", progress=False)
    with pytest.raises(ConditionsError, match=r"missing \['d', 'b'\]"):
        loaded.sample(Conditions(data.incident_energies[:3]))
    with pytest.raises(ConditionsError, match=r"missing \['b'\]"):
        loaded.sample(Conditions(np.full(3, 4e3), np.ones((3, 1)), ("d",)))
    rc = main(["generate", str(out), "--energies", str(bare), "--out", str(tmp_path / "g.h5")])
    assert rc != 0 and not (tmp_path / "g.h5").exists()
    with pytest.warns(ConditionsWarning, match="'d' outside the training range"):
        loaded.sample(Conditions(np.full(3, 4e3), np.array([[3.0, 70.0]] * 3), ("d", "b")), seed=1)
    with pytest.warns(ConditionsWarning, match="incident energies outside the training range"):
        loaded.sample(Conditions(np.full(3, 1e5), np.array([[1.0, 70.0]] * 3), ("d", "b")), seed=1)
    with pytest.raises(ConditionsError, match="eq. 1 needs E_inc >"), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConditionsWarning)
        loaded.sample(Conditions(np.full(3, 10.0), np.array([[1.0, 70.0]] * 3), ("d", "b")), seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded.sample(Conditions(np.full(3, 4e3), np.array([[1.0, 70.0]] * 3), ("d", "b")), seed=1)


def test_einc_just_below_the_training_minimum_is_generated(trained):
    """Held-out showers drawn from the training law reach below the training sample's minimum
    (the paraflow-quick demo: 20013.8 MeV against a minimum of 20114.4 MeV).  Eq. 1 with E_inc in
    MeV refused them; in GeV they extrapolate by a warning, and the feature stays below -1."""
    model = trained[0]
    lo = model.einc_range[0]
    with pytest.warns(ConditionsWarning, match="incident energies outside the training range"):
        s = model.sample(Conditions(np.full(2, lo - 100.0), np.array([[1.0, 70.0]] * 2), ("d", "b")), seed=1)
    assert np.all(np.isfinite(s.showers))
    assert einc_feature([lo - 100.0], *model.einc_range)[0] < -1.0
    # a model saved before the unit was recorded keeps its MeV feature
    old = {k: v for k, v in model.constants().items() if k != "einc_unit_mev"}
    twin = ParaFlow(GEOMETRY, model.cfg, model.condition_spec)
    twin.set_constants(old)
    assert twin.einc_unit_mev == 1.0


def test_cli_train_and_generate_at_fixed_d_and_b(tmp_path, capsys):
    data = _data(200)
    train = tmp_path / "pf.h5"
    write_showers(train, data.incident_energies, data.showers, conditions=data.conditions,
                  condition_names=data.condition_names)
    model_dir, gen = tmp_path / "model", tmp_path / "gen.h5"
    args = ["train", "paraflow", "--data", str(train), "--geometry", GEOMETRY, "--out", str(model_dir),
            "--epochs", "1"] + [x for s in TINY for x in ("--set", s)] + ["--set", "flow_train.batch_size=64"]
    assert main(args) == 0
    rec = json.loads((model_dir / "config.json").read_text())
    assert rec["config"]["conditions"]["scaling"] == "log"  # Generator.condition_scaling reached api.train
    assert main(["generate", str(model_dir), "--n", "12", "--condition", "d=1.0", "--condition", "b=70",
                 "--out", str(gen), "--seed", "3"]) == 0
    g = read_showers(gen)
    assert g.showers.shape == (12, 128) and np.isfinite(g.showers).all() and (g.showers >= 0).all()
    assert g.condition_names == ("d", "b")
    np.testing.assert_array_equal(g.conditions, np.tile([1.0, 70.0], (12, 1)))
    with h5py.File(gen) as f:
        assert "conditions" in f


def test_student_agrees_with_the_teacher_on_a_fixed_latent(trained):
    model, data, _ = trained
    assert model.variant_ready("student") and model.default_variant() == "student"
    z = torch.randn(40, 128, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    e = torch.as_tensor(data.incident_energies[:40], dtype=torch.float64)
    p = torch.as_tensor(model.condition_spec.features(data.conditions[:40]))
    with torch.no_grad(), F.double_precision(model.teacher, model.student):
        c = model.context(e, p)
        yt = F.inverse_path(model.teacher, z, c)[0]
        ys = F.inverse_path(model.student, z, c)[0]
    gap = float((yt - ys).abs().mean())
    assert gap < 0.03 * float(yt.std())  # flow space, where the features have unit spread
    # in MeV through the model's own sampling path: the student runs in float32
    xt = model.sample_latent(z, e, p, "teacher")
    xs = model.sample_latent(z, e, p, "student")
    np.testing.assert_allclose(xs.sum(1).numpy(), xt.sum(1).numpy(), rtol=0.05)
    # a cold-started student (random MADEs) is far from the teacher: the test can fail
    cold = _model(data).student
    with torch.no_grad(), F.double_precision(model.teacher, cold):
        assert float((F.inverse_path(cold, z, c)[0] - yt).abs().mean()) > 10 * gap


def test_sampling_runs_the_lean_path_and_agrees_with_zukos_inverse(trained, monkeypatch):
    """ParaFlow samples through :func:`caloflows.flows.flow_decode` (the lean snapshot, chunked rows):
    same latent, same crystals as zuko's inverse -- float64 teacher to round-off, float32 student
    to float32 tolerance."""
    model, data, _ = trained
    z = torch.randn(30, 128, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    e = torch.as_tensor(data.incident_energies[:30], dtype=torch.float64)
    p = torch.as_tensor(model.condition_spec.features(data.conditions[:30]))
    calls = []
    lean_sample = F._lean.LeanFlow.sample
    monkeypatch.setattr(F._lean.LeanFlow, "sample", lambda self, *a: calls.append(1) or lean_sample(self, *a))
    with torch.no_grad():
        lean = {v: model.sample_latent(z, e, p, v) for v in ("teacher", "student")}
        assert len(calls) == 2
        with F.lean_sampling(False):
            ref = {v: model.sample_latent(z, e, p, v) for v in ("teacher", "student")}
    assert len(calls) == 2
    np.testing.assert_allclose(lean["teacher"].numpy(), ref["teacher"].numpy(), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(lean["student"].numpy(), ref["student"].numpy(), rtol=1e-3, atol=1e-3)


def test_registered():
    assert generator_class("paraflow") is ParaFlow
