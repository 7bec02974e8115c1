"""Known-answer test of the CNN (3D ResNet) classifier, ``cls-cnn`` (review sec. 8.3).

A tiny ResNet (one block per stage, 4 channels) on ds2-coarse toy showers (9 layers x 8 angular x
9 radial bins) so that it trains in seconds on 2 CPU cores: two halves of one sample give an AUC
near 0.5, a copy with a distorted longitudinal profile (layers 0-2 x 1.6, the others x 0.8) an AUC
clearly above.  (A global scale of every voxel is a poor test for this network: its batch norms
remove most of it.)  The architecture and
training protocol are the same code path as the full ResNet-18.
"""

import numpy as np
import pytest
import torch

from caloflows.errors import EvaluationError
from caloflows.evaluation.api import evaluate
from caloflows.evaluation.classifier import ClassifierConfig, binary_test
from caloflows.evaluation.cnn import CNNConfig, ResNet3d, cnn_builder
from caloflows.evaluation.features import compute_features
from caloflows.evaluation.inputs import classifier_inputs
from caloflows.evaluation.toy import toy_showers
from caloflows.geometry import load_geometry
from caloflows.io import ShowerData

TINY = CNNConfig(blocks=(1, 1, 1, 1), widths=(4, 4, 4, 4), stem_kernel=3)
FAST = ClassifierConfig(epochs=6, lr=1e-2, batch_size=100, progress=False)
N = 1200


@pytest.fixture(scope="module", autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data():
    g = load_geometry("ds2-coarse")
    inc, x = toy_showers(g, 3 * N, seed=5)
    a = classifier_inputs(compute_features(x[:N], inc[:N], g), "low")
    b = classifier_inputs(compute_features(x[N : 2 * N], inc[N : 2 * N], g), "low")
    y = x[2 * N :].copy()
    y[:, : g.layer_offsets[3]] *= 1.6
    y[:, g.layer_offsets[3] :] *= 0.8
    c = classifier_inputs(compute_features(y, inc[2 * N :], g), "low")
    return g, a, b, c


def test_network_shapes():
    g = load_geometry("ds2-coarse")
    net = ResNet3d((9, 8, 9), TINY).double()
    out = net(torch.zeros(3, 1 + g.n_voxels, dtype=torch.float64))
    assert out.shape == (3, 1)
    full = cnn_builder(load_geometry("ds3"))(1 + 40500)
    assert full.grid == (45, 50, 18) and sum(p.numel() for p in full.parameters()) > 1e6
    with pytest.raises(EvaluationError, match="regular voxel grid"):
        cnn_builder(load_geometry("ds1-photons"))


def test_cnn_halves_near_half_and_defect_clearly_above(data):
    g, a, b, c = data
    build = cnn_builder(g, TINY)
    same = binary_test(b, a, FAST, seeds=1, build=build)
    # 240 test showers per class: AUC std of equal samples ~ sqrt((2/240)/12) = 0.026
    assert abs(same["auc_mean"] - 0.5) < 0.08, same
    bad = binary_test(c, a, FAST, seeds=1, build=build)
    assert bad["auc_mean"] > 0.7, bad
    assert bad["jsd_mean"] > same["jsd_mean"]


def test_cls_cnn_through_evaluate():
    g = load_geometry("ds2-coarse")
    inc, x = toy_showers(g, 400, seed=8)
    r = evaluate(ShowerData(inc[:200], x[:200]), ShowerData(inc[200:], x[200:]), g, metrics="cls-cnn",
                 classifier=ClassifierConfig(epochs=1, batch_size=100, progress=False), cnn=TINY, plots=False)
    c = r["classifiers"]["cls-cnn"]
    assert 0.0 <= c["auc_mean"] <= 1.0 and c["input_set"] == "low" and c["network"].startswith("3D ResNet")
    assert c["trainable_parameters"] == sum(p.numel() for p in ResNet3d((9, 8, 9), TINY).parameters())
    inc1, x1 = toy_showers("ds1-photons", 200, seed=1)
    with pytest.raises(EvaluationError, match="regular voxel grid"):
        evaluate(ShowerData(inc1[:100], x1[:100]), ShowerData(inc1[100:], x1[100:]), "ds1-photons", metrics="cls-cnn")
