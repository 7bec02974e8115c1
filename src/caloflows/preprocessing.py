"""Invertible preprocessing used by CaloFlow and L2LFlows.

Every transform here has a forward and an inverse and keeps its constants in a plain
dict (JSON-serialisable, :meth:`to_dict` / :func:`from_dict`), so that a model directory can
store them next to the weights.  Arrays may be numpy arrays or torch tensors.

CaloFlow (``caloflow_dataset1.txt``, sec. 3.2 item 1; CaloFlow I, 2106.05285, sec. 3):

* uniform noise ``U(0, 1 keV)`` added to voxel energies (dequantisation; 0.1 keV for
  pion flow-I) -- :func:`add_uniform_noise`;
* logit with ``alpha = 1e-6``: ``y = logit(alpha + (1 - 2 alpha) x)`` -- :class:`Logit`;
* recursive unit space of layer energies (eq. 1 and its rescaling by ``max u_0``) --
  :class:`UnitSpaceEnergies`;
* conditions ``log10(E_inc / 33.3 GeV)`` (eq. 2) and
  ``log10((E_i + 1 keV) / 100 GeV) - 1`` (eq. 3) -- :func:`log_einc`, :func:`log_layer_energy`;
* per-feature standardisation (not in the paper; zuko splines act on [-5, 5]) -- :class:`Standardize`.

All energies are in MeV.

>>> import numpy as np
>>> E = np.array([[1.0, 2.0, 3.0]]); einc = np.array([10.0])
>>> t = UnitSpaceEnergies(u0_max=1.0)
>>> u = t.forward(E, einc)
>>> np.round(u, 4).tolist()
[[0.6, 0.1667, 0.4]]
>>> np.allclose(t.inverse(u, einc), E)
True
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = [
    "KEV",
    "add_uniform_noise",
    "Logit",
    "UnitSpaceEnergies",
    "Standardize",
    "log_einc",
    "inv_log_einc",
    "log_layer_energy",
    "inv_log_layer_energy",
    "equal_layer_size",
    "normalise_layers",
    "renormalise_layers",
    "to_json",
    "from_json",
]

#: 1 keV in MeV
KEV = 1e-3
#: E_inc normalisation of CaloFlow dataset 1 (eq. 2)
EINC_SCALE_MEV = 33.3e3
#: layer-energy normalisation of CaloFlow dataset 1 (eq. 3)
ELAYER_SCALE_MEV = 100e3


def _lib(x):
    return torch if isinstance(x, torch.Tensor) else np


def add_uniform_noise(x, high: float = KEV, generator: "torch.Generator | np.random.Generator | None" = None):
    """``x + U(0, high)`` elementwise (CaloFlow: high = 1 keV, 0.1 keV for pion flow-I).

    Not invertible by itself: the noise is removed at generation time by the threshold cut.
    """
    if high <= 0:
        return x
    if isinstance(x, torch.Tensor):
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"a torch tensor needs a torch.Generator, got {type(generator).__name__}")
        return x + high * torch.rand(x.shape, dtype=x.dtype, device=x.device, generator=generator)
    rng = generator if isinstance(generator, np.random.Generator) else np.random.default_rng()
    return x + high * rng.random(np.shape(x))


@dataclass
class Logit:
    """``y = log(v / (1 - v))`` with ``v = alpha + (1 - 2 alpha) x``, for ``x`` in [0, 1].

    CaloFlow uses ``alpha = 1e-6`` (CaloFlow I, eq. 9).  :meth:`log_abs_det_jacobian`
    gives ``log|dy/dx|`` per element (for densities in data space).
    """

    alpha: float = 1e-6

    def forward(self, x):
        lib = _lib(x)
        v = self.alpha + (1 - 2 * self.alpha) * x
        return lib.log(v) - lib.log1p(-v)

    def inverse(self, y):
        if isinstance(y, torch.Tensor):
            s = torch.sigmoid(y)
        else:
            s = 1.0 / (1.0 + np.exp(-np.asarray(y, dtype=np.float64)))
        return (s - self.alpha) / (1 - 2 * self.alpha)

    def log_abs_det_jacobian(self, x):
        lib = _lib(x)
        v = self.alpha + (1 - 2 * self.alpha) * x
        return math.log(1 - 2 * self.alpha) - lib.log(v) - lib.log1p(-v)

    def to_dict(self) -> dict:
        return {"type": "Logit", "alpha": self.alpha}


@dataclass
class UnitSpaceEnergies:
    """Layer energies <-> recursive unit space (CaloFlow I eqs. 6-7, CaloFlow ds1 eq. 1).

    ``u_0 = (sum_i E_i / E_inc) / u0_max`` and ``u_i = E_{i-1} / sum_{j >= i-1} E_j`` for
    ``i = 1 .. L-1``; all ``u`` lie in [0, 1] when ``u0_max`` is the training-set maximum of
    ``sum E / E_inc`` (ds1 rescaling: sampling fractions make it exceed 1).  The inverse
    rebuilds ``E_{L-1}`` as the remainder, so the sampled layer energies always sum exactly
    to ``u_0 u0_max E_inc``.  Layers with zero remaining energy give ``u_i = 0``; add noise
    first (CaloFlow adds U(0, 1 keV) to voxels before summing).
    """

    u0_max: float = 1.0

    @classmethod
    def fit(cls, layer_energies: np.ndarray, incident_energies: np.ndarray, margin: float = 1.0) -> "UnitSpaceEnergies":
        """``u0_max`` = max over the training set of ``sum E / E_inc`` (times ``margin``)."""
        r = np.asarray(layer_energies, dtype=np.float64).sum(axis=1) / np.asarray(incident_energies, dtype=np.float64).reshape(-1)
        return cls(u0_max=float(r.max() * margin))

    def forward(self, layer_energies, incident_energies):
        lib = _lib(layer_energies)
        E = layer_energies
        einc = incident_energies.reshape(-1)
        # tail sums S_i = sum_{j >= i} E_j
        if lib is torch:
            S = torch.flip(torch.cumsum(torch.flip(E, [1]), 1), [1])
        else:
            S = np.cumsum(E[:, ::-1], axis=1)[:, ::-1]
        u0 = S[:, 0] / einc / self.u0_max
        safe = lib.where(S[:, :-1] > 0, S[:, :-1], lib.ones_like(S[:, :-1]))
        ui = lib.where(S[:, :-1] > 0, E[:, :-1] / safe, lib.zeros_like(safe))
        return lib.concatenate([u0[:, None], ui], 1) if lib is np else torch.cat([u0[:, None], ui], 1)

    def inverse(self, u, incident_energies):
        """Unit space -> layer energies; the rows sum exactly to ``u_0 u0_max E_inc``."""
        lib = _lib(u)
        einc = incident_energies.reshape(-1)
        remaining = u[:, 0] * self.u0_max * einc
        cols = []
        for i in range(1, u.shape[1]):
            e = u[:, i] * remaining
            cols.append(e)
            remaining = remaining - e
        cols.append(remaining)
        return lib.stack(cols, 1) if lib is torch else np.stack(cols, 1)

    def to_dict(self) -> dict:
        return {"type": "UnitSpaceEnergies", "u0_max": self.u0_max}


@dataclass
class Standardize:
    """Per-feature ``(x - mean) / std``; constants fitted on training data."""

    mean: list = field(default_factory=list)
    std: list = field(default_factory=list)

    @classmethod
    def fit(cls, x: np.ndarray, min_std: float = 1e-6) -> "Standardize":
        x = np.asarray(x, dtype=np.float64)
        return cls(mean=x.mean(0).tolist(), std=np.maximum(x.std(0), min_std).tolist())

    def _ms(self, x):
        if isinstance(x, torch.Tensor):
            return (torch.as_tensor(self.mean, dtype=x.dtype, device=x.device),
                    torch.as_tensor(self.std, dtype=x.dtype, device=x.device))
        return np.asarray(self.mean), np.asarray(self.std)

    def forward(self, x):
        m, s = self._ms(x)
        return (x - m) / s

    def inverse(self, y):
        m, s = self._ms(y)
        return y * s + m

    def log_abs_det(self) -> float:
        """``log|det d forward / dx|`` (constant)."""
        return float(-np.log(np.asarray(self.std)).sum())

    def to_dict(self) -> dict:
        return {"type": "Standardize", "mean": list(self.mean), "std": list(self.std)}


def log_einc(incident_energies, scale_mev: float = EINC_SCALE_MEV):
    """CaloFlow ds1 eq. 2: ``log10(E_inc / 33.3 GeV)`` (in [-2.5, 2.5] for ds1)."""
    return _lib(incident_energies).log10(incident_energies / scale_mev)


def inv_log_einc(c, scale_mev: float = EINC_SCALE_MEV):
    return scale_mev * 10.0 ** c


def log_layer_energy(layer_energies, scale_mev: float = ELAYER_SCALE_MEV, offset_mev: float = KEV):
    """CaloFlow ds1 eq. 3: ``log10((E_i + 1 keV) / 100 GeV) - 1`` (in [-2, 4] per the paper)."""
    return _lib(layer_energies).log10((layer_energies + offset_mev) / scale_mev) - 1.0


def inv_log_layer_energy(c, scale_mev: float = ELAYER_SCALE_MEV, offset_mev: float = KEV):
    return scale_mev * 10.0 ** (c + 1.0) - offset_mev


def normalise_layers(showers, layer_offsets: np.ndarray):
    """Divide every voxel by its layer's energy (a layer with zero energy stays zero).

    Returns ``(normalised, layer_energies)``; ``normalised`` sums to 1 per non-empty layer.
    """
    lib = _lib(showers)
    out, sums = [], []
    for a, b in zip(layer_offsets[:-1], layer_offsets[1:]):
        blk = showers[:, int(a):int(b)]
        s = blk.sum(1, keepdims=True) if lib is np else blk.sum(1, keepdim=True)
        safe = lib.where(s > 0, s, lib.ones_like(s))
        out.append(blk / safe)
        sums.append(s)
    cat = np.concatenate if lib is np else torch.cat
    return cat(out, 1), cat(sums, 1)


def equal_layer_size(layer_offsets, n_voxels: int) -> int | None:
    """Voxels per layer when the layers of ``layer_offsets`` are equal and cover all ``n_voxels``
    (ds2, ds3, ds2-coarse: per-layer work becomes one call on the (N L, n) rows), else None.

    >>> equal_layer_size([0, 4, 8, 12], 12), equal_layer_size([0, 3, 7], 7)
    (4, None)
    """
    offs = [int(o) for o in layer_offsets]
    sizes = {b - a for a, b in zip(offs[:-1], offs[1:])}
    return sizes.pop() if len(sizes) == 1 and offs[0] == 0 and offs[-1] == n_voxels else None


def _renormalise_rows(f, E, lib):
    """Rows ``f`` (R, n) of non-negative fractions -> rows summing to ``E`` (R, 1); uniform where a row sums to 0."""
    s = f.sum(1, keepdims=True) if lib is np else f.sum(1, keepdim=True)
    f = lib.where(s > 0, f / lib.where(s > 0, s, lib.ones_like(s)), lib.ones_like(f) / f.shape[1])
    return f * E


def renormalise_layers(fractions, layer_energies, layer_offsets: np.ndarray):
    """Inverse of :func:`normalise_layers` with exact layer sums.

    Negative fractions are clipped to 0, each layer is divided by its sum (uniform if the
    layer sums to 0) and multiplied by ``E_i``, so every layer sums to ``E_i`` up to round-off.
    Layers of equal size (ds2, ds3, ds2-coarse) are one call on the (N L, n) rows (a reshape; each
    row on its own, so the per-layer loop's result bit for bit): at batch 1 the loop's ~6 tensor
    ops per layer cost ~0.3 ms of a ~6 ms ds2-coarse CaloFlow shower.
    """
    lib = _lib(fractions)
    f = lib.clip(fractions, 0, None) if lib is np else fractions.clamp_min(0)
    n = equal_layer_size(layer_offsets, f.shape[1])
    if n is not None:
        return _renormalise_rows(f.reshape(-1, n), layer_energies.reshape(-1, 1), lib).reshape(f.shape[0], -1)
    offs = [int(o) for o in layer_offsets]
    out = [_renormalise_rows(f[:, a:b], layer_energies[:, i:i + 1], lib)
           for i, (a, b) in enumerate(zip(offs[:-1], offs[1:]))]
    return np.concatenate(out, 1) if lib is np else torch.cat(out, 1)


_TYPES = {"Logit": Logit, "UnitSpaceEnergies": UnitSpaceEnergies, "Standardize": Standardize}


def from_dict(d: dict) -> Any:
    """Rebuild a transform saved with ``to_dict()``."""
    d = dict(d)
    t = d.pop("type", None)
    if t not in _TYPES:
        raise ValueError(f"unknown preprocessing transform type {t!r}")
    return _TYPES[t](**d)


def to_json(transforms: dict[str, Any]) -> str:
    """Serialise a name -> transform (or plain value) mapping to JSON text."""
    return json.dumps({k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in transforms.items()}, indent=1)


def from_json(text: str) -> dict[str, Any]:
    """Inverse of :func:`to_json`."""
    d = json.loads(text)
    return {k: (from_dict(v) if isinstance(v, dict) and v.get("type") in _TYPES else v) for k, v in d.items()}
