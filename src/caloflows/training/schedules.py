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
* ``constant``: no schedule (for tests).
"""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import CosineAnnealingWarmRestarts, CyclicLR, LambdaLR, LRScheduler, OneCycleLR

__all__ = ["make_scheduler", "SCHEDULES"]

SCHEDULES = ("onecycle", "cyclic", "cosine", "constant")


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
) -> LRScheduler:
    """A per-batch LR scheduler for ``optimizer`` (see module docstring)."""
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
    if kind == "constant":
        for g in optimizer.param_groups:
            g["lr"] = max_lr
        return LambdaLR(optimizer, _constant)
    raise ValueError(f"unknown LR schedule {kind!r}; use one of {', '.join(SCHEDULES)}")
