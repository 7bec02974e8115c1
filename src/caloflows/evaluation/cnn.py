"""CNN (3D ResNet) binary classifier of the CaloChallenge, ``--metrics cls-cnn`` (review sec. 8.3; the
official ``cls-resnet`` mode for datasets 2 and 3).

The network follows the 3D ResNet the official code uses (``code/resnet.py`` of CaloChallenge/
homepage, after Hara et al., "Can spatiotemporal 3D CNNs retrace the history of 2D CNNs and
ImageNet?", arXiv:1711.09577): the voxels of a shower as a one-channel image on the (layer, alpha, r)
grid; a 7x7x7 convolution with stride 2, batch norm, ReLU and a 3x3x3 max pool; four stages of
basic residual blocks (two 3x3x3 convolutions with batch norm, 1x1x1 projection shortcut where the
shape changes; stages 2-4 halve the resolution) of widths ``widths``; global average pooling; then
a linear layer on the pooled features and the batch-normalised log10 E_inc.  ``blocks`` = (2, 2, 2, 2)
is ResNet-18, (1, 1, 1, 1) ResNet-10.

Inputs are the ``low`` set of :mod:`.inputs` ([log10 E_inc, I_a / E_inc], thresholded voxels); the
training protocol, isotonic calibration, AUC and JSD are those of :func:`.classifier.binary_test`
(60/20/20, best validation epoch, float64).  Only regular geometries (datasets 2 and 3, ds2-coarse),
whose voxels form a grid, are supported.

Example::

    from caloflows.evaluation.cnn import CNNConfig, cnn_builder
    build = cnn_builder(load_geometry("ds2"), CNNConfig())
    net = build(1 + 6480)   # logits for (N, 6481) low-level inputs
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..errors import EvaluationError
from ..geometry import Geometry

__all__ = ["CNNConfig", "ResNet3d", "cnn_builder", "check_cnn_geometry"]


@dataclass
class CNNConfig:
    """Architecture of the 3D ResNet (default: ResNet-18 with the official widths 32, 64, 64, 128)."""

    blocks: tuple[int, int, int, int] = (2, 2, 2, 2)
    widths: tuple[int, int, int, int] = (32, 64, 64, 128)
    stem_kernel: int = 7

    def to_dict(self) -> dict:
        return asdict(self)


class _Block(nn.Module):
    """Basic residual block: conv-bn-relu-conv-bn plus shortcut, relu."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv3d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(c_out)
        self.conv2 = nn.Conv3d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm3d(c_out)
        self.short = None
        if stride != 1 or c_in != c_out:
            self.short = nn.Sequential(nn.Conv3d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm3d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.short is None else self.short(x)))


class ResNet3d(nn.Module):
    """3D ResNet on (N, 1 + n_layers * n_alpha * n_r) inputs [log10 E_inc, voxels]; outputs (N, 1) logits."""

    def __init__(self, grid: tuple[int, int, int], cfg: CNNConfig | None = None):
        super().__init__()
        cfg = cfg or CNNConfig()
        self.grid = tuple(int(g) for g in grid)
        w = cfg.widths
        k = cfg.stem_kernel
        self.stem = nn.Sequential(
            nn.Conv3d(1, w[0], k, 2, k // 2, bias=False), nn.BatchNorm3d(w[0]), nn.ReLU(),
            nn.MaxPool3d(3, 2, 1),
        )
        stages, c = [], w[0]
        for s, (n_blocks, width) in enumerate(zip(cfg.blocks, w)):
            for b in range(n_blocks):
                stages.append(_Block(c, width, 2 if (s > 0 and b == 0) else 1))
                c = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.e_norm = nn.BatchNorm1d(1)
        self.fc = nn.Linear(c + 1, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.e_norm(x[:, :1])
        img = x[:, 1:].reshape((-1, 1) + self.grid)
        h = self.pool(self.stages(self.stem(img))).flatten(1)
        return self.fc(torch.cat([h, e], dim=1))


def check_cnn_geometry(geometry: Geometry) -> tuple[int, int, int]:
    """(n_layers, n_alpha, n_r) of a regular geometry; EvaluationError otherwise (dataset 1)."""
    if not geometry.is_regular:
        raise EvaluationError(
            f"cls-cnn needs a regular voxel grid (datasets 2 and 3); geometry {geometry.name!r} has layers of "
            f"different binning"
        )
    l0 = geometry.layers[0]
    return geometry.n_layers, l0.n_alpha, l0.n_r


def cnn_builder(geometry: Geometry, cfg: CNNConfig | None = None):
    """``build(n_inputs)`` for :func:`.classifier.binary_test`: a :class:`ResNet3d` for ``geometry``."""
    grid = check_cnn_geometry(geometry)

    def build(n_inputs: int) -> ResNet3d:
        if n_inputs != 1 + geometry.n_voxels:
            raise ValueError(f"the CNN expects 1 + {geometry.n_voxels} inputs, got {n_inputs}")
        return ResNet3d(grid, cfg)

    return build
