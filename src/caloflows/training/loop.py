"""The one training loop of every caloflows network (CaloFlow recipe, ``caloflow_dataset1.txt``
sec. 2-3; L2LFlows appendix A; CaloFlow II distillation).

:func:`fit_flow` trains a module whose ``forward(*inputs)`` returns ``log p`` per row
(:class:`caloflows.flows.LogProb`, :class:`caloflows.flows.DistillationObjective`) on row
batches from a :class:`BatchSource`:

* a fixed train/validation split drawn from ``seed`` (CaloFlow: 70/30);
* Adam with the per-batch LR schedules of :mod:`caloflows.training.schedules` (``cosine_plateau``
  also gets every epoch's validation loss: ParaFlow's restart LR halved on plateaus);
* *counter-based randomness*: the shuffling depends only on ``(seed, epoch)`` and the noise of
  batch ``k`` of epoch ``e`` only on ``(seed, e, k)`` (:func:`batch_generator`), so a run killed
  at any moment (even ``kill -9``) and resumed from its last checkpoint continues exactly as the
  uninterrupted run, and N processes give the weights of one;
* validation loss after every epoch with fixed noise, best-validation weights kept, early
  stopping after ``patience`` epochs without improvement;
* DDP: each of the ``WORLD_SIZE`` processes takes an equal shard of the global batch and
  DistributedDataParallel averages the gradients;
* tqdm bars with loss and ETA (silent when not attached to a terminal), a loss-curve PNG and
  a JSON history.

Batches come from an in-memory array (:class:`ArraySource`) or from row chunks streamed from
HDF5 (:class:`StreamSource`, :mod:`caloflows.layerdata`), never the whole data set as one tensor.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, cast

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..errors import ModelDirError, TrainingError, UsageError
from ..flows import mark_plain_mafs
from ..io import atomic_output
from ..layerdata import iter_global_batches
from .checkpoint import load_checkpoint, save_checkpoint, write_json
from .distributed import DistContext, shard_bounds
from .schedules import make_scheduler

__all__ = ["TrainConfig", "TrainResult", "resolve_device", "plot_history", "split_indices",
           "new_history", "record_epoch", "BatchSource", "ArraySource", "StreamSource", "fit_flow",
           "batch_generator"]


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
            raise UsageError(f"--device {name} requested but no CUDA GPU is available to torch {torch.__version__}")
        return torch.device(name)
    if name != "cpu":
        raise UsageError(f"unknown device {name!r}; use cpu or cuda")
    return torch.device("cpu")


@dataclass
class TrainConfig:  # validated by caloflows.models.settings.check_train_config
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
    #: ``cosine_plateau`` only: the restart LR is multiplied by ``restart_factor`` after
    #: ``restart_patience`` epochs without a better validation loss (ParaFlow: 0.5 and 10)
    restart_factor: float = 0.5
    restart_patience: int = 10
    #: run the network's forward (log p; training and validation) through ``torch.compile``.  How
    #: a run computes, not what it learns: the same loss to float round-off, so it is not part of
    #: :meth:`identity` (a run may resume with or without it; bit-identical repeats need the same
    #: choice).  Each network compiles once per shape (about a minute on CPU for a CaloFlow
    #: flow-II), so it pays for long trainings only (README "Training speed").
    compile: bool = False

    def identity(self) -> dict:
        """The settings a checkpoint must match to be resumed (the ``cosine_plateau`` entries
        only for that schedule, so checkpoints of the other schedules from before they existed
        still resume; never ``compile``)."""
        d = asdict(self)
        d.pop("compile")
        if self.schedule != "cosine_plateau":
            d.pop("restart_factor")
            d.pop("restart_patience")
        return d


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
        raise UsageError(f"need at least 2 samples to split into train and validation, got {n}")
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


InputsFn = Callable[[np.ndarray, np.ndarray, torch.Generator], tuple[Tensor, ...]]


class BatchSource(Protocol):
    n_rows: int

    def batches(self, rows: np.ndarray, batch_size: int, seed: int, epoch: int, shuffle: bool,
                drop_last: bool) -> Iterator[tuple[np.ndarray, np.ndarray]]: ...


class ArraySource:
    """Rows of an in-memory array (one chunk: a full shuffle per epoch)."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.n_rows = len(array)

    def batches(self, rows, batch_size, seed, epoch, shuffle, drop_last):
        return iter_global_batches(self.n_rows, max(self.n_rows, 1), rows, batch_size, seed, epoch,
                                   lambda a, b: self.array[a:b], shuffle, drop_last)


class StreamSource:
    """Row chunks of a column block (``read(a, b)``), shuffled chunk-wise (bounded memory)."""

    def __init__(self, n_rows: int, chunk_rows: int, read: Callable[[int, int], np.ndarray]) -> None:
        self.n_rows, self.chunk_rows, self.read = n_rows, chunk_rows, read

    def batches(self, rows, batch_size, seed, epoch, shuffle, drop_last):
        return iter_global_batches(self.n_rows, self.chunk_rows, rows, batch_size, seed, epoch,
                                   self.read, shuffle, drop_last)


def batch_generator(seed: int, epoch: int, step: int, device: torch.device | None = None) -> torch.Generator:
    """The noise generator of global batch ``step`` of ``epoch`` (same on every rank)."""
    g = torch.Generator(device=device if device is not None and device.type == "cuda" else "cpu")
    g.manual_seed((int(seed) * 1_000_003 + int(epoch) * 10_007 + int(step)) % (2**63 - 1))
    return g


def _loss(model: nn.Module, inputs: Sequence[Tensor], norm: float) -> Tensor:
    return -model(*inputs).mean() / norm


def fit_flow(
    module: nn.Module,
    source: BatchSource,
    inputs_fn: InputsFn,
    name: str,
    workdir: str | os.PathLike,
    config: TrainConfig,
    *,
    ctx: DistContext | None = None,
    device: torch.device | str = "cpu",
    norm: float = 1.0,
    progress: bool = True,
    resume: bool = False,
    params: Sequence[nn.Parameter] | None = None,
) -> TrainResult:
    """Train ``module`` (log p per row) on ``source``; ends with the best-validation weights.

    ``inputs_fn(row_indices, raw_rows, generator)`` turns a *global* batch into model inputs
    (all noise drawn from ``generator``); each rank keeps its shard.  Only rank 0 writes files
    (``workdir/checkpoints/{name}_last.pt`` / ``_best.pt``, ``history_{name}.json``,
    ``loss_{name}.png``).  ``history["seconds"]`` holds the time of every epoch.
    """
    ctx = ctx or DistContext()
    device = torch.device(device)
    cfg = config
    workdir = Path(workdir)
    ckdir = workdir / "checkpoints"
    last_path, best_path = ckdir / f"{name}_last.pt", ckdir / f"{name}_best.pt"
    n = source.n_rows
    tr_idx, va_idx = (t.numpy() for t in split_indices(n, cfg.val_fraction, cfg.seed))
    tr_idx, va_idx = np.sort(tr_idx), np.sort(va_idx)
    bs = min(int(cfg.batch_size), len(tr_idx))
    bs -= bs % ctx.world_size
    if bs < ctx.world_size or bs < 1:
        raise UsageError(f"{name}: {len(tr_idx)} training rows are too few for {ctx.world_size} processes")
    a_sh, b_sh = shard_bounds(bs, ctx)
    steps = len(tr_idx) // bs
    params = list(params) if params is not None else [p for p in module.parameters() if p.requires_grad]
    model = ctx.wrap(module, device)
    run_train: nn.Module = model
    run_eval: nn.Module = module
    if cfg.compile:
        # a fresh dynamo cache per network: its per-function recompile limit counts every network
        # (shape) compiled in the process, and L2LFlows trains dozens of flows of different sizes
        torch.compiler.reset()
        mark_plain_mafs(module)
        run_train = cast(nn.Module, torch.compile(model, dynamic=False))
        run_eval = cast(nn.Module, torch.compile(module, dynamic=False))
    opt = torch.optim.Adam(params, lr=cfg.max_lr, weight_decay=cfg.weight_decay)
    sched = make_scheduler(opt, cfg.schedule, base_lr=cfg.base_lr, max_lr=cfg.max_lr, steps_per_epoch=steps,
                           epochs=cfg.epochs, annihilation=cfg.annihilation, cycle_epochs=cfg.cycle_epochs,
                           restart_factor=cfg.restart_factor, restart_patience=cfg.restart_patience)
    cfg_json = json.dumps({**cfg.identity(), "world_size_independent": True}, sort_keys=True)
    history: dict = new_history()
    best_val, best_epoch, bad, start, stopped = math.inf, 0, 0, 0, False
    if resume and last_path.exists():
        st = load_checkpoint(last_path)
        if st.get("config") != cfg_json or st.get("n_data") != n:
            raise ModelDirError(f"{last_path}: checkpoint was written with other training settings or data; "
                                "rerun without --resume to start over")
        module.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        history, best_val, best_epoch = st["history"], st["best_val"], st["best_epoch"]
        bad, start, stopped = st["bad_epochs"], st["epoch"], st["stopped_early"]

    def evaluate() -> float:
        module.eval()
        tot, cnt = 0.0, 0
        with torch.no_grad():
            for k, (ii, raw) in enumerate(source.batches(va_idx, bs, cfg.seed, 0, False, False)):
                inp = inputs_fn(ii, raw, batch_generator(cfg.seed + 12345, 0, k))
                inp = tuple(t.to(device) for t in inp)
                tot += float(_loss(run_eval, inp, norm)) * len(ii)
                cnt += len(ii)
        module.train()
        return tot / max(cnt, 1)

    t0 = time.time()
    module.train()
    show = progress and ctx.is_main
    bar = tqdm(total=cfg.epochs, initial=start, desc=name, unit="epoch", disable=None if show else True)
    for epoch in range(start + 1, cfg.epochs + 1):
        if stopped:
            break
        te = time.time()
        tot, cnt, skipped = 0.0, 0, 0
        lr_used = opt.param_groups[0]["lr"]  # the LR of the epoch's last step (the scheduler
        # has already moved one step past it, below zero after the last onecycle step)
        inner = tqdm(source.batches(tr_idx, bs, cfg.seed, epoch, True, True), total=steps, leave=False,
                     desc=f"{name} epoch {epoch}", disable=None if show else True)
        for k, (ii, raw) in enumerate(inner):
            inp = inputs_fn(ii, raw, batch_generator(cfg.seed, epoch, k))
            inp = tuple(t[a_sh:b_sh].to(device, non_blocking=True) for t in inp)
            opt.zero_grad(set_to_none=True)
            loss = _loss(run_train, inp, norm)
            if not ctx.all_true(bool(torch.isfinite(loss))):
                skipped += 1
                sched.step()
                continue
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            lr_used = opt.param_groups[0]["lr"]
            opt.step()
            sched.step()
            lv = float(loss.detach())
            tot += lv * len(ii)
            cnt += len(ii)
            inner.set_postfix(loss=f"{lv:.4g}")
        inner.close()
        if cnt == 0:
            raise TrainingError(f"{name}: every batch of epoch {epoch} gave a non-finite loss (try a lower learning rate)")
        val = evaluate()
        if hasattr(sched, "epoch_end"):  # cosine_plateau: before the checkpoint, which stores its counters
            sched.epoch_end(val)
        record_epoch(history, epoch, tot / cnt, val, lr_used, time.time() - te, skipped)
        if val < best_val:
            best_val, best_epoch, bad = val, epoch, 0
            if ctx.is_main:
                save_checkpoint(best_path, {"model": module.state_dict(), "epoch": epoch, "val_loss": val})
        else:
            bad += 1
            if cfg.patience is not None and bad >= cfg.patience:
                stopped = True
        if ctx.is_main:
            save_checkpoint(last_path, {
                "model": module.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "epoch": epoch, "history": history, "best_val": best_val, "best_epoch": best_epoch,
                "bad_epochs": bad, "n_data": n, "stopped_early": stopped, "config": cfg_json,
            })
        bar.set_postfix(train=f"{tot / cnt:.4g}", val=f"{val:.4g}", best=f"{best_val:.4g}")
        bar.update(1)
    bar.close()
    ctx.barrier()
    if best_path.exists():
        module.load_state_dict(load_checkpoint(best_path)["model"])
    if ctx.is_main:
        write_json(workdir / f"history_{name}.json", history)
        if history["epoch"]:
            plot_history(history, workdir / f"loss_{name}.png", title=name)
    return TrainResult(best_val=best_val, best_epoch=best_epoch, epochs_run=len(history["epoch"]),
                       stopped_early=stopped, history=history, seconds=time.time() - t0)
