"""Context embedding network and conditional layer flow of the L2LFlows causal flows.

L2LFlows (``l2lflows.txt`` sec. 3.2, eq. 3.6-3.7): the context of causal flow ``i`` -- the
voxels of the previous ``n_cond`` layers, ``E_i`` and ``E_inc`` -- is summarised by a fully
connected embedding network ``G_i`` (hidden layers of 256 and 128 nodes, 64 outputs) that is
trained jointly with the flow; flow 0 (context ``E_0, E_inc`` only) has no embedding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .. import flows as F

__all__ = ["ContextEmbedding", "ConditionalFlow"]


class ContextEmbedding(nn.Sequential):
    """Fully connected ``in -> 256 -> 128 -> 64`` with ReLU (L2LFlows sec. 3.2)."""

    def __init__(self, in_features: int, hidden: Sequence[int] = (256, 128), out_features: int = 64) -> None:
        layers: list[nn.Module] = []
        d = in_features
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        layers.append(nn.Linear(d, out_features))
        super().__init__(*layers)
        self.in_features, self.out_features = in_features, out_features


class ConditionalFlow(nn.Module):
    """A MAF (or IAF) with RQS transforms, its context optionally passed through an embedding.

    ``forward(y, context)`` returns ``log p(y | G(context))`` per row; :meth:`sample` draws one
    ``y`` per context row in the parameters' dtype (wrap in :func:`caloflows.flows.double_precision`
    for float64 sampling).
    """

    def __init__(self, features: int, context: int, *, embed: bool = True, embed_hidden: Sequence[int] = (256, 128),
                 embed_out: int = 64, transforms: int = 4, hidden: Sequence[int] = (128,), bins: int = 8,
                 bound: float = 5.0, inverse: bool = False, randperm_seed: int | None = None,
                 degrees: str = "cyclic") -> None:
        super().__init__()
        self.embed: nn.Module = ContextEmbedding(context, embed_hidden, embed_out) if embed else nn.Identity()
        c = embed_out if embed else context
        build = F.build_iaf if inverse else F.build_maf
        self.flow = build(features, c, transforms, tuple(hidden), bins, bound, randperm_seed=randperm_seed,
                          degrees=degrees)
        self.features, self.context = features, context

    def forward(self, y: Tensor, context: Tensor) -> Tensor:
        return F.flow_log_prob(self.flow, y, self.embed(context))

    def sample(self, context: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return F.flow_sample(self.flow, self.embed(context), generator=generator)
