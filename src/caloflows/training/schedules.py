"""Learning-rate schedules of CaloFlow (``caloflow_dataset1.txt``, sec. 3.2 item 4 and appendix A).

Both are stepped after every batch.

* ``onecycle``: one cycle base -> max -> base, then an annihilation phase that lowers the LR to
  base / 10^4.  The annihilation phase is ``annihilation`` (paper: 20 %, 10 % for the pion
  teacher) of all steps and the rise and fall share the rest equally ("the step size was taken
  to be half of the remaining number of epochs").  This is :class:`torch.optim.lr_scheduler.OneCycleLR`
  with ``three_phase=True``, linear annealing, ``pct_start = (1 - annihilation) / 2``,
  ``div_factor = max_lr / base_lr`` and ``final_div_factor = 1e4``.
* ``cyclic``: triangular cycles of ``cycle_epochs`` (paper: 10, step size 5 epochs); after each
  cycle the distance between max and base LR halves -- :class:`torch.optim.lr_scheduler.CyclicLR`
  with ``mode="triangular2"``.
* ``cosine``: cosine annealing with warm restarts (SGDR, Loshchilov & Hutter 1608.03983; the
  ParaFlow schedule, ``paraflow.txt`` sec. 3): from ``max_lr`` down to ``base_lr`` over
  ``cycle_epochs`` epochs, then restart at ``max_lr`` --
  :class:`torch.optim.lr_scheduler.CosineAnnealingWarmRestarts` stepped per batch.
* ``cosine_plateau``: the full ParaFlow schedule (``paraflow.txt`` sec. 3: "a cosine annealing
  learning-rate scheduler with warm restarts.  The restarting learning rate is reduced by a
  factor of 0.5 on plateaus of the validation loss with a patience of 10 epochs"):
  :class:`CosineRestartsOnPlateau`.  Cycles of ``cycle_epochs`` epochs anneal from the current
  restart LR (first ``max_lr``) to ``base_lr``; after ``restart_patience`` epochs without a
  new best validation loss (counted from the best epoch or from the last reduction) the
  restart LR is multiplied by ``restart_factor`` and takes effect at the next restart (the
  running cycle is not cut).  The loop reports every epoch's validation loss through
  :meth:`CosineRestartsOnPlateau.epoch_end`; the counters are part of ``state_dict()``, so
  they are checkpointed and a resumed run is the uninterrupted one.
* ``constant``: no schedule (for tests).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim.lr_scheduler import CosineAnnealingWarmRestarts, CyclicLR, LambdaLR, LRScheduler, OneCycleLR

__all__ = ["make_scheduler", "SCHEDULES", "CosineRestartsOnPlateau"]

SCHEDULES = ("onecycle", "cyclic", "cosine", "cosine_plateau", "constant")


class CosineRestartsOnPlateau:
    """Cosine annealing with warm restarts whose restart LR is reduced on validation plateaus
    (ParaFlow, ``paraflow.txt`` sec. 3; SGDR: Loshchilov & Hutter, arXiv:1608.03983).

    Stepped after every batch like the torch schedulers; :meth:`epoch_end` takes the epoch's
    validation loss.  Within a cycle of ``steps_per_cycle`` steps the LR at step ``t`` is
    ``base_lr + (peak - base_lr) (1 + cos(pi t / T)) / 2`` with ``peak`` the restart LR fixed
    when the cycle began.

    Example:
        >>> opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        >>> s = CosineRestartsOnPlateau(opt, steps_per_cycle=2, max_lr=1e-3, base_lr=0.0, patience=1)
        >>> s.epoch_end(1.0); s.epoch_end(1.0)   # no improvement for 1 epoch: restart LR halved
        >>> s.restart_lr
        0.0005
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, steps_per_cycle: int, max_lr: float, base_lr: float,
                 factor: float = 0.5, patience: int = 10) -> None:
        if steps_per_cycle < 1 or patience < 1 or not 0 < factor <= 1:
            raise ValueError("cosine_plateau needs steps_per_cycle >= 1, patience >= 1 and 0 < factor <= 1")
        self.optimizer = optimizer
        self.steps_per_cycle, self.base_lr, self.factor, self.patience = int(steps_per_cycle), float(base_lr), \
            float(factor), int(patience)
        self.step_count = 0
        self.restart_lr = float(max_lr)  # the LR the next restart starts from
        self.cycle_peak = float(max_lr)  # the restart LR of the running cycle
        self.best = math.inf
        self.bad_epochs = 0
        self.reductions: list[int] = []  # epochs (1-based) after which the restart LR was reduced
        self.epochs_seen = 0
        self._apply()

    def _lr(self) -> float:
        t = self.step_count % self.steps_per_cycle
        return self.base_lr + (self.cycle_peak - self.base_lr) * 0.5 * (1.0 + math.cos(math.pi * t / self.steps_per_cycle))

    def _apply(self) -> None:
        lr = self._lr()
        for g in self.optimizer.param_groups:
            g["lr"] = lr

    def step(self) -> None:
        """Advance one batch (a new cycle takes the current restart LR)."""
        self.step_count += 1
        if self.step_count % self.steps_per_cycle == 0:
            self.cycle_peak = self.restart_lr
        self._apply()

    def epoch_end(self, val_loss: float) -> None:
        """Record one epoch's validation loss; reduce the restart LR after ``patience`` epochs
        without improvement (counter reset by an improvement or a reduction)."""
        self.epochs_seen += 1
        if val_loss < self.best:
            self.best, self.bad_epochs = float(val_loss), 0
            return
        self.bad_epochs += 1
        if self.bad_epochs >= self.patience:
            self.restart_lr *= self.factor
            self.bad_epochs = 0
            self.reductions.append(self.epochs_seen)

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.__dict__.update({k: v for k, v in state.items() if k != "optimizer"})
        self._apply()


def _constant(_step: int) -> float:
    return 1.0


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    kind: str,
    *,
    base_lr: float,
    max_lr: float,
    steps_per_epoch: int,
    epochs: int,
    annihilation: float = 0.2,
    cycle_epochs: int = 10,
    restart_factor: float = 0.5,
    restart_patience: int = 10,
) -> "LRScheduler | CosineRestartsOnPlateau":
    """A per-batch LR scheduler for ``optimizer`` (see module docstring); ``restart_factor`` and
    ``restart_patience`` apply to ``cosine_plateau`` only."""
    total = max(1, steps_per_epoch * epochs)
    if kind == "onecycle":
        if not 0 <= annihilation < 1:
            raise ValueError("annihilation fraction must be in [0, 1)")
        return OneCycleLR(
            optimizer,
            max_lr=max_lr,
            total_steps=total,
            pct_start=max((1.0 - annihilation) / 2.0, 1e-3),
            anneal_strategy="linear",
            cycle_momentum=False,
            div_factor=max_lr / base_lr,
            final_div_factor=1e4,
            three_phase=True,
        )
    if kind == "cyclic":
        for g in optimizer.param_groups:
            g["lr"] = base_lr
        return CyclicLR(
            optimizer,
            base_lr=base_lr,
            max_lr=max_lr,
            step_size_up=max(1, steps_per_epoch * cycle_epochs // 2),
            mode="triangular2",
            cycle_momentum=False,
        )
    if kind == "cosine":
        for g in optimizer.param_groups:
            g["lr"] = max_lr
            g["initial_lr"] = max_lr
        return CosineAnnealingWarmRestarts(optimizer, T_0=max(1, steps_per_epoch * cycle_epochs), eta_min=base_lr)
    if kind == "cosine_plateau":
        return CosineRestartsOnPlateau(optimizer, steps_per_cycle=max(1, steps_per_epoch * cycle_epochs),
                                       max_lr=max_lr, base_lr=base_lr, factor=restart_factor,
                                       patience=restart_patience)
    if kind == "constant":
        for g in optimizer.param_groups:
            g["lr"] = max_lr
        return LambdaLR(optimizer, _constant)
    raise ValueError(f"unknown LR schedule {kind!r}; use one of {', '.join(SCHEDULES)}")
