"""Known-answer tests of the binary and multiclass classifier metrics (review sec. 8.3).

Sample sizes: two halves of 10 000 toy showers give 2 000 test showers per class, so the AUC of
indistinguishable samples has a standard deviation of about sqrt((1/n1 + 1/n2) / 12) = 0.009 and
0.5 +- 0.03 is a > 3 sigma band.  The networks are small (64 hidden units, a few epochs, larger
learning rate) so that the tests run in seconds on 2 CPU cores; the architecture is the same code
path as the full 2 x 2048 network.
"""

import numpy as np
import pytest
import torch

from caloflows.evaluation.classifier import ClassifierConfig, auc_jsd, binary_test, build_dnn, split_indices
from caloflows.evaluation.features import compute_features
from caloflows.evaluation.inputs import classifier_inputs
from caloflows.evaluation.multiclass import MulticlassConfig, log_posterior_matrix, multiclass_test
from caloflows.evaluation.params import count_parameters
from caloflows.evaluation.toy import toy_showers
from caloflows.geometry import load_geometry

N_HALF = 10_000
FAST = ClassifierConfig(hidden=64, n_hidden_layers=2, epochs=12, lr=1e-3, batch_size=250, progress=False)


@pytest.fixture(scope="module", autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def halves():
    g = load_geometry("ds1-photons")
    inc, x = toy_showers(g, 2 * N_HALF, seed=21)
    a = compute_features(x[:N_HALF], inc[:N_HALF], g)
    b = compute_features(x[N_HALF:], inc[N_HALF:], g)
    defect = x[N_HALF:].copy()
    defect[:, g.layer_slice(2)] *= 1.1  # deliberate defect: layer 2 voxels x 1.1
    c = compute_features(defect, inc[N_HALF:], g)
    return a, b, c


def test_paper_architecture():
    # official evaluate.py: Linear(d, 2048), 2 hidden Linear(2048, 2048), Linear(2048, 1)
    m = build_dnn(369)
    assert count_parameters(m) == 369 * 2048 + 2048 + 2 * (2048 * 2048 + 2048) + 2048 + 1
    acts = [l for l in m if isinstance(l, torch.nn.LeakyReLU)]
    assert len(acts) == 3 and all(a.negative_slope == 0.01 for a in acts)
    c = ClassifierConfig()
    assert (c.hidden, c.n_hidden_layers, c.epochs, c.batch_size, c.lr) == (2048, 3, 50, 1000, 2e-4)
    # the shallower network caloflows used before stays available
    assert count_parameters(build_dnn(369, n_hidden_layers=2)) == 369 * 2048 + 2048 + 2048 * 2048 + 2048 + 2048 + 1


def test_split_is_60_20_20():
    tr, va, te = split_indices(1000, np.random.default_rng(0))
    assert (len(tr), len(va), len(te)) == (600, 200, 200)
    assert len(np.unique(np.concatenate([tr, va, te]))) == 1000


def test_auc_jsd_known_values():
    y = np.array([0, 0, 1, 1.0])
    auc, jsd = auc_jsd(y, np.full(4, 0.5))
    assert auc == 0.5 and jsd == pytest.approx(0.0)
    auc, jsd = auc_jsd(y, np.array([1e-6, 1e-6, 1 - 1e-6, 1 - 1e-6]))
    assert auc == 1.0 and jsd == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("kind", ["high", "low"])
def test_halves_of_one_sample_auc_half(halves, kind):
    a, b, _ = halves
    r = binary_test(classifier_inputs(b, kind), classifier_inputs(a, kind), FAST, seeds=1)
    assert abs(r["auc_mean"] - 0.5) < 0.03, r
    assert abs(r["jsd_mean"]) < 0.02
    run = r["runs"][0]
    assert (run["n_train"], run["n_val"], run["n_test"]) == (12000, 4000, 4000)


@pytest.mark.parametrize("kind", ["high", "low"])
def test_defect_gives_auc_clearly_above(halves, kind):
    a, _, c = halves
    r = binary_test(classifier_inputs(c, kind), classifier_inputs(a, kind), FAST, seeds=1)
    assert r["auc_mean"] > 0.56, r  # > 6 sigma above 0.5, twice the +-0.03 band of equal samples
    assert r["jsd_mean"] > 0.01


def test_seeds_give_mean_and_spread(halves):
    a, _, c = halves
    cfg = ClassifierConfig(hidden=16, epochs=2, lr=1e-3, batch_size=500, progress=False)
    r = binary_test(classifier_inputs(c, "high")[:3000], classifier_inputs(a, "high")[:3000], cfg, seeds=3)
    aucs = [x["auc"] for x in r["runs"]]
    assert len(aucs) == 3 and len(set(aucs)) > 1
    assert r["auc_mean"] == pytest.approx(np.mean(aucs)) and r["auc_std"] == pytest.approx(np.std(aucs, ddof=1))


def test_log_posterior_matrix():
    lp = [np.log(np.array([[0.9, 0.1], [0.7, 0.3]])), np.log(np.array([[0.2, 0.8]]))]
    m = log_posterior_matrix(lp)
    assert m[0, 0] == pytest.approx((np.log(0.9) + np.log(0.7)) / 2)
    assert m[1, 1] == pytest.approx(np.log(0.8))
    assert m[0, 1] == pytest.approx(np.log(0.2))


def test_multiclass_identifies_the_right_model():
    g = load_geometry("ds1-photons")
    inc, x = toy_showers(g, 12_000, seed=31)
    good = x[:3000]
    bad_layer = x[3000:6000].copy()
    bad_layer[:, g.layer_slice(2)] *= 1.5
    bad_scale = x[6000:9000] * 0.8

    def feats(v, e):
        return classifier_inputs(compute_features(v, e, g), "high")

    samples = {"good": feats(good, inc[:3000]), "layer2x1.5": feats(bad_layer, inc[3000:6000]),
               "scale0.8": feats(bad_scale, inc[6000:9000])}
    ref = feats(x[9000:], inc[9000:])
    cfg = MulticlassConfig(hidden=64, epochs=10, batch_size=250, progress=False)
    r = multiclass_test(samples, ref, cfg, seeds=1)
    assert r["self_consistent_eq42"] == [True]  # eq. 42 holds for clearly different samples
    m = np.array(r["log_posterior_test_matrix"])
    assert all(m[i, i] > m[i, j] for i in range(3) for j in range(3) if i != j)
    assert r["closest_to_reference"] == "good"
    lp = r["log_posterior_reference"]
    assert lp["good"] > lp["layer2x1.5"] and lp["good"] > lp["scale0.8"]
    with pytest.raises(ValueError, match="at least two"):
        multiclass_test({"only": ref}, ref, cfg)
