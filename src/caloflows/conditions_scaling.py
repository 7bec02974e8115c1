"""Logarithmic scaling of conditions to [-1, 1] (ParaFlow, Erdmann et al., ``paraflow.txt`` eq. 1).

ParaFlow maps every condition c_i (E_inc, d, b) from its range [c_min, c_max] to

    t = 2 log(c - (c_min - 1)) / log(c_max - (c_min - 1)) - 1  in [-1, 1],

so c_min -> -1 and c_max -> +1, logarithmically in between.  The "+1" offset is in the unit
the condition is given in, so the map depends on the unit (the paper does not state them;
caloflows uses the units of the shower files: MeV for E_inc, X0 for d, cm for b).

>>> t = scale_condition([0.5, 1.0, 1.5], 0.5, 1.5)
>>> [round(float(x), 4) for x in t]
[-1.0, 0.1699, 1.0]
>>> [round(float(x), 6) for x in unscale_condition(t, 0.5, 1.5)]
[0.5, 1.0, 1.5]
"""

from __future__ import annotations

import numpy as np

from .errors import ConditionsError

__all__ = ["scale_condition", "unscale_condition"]


def _check(lo: float, hi: float) -> None:
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= lo:
        raise ConditionsError(f"condition range [{lo}, {hi}]: need a finite range with max > min")


def scale_condition(c, c_min: float, c_max: float) -> np.ndarray:
    """Eq. 1: c in [c_min, c_max] -> [-1, 1].  Values outside the range map outside [-1, 1]
    (extrapolation) as long as c > c_min - 1; below that the log is undefined (error)."""
    _check(c_min, c_max)
    c = np.asarray(c, dtype=np.float64)
    arg = c - (c_min - 1.0)
    if np.any(arg <= 0):
        raise ConditionsError(f"condition values must exceed c_min - 1 = {c_min - 1.0:g} for eq. 1")
    return 2.0 * np.log(arg) / np.log(c_max - (c_min - 1.0)) - 1.0


def unscale_condition(t, c_min: float, c_max: float) -> np.ndarray:
    """Inverse of :func:`scale_condition`: c = exp((t + 1)/2 log(c_max - c_min + 1)) + c_min - 1."""
    _check(c_min, c_max)
    t = np.asarray(t, dtype=np.float64)
    return np.exp(0.5 * (t + 1.0) * np.log(c_max - (c_min - 1.0))) + (c_min - 1.0)
