"""Chunked evaluation (issue 14): a pass in chunks gives the same numbers as the whole sample."""

import numpy as np
import pytest

from caloflows.evaluation.api import evaluate
from caloflows.evaluation.classifier import ClassifierConfig
from caloflows.evaluation.features import compute_features
from caloflows.evaluation.histograms import voxel_bins
from caloflows.evaluation.stream import scan_sample, voxel_histogram, voxel_subsample_size
from caloflows.evaluation.toy import toy_showers
from caloflows.geometry import load_geometry
from caloflows.io import ShowerData, write_showers


@pytest.fixture(scope="module")
def sample():
    g = load_geometry("ds1-photons")
    inc, x = toy_showers(g, 500, seed=3)
    return g, inc, x


def test_scan_in_chunks_equals_whole_sample(sample, tmp_path):
    g, inc, x = sample
    whole = compute_features(x, inc, g)
    edges = voxel_bins(whole.voxels, g)
    groups = (np.arange(500) % 3 == 0).astype(np.int8)
    keep = np.array([0, 36, 37, 38, 250, 499])
    path = tmp_path / "s.h5"
    write_showers(path, inc, x, geometry=g.name)
    for src in (ShowerData(inc, x), path):
        scan = scan_sample(src, g, "s", keep=keep, voxel_edges=edges, groups=groups, n_groups=2, chunk_size=37)
        f = scan.features
        assert f.voxels is None and len(f) == 500
        for name in ("incident_energies", "e_layers", "ec_r", "width_r", "ec_eta", "ec_phi", "width_eta",
                     "width_phi", "sparsity"):
            np.testing.assert_allclose(getattr(f, name), getattr(whole, name), rtol=1e-12, atol=1e-300)
        np.testing.assert_array_equal(scan.kept_voxels, whole.voxels[keep])
        np.testing.assert_array_equal(scan.kept_features(keep[2:4]).voxels, whole.voxels[keep[2:4]])
        np.testing.assert_allclose(scan.mean_voxels, whole.voxels.mean(axis=0, dtype=np.float64), rtol=1e-6)
        np.testing.assert_array_equal(scan.voxel_max, whole.voxels.max(axis=1))
        for gid in (0, 1):
            v = whole.voxels[groups == gid]
            v = v[v > 0]
            np.testing.assert_array_equal(scan.voxel_hist.counts[gid], np.histogram(v, edges)[0])
            assert scan.voxel_hist.entries[gid] == v.size
            assert scan.voxel_hist.overflow[gid] == np.count_nonzero(v > edges[-1])
        second = voxel_histogram(src, g, edges, groups=groups, n_groups=2, chunk_size=101)
        np.testing.assert_array_equal(second.counts, scan.voxel_hist.counts)
    with pytest.raises(ValueError, match="not kept"):
        scan.kept_features(np.array([1]))


def test_evaluate_file_and_memory_give_the_same_numbers(sample, tmp_path):
    g, inc, x = sample
    write_showers(tmp_path / "gen.h5", inc[:250], x[:250] * 1.05, geometry=g.name)
    write_showers(tmp_path / "ref.h5", inc[250:], x[250:], geometry=g.name)
    a = evaluate(tmp_path / "gen.h5", tmp_path / "ref.h5", metrics="hist,corr,prdc", plots=False)
    b = evaluate(ShowerData(inc[:250], x[:250] * 1.05), ShowerData(inc[250:], x[250:]), g,
                 metrics="hist,corr,prdc", plots=False)
    for k, v in a["histograms"]["separation_power"].items():
        w = b["histograms"]["separation_power"][k]
        assert (v["separation_power"] == w["separation_power"]) or (np.isnan(v["separation_power"])
                                                                      and np.isnan(w["separation_power"]))
        assert v["out_of_range_generated"] == w["out_of_range_generated"]
    assert a["prdc"] == b["prdc"]
    assert a["correlations"]["max_abs_difference"] == b["correlations"]["max_abs_difference"]


def test_voxel_budget_bounds_the_classifier_subsample(sample):
    g, inc, x = sample
    assert voxel_subsample_size(500, 368, None) == 500
    assert voxel_subsample_size(500, 368, 368 * 200) == 200
    r = evaluate(ShowerData(inc[:250], x[:250]), ShowerData(inc[250:], x[250:]), g, metrics="cls-low",
                 classifier=ClassifierConfig(hidden=8, epochs=1, progress=False), voxel_budget=368 * 150, plots=False)
    assert r["inputs"]["voxel_subsamples"]["classifier_showers"] == [150, 150]
    assert r["classifiers"]["cls-low"]["n_showers"] == [150, 150]
