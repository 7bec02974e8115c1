"""A general, resumable training loop (CaloFlow training recipe, ``caloflow_dataset1.txt`` sec. 2-3).

:class:`Trainer` trains any ``torch.nn.Module`` given a loss function ``loss_fn(model, batch)``
on a tuple of equally long tensors:

* a fixed 70/30 train/validation split drawn from ``seed`` (paper: 70/30);
* Adam with the per-batch LR schedules of :mod:`caloflows.training.schedules`;
* validation loss after every epoch with a fixed RNG seed (noise in the loss is the same for
  every epoch), best-validation weights kept, early stopping after ``patience`` epochs
  without improvement;
* a checkpoint after every epoch with model, optimizer, scheduler and RNG states, so that a
  run killed at any moment (even ``kill -9``) resumes with ``resume=True`` from the last
  finished epoch and continues exactly as the uninterrupted run would;
* tqdm bars with loss and ETA (silent when not attached to a terminal), a loss-curve PNG
  and a JSON history.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..io import atomic_output
from .checkpoint import ModelDirError, load_checkpoint, save_checkpoint, write_json
from .schedules import make_scheduler

__all__ = ["TrainConfig", "TrainResult", "Trainer", "resolve_device", "plot_history", "split_indices",
           "new_history", "record_epoch"]


#: per-epoch training history kept by every training loop (history_*.json, checkpoints)
HISTORY_KEYS = ("epoch", "train_loss", "val_loss", "lr", "seconds", "skipped_batches")


def new_history() -> dict:
    """An empty training history with :data:`HISTORY_KEYS`."""
    return {k: [] for k in HISTORY_KEYS}


def record_epoch(history: dict, epoch: int, train_loss: float, val_loss: float, lr: float, seconds: float,
                 skipped_batches: int) -> None:
    """Append one epoch's numbers to ``history``."""
    for k, v in zip(HISTORY_KEYS, (epoch, train_loss, val_loss, lr, seconds, skipped_batches)):
        history[k].append(v)


def resolve_device(name: str | None) -> torch.device:
    """``cpu`` (default), ``cuda`` or ``cuda:N``; a clear error if CUDA is asked for but missing."""
    name = (name or "cpu").lower()
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name} requested but no CUDA GPU is available to torch {torch.__version__}")
        return torch.device(name)
    if name != "cpu":
        raise ValueError(f"unknown device {name!r}; use cpu or cuda")
    return torch.device("cpu")


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run (CaloFlow defaults: appendix A, table 7)."""

    epochs: int = 100
    batch_size: int = 200
    base_lr: float = 4e-5
    max_lr: float = 1e-3
    schedule: str = "onecycle"
    annihilation: float = 0.2
    cycle_epochs: int = 10
    val_fraction: float = 0.3
    patience: int | None = None
    seed: int = 0
    grad_clip: float | None = 10.0
    weight_decay: float = 0.0


@dataclass
class TrainResult:
    best_val: float
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    history: dict = field(default_factory=dict)
    seconds: float = 0.0


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Deterministic train / validation index split."""
    if n < 2:
        raise ValueError(f"need at least 2 samples to split into train and validation, got {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = min(max(1, int(round(n * val_fraction))), n - 1)
    return perm[n_val:], perm[:n_val]


def plot_history(history: dict, path: str | os.PathLike, title: str = "") -> None:
    """Train / validation loss per epoch (and LR) as a PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ep = history.get("epoch", [])
    ax.plot(ep, history.get("train_loss", []), label="train")
    ax.plot(ep, history.get("val_loss", []), label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    with atomic_output(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


class Trainer:
    """Train ``model`` by minimising ``loss_fn(model, batch)`` (mean over the batch).

    Args:
        model: the module to train (already on ``device``).
        loss_fn: returns a scalar tensor for a tuple of batch tensors (already on ``device``).
        name: file stem for checkpoints and plots (``flow1``, ``flow2_student``...).
        workdir: model directory; checkpoints go to ``workdir/checkpoints``.
        config: :class:`TrainConfig`.
        device: where batches are moved.
        progress: show tqdm bars (only when attached to a terminal).
        params: parameters to optimise (default: all of ``model`` that require grad).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[nn.Module, tuple[Tensor, ...]], Tensor],
        name: str,
        workdir: str | os.PathLike,
        config: TrainConfig,
        device: torch.device | str = "cpu",
        progress: bool = True,
        params: Sequence[nn.Parameter] | None = None,
    ) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.name = name
        self.workdir = Path(workdir)
        self.ckdir = self.workdir / "checkpoints"
        self.cfg = config
        self.device = torch.device(device)
        self.progress = progress
        self.params = list(params) if params is not None else [p for p in model.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ paths
    @property
    def last_path(self) -> Path:
        return self.ckdir / f"{self.name}_last.pt"

    @property
    def best_path(self) -> Path:
        return self.ckdir / f"{self.name}_best.pt"

    # ------------------------------------------------------------------ helpers
    def _batches(self, data: tuple[Tensor, ...], idx: Tensor, gen: torch.Generator | None):
        if gen is not None:
            idx = idx[torch.randperm(len(idx), generator=gen)]
        bs = self.cfg.batch_size
        for a in range(0, len(idx), bs):
            j = idx[a:a + bs]
            yield tuple(t[j].to(self.device, non_blocking=True) for t in data)

    @torch.no_grad()
    def evaluate(self, data: tuple[Tensor, ...], idx: Tensor) -> float:
        """Mean loss over ``idx`` with a fixed RNG seed (reproducible noise)."""
        self.model.eval()
        total, n = 0.0, 0
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(self.cfg.seed + 12345)
            for b in self._batches(data, idx, None):
                loss = self.loss_fn(self.model, b)
                total += float(loss) * len(b[0])
                n += len(b[0])
        self.model.train()
        return total / max(n, 1)

    def _state(self, epoch, opt, sched, gen, history, best_val, best_epoch, bad, n_data, stopped) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "shuffle_rng": gen.get_state(),
            "epoch": epoch,
            "history": history,
            "best_val": best_val,
            "best_epoch": best_epoch,
            "bad_epochs": bad,
            "n_data": n_data,
            "stopped_early": stopped,
            "config": json.dumps(asdict(self.cfg), sort_keys=True),
        }

    # ------------------------------------------------------------------ main
    def fit(self, data: Sequence[Tensor], resume: bool = False) -> TrainResult:
        """Train on ``data`` (tensors with equal first dimension); returns a :class:`TrainResult`.

        With ``resume=True`` and a checkpoint of the same configuration in ``workdir``, the
        run continues after the last completed epoch; the model ends with its best-validation
        weights.
        """
        data = tuple(torch.as_tensor(t) for t in data)
        n = len(data[0])
        if any(len(t) != n for t in data):
            raise ValueError("all training tensors must have the same length")
        cfg = self.cfg
        tr_idx, va_idx = split_indices(n, cfg.val_fraction, cfg.seed)
        steps = math.ceil(len(tr_idx) / cfg.batch_size)
        opt = torch.optim.Adam(self.params, lr=cfg.max_lr, weight_decay=cfg.weight_decay)
        sched = make_scheduler(opt, cfg.schedule, base_lr=cfg.base_lr, max_lr=cfg.max_lr, steps_per_epoch=steps,
                               epochs=cfg.epochs, annihilation=cfg.annihilation, cycle_epochs=cfg.cycle_epochs)
        gen = torch.Generator().manual_seed(cfg.seed)
        history = new_history()
        best_val, best_epoch, bad, start, stopped = math.inf, 0, 0, 0, False
        self.ckdir.mkdir(parents=True, exist_ok=True)
        if resume and self.last_path.exists():
            st = load_checkpoint(self.last_path)
            if st.get("config") != json.dumps(asdict(cfg), sort_keys=True) or st.get("n_data") != n:
                raise ModelDirError(
                    f"{self.last_path}: checkpoint was written with other training settings or data "
                    f"({st.get('n_data')} showers); rerun without --resume to start over"
                )
            self.model.load_state_dict(st["model"])
            opt.load_state_dict(st["optimizer"])
            sched.load_state_dict(st["scheduler"])
            torch.set_rng_state(st["torch_rng"])
            if st.get("cuda_rng") and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(st["cuda_rng"])
            gen.set_state(st["shuffle_rng"])
            history, best_val, best_epoch = st["history"], st["best_val"], st["best_epoch"]
            bad, start, stopped = st["bad_epochs"], st["epoch"], st["stopped_early"]
        else:
            torch.manual_seed(cfg.seed)
        t0 = time.time()
        self.model.train()
        bar = tqdm(total=cfg.epochs, initial=start, desc=self.name, unit="epoch", disable=None if self.progress else True)
        epoch = start
        for epoch in range(start + 1, cfg.epochs + 1):
            if stopped:
                break
            te = time.time()
            tot, cnt, skipped = 0.0, 0, 0
            lr_used = opt.param_groups[0]["lr"]  # the LR of the epoch's last step (the scheduler
            # has already moved one step past it, below zero after the last onecycle step)
            inner = tqdm(self._batches(data, tr_idx, gen), total=steps, leave=False, desc=f"epoch {epoch}",
                         disable=None if self.progress else True)
            for b in inner:
                opt.zero_grad(set_to_none=True)
                loss = self.loss_fn(self.model, b)
                if not torch.isfinite(loss):
                    skipped += 1
                    sched.step()
                    continue
                loss.backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
                lr_used = opt.param_groups[0]["lr"]
                opt.step()
                sched.step()
                tot += float(loss.detach()) * len(b[0])
                cnt += len(b[0])
                inner.set_postfix(loss=f"{float(loss.detach()):.4g}")
            inner.close()
            if cnt == 0:
                raise FloatingPointError(f"{self.name}: every batch of epoch {epoch} gave a non-finite loss")
            val = self.evaluate(data, va_idx)
            record_epoch(history, epoch, tot / cnt, val, lr_used, time.time() - te, skipped)
            if val < best_val:
                best_val, best_epoch, bad = val, epoch, 0
                save_checkpoint(self.best_path, {"model": self.model.state_dict(), "epoch": epoch, "val_loss": val})
            else:
                bad += 1
                if cfg.patience is not None and bad >= cfg.patience:
                    stopped = True
            save_checkpoint(self.last_path, self._state(epoch, opt, sched, gen, history, best_val, best_epoch, bad, n, stopped))
            bar.set_postfix(train=f"{tot / cnt:.4g}", val=f"{val:.4g}", best=f"{best_val:.4g}")
            bar.update(1)
        bar.close()
        if self.best_path.exists():
            self.model.load_state_dict(load_checkpoint(self.best_path)["model"])
        write_json(self.workdir / f"history_{self.name}.json", history)
        if history["epoch"]:
            plot_history(history, self.workdir / f"loss_{self.name}.png", title=self.name)
        return TrainResult(best_val=best_val, best_epoch=best_epoch, epochs_run=len(history["epoch"]),
                           stopped_early=stopped, history=history, seconds=time.time() - t0)
