"""Classifier input sets, preprocessed as the CaloChallenge evaluation does (review sec. 8.3,
official ``evaluate.py``) plus the logit set of the CaloFlow paper (sec. 4.3).

All sets start from the thresholded voxels of :class:`HighLevelFeatures`; energies in MeV.

* ``low``: [log10 E_inc, I_a / E_inc];
* ``low-normed``: [log10 E_inc, I_a / (E_layer + 1e-16), log10(E_layer + 1e-8)], computed from the
  thresholded voxels (review sec. 9.1).  The official ``evaluate.py`` normalises *before* applying
  the threshold (a known bug we do not copy): on files with sub-threshold voxels its layer energies
  include them and a layer holding only sub-threshold energy gives inputs up to ~1e16; numbers then
  differ from ours, on already-thresholded files they agree;
* ``logit``: [log10 E_inc, log10(E_layer + 1e-8), logit(alpha + (1 - 2 alpha) I_a / (E_layer + 1e-16))]
  with alpha = 1e-6: voxels normalised per layer, then logit-transformed as in CaloFlow training
  (CaloFlow sec. 4.3; log E_inc and the layer energies are kept so that the normalisation loses
  no information);
* ``high``: [log10 E_inc, log10(E_layer + 1e-8), EC_eta / 100, EC_phi / 100, width_eta / 100,
  width_phi / 100 (layers binned in alpha only), log10(E_tot + 1e-8), sparsity, EC_r / 100,
  width_r / 100].
"""

from __future__ import annotations

import numpy as np

from .features import HighLevelFeatures

__all__ = ["INPUT_SETS", "classifier_inputs", "LOGIT_ALPHA"]

LOGIT_ALPHA = 1e-6
INPUT_SETS = ("low", "low-normed", "logit", "high")


def _per_voxel_layer_energy(f: HighLevelFeatures) -> np.ndarray:
    return np.repeat(f.e_layers, f.geometry.layer_sizes, axis=1)


def _log_einc(f: HighLevelFeatures) -> np.ndarray:
    return np.log10(f.incident_energies)[:, None]


def classifier_inputs(f: HighLevelFeatures, kind: str) -> np.ndarray:
    """(N, D) float64 input of the binary/multiclass classifier for input set ``kind``."""
    log_el = np.log10(f.e_layers + 1e-8)
    if kind == "high":
        return np.concatenate(
            [
                _log_einc(f),
                log_el,
                f.ec_eta / 1e2,
                f.ec_phi / 1e2,
                f.width_eta / 1e2,
                f.width_phi / 1e2,
                np.log10(f.e_tot + 1e-8)[:, None],
                f.sparsity,
                f.ec_r / 1e2,
                f.width_r / 1e2,
            ],
            axis=1,
        )
    if f.voxels is None:
        raise ValueError(f"classifier input set {kind!r} needs the voxels, but these features were computed without them")
    vox = np.asarray(f.voxels, dtype=np.float64)
    if kind == "low":
        return np.concatenate([_log_einc(f), vox / f.incident_energies[:, None]], axis=1)
    if kind == "low-normed":
        return np.concatenate([_log_einc(f), vox / (_per_voxel_layer_energy(f) + 1e-16), log_el], axis=1)
    if kind == "logit":
        u = LOGIT_ALPHA + (1 - 2 * LOGIT_ALPHA) * vox / (_per_voxel_layer_energy(f) + 1e-16)
        u = np.clip(u, LOGIT_ALPHA, 1 - LOGIT_ALPHA)
        return np.concatenate([_log_einc(f), log_el, np.log(u) - np.log1p(-u)], axis=1)
    raise ValueError(f"unknown classifier input set {kind!r}; use one of {', '.join(INPUT_SETS)}")
