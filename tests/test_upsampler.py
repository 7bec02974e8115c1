"""SUPERCALO flow (issue 11): float64 invertibility, training on toy rows, resampling,
streaming vs in-memory training (arXiv:2308.11700 sec. III B, V C)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from caloflows.coarsegraining import CHOICES
from caloflows.errors import ConditionsError, ConfigError
from caloflows.flows import double_precision, forward_path, inverse_path
from caloflows.io import write_showers
from caloflows.layerdata import CoarseVoxelRows, InMemoryCoarseVoxelRows
from caloflows.superres import CUT_MEV, SuperCaloPreprocessing
from caloflows.toy_showers import toy_showers
from caloflows.upsampler import PRESETS, UpsamplerConfig, build_upsampler_flow, fit_upsampler, resample_counts, upsample

TINY = dict(transforms=2, hidden_features=(32,), bins=6, batch_size=1000, max_lr=3e-3, base_lr=1e-4)


@pytest.fixture(scope="module")
def toy_b():
    cmap = CHOICES["B"].bind("ds2")
    einc, fine = toy_showers(cmap.fine, 16, seed=11, energies_mev=np.geomspace(1e3, 1e5, 16))
    prep = SuperCaloPreprocessing.fit(einc, fine, cmap)
    return cmap, einc, fine, prep


@pytest.mark.parametrize("choice", ["A", "B"])
def test_full_preset_flow_is_invertible_in_float64(choice):
    cmap = CHOICES[choice].bind("ds2")
    prep = SuperCaloPreprocessing(e_coarse_max=5e3)
    flow = build_upsampler_flow(cmap, prep, PRESETS["full"])
    torch.manual_seed(0)
    x = 8 * torch.randn(64, cmap.group_size, dtype=torch.float64)
    c = torch.randn(64, prep.condition_dim(cmap), dtype=torch.float64)
    with double_precision(flow):
        z = forward_path(flow, x, c)[-1]
        back = inverse_path(flow, z, c)[0]
        lp = flow(c).log_prob(x)
    assert torch.isfinite(lp).all()
    assert (back - x).abs().max().item() < 1e-9


def test_validation_loss_decreases_on_toy_rows(toy_b):
    cmap, einc, fine, prep = toy_b
    rows = InMemoryCoarseVoxelRows(einc, fine, cmap, prep, chunk_showers=8)
    fit = fit_upsampler(rows, UpsamplerConfig(epochs=3, **TINY))
    v = fit.history["val_loss"]
    assert len(v) == 4 and len(fit.history["train_loss"]) == 3
    assert min(v[1:]) < v[0] - 1.0, v  # at least 1 nat per coarse voxel better than untrained
    assert fit.best_epoch == int(np.argmin(v))
    assert all(lr > 0 for lr in fit.history["lr"])  # the LR each epoch last used


def test_streaming_training_gives_the_in_memory_first_epoch_loss(toy_b, tmp_path):
    cmap, einc, fine, prep = toy_b
    path = os.path.join(tmp_path, "t.h5")
    write_showers(path, einc[:12], fine[:12], geometry="ds2")
    cfg = UpsamplerConfig(epochs=1, **TINY)
    a = fit_upsampler(CoarseVoxelRows(path, cmap, prep, chunk_showers=5), cfg)
    b = fit_upsampler(InMemoryCoarseVoxelRows(einc[:12], fine[:12], cmap, prep, chunk_showers=5), cfg)
    assert a.history["train_loss"] == b.history["train_loss"]
    assert a.history["val_loss"] == b.history["val_loss"]


def test_resampling_returns_distinct_exact_upsamplings(toy_b):
    cmap, einc, fine, prep = toy_b
    rows = InMemoryCoarseVoxelRows(einc, fine, cmap, prep)
    fit = fit_upsampler(rows, UpsamplerConfig(epochs=1, **TINY))
    coarse = cmap.coarse_grain(fine[:3].astype(np.float64))
    out = upsample(fit, coarse, einc[:3], resample=5, seed=3)
    assert out.showers.shape == (15, cmap.fine.n_voxels)
    assert out.coarse_index.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    np.testing.assert_array_equal(out.incident_energies, np.repeat(einc[:3], 5))
    for s in range(3):
        group = out.showers[5 * s:5 * s + 5]
        for i in range(5):
            for j in range(i + 1, 5):
                assert not np.array_equal(group[i], group[j])
        # every upsampling reproduces its coarse shower (voxels above the cut) and, for B, its layers
        cg = cmap.coarse_grain(group)
        big = coarse[s] >= CUT_MEV
        np.testing.assert_allclose(cg[:, big], np.broadcast_to(coarse[s][big], cg[:, big].shape), rtol=1e-12)
        np.testing.assert_allclose(cmap.fine.layer_energies(group),
                                   np.broadcast_to(cmap.coarse.layer_energies(coarse[s:s + 1]), (5, 45)), rtol=1e-10)
    assert np.all((out.showers == 0) | (out.showers >= CUT_MEV))
    # same seed -> same showers; n trims to the requested number
    again = upsample(fit, coarse, einc[:3], resample=5, seed=3, n=7)
    np.testing.assert_array_equal(again.showers, out.showers[:7])
    assert resample_counts(100, 10) == 10 and resample_counts(101, 10) == 11


def test_upsample_input_errors(toy_b):
    cmap, einc, fine, prep = toy_b
    a = CHOICES["A"].bind("ds2")
    flow = build_upsampler_flow(a, prep, UpsamplerConfig(**TINY))
    from caloflows.upsampler import UpsamplerFit

    fit = UpsamplerFit(flow, a, prep, UpsamplerConfig(**TINY))
    coarse = a.coarse_grain(fine[:2])
    with pytest.raises(ConditionsError, match="fine layer energies"):
        upsample(fit, coarse, einc[:2])
    with pytest.raises(ConditionsError, match="648"):
        upsample(fit, coarse[:, :10], einc[:2])
    out = upsample(fit, coarse, einc[:2], a.fine.layer_energies(fine[:2]), seed=0)
    assert out.showers.shape == (2, 6480)
    with pytest.raises(ConfigError):
        UpsamplerConfig(epochs=0)
