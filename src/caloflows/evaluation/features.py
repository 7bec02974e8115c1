"""High-level shower features of the CaloChallenge evaluation (review sec. 8.1).

For every shower, after zeroing voxels below the dataset threshold
(``shared/calochallenge/CONVENTIONS.md``: 1 MeV for dataset 1, 0.5 keV / 0.033 for
datasets 2 and 3), :func:`compute_features` returns

* ``E_i``: energy of layer i, the sum of its voxels;
* ``E_tot`` and ``E_dep/E_inc``;
* centres of energy ``<l> = sum_a l_a I_ia / (sum_a I_ia + 1e-16)`` for ``l`` = eta = r cos(alpha),
  phi = r sin(alpha) (only layers with more than one angular bin) and r (every layer);
* their widths ``sqrt(max(<l^2> - <l>^2, 0))``;
* the sparsity of each layer: 1 - activity = fraction of its voxels that are zero after the
  threshold (review sec. 8.1; CONVENTIONS);
* the thresholded voxels themselves (voxel-energy distribution, low-level classifier inputs).

The object is computed once per sample and shared by every metric.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from ..geometry import Geometry

__all__ = ["HighLevelFeatures", "compute_features", "EC_EPS"]

#: regulariser in the centre-of-energy denominator (official CaloChallenge code)
EC_EPS = 1e-16


@dataclass(eq=False)
class HighLevelFeatures:
    """Per-shower high-level features of one sample (all arrays have N rows).

    Attributes:
        geometry: the voxel geometry.
        incident_energies: (N,) MeV.
        voxels: (N, V) voxel energies after the threshold (MeV); None when the sample was streamed
            in chunks (:mod:`.stream`) and its voxels were not kept.
        e_layers: (N, L) layer energies E_i.
        ec_r, width_r: (N, L) centre of energy in r and its width (mm), every layer.
        ec_eta, ec_phi, width_eta, width_phi: (N, La) for the layers in ``alpha_layers``.
        sparsity: (N, L) fraction of zero voxels per layer.
        alpha_layers: positions (0..L-1) of the layers with more than one angular bin.
    """

    geometry: Geometry
    incident_energies: np.ndarray
    voxels: np.ndarray | None
    e_layers: np.ndarray
    ec_r: np.ndarray
    width_r: np.ndarray
    ec_eta: np.ndarray
    ec_phi: np.ndarray
    width_eta: np.ndarray
    width_phi: np.ndarray
    sparsity: np.ndarray
    alpha_layers: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.incident_energies)

    @cached_property
    def e_tot(self) -> np.ndarray:
        """Total deposited energy E_dep = sum_i E_i (MeV)."""
        return self.e_layers.sum(axis=1)

    @cached_property
    def e_ratio(self) -> np.ndarray:
        """E_dep / E_inc."""
        return self.e_tot / self.incident_energies

    @property
    def layer_ids(self) -> list[int]:
        """Layer ids as in the binning file (ATLAS numbering for dataset 1)."""
        return [l.id for l in self.geometry.layers]

    def subset(self, idx) -> "HighLevelFeatures":
        """Features of a subset of the showers (no recomputation)."""
        return HighLevelFeatures(
            self.geometry,
            self.incident_energies[idx],
            None if self.voxels is None else self.voxels[idx],
            self.e_layers[idx],
            self.ec_r[idx],
            self.width_r[idx],
            self.ec_eta[idx],
            self.ec_phi[idx],
            self.width_eta[idx],
            self.width_phi[idx],
            self.sparsity[idx],
            self.alpha_layers,
        )

    def with_voxels(self, voxels: np.ndarray | None) -> "HighLevelFeatures":
        """The same features with ``voxels`` (thresholded, one row per shower) attached or dropped."""
        if voxels is not None and len(voxels) != len(self):
            raise ValueError(f"{len(voxels)} voxel rows for {len(self)} showers")
        return replace(self, voxels=voxels)

    @classmethod
    def concatenate(cls, parts: "list[HighLevelFeatures]") -> "HighLevelFeatures":
        """Features of consecutive chunks joined into one sample (voxels kept only if every part has them)."""
        if not parts:
            raise ValueError("no feature chunks to concatenate")
        keep = all(p.voxels is not None for p in parts)
        cat = lambda name: np.concatenate([getattr(p, name) for p in parts], axis=0)  # noqa: E731
        return cls(
            parts[0].geometry, cat("incident_energies"), cat("voxels") if keep else None, cat("e_layers"),
            cat("ec_r"), cat("width_r"), cat("ec_eta"), cat("ec_phi"), cat("width_eta"), cat("width_phi"),
            cat("sparsity"), parts[0].alpha_layers,
        )

    def table(self) -> dict[str, np.ndarray]:
        """Every scalar feature as a named (N,) column (histograms, FPD/KPD).

        Names: ``E_ratio``, ``E_layer/<id>``, ``EC_eta/<id>``, ``EC_phi/<id>``, ``width_eta/<id>``,
        ``width_phi/<id>``, ``EC_r/<id>``, ``width_r/<id>``, ``sparsity/<id>`` with the layer id of
        the binning file.
        """
        ids = self.layer_ids
        out: dict[str, np.ndarray] = {"E_ratio": self.e_ratio}
        for k, i in enumerate(ids):
            out[f"E_layer/{i}"] = self.e_layers[:, k]
        for name, arr in (("EC_eta", self.ec_eta), ("EC_phi", self.ec_phi),
                          ("width_eta", self.width_eta), ("width_phi", self.width_phi)):
            for k, pos in enumerate(self.alpha_layers):
                out[f"{name}/{ids[pos]}"] = arr[:, k]
        for name, arr in (("EC_r", self.ec_r), ("width_r", self.width_r), ("sparsity", self.sparsity)):
            for k, i in enumerate(ids):
                out[f"{name}/{i}"] = arr[:, k]
        return out


def _centre_and_width(layer: np.ndarray, x: np.ndarray, e_sum: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Energy-weighted mean and width of position ``x`` over the voxels of one layer (eq. of sec. 8.1)."""
    m1 = layer @ x / (e_sum + EC_EPS)
    m2 = layer @ (x * x) / (e_sum + EC_EPS)
    return m1, np.sqrt(np.maximum(m2 - m1 * m1, 0.0))


def compute_features(
    showers: np.ndarray,
    incident_energies: np.ndarray,
    geometry: Geometry,
    *,
    apply_threshold: bool = True,
) -> HighLevelFeatures:
    """Threshold the showers and compute the high-level features of review sec. 8.1.

    Args:
        showers: (N, V) voxel energies in MeV, voxel order of ``geometry``.
        incident_energies: (N,) or (N, 1) MeV.
        geometry: the voxel geometry (its ``threshold_mev`` is used).
        apply_threshold: zero voxels strictly below the threshold first (CONVENTIONS).
    """
    showers = geometry.check_showers(showers)
    inc = np.asarray(incident_energies, dtype=np.float64).reshape(-1)
    if len(inc) != len(showers):
        raise ValueError(f"{len(inc)} incident energies for {len(showers)} showers")
    vox = geometry.apply_threshold(showers) if apply_threshold else np.asarray(showers)
    n, n_layers = len(vox), geometry.n_layers
    e_layers = np.empty((n, n_layers))
    ec_r = np.empty((n, n_layers))
    w_r = np.empty((n, n_layers))
    sparsity = np.empty((n, n_layers))
    alpha_layers = tuple(k for k, l in enumerate(geometry.layers) if l.n_alpha > 1)
    na = len(alpha_layers)
    ec_eta, ec_phi, w_eta, w_phi = (np.empty((n, na)) for _ in range(4))
    for k, layer in enumerate(geometry.layers):
        sl = geometry.layer_slice(k)
        block = np.asarray(vox[:, sl], dtype=np.float64)
        e = block.sum(axis=1)
        e_layers[:, k] = e
        sparsity[:, k] = 1.0 - np.count_nonzero(block, axis=1) / block.shape[1]
        ec_r[:, k], w_r[:, k] = _centre_and_width(block, geometry.r_centers[sl], e)
        if layer.n_alpha > 1:
            j = alpha_layers.index(k)
            ec_eta[:, j], w_eta[:, j] = _centre_and_width(block, geometry.eta_centers[sl], e)
            ec_phi[:, j], w_phi[:, j] = _centre_and_width(block, geometry.phi_centers[sl], e)
    return HighLevelFeatures(
        geometry=geometry,
        incident_energies=inc,
        voxels=vox,
        e_layers=e_layers,
        ec_r=ec_r,
        width_r=w_r,
        ec_eta=ec_eta,
        ec_phi=ec_phi,
        width_eta=w_eta,
        width_phi=w_phi,
        sparsity=sparsity,
        alpha_layers=alpha_layers,
    )
