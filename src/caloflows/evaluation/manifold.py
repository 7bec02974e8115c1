"""Manifold-based metrics: precision, recall, density and coverage (review sec. 8.5, eqs. 43-47;
Kynkaanniemi et al. 2019 for improved precision/recall, Naeem et al. 2020 for density/coverage).

Inputs are log10 voxel energies with empty (below-threshold) voxels set to log10(0.1 MeV) = -1,
k = 5 nearest neighbours (Euclidean), computed with ``sklearn.neighbors.NearestNeighbors``.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import pairwise_distances_chunked
from sklearn.neighbors import NearestNeighbors

__all__ = ["log_voxels", "prdc"]

EMPTY_LOG10 = -1.0  # log10(0.1 MeV)


def log_voxels(voxels: np.ndarray, rows: np.ndarray | None = None, chunk: int = 256) -> np.ndarray:
    """log10 of the (thresholded) voxel energies in MeV, empty voxels set to -1 (review sec. 8.5).

    Computed in float64 block by block (``rows``: only these rows of ``voxels``), so that a float32
    input needs no float64 copy: the float64 result is the only large allocation.
    """
    v = np.asarray(voxels)
    idx = np.arange(len(v)) if rows is None else np.asarray(rows)
    out = np.full((len(idx),) + v.shape[1:], EMPTY_LOG10)
    for a in range(0, len(idx), chunk):
        blk = np.asarray(v[idx[a : a + chunk]], dtype=np.float64)
        np.log10(blk, out=out[a : a + chunk], where=blk > 0)
    return out


def _kth_radius(x: np.ndarray, k: int, n_jobs: int | None) -> np.ndarray:
    """Distance of every point to its k-th nearest neighbour in the same set (itself excluded)."""
    nn = NearestNeighbors(n_neighbors=k + 1, n_jobs=n_jobs).fit(x)
    d, _ = nn.kneighbors(x)
    return d[:, k]


def _counts_inside(centres: np.ndarray, radii: np.ndarray, points: np.ndarray, n_jobs: int | None) -> np.ndarray:
    """For every point, how many balls B(centre_i, radius_i) contain it (distance <= radius);
    distances computed in memory-bounded chunks."""
    counts = []
    for d in pairwise_distances_chunked(points, centres, n_jobs=n_jobs, working_memory=256):
        counts.append(np.count_nonzero(d <= radii[None, :], axis=1))
    return np.concatenate(counts)


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 5, n_jobs: int | None = None) -> dict[str, float]:
    """Precision (eq. 44), recall (eq. 46), density (eq. 45) and coverage (eq. 47).

    ``real`` are the reference samples x_i (n, d), ``fake`` the generated y_j (m, d), already
    preprocessed (see :func:`log_voxels`).  A point lies in B(x, NND_k(x)) if its distance is
    <= NND_k(x).
    """
    real = np.asarray(real, dtype=np.float64)
    fake = np.asarray(fake, dtype=np.float64)
    if len(real) <= k or len(fake) <= k:
        raise ValueError(f"PRDC with k={k} needs more than {k} samples in each set")
    r_real = _kth_radius(real, k, n_jobs)
    r_fake = _kth_radius(fake, k, n_jobs)
    # fake points inside real balls: precision and density
    in_real = _counts_inside(real, r_real, fake, n_jobs)
    precision = float(np.mean(in_real > 0))
    density = float(in_real.sum() / (k * len(fake)))
    # real points inside fake balls: recall
    in_fake = _counts_inside(fake, r_fake, real, n_jobs)
    recall = float(np.mean(in_fake > 0))
    # coverage: real balls containing at least one fake point = nearest fake within NND_k(x_i)
    d_nn, _ = NearestNeighbors(n_neighbors=1, n_jobs=n_jobs).fit(fake).kneighbors(real)
    coverage = float(np.mean(d_nn[:, 0] <= r_real))
    return {"precision": precision, "recall": recall, "density": density, "coverage": coverage}
