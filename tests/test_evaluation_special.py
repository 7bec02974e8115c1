"""The geometry-specific metrics reach the report: ``paraflow`` (ParaFlow sec. 4 shower shapes and the
fig. 9 (d, b) mean maps, grid geometry) and ``supercalo`` (rho of SuperCalo eq. 3, ring statistics)."""

import json

import numpy as np
import pytest

from caloflows.cli import main
from caloflows.evaluation.toy import toy_showers
from caloflows.io import write_showers


def test_supercalo_metric_in_report(tmp_path):
    inc, x = toy_showers("ds2-coarse", 300, seed=1)
    write_showers(tmp_path / "g.h5", inc[:150], x[:150], geometry="ds2-coarse")
    write_showers(tmp_path / "r.h5", inc[150:], x[150:], geometry="ds2-coarse")
    assert main(["evaluate", str(tmp_path / "g.h5"), str(tmp_path / "r.h5"), "--out", str(tmp_path / "rep"),
                 "--metrics", "supercalo", "--geometry", "ds2-coarse"]) == 0
    m = json.loads((tmp_path / "rep" / "metrics.json").read_text())["supercalo"]
    assert m["rho"] and "rings" in m
    assert (tmp_path / "rep" / "supercalo_rho.png").exists()
    assert "supercalo_rho.png" in (tmp_path / "rep" / "report.html").read_text() or \
        "supercalo rho" in (tmp_path / "rep" / "report.html").read_text()


def test_paraflow_metric_in_report_and_refused_elsewhere(tmp_path):
    rng = np.random.default_rng(0)
    n = 200
    img = rng.gamma(0.3, 500, size=(n, 128)).astype(np.float32)
    cond = np.column_stack([rng.uniform(0.5, 1.5, n), rng.uniform(50, 90, n)])
    for name, sl in (("g", slice(0, n)), ("r", slice(None, None, -1))):
        write_showers(tmp_path / f"{name}.h5", np.full(n, 5e4), img[sl].copy(), conditions=cond[sl].copy(),
                      condition_names=("d", "b"), geometry="paraflow-8x16")
    assert main(["evaluate", str(tmp_path / "g.h5"), str(tmp_path / "r.h5"), "--out", str(tmp_path / "rep"),
                 "--metrics", "hist,paraflow"]) == 0
    m = json.loads((tmp_path / "rep" / "metrics.json").read_text())["paraflow"]
    assert m["mean_maps"] and set(m["means"]) >= {"w", "R9"}
    # the same showers in another order: every observable's mean agrees
    for obs, v in m["means"].items():
        assert v["generated"] == pytest.approx(v["reference"], rel=1e-9), obs
    assert (tmp_path / "rep" / "paraflow_mean_maps.png").exists()
    inc, x = toy_showers("ds2-coarse", 20, seed=1)
    write_showers(tmp_path / "c.h5", inc, x, geometry="ds2-coarse")
    assert main(["evaluate", str(tmp_path / "c.h5"), str(tmp_path / "c.h5"), "--out", str(tmp_path / "x"),
                 "--metrics", "paraflow", "--geometry", "ds2-coarse"]) == 2
