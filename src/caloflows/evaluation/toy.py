"""Synthetic toy showers for tests, benchmarks and examples -- NOT physics.

A cheap parametric model with the structure of calorimeter showers (used so that the evaluation
can be tested without Geant4): a Gaussian longitudinal profile whose depth grows with
log(E_inc), an exponential radial profile with a per-shower Moliere-like scale, an angular
asymmetry, and gamma-distributed voxel fluctuations whose shape shrinks for small expected
energies (so that low-energy voxels are often below threshold, giving realistic sparsity).
"""

from __future__ import annotations

import numpy as np

from ..geometry import DS1_THRESHOLD_MEV, Geometry, load_geometry

__all__ = ["toy_showers", "DS1_ENERGIES_MEV"]

#: discrete incident energies of dataset 1 (256 MeV ... 4.2 TeV, powers of two)
DS1_ENERGIES_MEV = 2.0 ** np.arange(8, 23)


def toy_showers(
    geometry: Geometry | str,
    n: int,
    seed: int = 0,
    energies: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` toy showers for ``geometry``: (incident energies (n,) MeV, voxels (n, V) float32 MeV).

    Incident energies: the dataset-1 discrete energies for dataset-1 geometries (up to 65 GeV to
    keep voxel energies moderate), else log-uniform in [1, 100] GeV; or ``energies`` if given.
    """
    g = load_geometry(geometry)
    rng = np.random.default_rng(seed)
    if energies is None:
        if g.threshold_mev == DS1_THRESHOLD_MEV:
            energies = rng.choice(DS1_ENERGIES_MEV[:9], size=n)
        else:
            energies = 10 ** rng.uniform(3, 5, size=n)
    inc = np.asarray(energies, dtype=np.float64).reshape(-1)
    L = g.n_layers
    t = (np.arange(L) + 0.5) / L
    depth = 0.25 + 0.06 * np.log10(inc / 1e3) + 0.04 * rng.standard_normal(n)
    w = np.exp(-0.5 * ((t[None, :] - depth[:, None]) / 0.22) ** 2)
    w /= w.sum(axis=1, keepdims=True)
    frac = np.clip(rng.normal(0.9, 0.04, n), 0.6, 1.1)
    e_layer = inc[:, None] * frac[:, None] * w * rng.lognormal(0.0, 0.1, (n, L))
    r0 = 8.0 * rng.lognormal(0.0, 0.15, n)
    phi0 = rng.uniform(-np.pi, np.pi, n)
    out = np.empty((n, g.n_voxels), dtype=np.float32)
    for k, layer in enumerate(g.layers):
        rc = g.r_centers[g.layer_slice(k)]
        ac = g.alpha_centers[g.layer_slice(k)]
        edges = np.asarray(layer.r_edges)
        area = np.tile(np.diff(edges**2), layer.n_alpha)  # ring area share of each voxel
        dens = np.exp(-rc[None, :] / (r0[:, None] * (1 + t[k])))
        ang = 1.0 + 0.3 * np.cos(ac[None, :] - phi0[:, None]) if layer.n_alpha > 1 else 1.0
        pw = dens * area[None, :] * ang
        pw /= pw.sum(axis=1, keepdims=True)
        mean = e_layer[:, k : k + 1] * pw
        shape = np.clip(mean / 2.0, 0.05, 20.0)
        out[:, g.layer_slice(k)] = rng.gamma(shape, mean / shape)
    return inc, out
