"""ParaFlow shower-shape observables and report (Erdmann et al., ``paraflow.txt`` sec. 4).

Images are the 8 x 16 crystal windows of geometry ``paraflow-8x16`` as arrays
(N, 16, 8) [row along y (bending direction), column along x] or flat (N, 128); energies
in MeV; positions in crystal widths.

Observables (sec. 4.2):

* ``E_1``, ``E_2``: energy of the brightest and the second-brightest crystal (fig. 5);
* ``w``: shower width, eq. 3, w = sum_i r_i E_i / sum_i E_i with r_i the distance of crystal
  i's centre from the energy barycentre (fig. 6);
* ``R9``: eq. 4, the energy of the 3 x 3 crystals around the brightest one (clipped at the
  window edge) over the total (fig. 7);
* ``n_clusters``: DBSCAN (scikit-learn) clusters of the crystals with E > E_min = 400 MeV,
  eps = 1.5 crystal widths (direct neighbours, diagonals included), min_samples = 1
  (fig. 8).

Comparisons: histograms with ratio panels and separation powers (eq. 2, the CaloChallenge
one of :func:`.histograms.separation_power`), inclusive and in the d bins
[0.5, 0.75, 1.0, 1.25, 1.5] X0 and b bins [50, 60, 70, 80, 90] cm (figs. 5-8); the mean of
w, R9 and the cluster count on the (d, b) grid for both samples and their relative
difference (fig. 9); average images and their relative difference (fig. 4); example images
(fig. 3).  :func:`paraflow_report` writes all of them.  :func:`cell_agreement` tests the
paper's claim (sec. 5) that mean w, R9 and the cluster count agree with Geant4 within 6 % in
every (d, b) cell, with the statistical error of each cell's relative difference.

>>> img = np.zeros((1, 16, 8)); img[0, 8, 4] = 30e3
>>> o = paraflow_observables(img)
>>> float(o["R9"][0]), float(o["w"][0]), int(o["n_clusters"][0])
(1.0, 0.0, 1)
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import EvaluationError
from .histograms import HistogramResult, separation_power

__all__ = [
    "as_images",
    "brightest_crystals",
    "shower_width",
    "r9",
    "n_clusters",
    "paraflow_observables",
    "observable_bins",
    "compare_observables",
    "mean_maps",
    "CellStatistics",
    "cell_statistics",
    "cell_agreement",
    "CELL_TOLERANCE",
    "hot_extent",
    "cluster_shares",
    "paraflow_report",
    "D_EDGES",
    "B_EDGES",
    "E_MIN_MEV",
    "OBSERVABLES",
]

ROWS, COLS = 16, 8
#: d bins (X0) and b bins (cm) of figs. 6-9
D_EDGES = (0.5, 0.75, 1.0, 1.25, 1.5)
B_EDGES = (50.0, 60.0, 70.0, 80.0, 90.0)
#: DBSCAN settings of sec. 4.2
E_MIN_MEV = 400.0
EPS_CRYSTALS = 1.5
OBSERVABLES = ("E_1", "E_2", "w", "R9", "n_clusters")
LABELS = {
    "E_1": "brightest crystal energy [GeV]",
    "E_2": "second-brightest crystal energy [GeV]",
    "w": "shower width w [crystal widths]",
    "R9": "R9",
    "n_clusters": "number of clusters (DBSCAN)",
}


def as_images(showers: np.ndarray, rows: int = ROWS, cols: int = COLS) -> np.ndarray:
    """(N, rows*cols) or (N, rows, cols) -> (N, rows, cols) float64."""
    a = np.asarray(showers, dtype=np.float64)
    if a.ndim == 2 and a.shape[1] == rows * cols:
        return a.reshape(len(a), rows, cols)
    if a.ndim == 3 and a.shape[1:] == (rows, cols):
        return a
    raise EvaluationError(f"expected ParaFlow images (N, {rows * cols}) or (N, {rows}, {cols}), got {a.shape}")


def _positions(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.meshgrid(np.arange(rows, dtype=np.float64), np.arange(cols, dtype=np.float64), indexing="ij")
    return y, x


def brightest_crystals(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Energies (MeV) of the brightest and second-brightest crystal of each image (fig. 5)."""
    a = as_images(images).reshape(len(images), -1)
    top2 = np.sort(a, axis=1)[:, -2:]
    return top2[:, 1], top2[:, 0]


def shower_width(images: np.ndarray) -> np.ndarray:
    """Eq. 3: w = sum_i r_i E_i / sum_i E_i, r_i = distance of crystal i from the barycentre
    (crystal widths).  NaN for an empty image."""
    a = as_images(images)
    y, x = _positions(*a.shape[1:])
    e = a.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        yb = (a * y).sum(axis=(1, 2)) / e
        xb = (a * x).sum(axis=(1, 2)) / e
        r = np.hypot(y[None] - yb[:, None, None], x[None] - xb[:, None, None])
        return (r * a).sum(axis=(1, 2)) / e


def r9(images: np.ndarray) -> np.ndarray:
    """Eq. 4: energy in the 3 x 3 crystals around the brightest one (inside the window) over
    the total.  NaN for an empty image."""
    a = as_images(images)
    n, h, w = a.shape
    k = a.reshape(n, -1).argmax(axis=1)
    r0, c0 = np.divmod(k, w)
    pad = np.pad(a, ((0, 0), (1, 1), (1, 1)))
    dr, dc = np.meshgrid(np.arange(3), np.arange(3), indexing="ij")
    e9 = pad[np.arange(n)[:, None, None], r0[:, None, None] + dr[None], c0[:, None, None] + dc[None]].sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return e9 / a.sum(axis=(1, 2))


def n_clusters(images: np.ndarray, e_min_mev: float = E_MIN_MEV, eps: float = EPS_CRYSTALS,
               min_samples: int = 1) -> np.ndarray:
    """Number of DBSCAN clusters (scikit-learn) of the crystals with E > e_min_mev, points at the
    crystal centres (crystal widths); with min_samples=1 there is no noise label."""
    from sklearn.cluster import DBSCAN

    a = as_images(images)
    y, x = _positions(*a.shape[1:])
    out = np.zeros(len(a), dtype=np.int64)
    db = DBSCAN(eps=eps, min_samples=min_samples)
    for i, img in enumerate(a):
        m = img > e_min_mev
        k = int(m.sum())
        if k <= 1:
            out[i] = k
            continue
        labels = db.fit(np.stack([y[m], x[m]], axis=1)).labels_
        out[i] = len(set(labels.tolist()) - {-1})
    return out


def hot_extent(images: np.ndarray, e_min_mev: float = E_MIN_MEV) -> np.ndarray:
    """Rows (crystal widths along y, the bending direction of the 4 T field) spanned by the
    crystals above ``e_min_mev``, first to last hot row inclusive; 0 without a hot crystal.

    A diagnostic of the cluster count (not in the paper): a converted pair bent apart by the
    field gives hot crystals far apart in y, so a model that places as many hot crystals as
    Geant4 but in one compact spot has the right hot-crystal count and too small an extent.

    >>> img = np.zeros((1, 16, 8)); img[0, 3, 4] = img[0, 9, 4] = 1e3
    >>> hot_extent(img).tolist()
    [7]
    """
    hot: np.ndarray = np.any(as_images(images) > e_min_mev, axis=2)
    rows = np.arange(hot.shape[1])
    first = np.where(hot, rows, hot.shape[1]).min(axis=1)
    last = np.where(hot, rows, -1).max(axis=1)
    return np.where(np.any(hot, axis=1), last - first + 1, 0)


def cluster_shares(counts: np.ndarray, cond: np.ndarray | None = None, d_edges: Sequence[float] = D_EDGES,
                   top: int = 3) -> dict[str, list[float]]:
    """Shares of images with 0, 1, ..., ``top - 1`` and ``>= top`` DBSCAN clusters, inclusive
    (key ``all``) and per d bin (``d=0.5-0.75``, ...) when ``cond`` (N, >= 1; d first) is given.
    Sec. 4.2 of ``paraflow.txt`` reads them as photons that did not convert (one cluster) and
    converted pairs (two), and reports them reproduced "at the percent level".

    >>> cluster_shares(np.array([1, 1, 2, 4]))["all"]
    [0.0, 0.5, 0.25, 0.25]
    """
    n = np.asarray(counts, dtype=np.int64)

    def shares(v: np.ndarray) -> list[float]:
        if v.size == 0:
            return [float("nan")] * (top + 1)
        return [float(np.mean(v == k)) for k in range(top)] + [float(np.mean(v >= top))]

    return _per_d_bin(n, cond, shares, d_edges)


def _per_d_bin(v: np.ndarray, cond: np.ndarray | None, stat, d_edges: Sequence[float] = D_EDGES) -> dict:
    """``stat(v)`` inclusive (key ``all``) and per d bin (``d=0.5-0.75``, ...) when ``cond`` is given."""
    out = {"all": stat(v)}
    if cond is not None:
        for j, m in enumerate(_bin_masks(np.asarray(cond, dtype=np.float64), 0, d_edges)):
            out[f"d={d_edges[j]:g}-{d_edges[j + 1]:g}"] = stat(v[m])
    return out


def paraflow_observables(images: np.ndarray) -> dict[str, np.ndarray]:
    """The five observables of sec. 4.2 (energies in MeV)."""
    a = as_images(images)
    e1, e2 = brightest_crystals(a)
    return {"E_1": e1, "E_2": e2, "w": shower_width(a), "R9": r9(a), "n_clusters": n_clusters(a)}


def observable_bins(name: str, ref_values: np.ndarray) -> np.ndarray:
    """Histogram edges: energies 40 bins (GeV) up to the reference 99.9 % quantile, w 40 bins on
    [0, 1.05 x 99.9 % quantile], R9 40 bins on [min(0.5, 0.1 % quantile), 1.0001], clusters one
    bin per count 0..max(6, ref max)."""
    v = np.asarray(ref_values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if name == "n_clusters":
        top = max(6, int(v.max()) if v.size else 6)
        return np.arange(-0.5, top + 1.0)
    if v.size == 0:
        return np.linspace(0.0, 1.0, 41)
    if name == "R9":
        return np.linspace(min(0.5, float(np.quantile(v, 0.001))), 1.0001, 41)
    hi = float(np.quantile(v, 0.999)) * 1.05
    return np.linspace(0.0, hi if hi > 0 else 1.0, 41)


def _scaled(name: str, v: np.ndarray) -> np.ndarray:
    return v / 1e3 if name in ("E_1", "E_2") else v


def _hist(v: np.ndarray, edges: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return np.histogram(v[np.isfinite(v)], edges)[0].astype(np.float64)


def _bin_masks(cond: np.ndarray, col: int, edges) -> list[np.ndarray]:
    c = cond[:, col]
    out = []
    for j, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        last = j == len(edges) - 2
        out.append((c >= lo) & ((c <= hi) if last else (c < hi)))
    return out


def compare_observables(gen_obs: Mapping[str, np.ndarray], ref_obs: Mapping[str, np.ndarray],
                        gen_cond: np.ndarray | None = None, ref_cond: np.ndarray | None = None,
                        d_edges=D_EDGES, b_edges=B_EDGES) -> dict[str, HistogramResult]:
    """Histograms and separation powers of every observable, inclusive (key ``w``) and, when both
    samples have (d, b) conditions, per d bin (``w/d=0.5-0.75``) and b bin (``w/b=50-60``)."""
    out: dict[str, HistogramResult] = {}
    splits: list[tuple[str, np.ndarray | None, np.ndarray | None]] = [("", None, None)]
    if gen_cond is not None and ref_cond is not None:
        for col, edges, nm in ((0, d_edges, "d"), (1, b_edges, "b")):
            g_masks, r_masks = _bin_masks(gen_cond, col, edges), _bin_masks(ref_cond, col, edges)
            for j in range(len(edges) - 1):
                splits.append((f"/{nm}={edges[j]:g}-{edges[j + 1]:g}", g_masks[j], r_masks[j]))
    for name in OBSERVABLES:
        g, r = _scaled(name, np.asarray(gen_obs[name], float)), _scaled(name, np.asarray(ref_obs[name], float))
        edges = observable_bins(name, r)
        for suffix, gm, rm in splits:
            gv, rv = (g, r) if gm is None else (g[gm], r[rm])
            hg, hr = _hist(gv, edges), _hist(rv, edges)
            out[name + suffix] = HistogramResult(name + suffix, edges, False, hg, hr, separation_power(hg, hr))
    return out


def mean_maps(obs: Mapping[str, np.ndarray], cond: np.ndarray, d_edges=D_EDGES, b_edges=B_EDGES,
              names=("w", "R9", "n_clusters")) -> dict[str, np.ndarray]:
    """Fig. 9: mean of each observable in the (d, b) cells, arrays (n_d, n_b); NaN where empty;
    also ``count``."""
    cond = np.asarray(cond, dtype=np.float64)
    dm, bm = _bin_masks(cond, 0, d_edges), _bin_masks(cond, 1, b_edges)
    out = {n: np.full((len(dm), len(bm)), np.nan) for n in names}
    out["count"] = np.zeros((len(dm), len(bm)), dtype=np.int64)
    for i, a in enumerate(dm):
        for j, b in enumerate(bm):
            m = a & b
            out["count"][i, j] = int(m.sum())
            for n in names:
                v = np.asarray(obs[n], dtype=np.float64)[m]
                v = v[np.isfinite(v)]
                if v.size:
                    out[n][i, j] = v.mean()
    return out


#: the paper's agreement of the (d, b) cell means with Geant4 (sec. 5: "within 6 %")
CELL_TOLERANCE = 0.06


@dataclass(frozen=True)
class CellStatistics:
    """Per (d, b) cell: mean of the finite values, its standard error std(ddof=1)/sqrt(n)
    (NaN with fewer than 2 values; the mean is NaN without any) and the count n."""

    mean: np.ndarray
    standard_error: np.ndarray
    count: np.ndarray


def cell_statistics(values: np.ndarray, cond: np.ndarray, d_edges: Sequence[float] = D_EDGES,
                    b_edges: Sequence[float] = B_EDGES) -> CellStatistics:
    """Mean and standard error of ``values`` (N,) in the (d, b) cells of ``cond`` (N, 2), arrays
    (n_d, n_b); the cells are those of :func:`mean_maps` (last bin closed).

    >>> s = cell_statistics(np.array([1.0, 3.0]), np.array([[0.6, 55.0], [0.7, 58.0]]))
    >>> float(s.mean[0, 0]), float(s.standard_error[0, 0]), int(s.count[0, 0])
    (2.0, 1.0, 2)
    """
    cond = np.asarray(cond, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    dm, bm = _bin_masks(cond, 0, d_edges), _bin_masks(cond, 1, b_edges)
    shape = (len(dm), len(bm))
    mean, se, count = np.full(shape, np.nan), np.full(shape, np.nan), np.zeros(shape, dtype=np.int64)
    for i, a in enumerate(dm):
        for j, b in enumerate(bm):
            x = v[a & b]
            x = x[np.isfinite(x)]
            count[i, j] = x.size
            if x.size:
                mean[i, j] = x.mean()
            if x.size > 1:
                se[i, j] = x.std(ddof=1) / math.sqrt(x.size)
    return CellStatistics(mean, se, count)


def cell_agreement(gen_obs: Mapping[str, np.ndarray], gen_cond: np.ndarray, ref_obs: Mapping[str, np.ndarray],
                   ref_cond: np.ndarray, *, tolerance: float = CELL_TOLERANCE, n_sigma: float = 2.0,
                   names: Sequence[str] = ("w", "R9", "n_clusters"), d_edges: Sequence[float] = D_EDGES,
                   b_edges: Sequence[float] = B_EDGES) -> dict:
    """Do the (d, b) cell means of the generated sample agree with the reference within
    ``tolerance`` (paper sec. 5 / fig. 9: 6 %)?

    Per observable and cell: the relative difference r = m_gen / m_ref - 1, its standard error
    sigma_r = sqrt(se_gen^2 + (m_gen se_ref / m_ref)^2) / |m_ref| (first-order propagation of
    both samples' standard errors, :func:`cell_statistics`) and a verdict: ``within``
    (|r| <= tolerance), ``consistent`` (outside, but |r| - tolerance <= n_sigma sigma_r),
    ``outside``, or ``undetermined`` (fewer than 2 showers in either sample, or m_ref = 0).
    Returns a JSON-ready dict (arrays as nested lists, NaN as None) with the verdict counts per
    observable and ``all_within`` / ``all_within_or_consistent`` over every determined cell.

    >>> o = {"w": np.array([1.0, 1.0])}; c = np.array([[0.6, 55.0], [0.6, 55.0]])
    >>> r = cell_agreement({"w": np.array([1.05, 1.05])}, c, o, c, names=("w",))
    >>> r["observables"]["w"]["verdict"][0][0], r["all_within"]
    ('within', True)
    """
    if tolerance < 0 or n_sigma < 0:
        raise EvaluationError(f"cell_agreement: tolerance and n_sigma must be >= 0, got {tolerance}, {n_sigma}")
    out: dict = {"tolerance": tolerance, "n_sigma": n_sigma, "d_edges": list(map(float, d_edges)),
                 "b_edges": list(map(float, b_edges)), "observables": {}}
    all_within, all_ok, any_determined = True, True, False
    for n in names:
        g = cell_statistics(gen_obs[n], gen_cond, d_edges, b_edges)
        r = cell_statistics(ref_obs[n], ref_cond, d_edges, b_edges)
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = g.mean / r.mean - 1.0
            sig = np.sqrt(g.standard_error ** 2 + (g.mean * r.standard_error / r.mean) ** 2) / np.abs(r.mean)
        ok = (g.count > 1) & (r.count > 1) & np.isfinite(rel) & np.isfinite(sig)
        verdict = np.full(rel.shape, "undetermined", dtype=object)
        verdict[ok & (np.abs(rel) <= tolerance)] = "within"
        verdict[ok & (np.abs(rel) > tolerance) & (np.abs(rel) - tolerance <= n_sigma * sig)] = "consistent"
        verdict[ok & (np.abs(rel) - tolerance > n_sigma * sig)] = "outside"
        counts = {k: int((verdict == k).sum()) for k in ("within", "consistent", "outside", "undetermined")}
        any_determined |= bool(ok.any())
        all_within &= counts["consistent"] + counts["outside"] == 0
        all_ok &= counts["outside"] == 0
        out["observables"][n] = _json_clean({
            "generated_mean": g.mean.tolist(), "generated_standard_error": g.standard_error.tolist(),
            "reference_mean": r.mean.tolist(), "reference_standard_error": r.standard_error.tolist(),
            "count_generated": g.count.tolist(), "count_reference": r.count.tolist(),
            "relative_difference": rel.tolist(), "relative_difference_error": sig.tolist(),
            "verdict": verdict.tolist(), **{f"n_{k}": v for k, v in counts.items()},
            "max_abs_relative_difference": float(np.max(np.abs(rel[ok]))) if ok.any() else None})
    out["all_within"] = all_within and any_determined
    out["all_within_or_consistent"] = all_ok and any_determined
    return out


# ------------------------------------------------------------------ plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_observables(results: Mapping[str, HistogramResult], name: str, path: str, gen_label: str = "generated") -> str:
    """One observable: inclusive and per d / b bin, each with a ratio panel (figs. 5-8)."""
    from .plots import _hist_cell, _save

    plt = _plt()
    items = [(k, r) for k, r in results.items() if k == name or k.startswith(name + "/")]
    cols = min(5, len(items))
    rows = math.ceil(len(items) / cols)
    fig = plt.figure(figsize=(3.2 * cols, 2.9 * rows))
    w, h = 3.2 * cols, 2.9 * rows
    gs = fig.add_gridspec(rows, cols, hspace=0.5, wspace=0.4, left=0.6 / w, right=1 - 0.1 / w, bottom=0.45 / h,
                          top=1 - 0.3 / h)
    for n, (key, r) in enumerate(items):
        _, _, sel = key.partition("/")
        axr = _hist_cell(fig, gs[n // cols, n % cols], r, sel or f"{name} (inclusive)", name == "n_clusters",
                         gen_label, n == 0)
        axr.set_xlabel(LABELS[name], fontsize=7)
    return _save(fig, path, tight=False)


def plot_mean_maps(gen_maps: Mapping[str, np.ndarray], ref_maps: Mapping[str, np.ndarray], path: str,
                   gen_label: str = "generated", d_edges=D_EDGES, b_edges=B_EDGES) -> str:
    """Fig. 9: per observable, the reference and generated (d, b) mean maps and (gen - ref)/ref."""
    from .plots import _save

    plt = _plt()
    names = [n for n in ("w", "R9", "n_clusters") if n in gen_maps]
    fig, axes = plt.subplots(len(names), 3, figsize=(11, 3.0 * len(names)), squeeze=False)
    ext = (b_edges[0], b_edges[-1], d_edges[0], d_edges[-1])
    for i, n in enumerate(names):
        g, r = gen_maps[n], ref_maps[n]
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = (g - r) / r
        lo, hi = np.nanmin([np.nanmin(g), np.nanmin(r)]), np.nanmax([np.nanmax(g), np.nanmax(r)])
        lim = max(float(np.nanmax(np.abs(rel))) if np.isfinite(rel).any() else 0.06, 0.06)
        for j, (m, title, kw) in enumerate(((r, f"Geant4: mean {n}", dict(vmin=lo, vmax=hi, cmap="viridis")),
                                            (g, f"{gen_label}: mean {n}", dict(vmin=lo, vmax=hi, cmap="viridis")),
                                            (rel, "relative difference", dict(vmin=-lim, vmax=lim, cmap="RdBu_r")))):
            ax = axes[i, j]
            im = ax.imshow(m, origin="lower", extent=ext, aspect="auto", **kw)
            for a in range(m.shape[0]):
                for b in range(m.shape[1]):
                    if np.isfinite(m[a, b]):
                        ax.text(b_edges[b] + 0.5 * (b_edges[b + 1] - b_edges[b]), d_edges[a] + 0.5 * (d_edges[a + 1] - d_edges[a]),
                                f"{m[a, b]:+.1%}" if j == 2 else f"{m[a, b]:.3g}", ha="center", va="center", fontsize=7)
            ax.set_xlabel("b [cm]")
            ax.set_ylabel("d [X0]")
            ax.set_title(title, fontsize=9)
            fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return _save(fig, path)


def plot_average_images(gen_images: np.ndarray, ref_images: np.ndarray, path: str, gen_label: str = "generated") -> str:
    """Fig. 4: mean image of each sample (log colour scale) and their relative difference."""
    from matplotlib.colors import LogNorm

    from .plots import _save

    plt = _plt()
    mg, mr = as_images(gen_images).mean(axis=0), as_images(ref_images).mean(axis=0)
    pos = np.concatenate([mg[mg > 0], mr[mr > 0]])
    norm = LogNorm(vmin=max(float(pos.min()), float(pos.max()) * 1e-6), vmax=float(pos.max())) if pos.size else None
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = (mg - mr) / mr
    lim = max(min(float(np.nanmax(np.abs(rel))) if np.isfinite(rel).any() else 0.1, 1.0), 0.02)
    fig, axes = plt.subplots(1, 3, figsize=(9, 5.2))
    for ax, m, title, kw in ((axes[0], mr, "Geant4", dict(norm=norm, cmap="viridis")),
                             (axes[1], mg, gen_label, dict(norm=norm, cmap="viridis")),
                             (axes[2], rel, "(gen - ref)/ref", dict(vmin=-lim, vmax=lim, cmap="RdBu_r"))):
        im = ax.imshow(m, origin="lower", **kw)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("x [crystals]")
        ax.set_ylabel("y [crystals] (bending)")
        fig.colorbar(im, ax=ax, label="mean energy [MeV]" if ax is not axes[2] else "relative difference")
    fig.tight_layout()
    return _save(fig, path)


def plot_example_images(gen: tuple[np.ndarray, np.ndarray, np.ndarray], ref: tuple[np.ndarray, np.ndarray, np.ndarray],
                        path: str, gen_label: str = "generated", energy_gev: float = 30.0,
                        points=((0.6, 55.0), (1.0, 70.0), (1.4, 85.0)), seed: int = 0) -> str:
    """Fig. 3: for a few (d, b), one random image of each sample closest in (E_inc, d, b) to
    (energy_gev, d, b).  ``gen``/``ref`` are (images, incident energies MeV, conditions (N, 2))."""
    from matplotlib.colors import LogNorm

    from .plots import _save

    plt = _plt()
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(2, len(points), figsize=(2.6 * len(points), 8.5), squeeze=False)
    for j, (d, b) in enumerate(points):
        for i, (lab, (imgs, inc, cond)) in enumerate(((gen_label, gen), ("Geant4", ref))):
            cond = np.asarray(cond, dtype=np.float64)
            dist = np.abs(inc / 1e3 - energy_gev) / 80.0 + np.abs(cond[:, 0] - d) + np.abs(cond[:, 1] - b) / 40.0
            near = np.argsort(dist)[: max(1, min(10, len(dist)))]
            k = int(rng.choice(near))
            img = as_images(imgs[k:k + 1])[0]
            ax = axes[i, j]
            pos = img[img > 0]
            ax.imshow(np.where(img > 0, img, np.nan), origin="lower", cmap="viridis",
                      norm=LogNorm(vmin=max(float(pos.min()), 1e-3), vmax=float(pos.max())) if pos.size else None)
            ax.set_title(f"{lab}\nE={inc[k] / 1e3:.0f} GeV d={cond[k, 0]:.2f} b={cond[k, 1]:.0f}", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    return _save(fig, path)


# ------------------------------------------------------------------ report
def _load(sample, what: str):
    from ..io import ShowerData, read_showers

    if isinstance(sample, ShowerData):
        return sample
    d = read_showers(sample)
    if d.showers.shape[1] != ROWS * COLS:
        raise EvaluationError(f"{sample}: {d.showers.shape[1]} voxels per shower; ParaFlow observables need the "
                              f"{ROWS} x {COLS} window (geometry paraflow-8x16)")
    return d


def _dbcond(d, what: str) -> np.ndarray | None:
    if d.conditions is None or not d.condition_names:
        return None
    names = list(d.condition_names)
    if "d" not in names or "b" not in names:
        return None
    return d.conditions[:, [names.index("d"), names.index("b")]]


def _mean_per_d(v: np.ndarray, cond: np.ndarray | None) -> dict[str, float]:
    """Mean of ``v`` over the showers with a hot crystal (v > 0), inclusive and per d bin."""
    return _per_d_bin(v, cond, lambda x: float(x[x > 0].mean()) if (x > 0).any() else float("nan"))


def _json_clean(v):
    """NaN/inf -> None (strict JSON), recursively."""
    if isinstance(v, dict):
        return {k: _json_clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_clean(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def paraflow_report(gen, ref, out_dir: str | os.PathLike, *, gen_label: str = "generated",
                    plots: bool = True) -> dict:
    """ParaFlow sec. 4 comparison of ``gen`` against ``ref`` (paths or ShowerData of geometry
    ``paraflow-8x16``), written into ``out_dir`` (created; existing files of the same names are
    replaced): ``paraflow_metrics.json`` and, with ``plots``, ``paraflow_<observable>.png``,
    ``paraflow_mean_maps.png``, ``paraflow_average_images.png``, ``paraflow_examples.png``.

    Returns the metrics: separation power per observable (inclusive and per d / b bin), the
    (d, b) mean maps of both samples with their relative difference and its largest absolute
    value per observable, the shares of 0 / 1 / 2 / >= 3 clusters (:func:`cluster_shares`) and
    the mean extent of the hot crystals along y (:func:`hot_extent`), inclusive and per d bin.
    Per-bin results need ``conditions`` named d and b in both files.

    >>> paraflow_report("gen.h5", "geant4.h5", "report/")  # doctest: +SKIP
    """
    g, r = _load(gen, "generated"), _load(ref, "reference")
    gi, ri = as_images(g.showers), as_images(r.showers)
    go, ro = paraflow_observables(gi), paraflow_observables(ri)
    gc, rc = _dbcond(g, "generated"), _dbcond(r, "reference")
    hists = compare_observables(go, ro, gc, rc)
    out: dict = {
        "n_generated": len(g), "n_reference": len(r),
        "separation_power": {k: v.separation_power for k, v in hists.items()},
        "means": {n: {"generated": float(np.nanmean(go[n])), "reference": float(np.nanmean(ro[n]))} for n in OBSERVABLES},
        "d_edges_X0": list(D_EDGES), "b_edges_cm": list(B_EDGES),
    }
    gm: dict[str, np.ndarray] | None = None
    rm: dict[str, np.ndarray] | None = None
    if gc is not None and rc is not None:
        gm, rm = mean_maps(go, gc), mean_maps(ro, rc)
        maps = {}
        for n in ("w", "R9", "n_clusters"):
            with np.errstate(invalid="ignore", divide="ignore"):
                rel = (gm[n] - rm[n]) / rm[n]
            maps[n] = {"generated": gm[n].tolist(), "reference": rm[n].tolist(), "relative_difference": rel.tolist(),
                       "max_abs_relative_difference": float(np.nanmax(np.abs(rel))) if np.isfinite(rel).any() else None}
        maps["count_generated"], maps["count_reference"] = gm["count"].tolist(), rm["count"].tolist()
        out["mean_maps"] = maps
    out["cluster_shares"] = {"counts": ["0", "1", "2", ">=3"], "generated": cluster_shares(go["n_clusters"], gc),
                             "reference": cluster_shares(ro["n_clusters"], rc)}
    ge, re_ = hot_extent(gi), hot_extent(ri)
    out["hot_extent_rows"] = {"generated": _mean_per_d(ge, gc), "reference": _mean_per_d(re_, rc)}
    os.makedirs(out_dir, exist_ok=True)
    files = []
    if plots:
        for n in OBSERVABLES:
            files.append(plot_observables(hists, n, str(Path(out_dir, f"paraflow_{n}.png")), gen_label))
        files.append(plot_average_images(gi, ri, str(Path(out_dir, "paraflow_average_images.png")), gen_label))
        if gm is not None and rm is not None and gc is not None and rc is not None:
            files.append(plot_mean_maps(gm, rm, str(Path(out_dir, "paraflow_mean_maps.png")), gen_label))
            files.append(plot_example_images((gi, g.incident_energies, gc), (ri, r.incident_energies, rc),
                                             str(Path(out_dir, "paraflow_examples.png")), gen_label))
    out["plots"] = files
    tmp = Path(out_dir, ".paraflow_metrics.json.tmp")
    tmp.write_text(json.dumps(_json_clean(out), indent=1, allow_nan=False))
    os.replace(tmp, Path(out_dir, "paraflow_metrics.json"))
    return out
