"""Training loop for flows fed from (possibly streamed) column blocks, single- or multi-process.

Used by the layer-by-layer generators (L2LFlows, iCaloFlow).  It reuses the CaloFlow recipe
of :mod:`caloflows.training.loop` (:class:`~caloflows.training.loop.TrainConfig`, Adam, the
per-batch LR schedules, best-validation weights, early stopping, atomic checkpoints read with
``torch.load(weights_only=True)``, loss plot) and adds what the simple loop cannot do:

* batches come from a :class:`BatchSource` (rows of an in-memory array or row chunks streamed
  from HDF5, :func:`caloflows.layerdata.iter_global_batches`), never the whole data set as one
  tensor;
* *counter-based randomness*: the shuffling depends only on ``(seed, epoch)`` and the noise of
  batch ``k`` of epoch ``e`` only on ``(seed, e, k)``, drawn for the whole global batch;
* DDP: each of the ``WORLD_SIZE`` processes takes an equal shard of the global batch and
  DistributedDataParallel averages the gradients, so the weights after every step equal those
  of a single process on the same data and seed (up to float round-off).

The model is called as ``model(*inputs)`` and must return ``log p`` per row; the loss is
``-mean(log p) / norm``.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .checkpoint import ModelDirError, load_checkpoint, save_checkpoint, write_json
from .distributed import DistContext, shard_bounds
from .loop import TrainConfig, TrainResult, new_history, plot_history, record_epoch, split_indices
from .schedules import make_scheduler
from ..layerdata import iter_global_batches

__all__ = ["BatchSource", "ArraySource", "StreamSource", "fit_flow", "batch_generator"]

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
        raise ValueError(f"{name}: {len(tr_idx)} training rows are too few for {ctx.world_size} processes")
    a_sh, b_sh = shard_bounds(bs, ctx)
    steps = len(tr_idx) // bs
    params = list(params) if params is not None else [p for p in module.parameters() if p.requires_grad]
    model = ctx.wrap(module, device)
    opt = torch.optim.Adam(params, lr=cfg.max_lr, weight_decay=cfg.weight_decay)
    sched = make_scheduler(opt, cfg.schedule, base_lr=cfg.base_lr, max_lr=cfg.max_lr, steps_per_epoch=steps,
                           epochs=cfg.epochs, annihilation=cfg.annihilation, cycle_epochs=cfg.cycle_epochs)
    cfg_json = json.dumps({**asdict(cfg), "world_size_independent": True}, sort_keys=True)
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
                tot += float(_loss(module, inp, norm)) * len(ii)
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
            loss = _loss(model, inp, norm)
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
            raise FloatingPointError(f"{name}: every batch of epoch {epoch} gave a non-finite loss")
        val = evaluate()
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
