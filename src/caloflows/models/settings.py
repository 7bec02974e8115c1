"""Model settings: one typed, validated config base shared by every generator family.

A family's settings are a dataclass deriving from :class:`ModelConfig`.  The base gives it
JSON serialisation (:meth:`~ModelConfig.to_dict` / :meth:`~ModelConfig.from_dict`), named
presets (``quick``, ``full``, ...: :attr:`~ModelConfig.PRESETS`), ``--set KEY=VALUE``
overrides (:meth:`~ModelConfig.override`) and a check of every value's type and range
(:meth:`~ModelConfig.validate`) that runs before any work, so ``--set bins=0`` fails at once
with one line naming the key, the value and what is allowed.

Rules (override per family with :attr:`~ModelConfig.RANGES` and :attr:`~ModelConfig.CHOICES`):
integers are at least 1, floats are positive, noise levels (``*_kev``) may be 0, lists hold
positive integers, and every ``*_train`` dict is a :class:`~caloflows.training.loop.TrainConfig`.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Toy(ModelConfig):
    ...     bins: int = 8
    >>> Toy().override(["bins=12"]).bins
    12
"""

from __future__ import annotations

import json
import math
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, TypeVar

from ..errors import ConfigError
from ..flows import MADE_DEGREES
from ..geometry import PAR04_THRESHOLD_MEV, Geometry
from ..lean import SAMPLING_WEIGHTS
from ..training.loop import TrainConfig

__all__ = ["ModelConfig", "FlowSettings", "VoxelInputSettings", "EnergyFlowSettings", "LayerwiseSettings", "logit_reach", "override_settings", "check_train_config",
           "MEDIUM_VOXEL_CUT_MEV", "medium_voxel_cut",
           "UNSTANDARDISED_VOXEL_INPUTS"]

C = TypeVar("C", bound="ModelConfig")

#: allowed values of the TrainConfig entries (inclusive bounds; None = unbounded)
_TRAIN_RULES: dict[str, tuple[type | tuple[type, ...], float | None, float | None, bool]] = {
    # name: (types, low, high, None allowed)
    "epochs": (int, 1, None, False),
    "batch_size": (int, 1, None, False),
    "base_lr": (float, 0, None, False),
    "max_lr": (float, 0, None, False),
    "schedule": (str, None, None, False),
    "annihilation": (float, 0, 0.999999, False),
    "cycle_epochs": (int, 1, None, False),
    "val_fraction": (float, 1e-9, 0.999999, False),
    "patience": (int, 1, None, True),
    "seed": (int, 0, None, False),
    "grad_clip": (float, 1e-12, None, True),
    "weight_decay": (float, 0, None, False),
    "restart_factor": (float, 1e-12, 1.0, False),
    "restart_patience": (int, 1, None, False),
    "compile": (bool, None, None, False),
}
SCHEDULES = ("onecycle", "cyclic", "cosine", "cosine_plateau", "constant")


def _bad(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"setting {key}={json.dumps(value)}: {allowed}")


def _check_number(key: str, v: Any, kind: type, lo: float | None, hi: float | None, none_ok: bool,
                  lo_open: bool = False) -> None:
    if v is None:
        if none_ok:
            return
        raise _bad(key, v, f"must be {'an integer' if kind is int else 'a number'}, not null")
    is_int = isinstance(v, int) and not isinstance(v, bool)
    ok_type = is_int if kind is int else (is_int or isinstance(v, float))
    if not ok_type:
        raise _bad(key, v, f"must be {'an integer' if kind is int else 'a number'}" + (" or null" if none_ok else ""))
    if isinstance(v, float) and not math.isfinite(v):
        raise _bad(key, v, "must be finite")
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise _bad(key, v, f"must be {'>' if lo_open else '>='} {lo}" + (f" and <= {hi}" if hi is not None else ""))
    if hi is not None and v > hi:
        raise _bad(key, v, f"must be <= {hi}" + (f" and {'>' if lo_open else '>='} {lo}" if lo is not None else ""))


def check_train_config(d: Any, key: str) -> None:
    """Validate a ``*_train`` dict (the fields of :class:`~caloflows.training.loop.TrainConfig`)."""
    if not isinstance(d, dict):
        raise _bad(key, d, "must be a dict of training settings, e.g. {\"epochs\": 10}; set its entries with "
                           f"{key}.epochs=...")
    unknown = set(d) - set(_TRAIN_RULES)
    if unknown:
        raise ConfigError(f"unknown setting {key}.{sorted(unknown)[0]}; known: {', '.join(sorted(_TRAIN_RULES))}")
    for name, v in d.items():
        kind, lo, hi, none_ok = _TRAIN_RULES[name]
        if name == "schedule":
            if v not in SCHEDULES:
                raise _bad(f"{key}.{name}", v, f"must be one of {', '.join(SCHEDULES)}")
            continue
        if kind is bool:
            if not isinstance(v, bool):
                raise _bad(f"{key}.{name}", v, "must be true or false")
            continue
        open_lo = name in ("base_lr", "max_lr")
        _check_number(f"{key}.{name}", v, kind if isinstance(kind, type) else int, lo, hi, none_ok, open_lo)


class ModelConfig:
    """Base of every family's settings dataclass (see the module docstring)."""

    #: preset name -> function(geometry) returning the family's config
    PRESETS: ClassVar[dict[str, Callable[[Any], Any]]] = {}
    #: field -> (low, high, low_is_open); defaults: ints >= 1, floats > 0
    RANGES: ClassVar[dict[str, tuple[float | None, float | None, bool]]] = {}
    #: field -> allowed string values
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {}
    #: a name for messages (default: the class name without ``Config``: ``CaloFlow``)
    TITLE: ClassVar[str] = ""

    @classmethod
    def title(cls) -> str:
        return cls.TITLE or cls.__name__.removesuffix("Config")

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        """JSON-ready settings (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[C], d: Mapping[str, Any]) -> C:
        """Settings from a dict; unknown keys, wrong types and out-of-range values raise ConfigError.

        Keys missing from ``d`` take their defaults (model directories of older versions load); a
        ``*_train`` dict missing a newer training setting gets :class:`~caloflows.training.loop.TrainConfig`'s
        default, which is what training does with it, so ``--set flow2_train.NEW=...`` works on it.
        """
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown {cls.title()} setting {unknown[0]!r}; known: {', '.join(sorted(names))}")
        hints = typing.get_type_hints(cls)
        kw = {}
        for k, v in d.items():
            if hints.get(k) is tuple and isinstance(v, list):
                v = tuple(v)
            if k.endswith("_train") and isinstance(v, dict):
                v = {**asdict(TrainConfig()), **v}
            kw[k] = v
        cfg = cls(**kw)
        cfg.validate()
        return cfg

    @classmethod
    def preset(cls: type[C], name: str, geometry: Any) -> C:
        """The config of preset ``name`` for ``geometry``."""
        if name not in cls.PRESETS:
            raise ConfigError(f"unknown {cls.title()} preset {name!r}; use one of {', '.join(cls.PRESETS)}")
        cfg = cls.PRESETS[name](geometry)
        cfg.validate()
        return cfg

    def override(self: C, overrides: Sequence[str] | None) -> C:
        """A copy with ``KEY=VALUE`` items applied (``flow2_hidden=128``, ``flow2_train.epochs=5``)."""
        return type(self).from_dict(override_settings(self.to_dict(), overrides, self.title()))

    def replace_train(self: C, **entries: Any) -> C:
        """A copy with ``entries`` (e.g. ``epochs=3, seed=1``) set in every ``*_train`` dict."""
        d = self.to_dict()
        for k in d:
            if k.endswith("_train"):
                d[k].update(entries)
        return type(self).from_dict(d)

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Check every value's type and range; raises ConfigError naming key, value and what is allowed."""
        hints = typing.get_type_hints(type(self))
        for f in fields(self):  # type: ignore[arg-type]
            key, v, t = f.name, getattr(self, f.name), hints.get(f.name)
            if key.endswith("_train"):
                check_train_config(v, key)
                continue
            origin = typing.get_origin(t)
            args = typing.get_args(t)
            none_ok = type(None) in args
            base = t
            if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
                base = next(a for a in args if a is not type(None))
            if base is bool:
                if not isinstance(v, bool):
                    raise _bad(key, v, "must be true or false")
            elif base is str:
                if not isinstance(v, str):
                    raise _bad(key, v, "must be a string")
                if key in self.CHOICES and v not in self.CHOICES[key]:
                    raise _bad(key, v, f"must be one of {', '.join(self.CHOICES[key])}")
            elif base in (int, float):
                default = (1, None, False) if base is int else (0, None, not key.endswith("_kev"))
                lo, hi, lo_open = self.RANGES.get(key, default)
                _check_number(key, v, base, lo, hi, none_ok, lo_open)
            elif (base in (list, tuple) or typing.get_origin(base) in (list, tuple)) and (
                    not isinstance(v, (list, tuple)) or not v
                    or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in v)):
                raise _bad(key, v if not isinstance(v, tuple) else list(v),
                           "must be a non-empty list of positive integers, e.g. [128, 128]")


@dataclass
class FlowSettings(ModelConfig):
    """Settings every flow family shares: the RQ splines (bins, bound; Durkan et al. 1906.04032),
    the logit's alpha, the outlier redraws of flow-sampled layer energies, and the seed of the
    network initialisation."""

    RANGES: ClassVar[dict[str, tuple[float | None, float | None, bool]]] = {
        "alpha": (0, 0.1, True), "max_resample": (0, None, False), "seed": (0, None, False),
        "max_ratio": (0, None, True)}
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"made_degrees": MADE_DEGREES, "student_weights": SAMPLING_WEIGHTS}

    bins: int = 8
    bound: float = 5.0
    alpha: float = 1e-6
    max_resample: int = 20
    seed: int = 0
    #: which inputs the hidden units of a MADE narrower than its flow's dimension read
    #: (:func:`caloflows.flows.made_masks`): ``cyclic`` (zuko's: only the first H - 1 features of
    #: each order) or ``spread`` (all of them).  Saved models keep the masks they were trained with.
    made_degrees: str = "cyclic"
    #: a generation setting of families with an IAF student: its MADE output layers (most of its
    #: weights) sampled as ``float32`` (default) or ``int8`` (:meth:`caloflows.lean.LeanBlock.quantize_output`:
    #: a quarter of the memory traffic at batch 1, showers within the quantisation error; README
    #: "int8 output layers").  For SuperCalo it reaches the coarse CaloFlow's student.
    student_weights: str = "float32"


#: voxel-flow inputs inside the spline domain: the logit values as they are (L2LFlows eq. B.4), in a
#: domain of 14 >= ln(1 / alpha) for alpha = 1e-6 (README "L2LFlows: hits outside the spline domain",
#: "CaloFlow: hits outside the spline domain").  Used by the L2LFlows presets and CaloFlow ``medium``.
UNSTANDARDISED_VOXEL_INPUTS: dict[str, Any] = {"voxel_standardise": False, "voxel_bound": 14.0}


def logit_reach(alpha: float) -> float:
    """``ln((1 - alpha) / alpha)``: the largest ``|l_alpha(x)|`` for x in [0, 1] (13.8 for 1e-6)."""
    return math.log((1 - alpha) / alpha) if 0 < alpha < 0.5 else math.inf


def check_logit_domain(key: str, bound: float | None, spline_bound: float, standardise: bool, alpha: float,
                       what: str) -> None:
    """Refuse (one line) unstandardised logit inputs ``what`` that the spline domain
    ``[-spline_bound, spline_bound]`` (setting ``key``) cannot hold."""
    reach = logit_reach(alpha)
    if not standardise and spline_bound < reach:
        raise _bad(key, bound, f"the unstandardised logit {what} reach +-{reach:.2f} (alpha={alpha:g}); the spline "
                               f"domain must hold them: set {key} >= {math.ceil(reach)}")


@dataclass
class VoxelInputSettings(FlowSettings):
    """Flow settings plus what a voxel flow sees: CaloFlow's flow-II (and SuperCalo's coarse
    flow-II), the L2LFlows causal flows, iCaloFlow's flows 2 and 3.

    ``voxel_standardise``: the logit voxels standardised per feature with the training mean / std
    (True; not in the papers), or the logit values as they are (False: L2LFlows eq. B.4 as published),
    inside ``|l_alpha| <= ln(1 / alpha)``.  ``voxel_bound``: the spline domain ``[-b, b]`` of the
    voxel flows (None: ``bound``).  Outside it zuko's splines are the identity, so the domain must
    hold the data: standardised, a hit in a sparse layer lands 7-27 standard deviations above the
    empty-voxel noise (L2LFlows, stop 12; CaloFlow's outer rings of layer 0 and layer 8 on
    ds2-coarse, 94-99 % and 59 % of the hits outside [-5, 5], stop 20), so the flow never generates
    it; unstandardised, the logit needs ``b >= ln(1 / alpha)`` (14 for alpha = 1e-6).

    >>> from caloflows.models.caloflow import CaloFlowConfig
    >>> CaloFlowConfig(voxel_standardise=False, voxel_bound=14.0).voxel_spline_bound
    14.0
    """

    RANGES: ClassVar[dict[str, tuple[float | None, float | None, bool]]] = {
        **FlowSettings.RANGES, "voxel_bound": (1e-3, None, True)}

    voxel_standardise: bool = True
    voxel_bound: float | None = None

    @property
    def voxel_spline_bound(self) -> float:
        """The spline domain of the voxel flows: ``voxel_bound``, else ``bound``."""
        return float(self.bound if self.voxel_bound is None else self.voxel_bound)

    def validate(self) -> None:
        """Also refuses unstandardised voxel inputs outside the spline domain (one line)."""
        super().validate()
        check_logit_domain("voxel_bound", self.voxel_bound, self.voxel_spline_bound, self.voxel_standardise,
                           self.alpha, "voxels")


@dataclass
class EnergyFlowSettings(FlowSettings):
    """Flow settings plus what the energy distribution flow ``p(E_0..E_{L-1} | E_inc)`` (L2LFlows
    appendix B.1) sees; shared by the families that have one (L2LFlows, iCaloFlow flow-1, SuperCalo
    FLOW-1).

    ``energy_standardise``: the logits ``l_alpha(E_i / E_max,i)`` standardised per layer with the
    training mean / std (True; not in the paper), or as they are (False: eq. B.2 as published).
    ``energy_bound``: the spline domain ``[-b, b]`` of the energy flow (None: ``bound``).  zuko's
    splines are the identity outside it.  Standardised, a deep layer that is empty in 97 % of the
    Geant4 ds2 showers puts its non-empty values at 5-10 standard deviations (layers 39-44: 70-100 %
    outside [-5, 5], issue 15), so the flow never generates them; unstandardised, the logits stay
    within ``+-ln(1 / alpha)`` and ``energy_bound`` must hold that (14 for alpha = 1e-6).

    >>> from caloflows.models.l2lflows import L2LFlowsConfig
    >>> L2LFlowsConfig(energy_standardise=False, energy_bound=14.0).energy_spline_bound
    14.0
    """

    RANGES: ClassVar[dict[str, tuple[float | None, float | None, bool]]] = {
        **FlowSettings.RANGES, "energy_bound": (1e-3, None, True)}

    energy_standardise: bool = True
    energy_bound: float | None = None

    @property
    def energy_spline_bound(self) -> float:
        """The spline domain of the energy flow: ``energy_bound``, else ``bound``."""
        return float(self.bound if self.energy_bound is None else self.energy_bound)

    def validate(self) -> None:
        """Also refuses unstandardised energy-flow inputs outside the spline domain (one line)."""
        super().validate()
        check_logit_domain("energy_bound", self.energy_bound, self.energy_spline_bound, self.energy_standardise,
                           self.alpha, "layer energies")


@dataclass
class LayerwiseSettings(EnergyFlowSettings, VoxelInputSettings):
    """Settings shared by the layer-by-layer families (L2LFlows, iCaloFlow): the energy
    distribution flow (L2LFlows appendix B.1), its E_dep/E_inc bound, the per-layer
    post-processing (B.3) and how training data are read (standardisation rows, streaming)."""

    RANGES: ClassVar[dict[str, tuple[float | None, float | None, bool]]] = {
        **EnergyFlowSettings.RANGES, **VoxelInputSettings.RANGES, "cache_mb": (0, None, False),
        "voxel_cut_mev": (0, None, True)}
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {**FlowSettings.CHOICES, "postprocess": ("threshold", "renormalise")}

    edf_transforms: int = 4
    edf_hidden: list = field(default_factory=lambda: [64])
    max_ratio: float | None = 2.6
    postprocess: str = "threshold"  # "threshold" (L2LFlows appendix B.3) or "renormalise" (CaloFlow)
    #: the cut ``t`` of the post-processing (MeV); None: the geometry's readout threshold (the paper).
    #: A generation setting: Geant4 voxels of the Par04 geometries are empty or above ~1 MeV, the
    #: flows fill that gap with sub-MeV voxels (issue 15)
    voxel_cut_mev: float | None = None
    std_rows: int = 20_000
    cache_mb: float = 1024.0


#: the threshold-aware generation cut of the ``medium`` presets on Par04 geometries (MeV), at the
#: scale of one minimum-ionising crossing (~3 MeV after the 1/0.033 scaling): Geant4 ds2 hits have
#: medians of 6-12 MeV and 3-12 % of them lie below 2 MeV, while the quick flows spread each layer's
#: energy over sub-MeV voxels.  On 10000 Geant4 showers, 2 MeV instead of 0.5 MeV lowers the
#: high-level AUC of the L2LFlows quick model on ds2 from 0.926 to 0.829 and of the CaloFlow
#: ``medium`` teacher on ds2-coarse from 0.734 to 0.670 (README "L2LFlows: the cut at the MIP scale")
MEDIUM_VOXEL_CUT_MEV = 2.0


def medium_voxel_cut(g: Geometry) -> float | None:
    """:data:`MEDIUM_VOXEL_CUT_MEV` on geometries with the Par04 readout threshold (CaloChallenge
    ds1-ds3, whose voxels are empty or above ~1 MeV in Geant4), else None (the readout threshold).

    >>> from caloflows.geometry import load_geometry
    >>> medium_voxel_cut(load_geometry("ds2")), medium_voxel_cut(load_geometry("paraflow-8x16"))
    (2.0, None)
    """
    return MEDIUM_VOXEL_CUT_MEV if g.threshold_mev == PAR04_THRESHOLD_MEV else None


def override_settings(d: dict, overrides: Sequence[str] | None, what: str = "model") -> dict:
    """Return a copy of ``d`` with ``a.b=VALUE`` items applied (VALUE parsed as JSON, else text).

    Unknown keys raise :class:`~caloflows.errors.ConfigError` naming the known ones.
    """
    d = json.loads(json.dumps(d))
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        key, val = item.split("=", 1)
        try:
            v = json.loads(val)
        except ValueError:
            v = val
        parts = key.strip().split(".")
        tgt = d
        for p in parts[:-1]:
            if not isinstance(tgt.get(p), dict):
                raise ConfigError(f"unknown {what} setting {key!r}")
            tgt = tgt[p]
        if parts[-1] not in tgt:
            raise ConfigError(f"unknown {what} setting {key!r}; known: {', '.join(sorted(tgt))}")
        tgt[parts[-1]] = v
    return d
