"""Chunked evaluation inputs: one pass over a sample in bounded memory (review sec. 8 on full ds3 files).

A dataset-3 file of 100k showers is 16 GB as float32, so :func:`evaluate` never loads whole
samples.  :func:`scan_sample` reads a file (``caloflows.io.iter_showers``) or an in-memory
:class:`ShowerData` in chunks of about :data:`CHUNK_VALUES` voxel values and keeps only

* the high-level features of every shower (:class:`HighLevelFeatures` without voxels; about 400
  floats per ds3 shower): histograms, correlations, E_dep/E_inc per energy, FPD/KPD, the
  high-level classifier;
* the sum of the thresholded voxels (average shower plot) and every shower's largest voxel (the
  upper edge of the voxel histogram);
* optionally the voxel histogram counts (:class:`VoxelHistogram`, with its overflow), per group of
  showers (the reference halves);
* the thresholded voxels of a bounded subsample of the showers (``keep``): the PRDC inputs and the
  low-level classifier inputs.  :func:`voxel_subsample_size` sets its size: every shower while the
  sample holds at most :data:`VOXEL_BUDGET` voxel values (all of ds1 and ds2 at 10k showers), else a
  random subsample of VOXEL_BUDGET / n_voxels showers (6172 ds3 showers), documented in the report.

The histogram of the voxel energies counts only non-zero (above-threshold) voxels: zeros are below
the lowest edge (the threshold) and dropped by the official histogram too; they are described by
the sparsity features instead.  Counts are integers, so the chunked histograms are identical to
whole-sample ones.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import h5py
import numpy as np

from ..errors import EvaluationError, ShowerFileError
from ..geometry import Geometry
from ..io import INCIDENT, SHOWERS, ShowerData, iter_showers, read_showers
from .features import HighLevelFeatures, compute_features

__all__ = [
    "CHUNK_VALUES",
    "VOXEL_BUDGET",
    "VoxelHistogram",
    "SampleScan",
    "sample_length",
    "peek_sample",
    "scan_sample",
    "voxel_histogram",
    "voxel_subsample_size",
]

#: voxel values per chunk (~80 MB as float32): 493 ds3, 3086 ds2, 54k ds1-photons showers
CHUNK_VALUES = 20_000_000
#: most voxel values kept per sample for PRDC and the low-level classifiers (2 GB as float64)
VOXEL_BUDGET = 250_000_000


def voxel_subsample_size(n_showers: int, n_voxels: int, budget: int | None = VOXEL_BUDGET) -> int:
    """Showers whose voxels are kept: all while n x V <= ``budget`` (None: no limit), else budget // V.

    >>> voxel_subsample_size(100_000, 40500), voxel_subsample_size(10_000, 6480)
    (6172, 10000)
    """
    if budget is None:
        return int(n_showers)
    return int(min(n_showers, max(1, budget // n_voxels)))


def chunk_size_for(n_voxels: int) -> int:
    """Showers per chunk so that a chunk holds about :data:`CHUNK_VALUES` voxel values."""
    return max(1, CHUNK_VALUES // max(1, n_voxels))


def sample_length(sample, max_showers: int | None = None) -> int:
    """Number of showers of a file or :class:`ShowerData` (capped at ``max_showers``), without reading them."""
    if isinstance(sample, ShowerData):
        n = len(sample)
    else:
        path = str(sample)
        if not os.path.exists(path):
            raise ShowerFileError(f"{path}: file not found")
        try:
            with h5py.File(path, "r") as f:
                if SHOWERS not in f or INCIDENT not in f:
                    read_showers(path, stop=1)  # raises the one-line error naming what is missing
                n = int(f[SHOWERS].shape[0])
        except OSError as exc:
            raise ShowerFileError(f"{path}: not a readable HDF5 file ({exc})") from None
    return n if max_showers is None else min(n, int(max_showers))


def peek_sample(sample, what: str | None = None) -> ShowerData:
    """The first chunk of a sample (about :data:`CHUNK_VALUES` voxel values), validated, with the file
    attributes: voxel count and geometry known, and a small file checked whole, before any full pass.

    Raises ShowerFileError (files: missing, empty, NaN/negative values) or EvaluationError (ShowerData).
    """
    if isinstance(sample, ShowerData):
        n_vox = sample.showers.shape[1] if sample.showers.ndim == 2 else 1
        first = sample.subset(slice(0, chunk_size_for(n_vox)))
        if len(first) == 0:
            raise EvaluationError(f"{what or 'sample'}: holds no showers")
        _check_finite(first, what or "sample", 0)
        return first
    one = read_showers(sample, stop=1)
    return read_showers(sample, stop=chunk_size_for(one.showers.shape[1]))


def _chunks(sample, chunk: int, stop: int):
    if isinstance(sample, ShowerData):
        for a in range(0, stop, chunk):
            yield a, sample.subset(slice(a, min(a + chunk, stop)))
    else:
        a = 0
        for c in iter_showers(sample, chunk, stop=stop):
            yield a, c
            a += len(c)


def _check_finite(d: ShowerData, what: str, offset: int) -> None:
    if not np.isfinite(d.incident_energies).all() or (d.incident_energies <= 0).any():
        raise EvaluationError(f"{what}: incident energies contain NaN, inf or non-positive values")
    if not np.isfinite(d.showers).all():
        i, j = np.argwhere(~np.isfinite(d.showers))[0]
        raise EvaluationError(f"{what}: shower {offset + int(i)}, voxel {int(j)} is NaN or inf")
    if (d.showers < 0).any():
        raise EvaluationError(f"{what}: showers contain negative voxel energies")


@dataclass
class VoxelHistogram:
    """Counts of the non-zero thresholded voxel energies per group of showers.

    ``counts[g]`` are the in-range bin counts of group g, ``overflow[g]`` the entries above the last
    edge, ``underflow[g]`` those below the first, ``entries[g]`` all non-zero voxels of the group.
    """

    edges: np.ndarray
    counts: np.ndarray  # (G, n_bins)
    underflow: np.ndarray  # (G,)
    overflow: np.ndarray  # (G,)
    entries: np.ndarray  # (G,)

    @classmethod
    def empty(cls, edges: np.ndarray, n_groups: int) -> "VoxelHistogram":
        z = np.zeros(n_groups, dtype=np.int64)
        return cls(np.asarray(edges), np.zeros((n_groups, len(edges) - 1)), z.copy(), z.copy(), z.copy())

    def add(self, voxels: np.ndarray, groups: np.ndarray | None) -> None:
        """Add the voxels (rows = showers) of one chunk; ``groups`` gives each row's group (None: group 0)."""
        lo, hi = self.edges[0], self.edges[-1]
        for g in range(len(self.counts)):
            rows = voxels if groups is None else voxels[groups == g]
            v = rows[rows > 0]
            if v.size == 0:
                continue
            self.counts[g] += np.histogram(v, self.edges)[0]
            self.underflow[g] += np.count_nonzero(v < lo)
            self.overflow[g] += np.count_nonzero(v > hi)
            self.entries[g] += v.size

    def total(self) -> "VoxelHistogram":
        """All groups summed into one."""
        return VoxelHistogram(self.edges, self.counts.sum(axis=0, keepdims=True), self.underflow.sum(keepdims=True),
                              self.overflow.sum(keepdims=True), self.entries.sum(keepdims=True))


@dataclass
class SampleScan:
    """What one chunked pass over a sample keeps (see the module docstring)."""

    features: HighLevelFeatures  # every shower, voxels=None
    voxel_sum: np.ndarray  # (V,) sum of thresholded voxels
    voxel_max: np.ndarray  # (N,) largest thresholded voxel per shower
    kept_index: np.ndarray  # sorted shower indices whose voxels were kept
    kept_voxels: np.ndarray | None  # (K, V) float32 thresholded voxels of kept_index
    attrs: dict = field(default_factory=dict)
    voxel_hist: VoxelHistogram | None = None

    def __len__(self) -> int:
        return len(self.features)

    @property
    def mean_voxels(self) -> np.ndarray:
        """Average thresholded shower (V,)."""
        return self.voxel_sum / max(len(self), 1)

    def kept_rows(self, index: np.ndarray) -> np.ndarray:
        """Rows of ``kept_voxels`` holding the showers ``index`` (which must have been kept)."""
        if self.kept_voxels is None:
            raise EvaluationError("no voxels were kept for this sample")
        index = np.asarray(index)
        pos = np.searchsorted(self.kept_index, index)
        if np.any(pos >= len(self.kept_index)) or np.any(self.kept_index[np.minimum(pos, len(self.kept_index) - 1)] != index):
            raise ValueError("requested showers whose voxels were not kept")
        return pos

    def kept_features(self, index: np.ndarray | None = None) -> HighLevelFeatures:
        """Features with voxels of the kept showers (``index``: a subset of ``kept_index``, default all)."""
        if self.kept_voxels is None:
            raise EvaluationError("no voxels were kept for this sample")
        index = self.kept_index if index is None else np.asarray(index)
        return self.features.subset(index).with_voxels(self.kept_voxels[self.kept_rows(index)])


def scan_sample(
    sample,
    geometry: Geometry,
    what: str,
    *,
    max_showers: int | None = None,
    keep: np.ndarray | None = None,
    voxel_edges: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    n_groups: int = 1,
    chunk_size: int | None = None,
) -> SampleScan:
    """One chunked pass over ``sample`` (path or :class:`ShowerData`): features of every shower, the
    voxels of the showers in ``keep`` (sorted indices), and, with ``voxel_edges``, the voxel histogram
    per group (``groups``: group id of every shower, or None for one group)."""
    n = sample_length(sample, max_showers)
    if n == 0:
        raise EvaluationError(f"{what}: holds no showers")
    chunk = chunk_size or chunk_size_for(geometry.n_voxels)
    keep = np.zeros(0, dtype=np.int64) if keep is None else np.unique(np.asarray(keep, dtype=np.int64))
    kept = np.empty((len(keep), geometry.n_voxels), dtype=np.float32) if len(keep) else None
    vsum = np.zeros(geometry.n_voxels)
    vmax = np.empty(n)
    hist = VoxelHistogram.empty(voxel_edges, n_groups) if voxel_edges is not None else None
    parts: list[HighLevelFeatures] = []
    attrs: dict = {}
    for a, c in _chunks(sample, chunk, n):
        if isinstance(sample, ShowerData):
            _check_finite(c, what, a)
        attrs = c.attrs
        f = compute_features(c.showers, c.incident_energies, geometry)
        vox = f.voxels
        if vox is None:  # compute_features always keeps the (thresholded) voxels
            raise EvaluationError(f"{what}: features were computed without voxels")
        parts.append(f.with_voxels(None))
        b = a + len(c)
        vsum += vox.sum(axis=0, dtype=np.float64)
        vmax[a:b] = vox.max(axis=1)
        if kept is not None:
            lo, hi = np.searchsorted(keep, [a, b])
            if hi > lo:
                kept[lo:hi] = vox[keep[lo:hi] - a]
        if hist is not None:
            hist.add(vox, None if groups is None else groups[a:b])
        del vox, f
    return SampleScan(HighLevelFeatures.concatenate(parts), vsum, vmax, keep, kept, attrs, hist)


def voxel_histogram(sample, geometry: Geometry, edges: np.ndarray, *, max_showers: int | None = None,
                    groups: np.ndarray | None = None, n_groups: int = 1, chunk_size: int | None = None) -> VoxelHistogram:
    """Second chunked pass: only the voxel histogram (the reference's edges depend on its own maximum)."""
    n = sample_length(sample, max_showers)
    chunk = chunk_size or chunk_size_for(geometry.n_voxels)
    hist = VoxelHistogram.empty(edges, n_groups)
    for a, c in _chunks(sample, chunk, n):
        hist.add(geometry.apply_threshold(c.showers), None if groups is None else groups[a : a + len(c)])
    return hist
