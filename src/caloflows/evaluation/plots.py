"""Plots of the evaluation report (matplotlib, Agg backend, PNG).

Style follows the CaloChallenge / CaloFlow figures: reference (Geant4) as a filled grey
histogram, generated as a coloured line, a ratio panel generated / reference below, energies
on log axes, units in the axis labels.
"""

from __future__ import annotations

import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.ticker import LogLocator  # noqa: E402

from ..geometry import Geometry  # noqa: E402
from .histograms import HistogramResult  # noqa: E402

__all__ = [
    "FEATURE_LABELS",
    "plot_feature_group",
    "plot_separation_powers",
    "plot_eratio_per_energy",
    "plot_mean_rms_ratios",
    "plot_correlations",
    "plot_average_showers",
]

REF_STYLE = dict(color="0.6", alpha=0.6)
GEN_COLOR = "tab:blue"

#: axis label and whether the y axis is log, per feature kind
FEATURE_LABELS: dict[str, tuple[str, bool]] = {
    "E_ratio": (r"$E_\mathrm{dep}/E_\mathrm{inc}$", True),
    "E_layer": (r"$E_i$ [MeV]", True),
    "EC_eta": (r"$\langle\eta\rangle$ (centre of energy) [mm]", True),
    "EC_phi": (r"$\langle\phi\rangle$ (centre of energy) [mm]", True),
    "width_eta": (r"$\sigma_\eta$ (width) [mm]", True),
    "width_phi": (r"$\sigma_\phi$ (width) [mm]", True),
    "EC_r": (r"$\langle r\rangle$ (centre of energy) [mm]", True),
    "width_r": (r"$\sigma_r$ (width) [mm]", True),
    "sparsity": ("sparsity (fraction of empty voxels)", False),
    "voxel": ("voxel energy [MeV]", True),
}


def _save(fig, path: str, tight: bool = True) -> str:
    fig.savefig(path, dpi=90, bbox_inches="tight" if tight else None)
    plt.close(fig)
    return os.path.basename(path)


def _density(h: np.ndarray, edges: np.ndarray) -> np.ndarray:
    s = h.sum()
    return h / (s * np.diff(edges)) if s > 0 else h


def _hist_cell(fig, spec, r: HistogramResult, title: str, log_y: bool, gen_label: str, legend: bool) -> Axes:
    sub = spec.subgridspec(2, 1, height_ratios=(3, 1), hspace=0.05)
    ax, axr = fig.add_subplot(sub[0]), fig.add_subplot(sub[1])
    dg, dr = _density(r.gen, r.edges), _density(r.ref, r.edges)
    ax.stairs(dr, r.edges, fill=True, label="Geant4 (reference)", **REF_STYLE)
    ax.stairs(dg, r.edges, color=GEN_COLOR, lw=1.3, label=gen_label)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(dr > 0, dg / dr, np.nan)
    axr.stairs(ratio, r.edges, color=GEN_COLOR, lw=1.0, baseline=None)
    axr.axhline(1.0, color="0.3", lw=0.7, ls="--")
    axr.set_ylim(0.5, 1.5)
    for a in (ax, axr):
        if r.log_x:
            a.set_xscale("log")
        a.set_xlim(r.edges[0], r.edges[-1])
    if log_y and (dr > 0).any():
        ax.set_yscale("log")
    for a in (ax, axr):  # minor ticks of many-decade log axes cost seconds per figure
        a.minorticks_off()
        if r.log_x:
            a.xaxis.set_major_locator(LogLocator(numticks=6))
    if ax.get_yscale() == "log":
        ax.yaxis.set_major_locator(LogLocator(numticks=5))
    ax.tick_params(labelbottom=False, labelsize=7)
    axr.tick_params(labelsize=7)
    axr.set_ylabel("gen/ref", fontsize=7)
    ax.set_ylabel("normalised", fontsize=7)
    band = "" if r.ref_band is None else f", G4/G4 {r.ref_band:.4f}"
    ax.set_title(f"{title}  S={r.separation_power:.4f}{band}", fontsize=7)
    if legend:
        ax.legend(fontsize=6, frameon=False)
    return axr


def plot_feature_group(
    results: dict[str, HistogramResult], kind: str, path: str, gen_label: str = "generated", max_cols: int = 5
) -> str | None:
    """All layers of one feature kind (e.g. ``E_layer``) in one PNG, with ratio panels."""
    items = [(k, r) for k, r in results.items() if k == kind or k.startswith(kind + "/")]
    if not items:
        return None
    xlabel, log_y = FEATURE_LABELS[kind]
    cols = min(max_cols, len(items))
    rows = math.ceil(len(items) / cols)
    fig = plt.figure(figsize=(3.2 * cols, 2.9 * rows))
    w, h = 3.2 * cols, 2.9 * rows  # margins in inches -> figure fractions
    gs = fig.add_gridspec(rows, cols, hspace=0.45, wspace=0.4, left=0.6 / w, right=1 - 0.1 / w,
                          bottom=0.45 / h, top=1 - 0.3 / h)
    for n, (key, r) in enumerate(items):
        _, _, lid = key.partition("/")
        axr = _hist_cell(fig, gs[n // cols, n % cols], r, f"layer {lid}" if lid else kind, log_y, gen_label, n == 0)
        axr.set_xlabel(xlabel, fontsize=7)
    return _save(fig, path, tight=False)  # margins set above: a tight bbox would draw twice


def plot_separation_powers(results: dict[str, HistogramResult], path: str) -> str:
    """Separation power of every histogram, with the reference-halves value (Geant4 floor)."""
    keys = list(results)
    s = np.array([results[k].separation_power for k in keys], dtype=float)
    b = np.array([np.nan if results[k].ref_band is None else results[k].ref_band for k in keys], dtype=float)
    fig, ax = plt.subplots(figsize=(max(6, 0.12 * len(keys)), 3.5))
    x = np.arange(len(keys))
    ax.scatter(x, s, s=10, color=GEN_COLOR, label="generated vs reference", zorder=3)
    if np.isfinite(b).any():
        ax.bar(x, b, width=1.0, color="0.8", label="reference half vs half (Geant4 floor)")
    ax.set_yscale("log")
    ax.set_ylabel("separation power S")
    step = max(1, len(keys) // 60)
    ax.set_xticks(x[::step])
    ax.set_xticklabels(keys[::step], rotation=90, fontsize=5)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def _energy_label(row: dict) -> str:
    lo, hi = row["e_inc_min_mev"], row["e_inc_max_mev"]
    f = lambda e: f"{e / 1e3:.3g} GeV"  # noqa: E731
    return f"$E_\\mathrm{{inc}}$ = {f(lo)}" if lo == hi else f"{f(lo)}-{f(hi)}"


def plot_eratio_per_energy(chi2: dict, path: str, gen_label: str = "generated", max_cols: int = 5) -> str | None:
    """E_dep/E_inc histograms per incident energy (CaloFlow paper figs 7, 8)."""
    rows_ = chi2["groups"]
    if not rows_:
        return None
    cols = min(max_cols, len(rows_))
    nrows = math.ceil(len(rows_) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.0 * cols, 2.4 * nrows), squeeze=False)
    for ax in axes.flat[len(rows_):]:
        ax.set_visible(False)
    for ax, row in zip(axes.flat, rows_):
        e = row["edges"]
        ax.stairs(_density(row["hist_ref"], e), e, fill=True, label="Geant4", **REF_STYLE)
        ax.stairs(_density(row["hist_gen"], e), e, color=GEN_COLOR, label=gen_label)
        ax.set_title(f"{_energy_label(row)}  $\\chi^2$/NDF={row['chi2']:.0f}/{row['ndf']}", fontsize=7)
        ax.set_xlabel(r"$E_\mathrm{dep}/E_\mathrm{inc}$", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.set_ylabel("normalised entries", fontsize=7)
    axes.flat[0].legend(fontsize=6, frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def plot_mean_rms_ratios(chi2: dict, path: str) -> str | None:
    """Mean of E_dep/E_inc vs E_inc and the gen/ref ratios of mean and RMS (CaloFlow fig. 9)."""
    rows_ = chi2["groups"]
    if not rows_:
        return None
    e = np.array([np.sqrt(r["e_inc_min_mev"] * r["e_inc_max_mev"]) / 1e3 for r in rows_])
    fig, (a0, a1, a2) = plt.subplots(3, 1, figsize=(5, 6.5), sharex=True)
    a0.plot(e, [r["mean_ref"] for r in rows_], "s", color="0.4", label="Geant4")
    a0.plot(e, [r["mean_gen"] for r in rows_], "o", color=GEN_COLOR, mfc="none", label="generated")
    a0.set_ylabel(r"mean $E_\mathrm{dep}/E_\mathrm{inc}$")
    a0.legend(fontsize=7)
    a1.plot(e, [r["mean_ratio"] for r in rows_], "o", color=GEN_COLOR)
    a1.set_ylabel("mean gen/ref")
    a2.plot(e, [r["rms_ratio"] for r in rows_], "o", color=GEN_COLOR)
    a2.set_ylabel("RMS gen/ref")
    for a in (a1, a2):
        a.axhline(1.0, color="0.3", lw=0.7, ls="--")
    a2.set_xscale("log")
    a2.set_xlabel(r"$E_\mathrm{inc}$ [GeV]")
    fig.tight_layout()
    return _save(fig, path)


def plot_correlations(corr: dict, layer_ids: list[int], path: str) -> str:
    """Pearson correlation matrices of layer energies: generated, reference, difference."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    ticks = np.arange(len(layer_ids))
    step = max(1, len(ticks) // 15)
    for ax, key, cmap, lim in (
        (axes[0], "generated", "RdBu_r", 1.0),
        (axes[1], "reference", "RdBu_r", 1.0),
        (axes[2], "difference", "PuOr_r", None),
    ):
        m = np.asarray(corr[key], dtype=float)
        if lim is None:
            lim = max(float(np.nanmax(np.abs(m))) if np.isfinite(m).any() else 0.1, 1e-3)
        im = ax.imshow(m, cmap=cmap, vmin=-lim, vmax=lim, origin="lower")
        ax.set_title(f"{key}" + (" (gen - ref)" if key == "difference" else ""), fontsize=9)
        ax.set_xticks(ticks[::step])
        ax.set_xticklabels([layer_ids[i] for i in ticks[::step]], fontsize=6)
        ax.set_yticks(ticks[::step])
        ax.set_yticklabels([layer_ids[i] for i in ticks[::step]], fontsize=6)
        ax.set_xlabel("layer")
        fig.colorbar(im, ax=ax, fraction=0.046, label="Pearson correlation")
    fig.tight_layout()
    return _save(fig, path)


def plot_average_showers(
    geometry: Geometry, mean_gen: np.ndarray, mean_ref: np.ndarray, path: str, max_cols: int = 9
) -> str:
    """Average shower per layer (polar r-alpha images, log colour scale), generated above reference;
    crystal-grid geometries (ParaFlow) are drawn as images (rows along y)."""
    if geometry.is_grid:
        return _plot_average_grid(geometry, mean_gen, mean_ref, path)
    L = geometry.n_layers
    cols = min(max_cols, L)
    blocks = math.ceil(L / cols)
    fig = plt.figure(figsize=(1.9 * cols, 2.0 * 2 * blocks))
    vals = np.concatenate([mean_gen, mean_ref])
    pos = vals[vals > 0]
    vmax = float(pos.max()) if pos.size else 1.0
    vmin = max(float(pos.min()) if pos.size else 1e-3, vmax * 1e-6)
    norm = LogNorm(vmin=vmin, vmax=vmax)
    im = None
    for k, layer in enumerate(geometry.layers):
        b, c = divmod(k, cols)
        up = max(1, math.ceil(64 / layer.n_alpha))  # subdivide angular bins: round rings, n_alpha = 1 drawable
        theta = np.linspace(-np.pi, np.pi, layer.n_alpha * up + 1)
        r = np.asarray(layer.r_edges)
        for s, (name, m) in enumerate((("generated", mean_gen), ("Geant4", mean_ref))):
            ax = fig.add_subplot(2 * blocks, cols, (2 * b + s) * cols + c + 1, projection="polar")
            img = np.asarray(m[geometry.layer_slice(k)], dtype=float).reshape(layer.n_alpha, layer.n_r)
            img = np.repeat(np.where(img > 0, img, np.nan), up, axis=0)
            im = ax.pcolormesh(theta, np.sqrt(r), img.T, norm=norm, cmap="viridis", shading="flat")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{name}, layer {layer.id}", fontsize=6)
    fig.subplots_adjust(left=0.02, right=0.9, top=0.95, bottom=0.02, wspace=0.1, hspace=0.3)
    cax = fig.add_axes((0.92, 0.1, 0.015, 0.8))
    if im is not None:  # None only for a geometry without layers
        fig.colorbar(im, cax=cax, label="mean voxel energy [MeV]  (radius drawn as sqrt(r))")
    return _save(fig, path)


def _plot_average_grid(geometry: Geometry, mean_gen: np.ndarray, mean_ref: np.ndarray, path: str) -> str:
    """Average crystal images of a one-layer grid geometry, generated next to reference."""
    shape = geometry.image_shape
    vals = np.concatenate([mean_gen, mean_ref])
    pos = vals[vals > 0]
    vmax = float(pos.max()) if pos.size else 1.0
    norm = LogNorm(vmin=max(float(pos.min()) if pos.size else 1e-3, vmax * 1e-6), vmax=vmax)
    fig, axes = plt.subplots(1, 2, figsize=(6, 5))
    im = None
    for ax, (name, m) in zip(axes, (("generated", mean_gen), ("Geant4", mean_ref))):
        img = np.asarray(m, dtype=float).reshape(shape)
        im = ax.imshow(np.where(img > 0, img, np.nan), origin="lower", norm=norm, cmap="viridis")
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("x [crystals]", fontsize=7)
        ax.set_ylabel("y [crystals]", fontsize=7)
    if im is not None:
        fig.colorbar(im, ax=list(axes), label="mean crystal energy [MeV]")
    return _save(fig, path)
