"""Number of trainable parameters of a model (review sec. 8.7: the memory proxy of the tables)."""

from __future__ import annotations

__all__ = ["count_parameters"]


def count_parameters(model) -> int:
    """Number of trainable parameters (``requires_grad``) of a ``torch.nn.Module``.

    Parameters shared between sub-modules are counted once.
    """
    seen: set[int] = set()
    n = 0
    for p in model.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return int(n)
