"""ParaFlow conditioned on the Geant4 conversion flag (``condition_on_conversion``): the conversion
law fit, the flag's path from the file through ``--exclude`` into training, drawing it at sampling
time, the mixture density, invertibility, and the refusals."""

import h5py
import numpy as np
import pytest
import torch

from caloflows import api
from caloflows import flows as F
from caloflows.conditions import Conditions, ConditionSpec, parse_bands
from caloflows.errors import ConditionsError, UsageError
from caloflows.geometry import load_geometry
from caloflows.io import CONVERTED, ShowerData, read_labels, read_showers, write_showers
from caloflows.models import load_model
from caloflows.models.paraflow import ParaFlow, ParaFlowConfig, conversion_probability, fit_conversion_law
from caloflows.toy_showers import toy_showers

torch.set_num_threads(1)

GEOMETRY = "paraflow-8x16"
TINY = ["transforms=2", "hidden=[16,16]", "student_hidden=[16,16]", "bins=4", "condition_on_conversion=true"]


def _toy(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Toy photons: converted ones (P = 1 - exp(-7/9 d)) get a second spot 6 rows away."""
    rng = np.random.default_rng(seed)
    einc, sh = toy_showers(load_geometry(GEOMETRY), n, seed=seed)
    d, b = rng.uniform(0.5, 1.5, n), rng.uniform(50, 90, n)
    conv = (rng.random(n) < 1 - np.exp(-7 / 9 * d)).astype(np.int8)
    img = sh.reshape(n, 16, 8).copy()
    img[conv == 1] = 0.7 * img[conv == 1] + 0.3 * np.roll(img[conv == 1], 6, axis=1)
    return einc, img.reshape(n, 128).astype(np.float32), np.column_stack([d, b]), conv


def _write(path, n: int, seed: int = 0, flags: bool = True):
    einc, sh, cond, conv = _toy(n, seed)
    write_showers(path, einc, sh, conditions=cond, condition_names=("d", "b"))
    if flags:
        with h5py.File(path, "a") as f:
            f.create_dataset(CONVERTED, data=conv)
    return conv


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny teacher + student with the flag, trained through api.train with a band held out."""
    tmp = tmp_path_factory.mktemp("pfconv")
    conv = _write(tmp / "pf.h5", 400)
    out = tmp / "model"
    api.train("paraflow", tmp / "pf.h5", out, geometry=GEOMETRY, epochs=2, seed=1,
              overrides=TINY + ["flow_train.batch_size=64"], exclude=["d=0.9:1.1"])
    api.distill(out, tmp / "pf.h5", epochs=1)
    return load_model(out), tmp, conv


def test_the_conversion_law_fit_recovers_a_known_law():
    rng = np.random.default_rng(3)
    n = 40000
    t, e = rng.uniform(0.5, 1.5, n), rng.uniform(2e4, 1e5, n)
    truth = {"mu0": 0.74, "mu1": 0.03, "e0_mev": 5e4}
    c = rng.random(n) < conversion_probability(truth, e, t)
    law = fit_conversion_law(e, t, c)
    assert abs(law["mu0"] - 0.74) < 4 * law["mu0_error"] and law["mu0_error"] < 0.02
    assert abs(law["mu1"] - 0.03) < 0.05
    assert law["n"] == n and law["converted_fraction"] == pytest.approx(c.mean())
    # the asymptotic Bethe-Heitler law at the paper's thicknesses
    p = conversion_probability({"mu0": 7 / 9, "mu1": 0.0, "e0_mev": 5e4}, [5e4, 5e4], [0.5, 1.5])
    np.testing.assert_allclose(p, 1 - np.exp(-7 / 9 * np.array([0.5, 1.5])))
    with pytest.raises(ValueError, match="needs both outcomes"):
        fit_conversion_law(e[:10], t[:10], np.ones(10))


def test_flags_travel_from_the_file_through_the_band_into_training(trained, tmp_path):
    model, tmp, conv = trained
    data = read_showers(tmp / "pf.h5")
    np.testing.assert_array_equal(data.labels[CONVERTED], conv)
    np.testing.assert_array_equal(read_labels(tmp / "pf.h5")[CONVERTED], conv)  # without the showers
    np.testing.assert_array_equal(data.subset(slice(5, 9)).labels[CONVERTED], conv[5:9])
    kept, n_kept, n_file = api.training_data(tmp / "pf.h5", parse_bands(["d=0.9:1.1"]))
    d = data.conditions[:, 0]
    outside = ~((d >= 0.9) & (d <= 1.1))
    np.testing.assert_array_equal(kept.labels[CONVERTED], conv[outside])
    # the law of the saved model was fitted on the kept photons, and it is a sane pair law
    law = model.conversion_law
    ref = fit_conversion_law(data.incident_energies[outside], d[outside], conv[outside])
    assert law["mu0"] == pytest.approx(ref["mu0"]) and law["n"] == int(outside.sum())
    assert abs(law["mu0"] - 7 / 9) < 4 * law["mu0_error"] + 0.05


def test_sampling_draws_the_flag_from_the_law(trained):
    model = trained[0]
    n = 20000
    feats = torch.as_tensor(model.condition_spec.features(np.tile([1.5, 70.0], (n, 1))))
    einc = torch.full((n,), 4e3, dtype=torch.float64)
    f1 = model._flag_feature(einc, feats, torch.Generator().manual_seed(2))
    f2 = model._flag_feature(einc, feats, torch.Generator().manual_seed(2))
    assert torch.equal(f1, f2) and set(f1.unique().tolist()) <= {-1.0, 1.0}
    p = float(conversion_probability(model.conversion_law, [4e3], [1.5])[0])
    frac = float((f1 > 0).double().mean())
    assert abs(frac - p) < 4 * np.sqrt(p * (1 - p) / n)
    cond = Conditions(np.full(30, 4e3), np.tile([1.2, 60.0], (30, 1)), ("d", "b"))
    for variant in ("teacher", "student"):
        a = model.sample(cond, seed=4, variant=variant).showers
        np.testing.assert_array_equal(a, model.sample(cond, seed=4, variant=variant).showers)
        assert a.shape == (30, 128) and np.isfinite(a).all()


def test_the_density_is_the_mixture_over_the_flag_and_x_z_x_inverts(trained):
    model = trained[0]
    einc, sh, cond, _ = _toy(12, seed=9)
    c = Conditions(einc, cond, ("d", "b"))
    e = torch.as_tensor(einc, dtype=torch.float64)
    feats = torch.as_tensor(model.condition_spec.features(cond))
    s = torch.as_tensor(sh, dtype=torch.float64) + 0.5 * model.cfg.noise_kev * 1e-3
    with torch.no_grad(), F.double_precision(model.teacher):
        y = model.encode(s, e, noise=False)
        lp = {f: model.teacher(model.context(e, torch.cat([feats, torch.full((12, 1), f, dtype=torch.float64)], 1))).log_prob(y)
              for f in (1.0, -1.0)}
    p = torch.as_tensor(conversion_probability(model.conversion_law, einc, cond[:, 0]))
    want = torch.logaddexp(torch.log(p) + lp[1.0], torch.log1p(-p) + lp[-1.0])
    np.testing.assert_allclose(model.log_prob(sh, c), want.numpy(), rtol=1e-10)
    # x -> z -> x in float64 for each flag
    for f in (1.0, -1.0):
        pf = torch.cat([feats, torch.full((12, 1), f, dtype=torch.float64)], 1)
        with torch.no_grad(), F.double_precision(model.teacher):
            z = model.teacher(model.context(e, pf)).transform(y)
        np.testing.assert_allclose(model.decode(y, e).numpy(), model.sample_latent(z, e, pf, "teacher").numpy(),
                                   rtol=1e-7, atol=1e-9)


def test_refusals(trained, tmp_path):
    model, tmp, _ = trained
    _write(tmp_path / "noflag.h5", 50, flags=False)
    with pytest.raises(ConditionsError, match=r"noflag.h5: has no 'converted' dataset"):
        api.train("paraflow", tmp_path / "noflag.h5", tmp_path / "m", geometry=GEOMETRY, epochs=1, overrides=TINY)
    assert not (tmp_path / "m" / "teacher.safetensors").exists()
    with pytest.raises(ConditionsError, match=r"noflag.h5: has no 'converted' dataset"):
        model.training_conditions(tmp_path / "noflag.h5")  # a path: the labels are read without the showers
    model.training_conditions(tmp / "pf.h5")
    cfg = ParaFlowConfig.preset("quick", GEOMETRY).override(TINY)
    with pytest.raises(ConditionsError, match="plate thickness 'd'"):
        ParaFlow(GEOMETRY, cfg, ConditionSpec(("b",), (50.0,), (90.0,), "log"))
    bad = ShowerData(np.full(20, 5e4), np.ones((20, 128), np.float32), np.tile([1.0, 70.0], (20, 1)), ("d", "b"),
                     labels={CONVERTED: np.full(20, 2)})
    with pytest.raises(ConditionsError, match="other than 0 and 1"):
        model.training_conditions(bad)
    bad.labels[CONVERTED] = np.ones(20, np.int8)
    with pytest.raises(ConditionsError, match="every photon has converted=1"):
        model.training_conditions(bad)
    from caloflows.export import export_onnx

    with pytest.raises(UsageError, match="condition_on_conversion is not supported"):
        export_onnx(model, tmp_path / "m.onnx")
