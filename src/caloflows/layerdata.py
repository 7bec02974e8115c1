"""Bounded-memory, per-layer access to CaloChallenge shower files (for layer-by-layer flows).

L2LFlows (``l2lflows.txt`` sec. 3.2) trains one flow per calorimeter layer ``i`` on the voxels
of layer ``i`` and of its ``n_cond = 5`` predecessors.  Those layers are *contiguous* columns
of the ``showers`` dataset (voxel order: layer, angle, radius), so one HDF5 hyperslab
``showers[a:b, offsets[i-5]:offsets[i+1]]`` per row chunk reads exactly what is needed; a
ds3 file (40500 voxels) is never held in memory.

* :class:`LayerColumns` -- an open file: incident energies, a streaming pass that computes the
  layer energies and per-layer maximum voxel energies (validating every value), and
  :meth:`LayerColumns.read` of a column block.
* :class:`ColumnBlock` -- the columns of a layer range, read row-chunk by row-chunk (kept in
  memory when they fit in ``cache_mb``, re-read from the file every epoch otherwise).
* :class:`MemoryColumns` -- the same interface over in-memory :class:`~caloflows.io.ShowerData`.
* :class:`TrainingShowers` -- rows of whole showers or of (shower, layer) pairs, cached or
  streamed in chunks of showers (iCaloFlow's shared layer flow).
* :func:`iter_global_batches` -- the deterministic batch order shared by all processes of a
  distributed run: row chunks in a seeded random order, rows shuffled inside a chunk, fixed
  global batch size (the last incomplete batch is dropped).
* :class:`CoarseVoxelRows` / :class:`InMemoryCoarseVoxelRows` -- SuperCalo's training rows,
  one per (shower, coarse voxel) pair (``supercalo.txt`` sec. III B: batches of coarse
  voxels), built chunk of showers by chunk of showers from a file (bounded memory: ds2 with
  100k showers is 64.8 M rows) or from arrays, in the same order for the same seed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import h5py
import numpy as np
from tqdm.auto import tqdm

from .errors import UsageError
from .geometry import Geometry, load_geometry
from .io import INCIDENT, SHOWERS, ShowerData, ShowerFileError, check_layout, check_values, open_file, read_conditions

if TYPE_CHECKING:  # pragma: no cover
    from .coarsegraining import CoarseMap
    from .superres import SuperCaloPreprocessing
    from .training.loop import ArraySource, StreamSource

__all__ = ["LayerColumns", "MemoryColumns", "ColumnBlock", "LayerStats", "TrainingShowers", "iter_global_batches",
           "parse_layers", "context_layers", "CoarseVoxelRows", "InMemoryCoarseVoxelRows"]


def parse_layers(spec: str | Sequence[int] | None, n_layers: int) -> list[int]:
    """``"10-19"``, ``"0,3,5-7"`` or ``None`` (all) -> sorted layer indices; clear error otherwise."""
    if spec is None or spec == "" or spec == "all":
        return list(range(n_layers))
    if not isinstance(spec, str):
        out = sorted({int(i) for i in spec})
    else:
        out_set: set[int] = set()
        for tok in spec.replace(" ", "").split(","):
            if not tok:
                continue
            try:
                if "-" in tok:
                    a, b = tok.split("-", 1)
                    lo, hi = int(a), int(b)
                    if hi < lo:
                        raise ValueError
                    out_set.update(range(lo, hi + 1))
                else:
                    out_set.add(int(tok))
            except ValueError:
                raise UsageError(f"bad layer range {tok!r} in {spec!r}; use e.g. 10-19 or 0,3,5-7") from None
        out = sorted(out_set)
    bad = [i for i in out if not 0 <= i < n_layers]
    if bad:
        raise UsageError(f"layers {bad} do not exist (the geometry has layers 0-{n_layers - 1})")
    if not out:
        raise UsageError(f"no layers selected by {spec!r}")
    return out


def context_layers(i: int, n_cond: int) -> list[int]:
    """The previous ``n_cond`` layers conditioning layer ``i`` (L2LFlows table 1)."""
    return list(range(max(0, i - n_cond), i))


@dataclass
class LayerStats:
    """Results of the streaming pass over a file."""

    incident_energies: np.ndarray  # (N,) MeV
    layer_energies: np.ndarray  # (N, L) MeV, after the threshold cut
    layer_max_voxel: np.ndarray  # (L,) MeV, maximum voxel energy per layer


class LayerColumns:
    """A CaloChallenge file opened for per-layer column access.

    Args:
        path: HDF5 file with ``incident_energies`` and ``showers``.
        geometry: its voxel geometry (the number of voxels is checked).
        chunk_rows: rows per read (memory of one read: ``chunk_rows x columns x 4`` bytes).
    """

    def __init__(self, path: str | os.PathLike, geometry: Geometry | str, chunk_rows: int = 4096) -> None:
        self.path = str(path)
        self.geometry = load_geometry(geometry)
        if chunk_rows < 1:
            raise UsageError("chunk_rows must be positive")
        self.chunk_rows = int(chunk_rows)
        with open_file(self.path) as f:
            self.n, _ = check_layout(self.path, f, self.geometry)
        if self.n == 0:
            raise ShowerFileError(f"{self.path}: file holds no showers")
        self._file: h5py.File | None = None

    # -------------------------------------------------------------- file handle
    def _f(self) -> h5py.File:
        if self._file is None:
            self._file = open_file(self.path)
        return self._file

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __getstate__(self):  # picklable for multiprocessing: reopen lazily
        d = dict(self.__dict__)
        d["_file"] = None
        return d

    # -------------------------------------------------------------- reads
    def columns(self, layers: Sequence[int]) -> tuple[int, int]:
        """Column range ``[c0, c1)`` of a contiguous run of layers."""
        layers = list(layers)
        if not layers:
            return 0, 0
        if layers != list(range(layers[0], layers[-1] + 1)):
            raise UsageError(f"layers {layers} are not contiguous")
        off = self.geometry.layer_offsets
        return int(off[layers[0]]), int(off[layers[-1] + 1])

    def read(self, c0: int, c1: int, start: int, stop: int) -> np.ndarray:
        """``showers[start:stop, c0:c1]`` as float32 (one HDF5 hyperslab)."""
        blk = np.asarray(self._f()[SHOWERS][start:stop, c0:c1], dtype=np.float32)
        return blk

    def scan_rows(self, budget_mb: float = 64.0) -> int:
        """Rows per full-width read so that one float64 chunk stays below ``budget_mb``."""
        return max(1, min(self.chunk_rows, int(budget_mb * 2**20 // (8 * self.geometry.n_voxels))))

    def incident_energies(self) -> np.ndarray:
        inc = np.asarray(self._f()[INCIDENT][:], dtype=np.float64).reshape(-1)
        return inc

    def scan(self, progress: bool = False) -> LayerStats:
        """One streaming pass: validates all values, returns layer energies and layer maxima.

        Layer energies are computed after the geometry's threshold cut (L2LFlows eq. B.6).
        Memory: one chunk of :meth:`scan_rows` full showers (64 MB in float64).
        """
        g = self.geometry
        inc = self.incident_energies()
        E = np.empty((self.n, g.n_layers), dtype=np.float64)
        vmax = np.zeros(g.n_layers, dtype=np.float64)
        f = self._f()
        rows = self.scan_rows()
        for a in tqdm(range(0, self.n, rows), desc="scan", disable=None if progress else True):
            b = min(a + rows, self.n)
            blk = np.asarray(f[SHOWERS][a:b], dtype=np.float64)
            check_values(self.path, inc[a:b], blk, offset=a)
            cut = g.apply_threshold(blk)
            sums = np.zeros((b - a, g.n_layers))
            for i in range(g.n_layers):
                s = g.layer_slice(i)
                sums[:, i] = cut[:, s].sum(1)
                vmax[i] = max(vmax[i], float(blk[:, s].max(initial=0.0)))
            E[a:b] = sums
        return LayerStats(inc, E, vmax)


class ColumnBlock:
    """Columns ``[c0, c1)`` of a file visited chunk by chunk, cached in memory if small.

    ``get(a, b)`` returns rows ``[a, b)`` as float32.  With ``cache_mb`` large enough the whole
    block is read once (a single pass over the file); otherwise each call reads from the file,
    so that memory stays at one chunk plus the batch buffer.
    """

    def __init__(self, cols: "LayerColumns | MemoryColumns", c0: int, c1: int, cache_mb: float = 1024.0) -> None:
        self.cols, self.c0, self.c1 = cols, c0, c1
        self.nbytes = cols.n * (c1 - c0) * 4
        self.cached: np.ndarray | None = None
        if self.nbytes <= cache_mb * 2**20:
            self.cached = np.empty((cols.n, c1 - c0), dtype=np.float32)
            for a in range(0, cols.n, cols.chunk_rows):
                b = min(a + cols.chunk_rows, cols.n)
                self.cached[a:b] = cols.read(c0, c1, a, b)

    @property
    def streaming(self) -> bool:
        return self.cached is None

    def get(self, a: int, b: int) -> np.ndarray:
        if self.cached is not None:
            return self.cached[a:b]
        return self.cols.read(self.c0, self.c1, a, b)


def iter_global_batches(
    n_rows: int,
    chunk_rows: int,
    rows: np.ndarray,
    batch_size: int,
    seed: int,
    epoch: int,
    read: Callable[[int, int], np.ndarray],
    shuffle: bool = True,
    drop_last: bool = True,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(row_indices, block_rows)`` global batches over the selected ``rows``.

    Row chunks ``[k chunk_rows, (k+1) chunk_rows)`` are visited in an order drawn from
    ``(seed, epoch)``, rows are shuffled within a chunk, and batches of exactly ``batch_size``
    rows are cut from the stream (a batch may span two chunks).  The order depends only on
    ``(seed, epoch)``, so every process of a distributed run sees the same global batches.
    """
    sel = np.zeros(n_rows, dtype=bool)
    sel[np.asarray(rows, dtype=np.int64)] = True
    rng = np.random.default_rng([int(seed), int(epoch), 7])
    n_chunks = (n_rows + chunk_rows - 1) // chunk_rows
    order = rng.permutation(n_chunks) if shuffle else np.arange(n_chunks)
    buf_i: list[np.ndarray] = []
    buf_x: list[np.ndarray] = []
    have = 0
    for k in order:
        a, b = int(k) * chunk_rows, min((int(k) + 1) * chunk_rows, n_rows)
        local = np.nonzero(sel[a:b])[0]
        if local.size == 0:
            continue
        if shuffle:
            local = rng.permutation(local)
        blk = read(a, b)
        buf_i.append(local + a)
        buf_x.append(blk[local])
        have += local.size
        while have >= batch_size:
            ii, xx = np.concatenate(buf_i), np.concatenate(buf_x)
            yield ii[:batch_size], xx[:batch_size]
            buf_i, buf_x = [ii[batch_size:]], [xx[batch_size:]]
            have -= batch_size
    if have and not drop_last:
        yield np.concatenate(buf_i), np.concatenate(buf_x)


class MemoryColumns:
    """In-memory showers with the interface of :class:`LayerColumns`."""

    def __init__(self, data: ShowerData, geometry: Geometry, chunk_rows: int = 4096) -> None:
        geometry.check_showers(data.showers, "training showers")
        self.data, self.geometry, self.chunk_rows = data, geometry, int(chunk_rows)
        self.n = len(data)
        self.path = "<in-memory showers>"
        check_values(self.path, np.asarray(data.incident_energies, np.float64), np.asarray(data.showers))

    def read(self, c0: int, c1: int, start: int, stop: int) -> np.ndarray:
        return np.asarray(self.data.showers[start:stop, c0:c1], dtype=np.float32)

    def incident_energies(self) -> np.ndarray:
        return np.asarray(self.data.incident_energies, dtype=np.float64).reshape(-1)

    def scan(self, progress: bool = False) -> LayerStats:
        g = self.geometry
        sh = np.asarray(self.data.showers, dtype=np.float64)
        E = g.layer_energies(g.apply_threshold(sh))
        vmax = np.array([sh[:, g.layer_slice(i)].max(initial=0.0) for i in range(g.n_layers)])
        return LayerStats(self.incident_energies(), E, vmax)


class TrainingShowers:
    """Training showers as rows of whole showers or of (shower, layer) pairs (iCaloFlow): layer energies in memory, voxels cached or streamed.

    Rows of flow-2 are showers; rows of flow-3 are ``(shower, layer)`` pairs numbered
    ``shower * (L - 1) + layer - 1``, so a chunk of ``chunk_rows`` showers is a contiguous block
    of pair rows.  When the voxels are cached (in-memory data, or a file below ``cache_mb``)
    batches gather from the array; otherwise :meth:`source` streams chunks from the file and
    hands each batch its own voxels (``[layer i, layer i-1]`` per pair).

    Args:
        einc: incident energies (N,), MeV.
        E: layer energies after the threshold cut (N, L), MeV.
        geometry: the voxel geometry (equal layers).
        chunk_rows: showers per streamed chunk.
        cached: all voxels (N, n_voxels) float32, or None to stream from ``block``.
        block: the file's full-width :class:`~caloflows.layerdata.ColumnBlock`.
    """

    def __init__(self, einc: np.ndarray, E: np.ndarray, geometry: Geometry, chunk_rows: int,
                 cached: np.ndarray | None = None, block: "ColumnBlock | None" = None,
                 params: np.ndarray | None = None) -> None:
        if cached is None and block is None:
            raise ValueError("give the cached voxels or a column block to stream")
        self.einc, self.E, self.geometry = einc, E, geometry
        #: raw detector-parameter values (N, K) of the showers (K = 0 without parameters)
        self.params = np.zeros((len(einc), 0)) if params is None else np.asarray(params, dtype=np.float64)
        self.n, self.chunk_rows = len(einc), max(1, int(chunk_rows))
        self.cached, self.block = cached, block

    @classmethod
    def from_data(cls, data: ShowerData, geometry: Geometry, chunk_rows: int) -> "TrainingShowers":
        geometry.check_showers(data.showers, "training showers")
        einc = np.asarray(data.incident_energies, dtype=np.float64).reshape(-1)
        check_values("<training showers>", einc, np.asarray(data.showers))
        sh = np.asarray(data.showers, dtype=np.float32)
        E = geometry.layer_energies(geometry.apply_threshold(sh.astype(np.float64)))
        return cls(einc, E, geometry, chunk_rows, cached=sh, params=read_conditions(data)[1])

    @classmethod
    def open(cls, data: "ShowerData | str | os.PathLike", geometry: Geometry, chunk_rows: int = 512,
             cache_mb: float = 1024.0) -> "TrainingShowers":
        """In-memory showers as they are; a file: one validating pass, then cached or streamed."""
        if isinstance(data, ShowerData):
            return cls.from_data(data, geometry, chunk_rows)
        cols = LayerColumns(data, geometry, chunk_rows)
        stats = cols.scan()
        block = ColumnBlock(cols, 0, geometry.n_voxels, cache_mb)
        return cls(stats.incident_energies, stats.layer_energies, geometry, chunk_rows, block.cached, block,
                   params=read_conditions(data)[1])

    @property
    def streaming(self) -> bool:
        return self.cached is None

    @property
    def n_chunks(self) -> int:
        return (self.n + self.chunk_rows - 1) // self.chunk_rows

    def chunk_bounds(self, k: int) -> tuple[int, int]:
        return k * self.chunk_rows, min((k + 1) * self.chunk_rows, self.n)

    def rows(self, a: int, b: int) -> np.ndarray:
        """Voxels of showers ``[a, b)`` (float32)."""
        if self.cached is not None:
            return self.cached[a:b]
        assert self.block is not None  # one of the two is given (checked in __init__)
        return self.block.get(a, b)

    def _pairs(self, a: int, b: int) -> np.ndarray:
        L, n = self.geometry.n_layers, self.geometry.layer_sizes[0]
        s0, s1 = a // (L - 1), (b - 1) // (L - 1) + 1
        grid = self.rows(s0, s1).reshape(s1 - s0, L, n)
        k = np.arange(a, b)
        shw, lay = k // (L - 1) - s0, 1 + k % (L - 1)
        return np.concatenate([grid[shw, lay], grid[shw, lay - 1]], 1)

    def source(self, which: int) -> "ArraySource | StreamSource":
        """Batch source of whole-shower rows (``which=2``) or (shower, layer >= 1) pair rows
        for :func:`~caloflows.training.loop.fit_flow`."""
        from .training.loop import ArraySource, StreamSource

        L, n = self.geometry.n_layers, self.geometry.layer_sizes[0]
        rows = self.n if which == 2 else self.n * (L - 1)
        if self.cached is not None:  # full shuffle; the inputs gather from the array
            return ArraySource(np.zeros((rows, 0), np.float32))
        if which == 2:
            return StreamSource(rows, self.chunk_rows, lambda a, b: self.rows(a, b)[:, :n])
        return StreamSource(rows, self.chunk_rows * (L - 1), self._pairs)


# ------------------------------------------------------------------ SuperCalo rows
class _CoarseVoxelRowsBase:
    """Shared batching of (shower, coarse voxel) rows; subclasses provide :meth:`_block`."""

    n: int
    cmap: "CoarseMap"
    prep: "SuperCaloPreprocessing"
    chunk_showers: int

    def _block(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def target_dim(self) -> int:
        return self.cmap.group_size

    @property
    def cond_dim(self) -> int:
        return self.prep.condition_dim(self.cmap)

    def split(self, val_fraction: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Shower indices ``(train, validation)``; the paper uses 70 % / 30 % (sec. III B)."""
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        perm = np.random.default_rng([int(seed), 5]).permutation(self.n)
        n_val = int(round(val_fraction * self.n))
        return np.sort(perm[n_val:]), np.sort(perm[:n_val])

    def n_rows(self, showers: np.ndarray | None = None) -> int:
        return (self.n if showers is None else len(showers)) * self.cmap.n_coarse

    def batches(
        self,
        batch_size: int,
        *,
        seed: int = 0,
        epoch: int = 0,
        showers: np.ndarray | None = None,
        shuffle: bool = True,
        drop_last: bool = True,
        noise: bool = True,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(target (B, k), cond (B, C))`` float32 batches of SUPERCALO rows.

        Showers are read ``chunk_showers`` at a time, chunks visited in an order drawn from
        ``(seed, epoch)`` and the rows of a chunk shuffled (as :func:`iter_global_batches`);
        batches of exactly ``batch_size`` rows are cut from that stream (a batch may span two
        chunks).  Memory: one chunk's rows plus one batch, and one flag per shower -- never one
        entry per (shower, coarse voxel) pair.  With ``noise`` the B6/B8 noise of a chunk is drawn
        from ``(seed, epoch, chunk)``: fresh every epoch and independent of the visiting order.
        ``showers`` selects shower indices (a train or validation split).
        """
        from .superres import build_rows

        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        k = self.cmap.group_size
        sel = np.zeros(self.n, dtype=bool)
        if showers is None:
            sel[:] = True
        else:
            idx = np.asarray(showers, dtype=np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= self.n):
                raise ValueError(f"shower indices must lie in [0, {self.n})")
            sel[idx] = True
        cs = self.chunk_showers
        rng = np.random.default_rng([int(seed), int(epoch), 7])
        n_chunks = (self.n + cs - 1) // cs
        order = rng.permutation(n_chunks) if shuffle else np.arange(n_chunks)
        buf: list[np.ndarray] = []
        have = 0
        for kc in order:
            a, b = int(kc) * cs, min((int(kc) + 1) * cs, self.n)
            local = np.nonzero(sel[a:b])[0]
            if local.size == 0:
                continue
            einc, fine = self._block(a, b)
            nrng = np.random.default_rng([int(seed), int(epoch), 11, int(kc)]) if noise else None
            r = build_rows(einc[local], fine[local], self.cmap, self.prep, nrng)
            x = np.concatenate([r.target, r.cond], axis=1).astype(np.float32)
            if shuffle:
                x = x[rng.permutation(len(x))]
            buf.append(x)
            have += len(x)
            while have >= batch_size:
                xx = np.concatenate(buf) if len(buf) > 1 else buf[0]
                yield xx[:batch_size, :k], xx[:batch_size, k:]
                buf, have = [xx[batch_size:]], have - batch_size
        if have and not drop_last:
            xx = np.concatenate(buf)
            yield xx[:, :k], xx[:, k:]


class CoarseVoxelRows(_CoarseVoxelRowsBase):
    """SUPERCALO (shower, coarse voxel) rows streamed from a CaloChallenge file.

    Args:
        path: HDF5 file of fine showers.
        cmap: the coarse-graining bound to the file's geometry.
        prep: preprocessing constants (:meth:`SuperCaloPreprocessing.fit_from_file`).
        chunk_showers: showers per read; memory per chunk is about
            ``chunk_showers x n_coarse x (k + C) x 8`` bytes (256 ds2 showers, choice A: 54 MB).

    Every chunk read is validated (finite, non-negative energies; positive E_inc).

    >>> import tempfile, os
    >>> from caloflows.coarsegraining import CoarseGraining
    >>> from caloflows.superres import SuperCaloPreprocessing
    >>> from caloflows.toy_showers import toy_showers
    >>> from caloflows.io import write_showers
    >>> cmap = CoarseGraining.choice("B").bind("ds2")
    >>> einc, fine = toy_showers(cmap.fine, 6, seed=3)
    >>> p = os.path.join(tempfile.mkdtemp(), "t.h5"); write_showers(p, einc, fine, geometry="ds2")
    >>> src = CoarseVoxelRows(p, cmap, SuperCaloPreprocessing.fit(einc, fine, cmap), chunk_showers=2)
    >>> t, c = next(src.batches(1000, seed=1))
    >>> t.shape, c.shape
    ((1000, 12), (1000, 57))
    """

    def __init__(self, path: str | os.PathLike, cmap: "CoarseMap", prep: "SuperCaloPreprocessing",
                 chunk_showers: int = 256) -> None:
        if chunk_showers < 1:
            raise ValueError("chunk_showers must be positive")
        self.cmap, self.prep, self.chunk_showers = cmap, prep, int(chunk_showers)
        self.cols = LayerColumns(path, cmap.fine, chunk_rows=self.chunk_showers)
        self.path, self.n = self.cols.path, self.cols.n
        self._inc = self.cols.incident_energies()

    def _block(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        blk = self.cols.read(0, self.cmap.fine.n_voxels, a, b)
        check_values(self.path, self._inc[a:b], blk, offset=a)
        return self._inc[a:b], blk

    def close(self) -> None:
        self.cols.close()


class InMemoryCoarseVoxelRows(_CoarseVoxelRowsBase):
    """The rows of :class:`CoarseVoxelRows` from arrays held in memory (small files, tests).

    Same batches as the streaming class for the same ``chunk_showers``, seed and epoch.
    """

    def __init__(self, incident_energies: np.ndarray, showers: np.ndarray, cmap: "CoarseMap",
                 prep: "SuperCaloPreprocessing", chunk_showers: int = 256) -> None:
        if chunk_showers < 1:
            raise ValueError("chunk_showers must be positive")
        self.cmap, self.prep, self.chunk_showers = cmap, prep, int(chunk_showers)
        self._fine = np.asarray(cmap.fine.check_showers(showers), dtype=np.float32)
        self._inc = np.asarray(incident_energies, dtype=np.float64).reshape(-1)
        if len(self._inc) != len(self._fine):
            raise ValueError(f"{len(self._inc)} incident energies for {len(self._fine)} showers")
        self.n = len(self._fine)

    def _block(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        return self._inc[a:b], self._fine[a:b]
