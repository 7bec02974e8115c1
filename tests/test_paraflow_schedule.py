"""ParaFlow's training schedule (paraflow.txt sec. 3): cosine annealing with warm restarts whose
restart LR is halved after a validation plateau of 10 epochs, early stopping after 15 -- the
``cosine_plateau`` schedule of the one training loop, its LR sequence and bit-identical resume."""

import math

import numpy as np
import pytest
import torch

from caloflows.errors import ConfigError
from caloflows.models.paraflow import ParaFlowConfig
from caloflows.training.checkpoint import load_checkpoint
from caloflows.training.loop import ArraySource, TrainConfig, fit_flow, split_indices
from caloflows.training.schedules import CosineRestartsOnPlateau, make_scheduler

torch.set_num_threads(1)


def _cos(peak, base, t, T):
    return base + (peak - base) * 0.5 * (1 + math.cos(math.pi * t / T))


def test_restart_lr_halves_after_plateau_and_only_at_the_next_restart():
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    s = make_scheduler(opt, "cosine_plateau", base_lr=1e-5, max_lr=1e-3, steps_per_epoch=2, epochs=20,
                       cycle_epochs=2, restart_factor=0.5, restart_patience=3)
    assert isinstance(s, CosineRestartsOnPlateau)
    # epochs 1-2 improve, 3-5 do not (plateau of 3 -> reduce after epoch 5), 6 improves,
    # 7-9 do not (reduce after epoch 9), 10-12 improve
    vals = [5.0, 4.0, 4.0, 4.5, 4.0, 3.0, 3.0, 3.5, 3.1, 2.0, 1.0, 0.5]
    lrs = []
    for v in vals:
        for _ in range(2):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            s.step()
        s.epoch_end(v)
    assert s.reductions == [5, 9]
    assert s.restart_lr == pytest.approx(2.5e-4)
    # cycles of 4 steps start at epochs 1, 3, 5, 7, 9, 11; the reduction after epoch 5 falls in the
    # middle of the cycle of epochs 5-6, so the LR halves from the cycle of epochs 7-8 on
    peaks = [1e-3, 1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4]
    want = [_cos(peaks[k // 4], 1e-5, k % 4, 4) for k in range(len(lrs))]
    assert np.allclose(lrs, want, rtol=1e-12, atol=0)
    assert lrs[0] == pytest.approx(1e-3) and lrs[12] == pytest.approx(5e-4) and lrs[20] == pytest.approx(2.5e-4)


def test_scheduler_state_roundtrip():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=1.0)
    s = CosineRestartsOnPlateau(opt, steps_per_cycle=3, max_lr=1e-3, base_lr=0.0, patience=1)
    for v in (1.0, 1.0, 2.0):
        s.step()
        s.epoch_end(v)
    st = s.state_dict()
    opt2 = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    s2 = CosineRestartsOnPlateau(opt2, steps_per_cycle=3, max_lr=1e-3, base_lr=0.0, patience=1)
    s2.load_state_dict(st)
    assert s2.state_dict() == st and opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


# ------------------------------------------------------------------ through the training loop
N, VAL_FRACTION, BATCH = 60, 1 / 6, 10  # 50 training rows: 5 steps per epoch; 10 validation rows


class PlateauToy(torch.nn.Module):
    """log p: learnable on training rows, constant on validation rows -- the validation loss
    never improves after epoch 1, so the plateau and early-stopping epochs are known."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(2, 1)

    def forward(self, x, is_val):
        lp = -((self.lin(x)[:, 0] - 1.0) ** 2)
        return torch.where(is_val, torch.full_like(lp, -1.0), lp)


def _data():
    return np.random.default_rng(0).normal(size=(N, 2)).astype(np.float32)


def _inputs(val_rows, fail_at=None):
    calls = [0]

    def fn(ii, raw, gen):
        calls[0] += 1
        if fail_at is not None and calls[0] == fail_at:
            raise RuntimeError("simulated crash")
        x = torch.as_tensor(raw) + 0.01 * torch.randn(raw.shape, generator=gen)
        return x, torch.as_tensor(np.isin(ii, val_rows))

    return fn


def _cfg():
    return TrainConfig(epochs=40, batch_size=BATCH, base_lr=1e-5, max_lr=1e-2, schedule="cosine_plateau",
                       cycle_epochs=2, val_fraction=VAL_FRACTION, patience=15, seed=3, restart_factor=0.5,
                       restart_patience=10)


def _run(workdir, resume=False, fail_at=None):
    cfg = _cfg()
    val_rows = split_indices(N, cfg.val_fraction, cfg.seed)[1].numpy()
    m = PlateauToy()
    r = fit_flow(m, ArraySource(_data()), _inputs(val_rows, fail_at), "toy", workdir, cfg, progress=False,
                 resume=resume)
    return m, r


def test_fit_flow_halves_restart_lr_after_ten_flat_epochs_and_stops_after_fifteen(tmp_path):
    _, r = _run(tmp_path / "a")
    h = r.history
    assert r.stopped_early and r.epochs_run == 16 and r.best_epoch == 1  # 15 epochs without improvement
    # 5 steps per epoch, cycles of 10 steps (2 epochs); the recorded LR is the epoch's last step's
    # (cycle step 4 in odd epochs, 9 in even ones).  The 10th flat epoch is epoch 11 -> the restart
    # LR halves at the restart of epoch 13.
    want = [_cos(1e-2 if e < 13 else 5e-3, 1e-5, 4 if e % 2 else 9, 10) for e in range(1, 17)]
    assert np.allclose(h["lr"], want, rtol=1e-12, atol=0)
    st = load_checkpoint(tmp_path / "a" / "checkpoints" / "toy_last.pt")["scheduler"]
    assert st["reductions"] == [11] and st["restart_lr"] == pytest.approx(5e-3)


def test_cosine_plateau_resume_is_bit_identical(tmp_path):
    ref_model, ref = _run(tmp_path / "ref")
    per_epoch = 5 + 1  # training batches + one validation batch
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(tmp_path / "crash", fail_at=12 * per_epoch + 2)  # inside epoch 13: after the reduction (epoch 11)
    assert load_checkpoint(tmp_path / "crash" / "checkpoints" / "toy_last.pt")["epoch"] == 12
    model, r = _run(tmp_path / "crash", resume=True)
    for k in ("epoch", "train_loss", "val_loss", "lr"):
        assert r.history[k] == ref.history[k], k
    assert r.stopped_early == ref.stopped_early and r.best_val == ref.best_val
    for k, v in ref_model.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    # the last weights (not only the best ones) are equal too
    a = load_checkpoint(tmp_path / "ref" / "checkpoints" / "toy_last.pt")
    b = load_checkpoint(tmp_path / "crash" / "checkpoints" / "toy_last.pt")
    assert a["scheduler"] == b["scheduler"]
    for k, v in a["model"].items():
        assert torch.equal(b["model"][k], v), k


def test_paraflow_full_preset_uses_the_paper_schedule_and_settings_are_checked():
    cfg = ParaFlowConfig.preset("full", "paraflow-8x16")
    t = cfg.flow_train
    assert (t["schedule"], t["restart_factor"], t["restart_patience"], t["patience"], t["max_lr"],
            t["batch_size"]) == ("cosine_plateau", 0.5, 10, 15, 1e-3, 1000)
    with pytest.raises(ConfigError, match="restart_factor"):
        cfg.override(["flow_train.restart_factor=1.5"])
    with pytest.raises(ConfigError, match="restart_patience"):
        cfg.override(["flow_train.restart_patience=0"])
