"""The per-(d, b)-cell 6 % check of ParaFlow (``paraflow.txt`` sec. 5, fig. 9; issue 12):
cell means, their standard errors and the verdicts on hand-made samples with known answers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from caloflows.errors import EvaluationError
from caloflows.evaluation.paraflow import cell_agreement, cell_statistics

#: one point inside each of four cells of the default grid: (d bin, b bin) = (0, 0), (0, 1), (1, 0), (3, 3)
CENTRES = {(0, 0): (0.6, 55.0), (0, 1): (0.6, 65.0), (1, 0): (0.8, 55.0), (3, 3): (1.5, 90.0)}


def _sample(values: dict[tuple[int, int], list[float]]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    v, c = [], []
    for cell, xs in values.items():
        v += xs
        c += [CENTRES[cell]] * len(xs)
    return {"w": np.asarray(v)}, np.asarray(c)


def test_cell_statistics_known_means_and_errors():
    obs, cond = _sample({(0, 0): [1.0, 3.0], (0, 1): [2.0, 2.0, 2.0, np.nan], (3, 3): [5.0]})
    s = cell_statistics(obs["w"], cond)
    assert s.mean.shape == (4, 4)
    assert s.mean[0, 0] == 2.0 and s.standard_error[0, 0] == pytest.approx(1.0)  # std(ddof=1) sqrt(2) / sqrt(2)
    assert s.mean[0, 1] == 2.0 and s.standard_error[0, 1] == 0.0 and s.count[0, 1] == 3  # NaN dropped
    assert s.mean[3, 3] == 5.0 and math.isnan(s.standard_error[3, 3]) and s.count[3, 3] == 1  # d = 1.5, b = 90: last bins closed
    assert math.isnan(s.mean[2, 2]) and s.count[2, 2] == 0
    assert s.count.sum() == 6


def test_cell_agreement_verdicts_and_errors():
    ref, rc = _sample({(0, 0): [1.0, 1.0], (0, 1): [1.0, 1.0], (1, 0): [1.0, 3.0], (3, 3): [1.0]})
    gen, gc = _sample({(0, 0): [1.05, 1.05],  # +5 %, no spread: within
                       (0, 1): [1.0, 1.2],    # +10 % +- 10 % (se of the mean 0.1): consistent with 6 % at 2 sigma
                       (1, 0): [2.0, 2.0],    # 0 % +- 50 %: within
                       (3, 3): [1.0, 1.0]})   # one reference shower: undetermined
    r = cell_agreement(gen, gc, ref, rc, names=("w",))
    w = r["observables"]["w"]
    assert w["verdict"][0][0] == "within" and w["relative_difference"][0][0] == pytest.approx(0.05)
    assert w["relative_difference_error"][0][0] == pytest.approx(0.0)
    assert w["verdict"][0][1] == "consistent"
    assert w["relative_difference"][0][1] == pytest.approx(0.1) and w["relative_difference_error"][0][1] == pytest.approx(0.1)
    # gen 2 +- 0, ref 2 +- 1: sigma_r = sqrt(0 + (2 * 1 / 2)^2) / 2 = 0.5
    assert w["verdict"][1][0] == "within" and w["relative_difference_error"][1][0] == pytest.approx(0.5)
    assert w["verdict"][3][3] == "undetermined" and w["verdict"][2][2] == "undetermined"
    assert (w["n_within"], w["n_consistent"], w["n_outside"], w["n_undetermined"]) == (2, 1, 0, 13)
    assert w["max_abs_relative_difference"] == pytest.approx(0.1)
    assert not r["all_within"] and r["all_within_or_consistent"]
    json.dumps(r, allow_nan=False)  # strict JSON: NaN cells are None

    # the same +10 % with 1 % errors is outside; a 3 sigma allowance would not save it either
    gen2, gc2 = _sample({(0, 1): [1.09, 1.11]})
    r2 = cell_agreement(gen2, gc2, ref, rc, names=("w",), n_sigma=3.0)
    assert r2["observables"]["w"]["verdict"][0][1] == "outside" and not r2["all_within_or_consistent"]
    # a looser tolerance turns it into within
    assert cell_agreement(gen2, gc2, ref, rc, names=("w",), tolerance=0.11)["all_within"]


def test_cell_agreement_custom_band_edges_and_bad_arguments():
    """The band check uses one d bin [0.9, 1.1] and the b bins; showers outside the band are ignored."""
    cond = np.array([[0.95, 55.0], [1.05, 56.0], [1.3, 55.0]])
    ref = {"w": np.array([1.0, 1.0, 9.0])}
    gen = {"w": np.array([0.9, 0.9, 1.0])}
    r = cell_agreement(gen, cond, ref, cond, names=("w",), d_edges=(0.9, 1.1))
    w = r["observables"]["w"]
    assert len(w["verdict"]) == 1 and len(w["verdict"][0]) == 4
    assert w["verdict"][0][0] == "outside" and w["relative_difference"][0][0] == pytest.approx(-0.1)
    assert w["count_reference"][0] == [2, 0, 0, 0]
    with pytest.raises(EvaluationError, match="tolerance"):
        cell_agreement(gen, cond, ref, cond, tolerance=-0.1)
