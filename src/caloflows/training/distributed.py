"""PyTorch distributed data parallel (DDP) helpers for multi-process / multi-GPU training.

Runs started by ``torchrun --nproc_per_node N -m caloflows train ...`` get ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and ``MASTER_ADDR/PORT`` in the environment;
:func:`init_from_env` joins the process group (``nccl`` on CUDA, ``gloo`` on CPU).  Without
those variables everything runs in a single process.

The layer trainer (:mod:`caloflows.training.loop`) splits each *global* batch into
``WORLD_SIZE`` equal shards; DDP averages the shard gradients, which is exactly the gradient
of the mean loss over the global batch, so N processes follow the same trajectory as one.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..errors import UsageError

__all__ = ["DistContext", "init_from_env", "single_process", "shard_bounds"]


@dataclass
class DistContext:
    """Rank and world size of this process (``world_size == 1``: no process group)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1 and dist.is_available() and dist.is_initialized()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_true(self, flag: bool) -> bool:
        """``flag`` on every rank (used to skip a non-finite batch on all ranks together)."""
        if not self.enabled:
            return bool(flag)
        t = torch.tensor([1 if flag else 0], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item())

    def shutdown(self) -> None:
        """Leave the process group (end of a torchrun job)."""
        if self.enabled:
            dist.destroy_process_group()

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        """``DistributedDataParallel(module)`` in a distributed run, else ``module``."""
        if not self.enabled:
            return module
        from torch.nn.parallel import DistributedDataParallel as DDP

        if device.type == "cuda":
            return DDP(module, device_ids=[device.index if device.index is not None else self.local_rank])
        return DDP(module)

    def device(self, requested: str | torch.device) -> torch.device:
        """One GPU per process: ``cuda`` becomes ``cuda:LOCAL_RANK``."""
        d = torch.device(requested)
        if d.type == "cuda" and d.index is None and self.world_size > 1:
            return torch.device("cuda", self.local_rank)
        return d


def single_process() -> DistContext:
    return DistContext()


def init_from_env(backend: str | None = None, timeout_s: float = 1800.0) -> DistContext:
    """Join the process group described by torchrun's environment variables (if any)."""
    ws = int(os.environ.get("WORLD_SIZE", "1"))
    if ws <= 1:
        return DistContext()
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if not dist.is_initialized():
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistContext(rank=rank, world_size=ws, local_rank=local)


def shard_bounds(global_batch: int, ctx: DistContext) -> tuple[int, int]:
    """Rows ``[a, b)`` of a global batch that this rank processes (equal shards)."""
    if global_batch % ctx.world_size:
        raise UsageError(
            f"global batch size {global_batch} is not divisible by the {ctx.world_size} processes; "
            "choose a batch size that is a multiple of the number of processes"
        )
    per = global_batch // ctx.world_size
    return ctx.rank * per, (ctx.rank + 1) * per
