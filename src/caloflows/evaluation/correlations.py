"""Pearson correlation coefficients between layer energies (review sec. 8.2, eq. 40)."""

from __future__ import annotations

import numpy as np

__all__ = ["layer_correlations", "pearson_matrix"]


def pearson_matrix(e_layers: np.ndarray) -> np.ndarray:
    """PCC(E_i, E_j) of review eq. 40 for all pairs of layers; (L, L).

    Layers whose energy is constant over the sample (e.g. always below threshold) have no
    defined correlation: their rows and columns are NaN.
    """
    x = np.asarray(e_layers, dtype=np.float64)
    d = x - x.mean(axis=0)
    norm = np.sqrt((d * d).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        c = (d.T @ d) / np.outer(norm, norm)
    c[:, norm == 0] = np.nan
    c[norm == 0, :] = np.nan
    return c


def layer_correlations(gen_layers: np.ndarray, ref_layers: np.ndarray) -> dict:
    """Correlation matrices of generated and reference layer energies, their difference
    (generated - reference) and its largest and mean absolute off-diagonal entry."""
    cg, cr = pearson_matrix(gen_layers), pearson_matrix(ref_layers)
    diff = cg - cr
    off = ~np.eye(len(diff), dtype=bool)
    vals = np.abs(diff[off])
    vals = vals[np.isfinite(vals)]
    return {
        "generated": cg,
        "reference": cr,
        "difference": diff,
        "max_abs_difference": float(vals.max()) if vals.size else float("nan"),
        "mean_abs_difference": float(vals.mean()) if vals.size else float("nan"),
    }
