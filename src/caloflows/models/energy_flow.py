"""The energy distribution flow ``p(E_0, ..., E_{L-1} | E_inc)`` and the shared conditions.

L2LFlows (``l2lflows.txt`` sec. 3.1, appendix B.1; review sec. 4.1) and iCaloFlow flow-1
(review sec. 4.2):

* layer energies after the threshold cut are smeared with Gaussian noise (mean 1 keV,
  sigma 0.2 keV), negative values clipped to 0;
* modified logit ``l_alpha(E_i / E_max,i)`` (eq. B.2, alpha = 1e-6).  The paper divides by
  1 GeV (ILD layer energies stay below it); for CaloChallenge energies we divide by the
  training maximum of each layer (times ``margin``);
* per-feature standardisation (zuko's splines act on [-bound, bound]; not in the paper), or the
  logits as they are inside a spline domain of 14 (:data:`PAPER_ENERGY_INPUTS`, every preset);
* condition ``2 (log10 E_inc - lo) / (hi - lo) - 1 in [-1, 1]`` -- eq. B.3 with the training
  range ``[lo, hi]`` of ``log10 E_inc`` instead of the fixed ILD range 10-100 GeV;
* MAF with RQS, random fixed permutations (table 4: 4 MADE blocks, one hidden layer of 64);
* samples with ``E_dep / E_inc`` above ``max_ratio`` (2.6 in the review) are drawn again.

:func:`layer_energy_condition` is eq. B.7, ``log10(E_i / GeV + 1e-6) + 1``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from .. import flows as F
from .. import preprocessing as P
from ..geometry import Geometry
from ..training.loop import TrainConfig
from .base import einc_draw, einc_summary, need, sample_with_rejection  # noqa: F401  (re-exported)
from .settings import LayerwiseSettings

__all__ = ["EnergyConstants", "EnergyFlow", "EnergyFlowModel", "effective_cut", "einc_condition", "layer_energy_condition", "einc_summary",
           "einc_draw", "quick_energy_train", "QUICK_ENERGY_EPOCHS", "PAPER_ENERGY_INPUTS"]

GEV = 1000.0

#: epochs of the energy flow in the ``quick`` presets (L2LFlows, iCaloFlow flow-1, SuperCalo FLOW-1).
#: Measured on 3000 Geant4 ds2 showers (``benchmarks/bench_flow1.py --family energy``): with 20
#: epochs the separation power of E_dep/E_inc is 0.15 (Geant4 halves 0.012); with 100 it is 0.010,
#: for about 40 more CPU-seconds.
QUICK_ENERGY_EPOCHS = 100

#: the energy flow's inputs in every preset of L2LFlows, iCaloFlow and SuperCalo (issue 15): the
#: logits ``l_alpha(E_i / E_max,i)`` as they are (eq. B.2), inside a spline domain of 14 >= ln(1 / alpha).
#: Standardised per layer, the non-empty values of a layer that Geant4 fills in 3 % of the ds2 showers
#: lie 5-10 standard deviations out, beyond the spline domain, and the flow never generates them
#: (layers 39-44; README "iCaloFlow on 10000 showers").  With these inputs on 10000 Geant4 ds2
#: showers the E_layer separation power of layer 39 goes from 0.66 to 0.14 (Geant4 halves 0.10).
#: The dataclass defaults keep the standardised inputs, so older models load as they were trained.
PAPER_ENERGY_INPUTS: dict = {"energy_standardise": False, "energy_bound": 14.0}


def quick_energy_train(**extra) -> dict:
    """Training settings of the energy flow in the ``quick`` presets (a ``TrainConfig`` dict):
    :data:`QUICK_ENERGY_EPOCHS` epochs, batches of 256, OneCycle 1e-4 -> 2e-3; ``extra`` overrides."""
    return asdict(TrainConfig(**{"epochs": QUICK_ENERGY_EPOCHS, "batch_size": 256, "base_lr": 1e-4, "max_lr": 2e-3,
                                 **extra}))


def einc_condition(einc, lo: float, hi: float):
    """Eq. B.3 generalised: ``log10 E_inc`` mapped linearly from ``[lo, hi]`` to ``[-1, 1]``."""
    lib = torch if isinstance(einc, Tensor) else np
    if hi - lo < 1e-12:
        return lib.log10(einc) * 0.0
    return 2.0 * (lib.log10(einc) - lo) / (hi - lo) - 1.0


def layer_energy_condition(E_mev):
    """Eq. B.7: ``log10(E_i [GeV] + 1e-6) + 1``."""
    lib = torch if isinstance(E_mev, Tensor) else np
    return lib.log10(E_mev / GEV + 1e-6) + 1.0


@dataclass
class EnergyConstants:
    """Preprocessing constants of the energy distribution flow (JSON via :meth:`to_dict`)."""

    log_einc_lo: float
    log_einc_hi: float
    emax: list
    standardize: P.Standardize
    alpha: float = 1e-6
    noise_mean_kev: float = 1.0
    noise_std_kev: float = 0.2

    def to_dict(self) -> dict:
        return {"log_einc_lo": self.log_einc_lo, "log_einc_hi": self.log_einc_hi, "emax": list(self.emax),
                "standardize": self.standardize.to_dict(), "alpha": self.alpha,
                "noise_mean_kev": self.noise_mean_kev, "noise_std_kev": self.noise_std_kev}

    @classmethod
    def from_dict(cls, d: dict) -> "EnergyConstants":
        d = dict(d)
        d["standardize"] = P.from_dict(d["standardize"])
        return cls(**d)

    # ---------------------------------------------------------------- transforms
    def noisy(self, E: Tensor, generator: torch.Generator | None) -> Tensor:
        """B.1: ``E + N(1 keV, 0.2 keV)``, clipped at 0."""
        z = torch.randn(E.shape, dtype=E.dtype, device=E.device, generator=generator)
        return (E + (self.noise_mean_kev + self.noise_std_kev * z) * P.KEV).clamp_min(0.0)

    def forward(self, E: Tensor) -> Tensor:
        x = (E / torch.as_tensor(self.emax, dtype=E.dtype, device=E.device)).clamp(0.0, 1.0)
        return self.standardize.forward(P.Logit(self.alpha).forward(x))

    def inverse(self, y: Tensor) -> Tensor:
        x = P.Logit(self.alpha).inverse(self.standardize.inverse(y)).clamp(0.0, 1.0)
        return x * torch.as_tensor(self.emax, dtype=y.dtype, device=y.device)

    def condition(self, einc: Tensor) -> Tensor:
        return einc_condition(einc, self.log_einc_lo, self.log_einc_hi).reshape(-1, 1)

    @classmethod
    def fit(cls, layer_energies: np.ndarray, einc: np.ndarray, seed: int = 0, alpha: float = 1e-6,
            margin: float = 1.05, max_rows: int = 100_000, standardise: bool = True) -> "EnergyConstants":
        """Constants from the training layer energies (deterministic given ``seed``).  With
        ``standardise=False`` the standardisation is the identity (the logits as in eq. B.2;
        :class:`~caloflows.models.settings.EnergyFlowSettings`)."""
        E = np.asarray(layer_energies, dtype=np.float64)
        le = np.log10(np.asarray(einc, dtype=np.float64))
        emax = np.maximum(E.max(0) + 2 * P.KEV, 10 * P.KEV) * margin
        c = cls(float(le.min()), float(le.max()), emax.tolist(), P.Standardize(), alpha)
        if not standardise:
            c.standardize = P.Standardize([0.0] * E.shape[1], [1.0] * E.shape[1])
            return c
        sel = np.random.default_rng([seed, 11]).permutation(len(E))[:max_rows]
        g = torch.Generator().manual_seed(seed)
        y = P.Logit(alpha).forward((c.noisy(torch.as_tensor(E[sel]), g) / torch.as_tensor(emax)).clamp(0, 1))
        c.standardize = P.Standardize.fit(y.numpy())
        return c


class EnergyFlow(nn.Module):
    """The MAF of ``p(E_0..E_{L-1} | E_inc, theta)``: ``forward(y, c)`` is log p per row.

    The context is the E_inc condition (eq. B.3) followed by ``n_params`` detector-parameter
    features (:mod:`caloflows.conditions`)."""

    def __init__(self, n_layers: int, transforms: int = 4, hidden: tuple = (64,), bins: int = 8,
                 bound: float = 5.0, seed: int = 0, n_params: int = 0, degrees: str = "cyclic") -> None:
        super().__init__()
        self.flow = F.build_maf(n_layers, 1 + n_params, transforms, tuple(hidden), bins, bound, randperm_seed=seed,
                                degrees=degrees)

    def forward(self, y: Tensor, c: Tensor) -> Tensor:
        return F.flow_log_prob(self.flow, y, c)

    @staticmethod
    def context(consts: EnergyConstants, einc: Tensor, params: Tensor | None = None) -> Tensor:
        c = consts.condition(einc)
        return c if params is None or params.shape[1] == 0 else torch.cat([c, params.to(c.dtype)], 1)

    @torch.no_grad()
    def sample_energies(self, einc: Tensor, consts: EnergyConstants, max_ratio: float | None = 2.6,
                        max_resample: int = 20, generator: torch.Generator | None = None,
                        params: Tensor | None = None) -> Tensor:
        """Layer energies (MeV, float64) for ``einc`` (MeV); sampled in float64, with the outlier
        rejection of appendix B.1 (:func:`~caloflows.models.base.sample_with_rejection`)."""
        einc = einc.to(torch.float64)
        params = torch.zeros(len(einc), 0, dtype=torch.float64, device=einc.device) if params is None else params

        def draw(e: Tensor, p: Tensor) -> Tensor:
            return consts.inverse(F.flow_sample(self.flow, self.context(consts, e, p), generator=generator))

        with F.double_precision(self):
            return sample_with_rejection(draw, einc, params.to(torch.float64), max_ratio, max_resample)


def effective_cut(geometry: Geometry, voxel_cut_mev: float | None) -> float:
    """The generation cut (MeV) of a ``voxel_cut_mev`` setting: the setting where it is set, never
    below the geometry's readout threshold; else that threshold (the papers' post-processing).

    >>> from caloflows.geometry import load_geometry
    >>> g = load_geometry("ds2")
    >>> round(effective_cut(g, None), 5), effective_cut(g, 2.0), round(effective_cut(g, 0.001), 5)
    (0.01515, 2.0, 0.01515)
    """
    thr = float(geometry.threshold_mev)
    return thr if voxel_cut_mev is None else max(float(voxel_cut_mev), thr)


class EnergyFlowModel:
    """Mixin of the families that sample layer energies with the energy distribution flow
    (L2LFlows, iCaloFlow): their preprocessing constants, with the energy flow's among them,
    and the cut of their per-layer post-processing (appendix B.3)."""

    kind: ClassVar[str]
    #: settings that act only at generation time (``caloflows generate --set KEY=VALUE``)
    generation_settings: ClassVar[tuple[str, ...]] = ("voxel_cut_mev", "max_ratio")
    cfg: LayerwiseSettings
    geometry: Geometry
    _consts: dict | None = None
    _energy_consts: EnergyConstants | None = None

    def constants(self) -> dict | None:
        return self._consts

    @property
    def consts(self) -> dict:
        """The preprocessing constants (``constants.json``)."""
        return need(self._consts, f"{self.kind} preprocessing constants")

    @property
    def voxel_cut(self) -> float:
        """The threshold ``t`` of the layer post-processing (MeV, eqs. B.8-B.9): the setting
        ``voxel_cut_mev`` where it is set (never below the readout threshold), else the
        geometry's readout threshold, as in the paper.

        >>> from caloflows.models.l2lflows import L2LFlows, L2LFlowsConfig
        >>> L2LFlows("ds2", L2LFlowsConfig(voxel_cut_mev=0.5)).voxel_cut
        0.5
        """
        return effective_cut(self.geometry, self.cfg.voxel_cut_mev)

    @property
    def energy_consts(self) -> EnergyConstants:
        """Constants of the energy distribution flow (appendix B.1)."""
        return need(self._energy_consts, f"{self.kind} energy-flow constants")
