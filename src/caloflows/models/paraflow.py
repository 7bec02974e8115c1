"""ParaFlow: one conditional MAF over all crystals, conditioned on E_inc and detector parameters
(Erdmann, Kann, Mausolf, Wissmann, "ParaFlow: fast calorimeter simulations parameterized in
upstream material configurations", ``paraflow.txt`` sec. 3).

The flow learns ``p(I | E_inc, d, b)`` for the 8 x 16 crystal window (geometry ``paraflow-8x16``,
one layer of 128 voxels; any geometry with at least two voxels works):

* preprocessing (sec. 3): uniform noise U(0, 20 keV) on every crystal, division by E_inc,
  logit (``alpha``), then a per-crystal standardisation (see deviations);
* conditions (eq. 1): E_inc and every named detector parameter mapped to [-1, 1] over its
  training range logarithmically, ``c -> 2 log(c - c_min + 1) / log(c_max - c_min + 1) - 1``
  (:func:`caloflows.conditions.scale_condition`; E_inc in MeV, d in X0, b in cm).  The
  parameters go through the model's :class:`~caloflows.conditions.ConditionSpec` (built with
  ``scaling="log"``: :attr:`ParaFlow.condition_scaling`); the E_inc range is a preprocessing
  constant;
* the flow: a MAF of 10 MADE blocks (two hidden layers of 196, ReLU -- zuko's default MADE
  activation) with rational-quadratic splines of 10 bins (Durkan et al. 1906.04032), random
  feature permutations between blocks; ~8 M parameters on 128 crystals;
* training (sec. 3): Adam, LR 1e-3, batch 1000, cosine annealing with warm restarts (SGDR) whose
  restart LR is halved after a validation plateau of 10 epochs (schedule ``cosine_plateau``,
  :class:`caloflows.training.schedules.CosineRestartsOnPlateau`), early stopping after 15
  epochs without improvement.

Sampling: ``z ~ N(0, 1) -> y -> fraction = sigmoid-inverse of the logit -> E_inc * fraction``;
crystals below ``zero_below_kev`` (default: the 20 keV noise ceiling, i.e. what the
preprocessing turned empty crystals into) are set to 0; rows with non-finite values are drawn
again (``max_resample``), rows with ``E_dep / E_inc`` above ``max_ratio`` too if it is set.  The
teacher samples in float64 (sequential spline inverses), the student in float32 in one pass
per block.

Beyond the paper: a distilled IAF student (stage ``distill``, variant ``student``), trained by
probability density distillation as in CaloFlow II (arXiv:2110.11377, sec. 3) with
:class:`caloflows.flows.DistillationObjective`; with the teacher's MADE widths it starts from
the teacher's weights (the MADE of IAF block k then computes the teacher's spline parameters,
fed with latent-side coordinates).

Beyond the paper, optional (``--set condition_on_conversion=true``): the flow is also conditioned
on whether the primary photon converted to e+e- in the plate, the Geant4 truth flag that
``caloflows simulate --detector paraflow`` stores per shower (``converted``).  A photon converts
in the plate or it does not, so p(I | E_inc, d, b) is a two-component mixture whose weight
P(conv | E_inc, d) = 1 - exp(-mu(E_inc) d / X0) moves with d (mu -> 7/9 for a high-energy photon:
PDG, Passage of particles through matter, "Energy loss by photons"); the flow learns each
component, and the weight is fitted to the training photons by maximum likelihood
(:func:`fit_conversion_law`) and drawn per shower at sampling time.  ``log_prob`` is then the
mixture's density, summed over the flag.

Deviations from the paper, and why:

* Standardisation after the logit: zuko's splines act on [-bound, bound] and are the identity
  outside, so raw logits of empty crystals (about -15) would bypass them (as in CaloFlow here).
* The paper gives neither the cycle length nor the LR the cycles anneal to: the presets restart
  every ``cycle_epochs`` = 10 epochs and anneal to ``base_lr`` = 1e-5.  A plateau counts the
  epochs since the best validation loss or the last reduction (10 -> halve); the halved LR
  takes effect at the next restart.
* The paper applies no sampling cut; ``zero_below_kev`` (default 20 keV, the noise ceiling)
  removes the noise floor the flow learnt.  Set it to 0 to keep it.
* The E_inc scaling uses MeV (the unit of the shower files): eq. 1's "+1" offset is unit
  dependent and the paper does not state its unit.
* ``log_prob`` is the density of the preprocessed representation (noise at its mid-point), not
  of crystal energies in MeV (as for CaloFlow).

Example:
    >>> model = ParaFlow("paraflow-8x16", ParaFlowConfig.preset("quick", "paraflow-8x16"),
    ...                  ConditionSpec(("d", "b"), (0.5, 50.0), (1.5, 90.0), "log"))   # doctest: +SKIP
    >>> model.fit("pf.h5", "model")                                  # the MAF teacher   # doctest: +SKIP
    >>> model.fit("pf.h5", "model", stage="distill")                 # the IAF student   # doctest: +SKIP
    >>> cond = Conditions(np.full(5, 50e3), np.tile([1.0, 70.0], (5, 1)), ("d", "b"))  # doctest: +SKIP
    >>> model.sample(cond, seed=1).showers.shape                                       # doctest: +SKIP
    (5, 128)
"""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from .. import flows as F
from .. import preprocessing as P
from ..conditions import ConditionsWarning, eq1, scale_condition
from ..errors import ConditionsError, ModelDirError, UsageError
from ..geometry import Geometry
from ..io import CONVERTED, ShowerData, read_labels
from ..training.distributed import DistContext
from ..training.loop import ArraySource, TrainConfig
from .base import Generator, einc_summary, need, sample_with_rejection
from .settings import FlowSettings

__all__ = ["ParaFlow", "ParaFlowConfig", "einc_feature", "fit_conversion_law", "conversion_probability"]


@dataclass
class ParaFlowConfig(FlowSettings):
    """Hyper-parameters of ParaFlow (defaults: ``paraflow.txt`` sec. 3; shared ones in :class:`FlowSettings`)."""

    TITLE: ClassVar[str] = "ParaFlow"
    RANGES: ClassVar[dict] = {**FlowSettings.RANGES, "noise_kev": (0, None, False),
                              "zero_below_kev": (0, None, False)}

    transforms: int = 10
    hidden: list = field(default_factory=lambda: [196, 196])
    bins: int = 10
    random_permutations: bool = True  # sec. 3: "the variables are randomly permuted" between blocks
    noise_kev: float = 20.0
    zero_below_kev: float = 20.0
    max_ratio: float | None = None  # E_dep/E_inc bound for redraws; None: only non-finite rows
    #: beyond the paper: also condition the flow on the Geant4 truth flag "the primary converted in
    #: the plate" (the file's ``converted`` dataset) and draw it at sampling time from the
    #: conversion law fitted to the training photons (:func:`fit_conversion_law`)
    condition_on_conversion: bool = False
    #: the detector parameter that is the plate thickness in radiation lengths (for the law)
    conversion_thickness: str = "d"
    student_hidden: list = field(default_factory=lambda: [196, 196])
    distill_intermediate: bool = True
    student_from_teacher: bool = True
    flow_train: dict = field(default_factory=lambda: asdict(TrainConfig(
        epochs=500, batch_size=1000, base_lr=1e-5, max_lr=1e-3, schedule="cosine_plateau", cycle_epochs=10,
        val_fraction=1 / 7, patience=15, restart_factor=0.5, restart_patience=10)))
    student_train: dict = field(default_factory=lambda: asdict(TrainConfig(
        epochs=100, batch_size=1000, base_lr=1e-5, max_lr=1e-3, schedule="cosine_plateau", cycle_epochs=10,
        val_fraction=1 / 7, patience=15, restart_factor=0.5, restart_patience=10)))


def _full(g: Geometry) -> ParaFlowConfig:
    # paper sec. 3: 60 % training / 10 % validation of the simulated showers -> val_fraction 1/7
    return ParaFlowConfig()


def _quick(g: Geometry) -> ParaFlowConfig:
    # Sized for 2 CPU cores (minutes on a few thousand showers): 4 MADE blocks of 2 x 64, 8 bins,
    # batch 128 (a small file needs many steps: 1200 Geant4 showers at batch 256 gave only 4 steps
    # per epoch and an underfitted flow); the student has the teacher's widths (warm start), so a
    # few distillation epochs suffice.
    return ParaFlowConfig(
        transforms=4, hidden=[64, 64], bins=8, student_hidden=[64, 64],
        flow_train=asdict(TrainConfig(epochs=60, batch_size=128, base_lr=1e-5, max_lr=1e-3, schedule="cosine_plateau",
                                      cycle_epochs=10, val_fraction=0.15, patience=15, restart_factor=0.5,
                                      restart_patience=10)),
        student_train=asdict(TrainConfig(epochs=6, batch_size=128, base_lr=1e-5, max_lr=5e-4, schedule="cosine",
                                         cycle_epochs=6, val_fraction=0.15, patience=None)),
    )


ParaFlowConfig.PRESETS = {"quick": _quick, "full": _full}


#: unit (in MeV) in which eq. 1 maps E_inc: GeV, the paper's unit.  Eq. 1's offset "+1" is one
#: unit: in GeV, E_inc = 21 GeV maps to -0.68 over 20-100 GeV; in MeV it would map to +0.22, squeezing
#: everything above 21 GeV into [0.22, 1] and refusing any E_inc 1 MeV below the training minimum.
#: Models saved before this constant existed used MeV (``einc_unit_mev`` absent: 1.0).
EINC_UNIT_MEV = 1000.0


def einc_feature(einc: Any, low: float, high: float, unit_mev: float = EINC_UNIT_MEV) -> Any:
    """E_inc (MeV) -> the flow's E_inc condition: eq. 1 over the training range ``[low, high]`` (MeV),
    evaluated in units of ``unit_mev`` (default GeV, so that eq. 1's "+1" is 1 GeV as in the paper).
    A numpy input is checked (:func:`~caloflows.conditions.scale_condition`); a tensor is not.

    >>> [round(float(x), 3) for x in einc_feature([20e3, 21e3, 100e3], 20e3, 100e3)]
    [-1.0, -0.685, 1.0]
    """
    u = float(unit_mev)
    if isinstance(einc, Tensor):  # no checks: traced into the ONNX sampler (caloflows.export)
        return eq1(einc / u, low / u, high / u)
    return scale_condition(np.asarray(einc, dtype=np.float64) / u, low / u, high / u)


#: the E_inc (MeV) at which the conversion law's mu(E_inc) = mu0 + mu1 ln(E_inc / E_0) has mu = mu0
CONVERSION_E0_MEV = 50_000.0


def conversion_probability(law: dict, einc: Any, thickness_x0: Any) -> np.ndarray:
    """P(the photon converts in the plate | E_inc, t) = 1 - exp(-mu(E_inc) t), with
    ``mu(E) = mu0 + mu1 ln(E / e0_mev)`` (``law`` from :func:`fit_conversion_law`; ``t`` in X0).

    >>> law = {"mu0": 7 / 9, "mu1": 0.0, "e0_mev": 5e4}
    >>> [round(float(p), 4) for p in conversion_probability(law, [2e4, 1e5], [0.5, 1.5])]
    [0.3222, 0.6886]
    """
    e = np.asarray(einc, dtype=np.float64)
    mu = float(law["mu0"]) + float(law["mu1"]) * np.log(e / float(law["e0_mev"]))
    return -np.expm1(-np.clip(mu, 0.0, None) * np.asarray(thickness_x0, dtype=np.float64))


def fit_conversion_law(einc: Any, thickness_x0: Any, converted: Any, e0_mev: float = CONVERSION_E0_MEV) -> dict:
    """Maximum-likelihood fit of :func:`conversion_probability` to photons with known outcome.

    The Bernoulli likelihood of the flags ``converted`` (0/1) at plate thicknesses ``t`` (X0) and
    incident energies ``einc`` (MeV), over ``mu0 > 0`` and ``mu1`` (the slow rise of the pair
    cross-section with energy).  Returns ``{"mu0", "mu1", "e0_mev", "n", "converted_fraction",
    "mu0_error", "mu1_error"}`` (errors from the Fisher information at the optimum).  For a high-energy photon mu0 -> 7/9
    (PDG, Passage of particles through matter).

    >>> rng = np.random.default_rng(1)
    >>> t = rng.uniform(0.5, 1.5, 20000); e = rng.uniform(2e4, 1e5, 20000)
    >>> c = rng.random(20000) < 1 - np.exp(-7 / 9 * t)
    >>> abs(fit_conversion_law(e, t, c)["mu0"] - 7 / 9) < 0.03
    True
    """
    from scipy.optimize import minimize

    e = np.asarray(einc, dtype=np.float64).reshape(-1)
    t = np.asarray(thickness_x0, dtype=np.float64).reshape(-1)
    c = np.asarray(converted).reshape(-1).astype(bool)
    if not (len(e) == len(t) == len(c)) or len(c) == 0:
        raise ValueError(f"conversion law: need equal, non-zero numbers of energies, thicknesses and flags, "
                         f"got {len(e)}, {len(t)}, {len(c)}")
    if not (np.all(t > 0) and np.all(e > 0)):
        raise ValueError("conversion law: thicknesses and energies must be positive")
    if c.all() or not c.any():
        raise ValueError(f"conversion law: all {len(c)} photons {'converted' if c.all() else 'passed'}; "
                         "the fit needs both outcomes")
    le = np.log(e / e0_mev)

    def nll(p: np.ndarray) -> float:
        mu = np.clip(p[0] + p[1] * le, 1e-9, None) * t
        return float(-(np.log(-np.expm1(-mu[c])).sum() - mu[~c].sum()))

    res = minimize(nll, np.array([7 / 9, 0.0]), method="BFGS")
    mu0, mu1 = (float(x) for x in res.x)
    # errors from the Fisher information of the Bernoulli likelihood at the optimum:
    # I = sum (dp/dtheta)(dp/dtheta)^T / (p (1 - p)), dp/dmu = t exp(-mu t), dmu/dtheta = (1, ln E/E0)
    mu = np.clip(mu0 + mu1 * le, 1e-9, None)
    p = -np.expm1(-mu * t)
    w = (t * np.exp(-mu * t)) ** 2 / np.clip(p * (1 - p), 1e-300, None)
    g = np.stack([np.ones_like(le), le])
    try:
        err = np.sqrt(np.diag(np.linalg.inv((g * w) @ g.T)))
    except np.linalg.LinAlgError:  # all photons at one energy: mu1 is not determined
        err = np.full(2, np.nan)
    return {"mu0": mu0, "mu1": mu1, "e0_mev": float(e0_mev), "n": int(len(c)),
            "converted_fraction": float(c.mean()), "mu0_error": float(err[0]), "mu1_error": float(err[1])}


# ---------------------------------------------------------------------------- the model
class ParaFlow(Generator):
    """ParaFlow generator (one MAF teacher over all voxels, optional IAF student)."""

    kind = "paraflow"
    Config = ParaFlowConfig
    stages = {"train": "the MAF over all crystals (paper sec. 3)",
              "distill": "the IAF student (probability density distillation)"}
    variants = ("teacher", "student")
    weight_files = {"teacher": ("teacher.safetensors", "train"), "student": ("student.safetensors", "distill")}
    condition_scaling = "log"
    cfg: ParaFlowConfig

    def build(self) -> None:
        g, c = self.geometry, self.cfg
        if g.n_voxels < 2:
            raise UsageError(f"ParaFlow needs a geometry with at least 2 voxels ({g.name} has {g.n_voxels})")
        perm = int(c.seed) + 1 if c.random_permutations else None
        if c.condition_on_conversion and c.conversion_thickness not in self.condition_spec.names:
            raise ConditionsError(f"condition_on_conversion needs the plate thickness {c.conversion_thickness!r} (in X0) "
                                  f"among the detector parameters; the model has {list(self.condition_spec.names) or 'none'} "
                                  "(set conversion_thickness=NAME)")
        ctx = 1 + self.n_params + int(c.condition_on_conversion)
        self.teacher = F.build_maf(g.n_voxels, ctx, c.transforms, tuple(c.hidden), c.bins, c.bound, randperm_seed=perm,
                                   degrees=c.made_degrees)
        self.student = F.build_iaf(g.n_voxels, ctx, c.transforms, tuple(c.student_hidden), c.bins, c.bound,
                                   randperm_seed=perm, degrees=c.made_degrees)
        self.logit = P.Logit(c.alpha)
        self._std: P.Standardize | None = None
        self._einc_range: tuple[float, float] | None = None
        self.einc_unit_mev = EINC_UNIT_MEV
        self.einc_dist: dict | None = None
        self.conversion_law: dict | None = None

    def networks(self) -> dict[str, nn.Module]:
        return {"teacher": self.teacher, "student": self.student}

    def variant_ready(self, variant: str | None) -> bool:
        return self.trained["student" if variant == "student" else "teacher"]

    # ------------------------------------------------------------------ constants
    @property
    def std(self) -> P.Standardize:
        """Per-crystal standardisation of the logits (fitted on the training data)."""
        return need(self._std, "ParaFlow standardisation")

    @property
    def einc_range(self) -> tuple[float, float]:
        """Training range of E_inc (MeV) for eq. 1."""
        return need(self._einc_range, "ParaFlow E_inc range")

    def constants(self) -> dict | None:
        if self._std is None:
            return None
        return {"logit": self.logit.to_dict(), "standardize": self.std.to_dict(),
                "einc_range": list(self.einc_range), "einc_unit_mev": self.einc_unit_mev,
                "incident_energies": self.einc_dist,
                **({"conversion_law": self.conversion_law} if self.conversion_law is not None else {})}

    def set_constants(self, c: dict) -> None:
        self.logit = P.from_dict(c["logit"])
        self._std = P.from_dict(c["standardize"])
        lo, hi = (float(x) for x in c["einc_range"])
        if not hi > lo:
            raise ValueError(f"einc_range {c['einc_range']} is not increasing")
        self._einc_range = (lo, hi)
        self.einc_unit_mev = float(c.get("einc_unit_mev", 1.0))  # absent: a model saved when eq. 1 used MeV
        self.einc_dist = c["incident_energies"]
        self.conversion_law = c.get("conversion_law")
        if self.cfg.condition_on_conversion and self.conversion_law is None:
            raise KeyError("conversion_law (the model is conditioned on the conversion flag)")

    # ------------------------------------------------------------------ preprocessing
    def _noise(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        return x + self.cfg.noise_kev * P.KEV * torch.rand(x.shape, dtype=x.dtype, device=x.device,
                                                           generator=generator)

    def encode(self, showers: Tensor, einc: Tensor, noise: bool = True,
               generator: torch.Generator | None = None) -> Tensor:
        """Crystals (MeV) -> flow space: (+ U(0, noise)) / E_inc, logit, standardise (sec. 3)."""
        x = self._noise(showers, generator) if noise else showers
        frac = (x / einc[:, None]).clamp(0.0, 1.0)
        return self.std.forward(self.logit.forward(frac))

    def decode(self, y: Tensor, einc: Tensor) -> Tensor:
        """Flow space -> crystals (MeV), the inverse of :meth:`encode` without the noise."""
        frac = self.logit.inverse(self.std.inverse(y))
        return frac * einc[:, None]

    def context(self, einc: Tensor, params: Tensor) -> Tensor:
        """Eq. 1 of E_inc, then the parameter features (already mapped by the ConditionSpec)."""
        lo, hi = self.einc_range
        e = einc.detach().cpu().numpy()
        out = (e < lo * (1 - 1e-9)) | (e > hi * (1 + 1e-9))
        if np.any(out):
            warnings.warn(f"{int(out.sum())} incident energies outside the training range [{lo:g}, {hi:g}] MeV; "
                          "the model extrapolates", ConditionsWarning, stacklevel=4)
        u = self.einc_unit_mev
        if np.any(e <= lo - u):
            raise ConditionsError(f"incident energies down to {e.min():g} MeV: eq. 1 needs E_inc > {lo - u:g} MeV "
                                  f"(training range [{lo:g}, {hi:g}] MeV minus its offset of {u:g} MeV)")
        f = torch.as_tensor(einc_feature(e, lo, hi, u), dtype=params.dtype, device=params.device)
        return torch.cat([f[:, None], params], 1)

    # ------------------------------------------------------------------ the conversion flag
    def _thickness_values(self, data: ShowerData) -> np.ndarray:
        """The plate thickness (X0) of every shower of ``data``."""
        return np.asarray(data.conditions, dtype=np.float64)[:, data.condition_names.index(self.cfg.conversion_thickness)]

    def _conversion_flags(self, data: ShowerData) -> np.ndarray:
        """The Geant4 flags ``converted`` (0/1) of ``data`` (checked by :meth:`training_conditions`)."""
        return np.asarray(data.labels[CONVERTED]).reshape(-1).astype(np.float64)

    def training_conditions(self, data: "ShowerData | str | os.PathLike[str]", where: str | None = None) -> None:
        """The base check of the detector parameters, plus (``condition_on_conversion``) that
        ``data`` has the per-shower ``converted`` flags of the ParaFlow simulation, with values 0 or 1."""
        super().training_conditions(data, where)
        if not self.cfg.condition_on_conversion:
            return
        where = where or (str(data) if not isinstance(data, ShowerData) else "training showers")
        flags = read_labels(data).get(CONVERTED)
        if flags is None:
            raise ConditionsError(f"{where}: has no {CONVERTED!r} dataset (the per-shower conversion flag that "
                                  "'caloflows simulate --detector paraflow' stores); a ParaFlow model with "
                                  "condition_on_conversion needs it")
        if not np.isin(flags, (0, 1)).all():
            raise ConditionsError(f"{where}: {CONVERTED!r} holds values other than 0 and 1")
        if np.all(flags == flags.flat[0]):
            raise ConditionsError(f"{where}: every photon has {CONVERTED}={int(flags.flat[0])}; fitting the "
                                  "conversion law needs photons that converted and photons that did not")

    def _p_convert(self, einc: Tensor, params: Tensor) -> Tensor:
        """P(conversion in the plate) per shower from the fitted law; ``params`` are the features."""
        k = self.condition_spec.names.index(self.cfg.conversion_thickness)
        t = self.condition_spec.values(params[:, :len(self.condition_spec)].detach().cpu().numpy())[:, k]
        p = conversion_probability(need(self.conversion_law, "ParaFlow conversion law"), einc.detach().cpu().numpy(), t)
        return torch.as_tensor(p, dtype=params.dtype, device=params.device)

    def _flag_feature(self, einc: Tensor, params: Tensor, generator: torch.Generator) -> Tensor:
        """The conversion flag drawn per shower from the fitted law (as the network sees it: -1 / +1)."""
        p = self._p_convert(einc, params)
        u = torch.rand(len(p), dtype=params.dtype, device=params.device, generator=generator)
        return 2.0 * (u < p).to(params.dtype) - 1.0

    def fit_constants(self, data: ShowerData, seed: int = 0, max_rows: int = 50_000) -> None:
        """Standardisation (on noisy logits of up to ``max_rows`` showers), E_inc range and law."""
        einc = np.asarray(data.incident_energies, dtype=np.float64)
        lo, hi = float(einc.min()), float(einc.max())
        self._einc_range = (lo, hi if hi > lo else lo + 1.0)
        self.einc_dist = einc_summary(einc)
        self._std = P.Standardize(mean=[0.0] * self.geometry.n_voxels, std=[1.0] * self.geometry.n_voxels)
        sel = np.sort(np.random.default_rng(seed).permutation(len(einc))[:max_rows])
        sh = torch.as_tensor(np.asarray(data.showers[sel], dtype=np.float64))
        y = self.encode(sh, torch.as_tensor(einc[sel]), generator=torch.Generator().manual_seed(seed))
        self._std = P.Standardize.fit(y.numpy())
        if self.cfg.condition_on_conversion:
            self.conversion_law = fit_conversion_law(einc, self._thickness_values(data), self._conversion_flags(data))

    # ------------------------------------------------------------------ training
    def _inputs(self, data: ShowerData, params: np.ndarray, with_z: bool = False):
        einc64 = np.asarray(data.incident_energies, dtype=np.float64)
        einc = torch.as_tensor(einc64, dtype=torch.float32)
        cols = [einc_feature(einc64, *self.einc_range, self.einc_unit_mev), params]
        if self.cfg.condition_on_conversion:
            cols.append(2.0 * self._conversion_flags(data) - 1.0)
        ctx = torch.as_tensor(np.column_stack(cols), dtype=torch.float32)

        def inputs(ii: np.ndarray, raw: np.ndarray, gen: torch.Generator) -> tuple[Tensor, ...]:
            k = torch.as_tensor(np.asarray(ii))
            y = self.encode(torch.as_tensor(raw), einc[k], generator=gen)
            return (y, ctx[k], torch.randn(y.shape, generator=gen)) if with_z else (y, ctx[k])

        return inputs

    def _fit_train(self, data: "ShowerData | str | Path", out_dir: Path, *, resume: bool, device: str,
                   progress: bool, ctx: DistContext) -> dict:
        """Train the MAF teacher (paper sec. 3), saving the model directory to ``out_dir``."""
        data, params = self.training_arrays(data)
        self.to(ctx.device(device))
        if self._std is None or not resume:
            self.fit_constants(data, seed=int(self.cfg.flow_train.get("seed", 0)))
        if ctx.is_main:
            self.save(out_dir)
        src = ArraySource(np.asarray(data.showers, dtype=np.float32))
        return {"teacher": self.train_network("teacher", F.LogProb(self.teacher), src, self._inputs(data, params),
                                              out_dir, self.cfg.flow_train, ctx, norm=self.geometry.n_voxels,
                                              progress=progress, resume=resume)}

    def warm_start_student(self) -> bool:
        """Copy the teacher's MADE weights into the student (same widths), or the one-hidden-layer
        warm start of :func:`caloflows.flows.init_student_from_teacher`; False if neither fits."""
        if list(self.cfg.student_hidden) == list(self.cfg.hidden):
            self.student.load_state_dict(self.teacher.state_dict())
            return True
        return F.init_student_from_teacher(self.student, self.teacher)

    def _fit_distill(self, data: "ShowerData | str | Path", out_dir: Path, *, resume: bool, device: str,
                     progress: bool, ctx: DistContext, epochs: int | None = None) -> dict:
        """Train the IAF student from the trained teacher (CaloFlow II, arXiv:2110.11377, sec. 3)."""
        if not self.trained["teacher"]:
            raise ModelDirError(f"{out_dir}: the ParaFlow teacher is not trained yet; run 'caloflows train paraflow' first")
        data, params = self.training_arrays(data)
        self.to(ctx.device(device))
        self.with_student_epochs(epochs)
        return {"student": self.train_student(
            "student", self.teacher, self.student, ArraySource(np.asarray(data.showers, dtype=np.float32)),
            self._inputs(data, params, with_z=True), out_dir, self.cfg.student_train, ctx,
            intermediate=self.cfg.distill_intermediate,
            warm_start=self.warm_start_student if self.cfg.student_from_teacher else None,
            progress=progress, resume=resume)}

    # ------------------------------------------------------------------ sampling
    def _flow(self, variant: str | None) -> nn.Module:
        return self.student if variant == "student" else self.teacher

    @torch.no_grad()
    def sample_latent(self, z: Tensor, einc: Tensor, params: Tensor, variant: str | None = None) -> Tensor:
        """Crystals (MeV, float64, no cut) for given latent vectors ``z`` (the flow's inverse).
        ``params``: the parameter features, and with ``condition_on_conversion`` the flag (-1 / +1) last."""
        flow = self._flow(variant)
        c = self.context(einc.to(torch.float64), params.to(torch.float64))
        y = F.flow_decode(flow, z.float() if variant == "student" else z.double(), c)
        return self.decode(y.double(), einc.to(torch.float64))

    def _sample_batch(self, einc: Tensor, params: Tensor, generator: torch.Generator, variant: str | None) -> Tensor:
        dtype = torch.float32 if variant == "student" else torch.float64
        D = self.geometry.n_voxels

        def draw(e: Tensor, p: Tensor) -> Tensor:
            z = torch.randn(len(e), D, dtype=dtype, device=self.device, generator=generator)
            return self.sample_latent(z, e, p, variant)

        params = params.to(torch.float64)
        if self.cfg.condition_on_conversion:  # the flag stays with its shower through the redraws
            params = torch.cat([params, self._flag_feature(einc, params, generator)[:, None]], 1)
        x = sample_with_rejection(draw, einc.to(torch.float64), params, self.cfg.max_ratio, self.cfg.max_resample)
        x = x.clamp_min(0.0)
        return torch.where(x < self.cfg.zero_below_kev * P.KEV, torch.zeros_like(x), x)

    # ------------------------------------------------------------------ density
    def _log_prob_batch(self, showers: Tensor, einc: Tensor, params: Tensor, variant: str | None) -> Tensor:
        """log p of the preprocessed shower (noise at its mid-point; teacher unless asked); with
        ``condition_on_conversion`` the mixture over the flag, weighted by the fitted law."""
        flow = self._flow(variant)
        s = showers + 0.5 * self.cfg.noise_kev * P.KEV
        with F.double_precision(flow):
            y = self.encode(s, einc, noise=False)
            if not self.cfg.condition_on_conversion:
                return flow(self.context(einc, params)).log_prob(y)
            p = self._p_convert(einc, params).to(y.dtype)
            terms = [torch.log(w) + flow(self.context(einc, torch.cat([params, torch.full_like(p, flag)[:, None]], 1))).log_prob(y)
                     for w, flag in ((p, 1.0), (1.0 - p, -1.0))]
            return torch.logsumexp(torch.stack(terms), 0)
