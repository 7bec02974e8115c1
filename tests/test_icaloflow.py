"""iCaloFlow (review sec. 4.2) on tiny flows and synthetic ds2-coarse showers."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest
import torch

from caloflows import flows as F
from caloflows.geometry import load_geometry
from caloflows.io import ShowerData
from caloflows.models import load_model
from caloflows.models.icaloflow import ICaloFlow, ICaloFlowConfig
from caloflows.toy_showers import toy_showers
from caloflows.training.checkpoint import ModelDirError
from caloflows.training.loop import batch_generator
from caloflows.training.loop import TrainConfig

G = load_geometry("ds2-coarse")


def tiny_config(student_epochs: int = 20) -> ICaloFlowConfig:
    tc = asdict(TrainConfig(epochs=1, batch_size=50, base_lr=1e-4, max_lr=1e-3))
    sc = asdict(TrainConfig(epochs=student_epochs, batch_size=25, base_lr=1e-4, max_lr=3e-3, val_fraction=0.2))
    return ICaloFlowConfig(edf_transforms=2, edf_hidden=[8], transforms=1, hidden=[16], student_hidden=[64], bins=4,
                           edf_train=tc, teacher_train=tc, student_train=sc)


def _discrepancy(model: ICaloFlow, which: int, data: ShowerData) -> float:
    """mean |x_student(z) - x_teacher(z)| / std(x_teacher) on contexts from the data."""
    t = model.training_showers(data)
    rows = np.arange(t.n if which == 2 else t.n * (G.n_layers - 1))[:300]
    y, c = model._data_inputs(t, which, False)(rows, None, batch_generator(7, 0, 0))
    t, s = model.nets[f"teacher{which}"], model.nets[f"student{which}"]
    z = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), F.double_precision(t, s):
        xt = F.inverse_path(t.flow, z, c.double())[0]
        xs = F.inverse_path(s.flow, z, c.double())[0]
    return float((xt - xs).abs().mean() / xt.std())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("ic")
    inc, sh = toy_showers(G, 150, seed=4)
    data = ShowerData(inc, sh)
    model = ICaloFlow(G, tiny_config())
    model.fit(data, d / "m", progress=False)
    before = {w: _discrepancy(model, w, data) for w in (2, 3)}
    model.fit(data, d / "m", stage="distill", progress=False)
    after = {w: _discrepancy(model, w, data) for w in (2, 3)}
    return d / "m", data, before, after


def test_student_matches_teacher(trained):
    path, data, before, after = trained
    for w in (2, 3):
        assert after[w] < 0.35 * before[w], (w, before, after)
        assert after[w] < 0.15, (w, before, after)
    # the saved student reproduces the in-memory one
    model = load_model(path)
    assert isinstance(model, ICaloFlow) and all(model.trained.values())
    assert abs(_discrepancy(model, 2, data) - after[2]) < 1e-9


def test_shared_flow_invertible_float64(trained):
    model = ICaloFlow.load(trained[0])
    f = model.nets["teacher3"]
    assert f.context == 72 + 3 + 8  # previous layer, E_inc, E_i, E_{i-1}, one-hot layer 1..8
    y = torch.randn(10, 72, dtype=torch.float64)
    c = torch.randn(10, f.context, dtype=torch.float64)
    with torch.no_grad(), F.double_precision(f):
        back = F.inverse_path(f.flow, F.forward_path(f.flow, y, c)[-1], c)[0]
    assert float((back - y).abs().max()) < 1e-5


def test_generation_walks_layers_with_exact_sums(trained):
    model = ICaloFlow.load(trained[0])
    E = torch.as_tensor(np.outer(np.linspace(0.2, 30.0, 5), np.linspace(1, 2, 9)))
    einc = torch.full((5,), 2000.0, dtype=torch.float64)
    for student in (True, False):
        out = model.sample_layers(E, einc, torch.zeros(len(einc), 0, dtype=torch.float64), student=student, generator=torch.Generator().manual_seed(0)).numpy()
        assert np.allclose(G.layer_energies(out), E.numpy(), rtol=1e-9)
        assert not np.any((out > 0) & (out < G.threshold_mev))
    d = model.sample(8, seed=2)
    e, sh = d.incident_energies, d.showers
    assert sh.shape == (8, 648) and np.isfinite(sh).all() and np.all(sh.sum(1) / e <= 2.6 * (1 + 1e-5))
    lp = model.log_prob(trained[1].showers[:3], trained[1].incident_energies[:3])
    assert lp.shape == (3,) and np.isfinite(lp).all()


def test_generation_cut_leaves_no_voxel_below_it(trained):
    """``--set voxel_cut_mev=0.5`` at generation: the B.3 post-processing at 0.5 MeV (issue 15)."""
    model = ICaloFlow.load(trained[0]).with_generation_settings(["voxel_cut_mev=0.5"])
    E = torch.as_tensor(np.outer(np.linspace(0.2, 30.0, 5), np.linspace(1, 2, 9)))
    einc = torch.full((5,), 2000.0, dtype=torch.float64)
    out = model.sample_layers(E, einc, student=True, generator=torch.Generator().manual_seed(0)).numpy()
    assert not np.any((out > 0) & (out < 0.5))
    full = E.numpy() >= 0.5
    assert np.allclose(G.layer_energies(out)[full], E.numpy()[full], rtol=1e-9)
    plain = ICaloFlow.load(trained[0]).sample_layers(E, einc, student=True, generator=torch.Generator().manual_seed(0))
    assert np.any((plain.numpy() > 0) & (plain.numpy() < 0.5))


def test_bad_inputs(tmp_path, trained):
    with pytest.raises(ValueError, match="equal layers"):
        ICaloFlow("ds1-photons")
    model = ICaloFlow(G, tiny_config())
    with pytest.raises(ModelDirError, match="not trained"):
        model.sample(3)
    with pytest.raises(ModelDirError, match="teacher2 flow is not trained"):
        model.fit(trained[1], tmp_path / "x", stage="distill", progress=False)
    with pytest.raises(ValueError, match="at least 10"):
        model.fit(trained[1].subset(slice(0, 4)), tmp_path / "y", progress=False)
    with pytest.raises(ValueError, match="showers"):
        model.fit(ShowerData(np.ones(20) * 1e3, np.ones((20, 100), np.float32)), tmp_path / "z", progress=False)
    with pytest.raises(ModelDirError, match="holds a 'icaloflow' model"):
        from caloflows.models.l2lflows import L2LFlows

        L2LFlows.load(trained[0])


# ------------------------------------------------------------------ training from a file (streamed)
def _stream_config(chunk_rows: int, cache_mb: float) -> ICaloFlowConfig:
    c = tiny_config()
    c.chunk_rows, c.cache_mb = chunk_rows, cache_mb
    return c


def test_streamed_pairs_are_the_in_memory_layers(tmp_path):
    from caloflows.io import write_showers
    from caloflows.layerdata import TrainingShowers

    inc, sh = toy_showers(G, 23, seed=5)
    write_showers(tmp_path / "t.h5", inc, sh)
    mem = TrainingShowers.open(ShowerData(inc, sh), G, chunk_rows=5)
    st = TrainingShowers.open(tmp_path / "t.h5", G, chunk_rows=5, cache_mb=0.0)
    assert st.streaming and not mem.streaming
    assert np.allclose(st.E, mem.E) and np.allclose(st.einc, inc)
    L, n = G.n_layers, G.layer_sizes[0]
    seen = []
    for ii, raw in st.source(3).batches(np.arange(23 * (L - 1)), 16, 0, 1, True, False):
        shw, lay = ii // (L - 1), 1 + ii % (L - 1)
        grid = sh.reshape(23, L, n)
        assert np.array_equal(raw[:, :n], grid[shw, lay]) and np.array_equal(raw[:, n:], grid[shw, lay - 1])
        seen.append(ii)
    assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(23 * (L - 1)))  # every pair once per epoch


def test_training_from_streamed_file_equals_training_in_memory(tmp_path):
    from caloflows.io import write_showers

    torch.set_num_threads(1)
    inc, sh = toy_showers(G, 60, seed=6)
    write_showers(tmp_path / "t.h5", inc, sh)
    # one chunk holding every shower: the streamed batches are the in-memory batches
    a = ICaloFlow(G, _stream_config(60, 1e6))
    a.fit(ShowerData(inc, sh), tmp_path / "mem", progress=False, networks=("teacher2", "teacher3"))
    b = ICaloFlow(G, _stream_config(60, 0.0))
    b.fit(tmp_path / "t.h5", tmp_path / "file", progress=False, networks=("teacher2", "teacher3"))
    for k in ("teacher2", "teacher3"):
        sa, sb = a.nets[k].state_dict(), b.nets[k].state_dict()
        assert all(torch.allclose(sa[p], sb[p], atol=1e-6) for p in sa), k
    # many small chunks: a different (chunk-wise) shuffle, still a finite training run
    c = ICaloFlow(G, _stream_config(7, 0.0))
    s = c.fit(tmp_path / "t.h5", tmp_path / "chunks", progress=False, networks=("teacher3",))
    assert np.isfinite(s["teacher3"]["best_val"])
    with pytest.raises(Exception, match="missing.h5"):
        c.fit(tmp_path / "missing.h5", tmp_path / "m", progress=False)


def test_unstandardised_voxel_inputs_setting():
    """``voxel_standardise=false``: flows 2 and 3 see the logit fractions themselves (constants 0 / 1),
    which needs a spline domain of at least ln(1 / alpha)."""
    inc, sh = toy_showers(G, 100, seed=6)
    m = ICaloFlow(G, ICaloFlowConfig(voxel_standardise=False, voxel_bound=14.0))
    m.fit_constants(ShowerData(inc, sh))
    c = m.consts
    assert set(c["mean0"]) == {0.0} and set(c["mean"]) == {0.0} and set(c["std0"]) == {1.0} and set(c["std"]) == {1.0}
    frac = torch.rand(5, m.n, dtype=torch.float64)
    assert torch.allclose(m.normed_forward(frac, False), torch.logit(1e-6 + (1 - 2e-6) * frac))
    with pytest.raises(Exception, match="voxel_bound >= 14"):
        ICaloFlowConfig(voxel_standardise=False).validate()
