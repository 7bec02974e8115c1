"""Synthetic showers with known structure, for tests and benchmarks of the generators.

Not physics: a cheap stand-in with the features a calorimeter model must learn -- discrete
incident energies (powers of two, as dataset 1), a fluctuating deposited fraction, a
longitudinal profile whose depth grows with log E_inc, radially falling lateral profiles,
Poisson-like voxel fluctuations and empty voxels after the threshold cut.

>>> from caloflows.geometry import load_geometry
>>> inc, sh = toy_showers(load_geometry("ds2-coarse"), 5, seed=1)
>>> sh.shape, bool((sh >= 0).all())
((5, 648), True)
"""

from __future__ import annotations

import numpy as np

from .geometry import Geometry

__all__ = ["toy_showers"]


def toy_showers(
    geometry: Geometry,
    n: int,
    seed: int = 0,
    energies_mev: np.ndarray | None = None,
    log2_range: tuple[int, int] = (10, 14),
) -> tuple[np.ndarray, np.ndarray]:
    """``(E_inc (n,) MeV, showers (n, V) float32 MeV)`` drawn from a simple parametric model."""
    rng = np.random.default_rng(seed)
    if energies_mev is None:
        energies_mev = 2.0 ** rng.integers(log2_range[0], log2_range[1] + 1, size=n)
    einc = np.asarray(energies_mev, dtype=np.float64).reshape(-1)
    n = len(einc)
    L = geometry.n_layers
    frac = np.clip(rng.normal(0.9, 0.04, n), 0.5, 1.2)
    depth = 0.25 * L + 0.08 * L * (np.log2(einc) - 10) + rng.normal(0, 0.08 * L, n)
    z = np.arange(L)[None, :] + 0.5
    prof = np.exp(-0.5 * ((z - depth[:, None]) / (0.3 * L)) ** 2) + 1e-3
    prof *= rng.gamma(20.0, 1 / 20.0, size=prof.shape)
    E_layer = frac[:, None] * einc[:, None] * prof / prof.sum(1, keepdims=True)
    out = np.zeros((n, geometry.n_voxels))
    for i, layer in enumerate(geometry.layers):
        r = np.tile(layer.r_centers, layer.n_alpha)
        width = (1.0 + 0.1 * i) * (np.median(layer.r_edges[1:]) + 1e-9)
        w = np.exp(-r / width)[None, :] * rng.gamma(4.0, 0.25, size=(n, layer.n_voxels))
        w = w / w.sum(1, keepdims=True)
        out[:, geometry.layer_slice(i)] = w * E_layer[:, i:i + 1]
    out = geometry.apply_threshold(out)
    return einc, out.astype(np.float32)
