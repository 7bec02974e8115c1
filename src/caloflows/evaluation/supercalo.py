"""SuperCalo's evaluation additions (Pang, Raine, Shih, arXiv:2308.11700).

* **rho** (eq. 3): regroup the fine voxels of a shower by a coarse-graining (the paper uses
  choice B, 3 r x 4 alpha x 1 z) and, for every pair of coarse voxels that are neighbours in z
  (coarse layers n and n+1, same angular and radial coarse bin), take the cosine of the two
  vectors of fine energies, ``rho = e^(n) . e^(n+1) / (|e^(n)| |e^(n+1)|)``.  Pairs where either
  voxel is empty are undefined and left out.  Histogrammed per coarse radial bin (fig. 5,
  50 bins on [0, 1]) with the separation power of review eq. 39
  (:func:`caloflows.evaluation.histograms.separation_power`).
* **per-ring box plots** (fig. 12): in selected layers, the non-zero voxel energies of every
  ring of voxels at fixed radius -- box from the first to the third quartile, whiskers from
  the 5th to the 95th percentile -- and ``f_0``, the mean fraction of the ring's voxels with
  zero energy.  Drawn for layers that have rings (more than one radial and angular bin).

Both apply the geometry's threshold first (CONVENTIONS).  :func:`supercalo_metrics` is the
entry point for the report: numbers as a JSON-able dict and, with ``out``, the PNG plots.

>>> import numpy as np
>>> from caloflows.geometry import load_geometry
>>> from caloflows.toy_showers import toy_showers
>>> g = load_geometry("ds2")
>>> _, a = toy_showers(g, 50, seed=1); _, b = toy_showers(g, 50, seed=2)
>>> m = supercalo_metrics(a, b, g)
>>> sorted(m["rho"])
['rho/r0', 'rho/r1', 'rho/r2']
>>> m["rho"]["rho/r0"]["separation_power"] < 0.2
True
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..coarsegraining import CoarseGraining, CoarseMap
from ..errors import EvaluationError, GeometryError
from ..geometry import Geometry, load_geometry
from .histograms import HistogramResult, separation_power

__all__ = [
    "rho_values",
    "rho_histograms",
    "ring_stats",
    "RingStats",
    "has_rings",
    "default_ring_layers",
    "plot_rho",
    "plot_ring_boxplots",
    "supercalo_metrics",
]

RHO_BINS = np.linspace(0.0, 1.0, 51)


def _cmap(geometry: Geometry | str, grouping) -> CoarseMap:
    return CoarseGraining.parse(grouping).bind(load_geometry(geometry))


def rho_values(showers: np.ndarray, geometry: Geometry | str, grouping="B", chunk: int = 1000) -> dict[int, np.ndarray]:
    """eq. 3 for every z-neighbouring pair of coarse voxels with energy, per coarse radial bin.

    Returns ``{coarse radial bin: rho values (1-D)}`` (all showers, layer pairs and angular bins).

    >>> import numpy as np
    >>> from caloflows.geometry import load_geometry
    >>> g = load_geometry("ds2")
    >>> x = np.ones((2, g.n_voxels))  # identical vectors in every layer: rho = 1
    >>> v = rho_values(x, g)
    >>> sorted(v), bool(np.allclose(v[0], 1.0)), len(v[0])
    ([0, 1, 2], True, 352)
    """
    geometry = load_geometry(geometry)
    cmap = _cmap(geometry, grouping)
    showers = geometry.check_showers(showers)
    if cmap.nc_z < 2:
        raise EvaluationError(f"rho needs at least two coarse layers; {cmap} has {cmap.nc_z}")
    out: dict[int, list[np.ndarray]] = {r: [] for r in range(cmap.nc_r)}
    for a in range(0, len(showers), chunk):
        x = geometry.apply_threshold(np.asarray(showers[a:a + chunk], dtype=np.float64))
        g = cmap.gather(x).reshape(len(x), cmap.nc_z, cmap.nc_alpha, cmap.nc_r, cmap.group_size)
        lo, hi = g[:, :-1], g[:, 1:]
        dot = np.einsum("...k,...k->...", lo, hi)
        nl, nh = np.linalg.norm(lo, axis=-1), np.linalg.norm(hi, axis=-1)
        ok = (nl > 0) & (nh > 0)
        rho = np.where(ok, dot / np.where(ok, nl * nh, 1.0), np.nan)
        for r in range(cmap.nc_r):
            v = rho[..., r]
            out[r].append(np.clip(v[ok[..., r]], 0.0, 1.0))
    return {r: np.concatenate(v) if v else np.zeros(0) for r, v in out.items()}


def rho_histograms(
    generated: np.ndarray,
    reference: np.ndarray,
    geometry: Geometry | str,
    grouping="B",
    edges: np.ndarray = RHO_BINS,
    reference_halves: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, HistogramResult]:
    """rho histograms per coarse radial bin (``rho/r0``, ``rho/r1``, ...) with separation powers
    (generated vs reference and, if given, between two reference halves: the Geant4 floor)."""
    gv = rho_values(generated, geometry, grouping)
    rv = rho_values(reference, geometry, grouping)
    hv = None
    if reference_halves is not None:
        hv = (rho_values(reference_halves[0], geometry, grouping), rho_values(reference_halves[1], geometry, grouping))
    out = {}
    for r in rv:
        hg = np.histogram(gv[r], edges)[0].astype(np.float64)
        hr = np.histogram(rv[r], edges)[0].astype(np.float64)
        band = None
        if hv is not None:
            band = separation_power(np.histogram(hv[0][r], edges)[0], np.histogram(hv[1][r], edges)[0])
        out[f"rho/r{r}"] = HistogramResult(f"rho/r{r}", np.asarray(edges), False, hg, hr, separation_power(hg, hr), band)
    return out


# ------------------------------------------------------------------ rings (fig. 12)
@dataclass
class RingStats:
    """Per-ring statistics of one layer (arrays of length n_r, MeV; NaN where a ring is always empty)."""

    layer: int  # layer position in the geometry
    r_edges: np.ndarray
    p5: np.ndarray
    q1: np.ndarray
    median: np.ndarray
    q3: np.ndarray
    p95: np.ndarray
    f0: np.ndarray  # mean fraction of the ring's voxels with zero energy

    def to_json(self) -> dict:
        return {k: (np.asarray(v).tolist() if isinstance(v, np.ndarray) else v) for k, v in self.__dict__.items()}


def has_rings(geometry: Geometry, layer: int | None = None) -> bool:
    """True if the layer (any layer if None) has more than one radial and one angular bin."""
    layers = geometry.layers if layer is None else [geometry.layers[layer]]
    return any(l.n_r > 1 and l.n_alpha > 1 for l in layers)


def default_ring_layers(geometry: Geometry) -> list[int]:
    """Layer positions of fig. 12 (layers 1, 10, 20, 45 of ds2), restricted to layers with rings;
    for geometries with fewer layers, four evenly spaced ones."""
    L = geometry.n_layers
    cand = [0, 9, 19, 44] if L >= 45 else sorted({int(round(x)) for x in np.linspace(0, L - 1, min(4, L))})
    return [i for i in cand if i < L and has_rings(geometry, i)]


def ring_stats(showers: np.ndarray, geometry: Geometry | str, layers: Sequence[int] | None = None) -> list[RingStats]:
    """fig. 12 statistics: per layer and ring, percentiles 5/25/50/75/95 of the non-zero voxel
    energies and f_0 (after the threshold).

    >>> import numpy as np
    >>> from caloflows.geometry import load_geometry
    >>> g = load_geometry("ds2")
    >>> x = np.zeros((4, g.n_voxels)); x[:, 0] = 1.0  # one voxel of ring 0 of layer 0 hit
    >>> s = ring_stats(x, g, [0])[0]
    >>> float(s.median[0]), float(s.f0[0]), float(s.f0[1])
    (1.0, 0.9375, 1.0)
    """
    geometry = load_geometry(geometry)
    showers = geometry.check_showers(showers)
    layers = default_ring_layers(geometry) if layers is None else list(layers)
    out = []
    for i in layers:
        if not 0 <= i < geometry.n_layers:
            raise EvaluationError(f"layer {i} does not exist (geometry {geometry.name!r} has {geometry.n_layers})")
        l = geometry.layers[i]
        x = geometry.apply_threshold(np.asarray(showers[:, geometry.layer_slice(i)], dtype=np.float64))
        x = x.reshape(len(x), l.n_alpha, l.n_r)
        q = np.full((5, l.n_r), np.nan)
        f0 = np.empty(l.n_r)
        for r in range(l.n_r):
            v = x[:, :, r]
            f0[r] = float((v == 0).mean()) if v.size else float("nan")
            nz = v[v > 0]
            if nz.size:
                q[:, r] = np.percentile(nz, [5, 25, 50, 75, 95])
        out.append(RingStats(i, np.asarray(l.r_edges), q[0], q[1], q[2], q[3], q[4], f0))
    return out


# ------------------------------------------------------------------ plots
def plot_rho(results: dict[str, HistogramResult], path: str, gen_label: str = "generated") -> str:
    """fig. 5: rho histograms per coarse radial bin (reference grey, generated line)."""
    from .plots import GEN_COLOR, REF_STYLE, _density, _save, plt

    keys = sorted(results)
    fig, axes = plt.subplots(1, len(keys), figsize=(3.3 * len(keys), 2.8), squeeze=False)
    for ax, k in zip(axes[0], keys):
        r = results[k]
        ax.stairs(_density(r.ref, r.edges), r.edges, fill=True, label="Geant4 (reference)", **REF_STYLE)
        ax.stairs(_density(r.gen, r.edges), r.edges, color=GEN_COLOR, lw=1.3, label=gen_label)
        ax.set_yscale("log") if (r.ref > 0).sum() > 1 else None
        band = "" if r.ref_band is None else f", G4/G4 {r.ref_band:.4f}"
        ax.set_title(f"coarse radial bin {k.split('/r')[-1]}: S={r.separation_power:.4f}{band}", fontsize=7)
        ax.set_xlabel(r"$\rho$ (eq. 3)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=6, frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def plot_ring_boxplots(
    gen_stats: Sequence[RingStats], ref_stats: Sequence[RingStats], path: str, gen_label: str = "generated"
) -> str | None:
    """fig. 12: per-ring box plots (non-zero energies, 5-95 % whiskers) and f_0 below."""
    from .plots import GEN_COLOR, _save, plt

    if not ref_stats:
        return None
    n = len(ref_stats)
    fig = plt.figure(figsize=(3.4 * n, 3.6))
    gs = fig.add_gridspec(2, n, height_ratios=(3, 1), hspace=0.08, wspace=0.35)
    for c, (g, r) in enumerate(zip(gen_stats, ref_stats)):
        ax = fig.add_subplot(gs[0, c])
        axf = fig.add_subplot(gs[1, c], sharex=ax)
        nr = len(r.f0)
        pos = np.arange(nr, dtype=float)
        for s, off, color, lab in ((r, -0.18, "black", "Geant4"), (g, 0.18, GEN_COLOR, gen_label)):
            stats = [
                {"whislo": s.p5[k], "q1": s.q1[k], "med": s.median[k], "q3": s.q3[k], "whishi": s.p95[k], "label": ""}
                for k in range(nr) if np.isfinite(s.median[k])
            ]
            p = [pos[k] + off for k in range(nr) if np.isfinite(s.median[k])]
            if stats:
                ax.bxp(stats, positions=p, widths=0.3, showfliers=False, manage_ticks=False,
                       boxprops={"color": color}, whiskerprops={"color": color}, capprops={"color": color},
                       medianprops={"color": color})
            axf.plot(pos, s.f0, "o-", ms=3, lw=0.8, color=color, label=lab)
        ax.set_yscale("log")
        ax.set_title(f"layer {r.layer + 1}", fontsize=8)
        ax.tick_params(labelbottom=False, labelsize=7)
        axf.set_xticks(pos)
        axf.set_xticklabels([str(k) for k in range(nr)], fontsize=6)
        axf.set_xlabel("radial bin (ring)", fontsize=7)
        axf.set_ylim(-0.05, 1.05)
        axf.tick_params(labelsize=6)
        if c == 0:
            ax.set_ylabel("non-zero voxel energy [MeV]", fontsize=7)
            axf.set_ylabel(r"$f_0$", fontsize=7)
            axf.legend(fontsize=6, frameon=False)
    return _save(fig, path)


# ------------------------------------------------------------------ report entry point
def supercalo_metrics(
    generated: np.ndarray,
    reference: np.ndarray,
    geometry: Geometry | str,
    *,
    grouping="B",
    layers: Sequence[int] | None = None,
    reference_halves: tuple[np.ndarray, np.ndarray] | None = None,
    out: str | os.PathLike | None = None,
    gen_label: str = "generated",
) -> dict:
    """rho separation powers and per-ring statistics as a JSON-able dict; with ``out`` (an
    existing directory) also ``supercalo_rho.png`` and ``supercalo_rings.png``, listed under
    ``"plots"``.  rho needs a regular geometry divisible by ``grouping`` (else ``"rho"`` is empty
    and ``"rho_skipped"`` says why); the rings need layers with rings.

    ``generated`` / ``reference``: showers (N, V) in MeV.
    """
    geometry = load_geometry(geometry)
    res: dict = {"grouping": CoarseGraining.parse(grouping).label, "rho": {}, "rings": {}, "plots": []}
    hist = {}
    try:
        _cmap(geometry, grouping)
    except GeometryError as exc:  # grouping does not fit this geometry
        res["rho_skipped"] = str(exc)
    else:
        hist = rho_histograms(generated, reference, geometry, grouping, reference_halves=reference_halves)
        res["rho"] = {k: v.to_json() for k, v in hist.items()}
        vals = [v.separation_power for v in hist.values() if math.isfinite(v.separation_power)]
        res["rho_max_separation_power"] = max(vals) if vals else float("nan")
    layers = default_ring_layers(geometry) if layers is None else [i for i in layers if has_rings(geometry, i)]
    gs, rs = ring_stats(generated, geometry, layers), ring_stats(reference, geometry, layers)
    for g, r in zip(gs, rs):
        res["rings"][f"layer/{r.layer}"] = {"generated": g.to_json(), "reference": r.to_json(),
                                            "f0_max_abs_diff": float(np.nanmax(np.abs(g.f0 - r.f0)))}
    if out is not None:
        out = str(out)
        if not os.path.isdir(out):
            raise EvaluationError(f"{out}: plot directory does not exist")
        if hist:
            res["plots"].append(plot_rho(hist, os.path.join(out, "supercalo_rho.png"), gen_label))
        if rs:
            p = plot_ring_boxplots(gs, rs, os.path.join(out, "supercalo_rings.png"), gen_label)
            if p:
                res["plots"].append(p)
    return res
