"""What a shower is conditioned on: the incident energy plus any named detector parameters.

Every generator learns ``p(shower | E_inc, theta)`` where ``theta`` are zero or more named
detector parameters (ParaFlow, ``paraflow.txt``: the thickness ``d`` and distance ``b`` of an
upstream iron plate).  :class:`Conditions` carries the values for a set of showers (they
travel with the showers in :class:`~caloflows.io.ShowerData` and in the HDF5 ``conditions``
dataset); :class:`ConditionSpec` is what a trained model remembers of them: their names and
training ranges.  Networks see each parameter mapped from its training range to ``[-1, 1]``
(:meth:`ConditionSpec.features`): linearly by default, or logarithmically as in ParaFlow
eq. 1 (:func:`scale_condition`; ``paraflow.txt`` sec. 3, ``scaling="log"``).

Example:
    >>> import numpy as np
    >>> c = Conditions(np.array([1e3, 2e3]), np.array([[0.5, 60.0], [1.5, 80.0]]), ("d", "b"))
    >>> spec = ConditionSpec.fit(c)
    >>> spec.features(c.values).tolist()
    [[-1.0, -1.0], [1.0, 1.0]]
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ConditionsError

__all__ = ["Conditions", "ConditionSpec", "ConditionsWarning", "parse_condition_args", "to_unit_interval",
           "from_unit_interval", "scale_condition", "unscale_condition", "Band", "parse_bands", "in_bands"]


class ConditionsWarning(UserWarning):
    """Conditions outside the training range: the model extrapolates (the user's choice)."""


def to_unit_interval(x: Any, low: Any, high: Any) -> Any:
    """Map ``[low, high]`` linearly onto ``[-1, 1]`` (works on numpy and torch)."""
    return 2.0 * (x - low) / (high - low) - 1.0


def from_unit_interval(y: Any, low: Any, high: Any) -> Any:
    """Inverse of :func:`to_unit_interval`."""
    return low + (y + 1.0) * 0.5 * (high - low)


def _check_range(lo: float, hi: float) -> None:
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= lo:
        raise ConditionsError(f"condition range [{lo}, {hi}]: need a finite range with max > min")


def scale_condition(c: Any, c_min: float, c_max: float) -> np.ndarray:
    """ParaFlow eq. 1: ``c -> 2 log(c - (c_min - 1)) / log(c_max - (c_min - 1)) - 1``, so that
    ``c_min -> -1`` and ``c_max -> +1``, logarithmically in between.

    The "+1" offset is in the unit the condition is given in (the paper does not state them;
    caloflows uses the units of the shower files: MeV for E_inc, X0 for d, cm for b).  Values
    outside the range map outside [-1, 1] (extrapolation) as long as ``c > c_min - 1``.

    >>> [round(float(x), 4) for x in scale_condition([0.5, 1.0, 1.5], 0.5, 1.5)]
    [-1.0, 0.1699, 1.0]
    """
    _check_range(c_min, c_max)
    c = np.asarray(c, dtype=np.float64)
    if np.any(c - (c_min - 1.0) <= 0):
        raise ConditionsError(f"condition values must exceed c_min - 1 = {c_min - 1.0:g} for eq. 1")
    return eq1(c, c_min, c_max)


def eq1(c: Any, c_min: float, c_max: float) -> Any:
    """The arithmetic of ParaFlow eq. 1 (:func:`scale_condition` without its checks) on a numpy
    array or a torch tensor (traceable: the ONNX samplers evaluate it in the graph).

    >>> round(float(eq1(np.array(1.0), 0.5, 1.5)), 4)
    0.1699
    """
    arg = c - (c_min - 1.0)
    return 2.0 * (arg.log() if hasattr(arg, "log") else np.log(arg)) / math.log(c_max - (c_min - 1.0)) - 1.0


def unscale_condition(t: Any, c_min: float, c_max: float) -> np.ndarray:
    """Inverse of :func:`scale_condition`: ``c = exp((t + 1)/2 log(c_max - c_min + 1)) + c_min - 1``."""
    _check_range(c_min, c_max)
    t = np.asarray(t, dtype=np.float64)
    return np.exp(0.5 * (t + 1.0) * np.log(c_max - (c_min - 1.0))) + (c_min - 1.0)


@dataclass(frozen=True)
class Conditions:
    """Incident energies (MeV) and named detector parameters of ``N`` showers.

    Attributes:
        incident_energies: (N,) MeV, finite and positive.
        values: (N, K) parameter values (K may be 0), finite.
        names: K parameter names, unique.
    """

    incident_energies: np.ndarray
    values: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        e = np.asarray(self.incident_energies, dtype=np.float64).reshape(-1)
        v = np.asarray(self.values, dtype=np.float64)
        if v.size == 0:
            v = np.zeros((len(e), len(self.names)))
        if v.ndim == 1:
            v = v[:, None]
        names = tuple(str(n) for n in self.names)
        if len(e) == 0:
            raise ConditionsError("conditions: no showers (empty incident energies)")
        if not np.all(np.isfinite(e)) or np.any(e <= 0):
            raise ConditionsError("conditions: incident energies must be positive and finite")
        if v.shape != (len(e), len(names)):
            raise ConditionsError(f"conditions: values have shape {v.shape}, expected ({len(e)}, {len(names)}) "
                                  f"for the names {list(names)}")
        if len(set(names)) != len(names):
            raise ConditionsError(f"conditions: duplicate names in {list(names)}")
        if not np.all(np.isfinite(v)):
            raise ConditionsError("conditions: parameter values must be finite")
        object.__setattr__(self, "incident_energies", e)
        object.__setattr__(self, "values", v)
        object.__setattr__(self, "names", names)

    def __len__(self) -> int:
        return len(self.incident_energies)

    def __getitem__(self, idx: Any) -> "Conditions":
        return Conditions(self.incident_energies[idx], self.values[idx], self.names)

    @classmethod
    def from_data(cls, data: Any) -> "Conditions":
        """The conditions of a :class:`~caloflows.io.ShowerData`."""
        vals = data.conditions if data.conditions is not None else np.zeros((len(data), 0))
        return cls(np.asarray(data.incident_energies), np.asarray(vals), tuple(data.condition_names or ()))

    def column(self, name: str) -> np.ndarray:
        """The values of parameter ``name``."""
        if name not in self.names:
            raise ConditionsError(f"conditions: no parameter {name!r} (have {list(self.names) or 'none'})")
        return self.values[:, self.names.index(name)]


@dataclass(frozen=True)
class Band:
    """A closed interval ``[low, high]`` of one named condition held out of training: the
    interpolation test of issue 12 (beyond ``paraflow.txt``, which trains on the full ranges):
    train without d in [0.9, 1.1] X0, then compare with Geant4 simulated inside the band.

    >>> Band("d", 0.9, 1.1).text
    'd=0.9:1.1'
    """

    name: str
    low: float
    high: float

    @property
    def text(self) -> str:
        return f"{self.name}={self.low:g}:{self.high:g}"

    def to_dict(self) -> dict:
        return {"name": self.name, "low": self.low, "high": self.high}


def parse_bands(items: Sequence[str] | None) -> tuple[Band, ...]:
    """``["d=0.9:1.1"]`` -> (Band("d", 0.9, 1.1),); ``NAME=VALUE`` holds out that one value.

    Raises :class:`~caloflows.errors.ConditionsError` naming the bad item.
    """
    return tuple(Band(n, lo, hi) for n, (lo, hi) in parse_condition_args(items).items())


def in_bands(names: Sequence[str], values: np.ndarray, bands: Sequence[Band], where: str = "data") -> np.ndarray:
    """Boolean (N,): rows whose value of any band's condition lies inside that band (closed).

    A band naming a condition the data lacks raises :class:`~caloflows.errors.ConditionsError`.

    >>> in_bands(("d", "b"), np.array([[0.8, 60.0], [1.0, 70.0]]), [Band("d", 0.9, 1.1)]).tolist()
    [False, True]
    """
    names = tuple(names)
    v = np.asarray(values, dtype=np.float64).reshape(-1, len(names)) if names else np.zeros((len(values), 0))
    out = np.zeros(len(v), dtype=bool)
    for b in bands:
        if b.name not in names:
            raise ConditionsError(f"--exclude {b.text}: {where} has no condition {b.name!r} "
                                  f"(it has {list(names) or 'E_inc only'})")
        col = v[:, names.index(b.name)]
        out |= (col >= b.low) & (col <= b.high)
    return out


@dataclass(frozen=True)
class ConditionSpec:
    """The detector parameters a model was trained with: names and training ranges.

    A model with an empty spec is conditioned on E_inc alone and refuses extra parameters;
    a model with parameters refuses input that lacks any of them (naming what is missing) and
    warns (:class:`ConditionsWarning`) for values outside the training range.
    """

    names: tuple[str, ...] = ()
    low: tuple[float, ...] = ()
    high: tuple[float, ...] = ()
    #: ``linear`` (default) or ``log`` (ParaFlow eq. 1, :func:`scale_condition`)
    scaling: str = "linear"
    #: bands of the conditions held out of the training data (``caloflows train --exclude``)
    excluded: tuple[Band, ...] = ()

    def __post_init__(self) -> None:
        if not (len(self.names) == len(self.low) == len(self.high)):
            raise ConditionsError("condition spec: names, low and high must have equal lengths")
        if self.scaling not in ("linear", "log"):
            raise ConditionsError(f"condition spec: scaling must be 'linear' or 'log', got {self.scaling!r}")

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def fit(cls, conditions: Conditions, scaling: str = "linear") -> "ConditionSpec":
        """Names and training ranges (min, max) of ``conditions``; a constant parameter gets a unit-wide range."""
        lo = conditions.values.min(0) if len(conditions.names) else np.zeros(0)
        hi = conditions.values.max(0) if len(conditions.names) else np.zeros(0)
        hi = np.where(hi > lo, hi, lo + 1.0)
        return cls(conditions.names, tuple(float(x) for x in lo), tuple(float(x) for x in hi), scaling)

    def to_dict(self) -> dict:
        d = {"names": list(self.names), "low": list(self.low), "high": list(self.high), "scaling": self.scaling}
        if self.excluded:
            d["excluded"] = [b.to_dict() for b in self.excluded]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "ConditionSpec":
        if not d:
            return cls()
        try:
            return cls(tuple(d["names"]), tuple(float(x) for x in d["low"]), tuple(float(x) for x in d["high"]),
                       str(d.get("scaling", "linear")),
                       tuple(Band(str(b["name"]), float(b["low"]), float(b["high"])) for b in d.get("excluded", ())))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConditionsError(f"malformed condition spec {dict(d)!r} ({exc})") from None

    def check(self, conditions: Conditions, where: str = "conditions") -> Conditions:
        """``conditions`` with its parameters in this spec's order; refuses missing or unknown names.

        ``where`` names the file or argument the conditions came from (for the messages).
        """
        missing = [n for n in self.names if n not in conditions.names]
        unknown = [n for n in conditions.names if n not in self.names]
        if missing:
            raise ConditionsError(f"{where}: the model is conditioned on {list(self.names)}; missing {missing} "
                                  "(give them in the file's 'conditions' dataset or with --condition NAME=VALUE)")
        if unknown:
            known = list(self.names) if self.names else "E_inc only"
            raise ConditionsError(f"{where}: unknown condition(s) {unknown}; the model was trained with {known}")
        v = conditions.values[:, [conditions.names.index(n) for n in self.names]] if self.names else \
            np.zeros((len(conditions), 0))
        for k, n in enumerate(self.names):
            out = (v[:, k] < self.low[k] - 1e-9 * abs(self.low[k])) | (v[:, k] > self.high[k] + 1e-9 * abs(self.high[k]))
            if np.any(out):
                warnings.warn(f"{where}: {int(out.sum())} value(s) of {n!r} outside the training range "
                              f"[{self.low[k]:g}, {self.high[k]:g}] (range {v[:, k].min():g}..{v[:, k].max():g}); "
                              "the model extrapolates", ConditionsWarning, stacklevel=3)
        return Conditions(conditions.incident_energies, v, self.names)

    def features(self, values: Any) -> Any:
        """Network inputs: every parameter mapped from its training range to [-1, 1], linearly or
        (``scaling="log"``) by ParaFlow eq. 1."""
        if not self.names:
            return values
        if hasattr(values, "new_tensor"):  # torch
            if self.scaling == "log":
                return values.new_tensor(self.features(values.detach().cpu().numpy()))
            return to_unit_interval(values, values.new_tensor(self.low), values.new_tensor(self.high))
        v = np.asarray(values, dtype=np.float64)
        if self.scaling == "log":
            return np.column_stack([scale_condition(v[:, k], self.low[k], self.high[k]) for k in range(len(self.names))])
        return to_unit_interval(v, np.asarray(self.low), np.asarray(self.high))

    def values(self, features: Any) -> np.ndarray:
        """Inverse of :meth:`features`: the parameter values ``(N, K)`` of network inputs.

        >>> spec = ConditionSpec(("d", "b"), (0.5, 50.0), (1.5, 90.0), "log")
        >>> v = np.array([[1.0, 70.0]])
        >>> np.allclose(spec.values(spec.features(v)), v)
        True
        """
        if not self.names:
            return np.zeros((len(np.asarray(features)), 0))
        f = np.asarray(features, dtype=np.float64).reshape(-1, len(self.names))
        if self.scaling == "log":
            return np.column_stack([unscale_condition(f[:, k], self.low[k], self.high[k])
                                    for k in range(len(self.names))]).reshape(-1, len(self.names))
        return from_unit_interval(f, np.asarray(self.low), np.asarray(self.high))


def parse_condition_args(items: Sequence[str] | None) -> dict[str, tuple[float, float]]:
    """``["d=1.0", "b=50:90"]`` -> ``{"d": (1.0, 1.0), "b": (50.0, 90.0)}`` (fixed value or uniform range).

    Raises :class:`~caloflows.errors.ConditionsError` naming the bad item.
    """
    out: dict[str, tuple[float, float]] = {}
    for item in items or []:
        name, sep, val = item.partition("=")
        name = name.strip()
        if not sep or not name or not val.strip():
            raise ConditionsError(f"--condition {item!r}: expected NAME=VALUE or NAME=LOW:HIGH")
        if name in out:
            raise ConditionsError(f"--condition {item!r}: {name!r} given twice")
        parts = val.split(":")
        try:
            nums = [float(p) for p in parts]
        except ValueError:
            raise ConditionsError(f"--condition {item!r}: {val!r} is not a number or LOW:HIGH range") from None
        if len(nums) == 1:
            nums = nums * 2
        if len(nums) != 2 or not all(math.isfinite(x) for x in nums) or nums[1] < nums[0]:
            raise ConditionsError(f"--condition {item!r}: expected a finite VALUE or LOW:HIGH with LOW <= HIGH")
        out[name] = (nums[0], nums[1])
    return out


def draw_conditions(incident_energies: np.ndarray, ranges: Mapping[str, tuple[float, float]],
                    rng: np.random.Generator) -> Conditions:
    """Conditions for given E_inc with each named parameter fixed or drawn uniformly in its range."""
    names = tuple(ranges)
    n = len(incident_energies)
    vals = np.column_stack([rng.uniform(lo, hi, n) if hi > lo else np.full(n, lo) for lo, hi in ranges.values()]) \
        if names else np.zeros((n, 0))
    return Conditions(incident_energies, vals, names)
