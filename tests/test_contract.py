"""The Generator contract: every registered family, tiny, through fit -> save -> load -> sample -> log_prob,
with E_inc only and with two extra named detector parameters."""

import warnings

import numpy as np
import pytest
import torch

from caloflows.conditions import Conditions, ConditionsWarning, ConditionSpec
from caloflows.errors import ConditionsError, ConfigError
from caloflows.geometry import load_geometry
from caloflows.io import ShowerData, read_showers, write_showers
from caloflows.models import FAMILIES, generator_class, load_model
from caloflows.toy_showers import toy_showers

torch.set_num_threads(1)

GEOMETRY = "ds2-coarse"
#: families tested on another geometry (ParaFlow: the one-layer 8 x 16 crystal grid)
GEOMETRIES = {"paraflow": "paraflow-8x16"}
TRAIN = {"epochs": 1, "batch_size": 64, "val_fraction": 0.2}
#: per family: the smallest networks (so that the contract test runs in seconds)
TINY = {
    "caloflow": {"flow1_transforms": 1, "flow1_hidden": [8], "flow2_transforms": 1, "flow2_hidden": 16,
                 "student_hidden": 16, "bins": 4},
    "l2lflows": {"edf_transforms": 1, "edf_hidden": [8], "cf_transforms": 1, "cf_hidden": [8], "embed_hidden": [8],
                 "embed_out": 4, "n_cond": 1, "bins": 4},
    "icaloflow": {"edf_transforms": 1, "edf_hidden": [8], "transforms": 1, "hidden": [8], "student_hidden": [8],
                  "bins": 4},
    "supercalo": {"coarse_graining": "B", "coarse.flow1_transforms": 1, "coarse.flow1_hidden": [8],
                  "coarse.flow2_transforms": 1, "coarse.flow2_hidden": 16, "coarse.student_hidden": 16,
                  "coarse.bins": 4, "flow1_transforms": 1, "flow1_hidden": [8], "up_transforms": 1,
                  "up_hidden": [8], "up_bins": 4, "bins": 4},
    "paraflow": {"transforms": 1, "hidden": [8, 8], "student_hidden": [8, 8], "bins": 4},
}


def _data(n: int, with_params: bool, seed: int = 0, geometry: str = GEOMETRY) -> ShowerData:
    rng = np.random.default_rng(seed)
    einc, sh = toy_showers(load_geometry(geometry), n, seed=seed)
    if not with_params:
        return ShowerData(einc, sh)
    d, b = rng.uniform(0.5, 1.5, n), rng.uniform(50, 90, n)
    sh = (sh * (1.2 - 0.3 * d)[:, None]).astype(np.float32)  # the parameters change the showers
    return ShowerData(einc, sh, np.column_stack([d, b]), ("d", "b"))


def _model(kind: str, data: ShowerData):
    G = generator_class(kind)
    geometry = GEOMETRIES.get(kind, GEOMETRY)
    cfg = G.Config.preset("quick", geometry).override([f"{k}={v}" for k, v in TINY[kind].items()]).replace_train(**TRAIN)
    spec = ConditionSpec.fit(Conditions.from_data(data), G.condition_scaling) if data.condition_names else ConditionSpec()
    return G(geometry, cfg, spec)


def test_every_family_is_registered_with_its_tiny_settings():
    assert set(TINY) == set(FAMILIES)


@pytest.mark.parametrize("with_params", [False, True], ids=["einc-only", "two-params"])
@pytest.mark.parametrize("kind", sorted(FAMILIES))
def test_fit_save_load_sample_log_prob(kind, with_params, tmp_path):
    geometry = GEOMETRIES.get(kind, GEOMETRY)
    data = _data(120, with_params, geometry=geometry)
    path = tmp_path / "train.h5"
    write_showers(path, data.incident_energies, data.showers, conditions=data.conditions,
                  condition_names=data.condition_names or None)
    model = _model(kind, data)
    for stage in model.stages:
        summary = model.fit(path, tmp_path / "m", stage=stage, progress=False)
        assert summary and model.stage_done(stage)
    loaded = load_model(tmp_path / "m")
    assert type(loaded) is type(model) and loaded.condition_spec == model.condition_spec
    cond = Conditions.from_data(read_showers(path).subset(slice(0, 7)))
    what = cond if with_params else cond.incident_energies
    a = model.sample(what, batch_size=4, seed=11)
    b = loaded.sample(what, batch_size=4, seed=11)
    assert a.showers.shape == (7, load_geometry(geometry).n_voxels) and np.isfinite(a.showers).all() and (a.showers >= 0).all()
    np.testing.assert_allclose(a.showers, b.showers, rtol=1e-5, atol=1e-6)  # same seed, same showers
    assert a.condition_names == (("d", "b") if with_params else ())
    c = loaded.sample(what, batch_size=4, seed=12)
    assert not np.array_equal(a.showers, c.showers)  # another seed, other showers
    lp = loaded.log_prob(data.showers[:5], cond[:5] if with_params else data.incident_energies[:5])
    assert lp.shape == (5,) and np.isfinite(lp).all()
    assert sum(loaded.parameter_counts().values()) > 0


def test_conditions_are_checked(tmp_path):
    data = _data(60, True)
    model = _model("caloflow", data)
    model.fit(data, tmp_path / "m", progress=False)
    with pytest.raises(ConditionsError, match=r"missing \['d', 'b'\]|conditioned on \['d', 'b'\]"):
        model.sample(5, seed=1)  # no parameters given
    with pytest.raises(ConditionsError, match="missing"):
        model.sample(Conditions(np.full(3, 1e3), np.ones((3, 1)), ("d",)))
    with pytest.raises(ConditionsError, match=r"unknown condition\(s\) \['x'\]"):
        model.sample(Conditions(np.full(3, 1e3), np.ones((3, 3)), ("d", "b", "x")))
    with pytest.warns(ConditionsWarning, match="outside the training range"):
        model.sample(Conditions(np.full(3, 1e3), np.array([[3.0, 60.0]] * 3), ("d", "b")), seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.sample(Conditions(np.full(3, 1e3), np.array([[1.0, 60.0]] * 3), ("d", "b")), seed=1)
    plain = _model("caloflow", _data(60, False))
    with pytest.raises(ConditionsError, match="has condition parameters"):
        plain.fit(data, tmp_path / "p", progress=False)  # a model without parameters refuses a file with them


def test_settings_are_validated_before_any_work():
    G = generator_class("caloflow")
    cfg = G.Config.preset("quick", GEOMETRY)
    for item, msg in [("flow2_hidden=abc", "flow2_hidden.*integer"), ("flow2_hidden=-1", "flow2_hidden.*>= 1"),
                      ("flow2_hidden=2.5", "flow2_hidden.*integer"), ("bins=0", "bins.*>= 1"),
                      ("flow2_train.batch_size=0", "batch_size.*>= 1"), ("flow2_train.batch_size=-5", "batch_size"),
                      ("flow2_train=3", "flow2_train.*dict"), ("flow2_train.epochs=0", "epochs.*>= 1"),
                      ("flow2_train.schedule=fast", "schedule.*one of"), ("alpha=0", "alpha"),
                      ("flow1_hidden=[]", "flow1_hidden.*non-empty")]:
        with pytest.raises(ConfigError, match=msg):
            cfg.override([item])
    with pytest.raises(ConfigError, match="unknown CaloFlow setting 'nope'"):
        cfg.override(["nope=1"])
    with pytest.raises(ConfigError, match="unknown CaloFlow preset"):
        G.Config.preset("huge", GEOMETRY)


@pytest.mark.parametrize("kind", FAMILIES)
def test_a_saved_config_from_before_a_training_setting_existed_loads_and_takes_it(kind):
    G = generator_class(kind)
    d = G.Config.preset("quick", GEOMETRY).to_dict()
    train = sorted(k for k in d if k.endswith("_train"))
    assert train
    for k in train:  # as written before stop 16, when 'compile' was added
        del d[k]["compile"]
    cfg = G.Config.from_dict(d)
    assert all(cfg.to_dict()[k]["compile"] is False for k in train)  # what training did without the key
    assert cfg.override([f"{train[0]}.compile=true"]).to_dict()[train[0]]["compile"] is True


def test_same_seed_same_initial_weights():
    G = generator_class("icaloflow")
    cfg = G.Config.preset("quick", GEOMETRY).override([f"{k}={v}" for k, v in TINY["icaloflow"].items()])
    a, b = G(GEOMETRY, cfg), G(GEOMETRY, cfg)
    for (k, x), (_, y) in zip(a.networks()["teacher3"].state_dict().items(), b.networks()["teacher3"].state_dict().items()):
        assert torch.equal(x, y), k
    c = G(GEOMETRY, cfg.override(["seed=1"]))
    assert not torch.equal(next(iter(a.networks()["teacher3"].parameters())),
                           next(iter(c.networks()["teacher3"].parameters())))
