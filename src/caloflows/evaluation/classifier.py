"""Binary classifier test, generated vs reference (review sec. 8.3; CaloFlow paper appendix B).

The DNN of the official CaloChallenge code (``evaluate.py``): Linear(d, 2048), then two hidden
Linear(2048, 2048), then Linear(2048, 1) -- three 2048-wide activations, leaky ReLU (slope 0.01),
sigmoid output, no dropout or batch norm; Adam, learning rate 2e-4, batches of 1000, up to
50 epochs.  Each sample is split 60/20/20 into train/validation/test before merging (balanced
classes), labels reference = 1 and generated = 0, float64 (CONVENTIONS).  The epoch with the best
validation accuracy is kept; an isotonic regression fitted on the validation split calibrates it
(predictions clipped to [1e-6, 1 - 1e-6]); AUC and JSD = (ln 2 - BCE) / ln 2 are computed on the
test split.  Repeated over seeds, the mean and standard deviation are reported (the published AUCs
are mean and std over 10 runs).

``n_hidden_layers`` counts the 2048-wide activations: 3 is the official network (default; 9,138,177
trainable parameters for the 362 ds2 high-level inputs), 2 the shallower network caloflows used
before (4,941,825), kept as an option (``--classifier-layers 2``).
"""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import roc_auc_score
from tqdm.auto import tqdm

from ..errors import EvaluationError

__all__ = ["ClassifierConfig", "ClassifierRun", "build_dnn", "official_dnn_parameters", "split_indices",
           "train_binary", "binary_test", "OFFICIAL_DNN_LAYERS"]

CLIP = 1e-6
#: 2048-wide activations of the official CaloChallenge DNN (input layer + 2 hidden layers)
OFFICIAL_DNN_LAYERS = 3


@dataclass
class ClassifierConfig:
    """Architecture and training settings (defaults: review sec. 8.3)."""

    hidden: int = 2048
    n_hidden_layers: int = OFFICIAL_DNN_LAYERS
    epochs: int = 50
    batch_size: int = 1000
    lr: float = 2e-4
    device: str = "cpu"
    predict_batch: int = 10_000  # showers per forward pass when predicting (lower it for the CNN on ds3)
    progress: bool | None = None  # None: only when stderr is a terminal


@dataclass
class ClassifierRun:
    """Result of one trained classifier."""

    seed: int
    auc: float
    jsd: float
    best_epoch: int
    best_val_accuracy: float
    n_train: int
    n_val: int
    n_test: int


def build_dnn(
    n_in: int, hidden: int = 2048, n_hidden_layers: int = OFFICIAL_DNN_LAYERS, n_out: int = 1
) -> torch.nn.Sequential:
    """Fully connected net with ``n_hidden_layers`` leaky-ReLU (0.01) activations of width ``hidden``;
    outputs logits (sigmoid/softmax applied outside).  The default is the official network.

    >>> official_dnn_parameters(362) == sum(p.numel() for p in build_dnn(362).parameters())
    True
    """
    layers: list[torch.nn.Module] = []
    width = n_in
    for _ in range(n_hidden_layers):
        layers += [torch.nn.Linear(width, hidden), torch.nn.LeakyReLU(0.01)]
        width = hidden
    layers.append(torch.nn.Linear(width, n_out))
    return torch.nn.Sequential(*layers)


def official_dnn_parameters(n_in: int, hidden: int = 2048, n_hidden_layers: int = OFFICIAL_DNN_LAYERS) -> int:
    """Trainable parameters of the DNN: (d + 1) h + (k - 1) (h + 1) h + (h + 1)."""
    return (n_in + 1) * hidden + (n_hidden_layers - 1) * (hidden + 1) * hidden + hidden + 1


def split_indices(n: int, rng: np.random.Generator, fractions=(0.6, 0.2, 0.2)) -> tuple[np.ndarray, ...]:
    """Shuffle range(n) and cut it 60/20/20 (train, validation, test)."""
    perm = rng.permutation(n)
    a = int(round(fractions[0] * n))
    b = a + int(round(fractions[1] * n))
    return perm[:a], perm[a:b], perm[b:]


def _show_progress(flag: bool | None) -> bool:
    return sys.stderr.isatty() if flag is None else flag


@torch.no_grad()
def predict_logits(model: torch.nn.Module, x: np.ndarray, device: str, batch: int = 10_000) -> np.ndarray:
    model.eval()
    out = [model(torch.from_numpy(x[i : i + batch]).to(device)).cpu().numpy() for i in range(0, len(x), batch)]
    return np.concatenate(out, axis=0)


def train_binary(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    cfg: ClassifierConfig,
    seed: int,
    desc: str = "classifier",
    build: Callable[[int], torch.nn.Module] | None = None,
) -> tuple[torch.nn.Module, int, float]:
    """Train the DNN (or ``build(n_inputs)``, e.g. the CNN of :mod:`.cnn`) with BCE; return the model
    at the epoch of best validation accuracy."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    dev = cfg.device
    net = build(x_train.shape[1]) if build is not None else build_dnn(x_train.shape[1], cfg.hidden, cfg.n_hidden_layers)
    model = net.to(dev, torch.float64)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    loss_fn = torch.nn.BCEWithLogitsLoss()  # = sigmoid output + BCE, numerically stable
    xt = torch.from_numpy(x_train)
    yt = torch.from_numpy(y_train.astype(np.float64))
    best_acc, best_epoch, best_state = -1.0, 0, None
    bar = tqdm(range(cfg.epochs), desc=desc, disable=not _show_progress(cfg.progress), leave=False)
    for epoch in bar:
        model.train()
        perm = torch.from_numpy(rng.permutation(len(xt)))
        for i in range(0, len(perm), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            if build is not None and len(idx) < 2:  # batch norm cannot train on one shower
                continue
            xb, yb = xt[idx].to(dev), yt[idx].to(dev)
            opt.zero_grad()
            loss = loss_fn(model(xb).squeeze(1), yb)
            loss.backward()
            opt.step()
        acc = float(np.mean((predict_logits(model, x_val, dev, cfg.predict_batch)[:, 0] > 0) == (y_val > 0.5)))
        bar.set_postfix(val_acc=f"{acc:.4f}")
        if acc > best_acc:
            best_acc, best_epoch, best_state = acc, epoch + 1, copy.deepcopy(model.state_dict())
    if best_state is None:  # no epoch, or the validation accuracy was never a number
        raise EvaluationError(f"{desc}: classifier training produced no model (epochs={cfg.epochs})")
    model.load_state_dict(best_state)
    return model, best_epoch, best_acc


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def calibrated_scores(
    model: torch.nn.Module, x_val, y_val, x_test, device: str, batch: int = 10_000
) -> np.ndarray:
    """Isotonic regression fitted on the validation split, applied to the test split, clipped."""
    p_val = _sigmoid(predict_logits(model, x_val, device, batch)[:, 0])
    p_test = _sigmoid(predict_logits(model, x_test, device, batch)[:, 0])
    iso = IsotonicRegression(y_min=CLIP, y_max=1 - CLIP, out_of_bounds="clip").fit(p_val, y_val)
    return np.clip(iso.predict(p_test), CLIP, 1 - CLIP)


def auc_jsd(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """ROC AUC and JSD = (ln 2 - BCE) / ln 2 of calibrated probabilities ``p`` (label 1 = reference)."""
    bce = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    return float(roc_auc_score(y, p)), float((math.log(2) - bce) / math.log(2))


def binary_test(
    x_gen: np.ndarray,
    x_ref: np.ndarray,
    cfg: ClassifierConfig | None = None,
    seeds: int | list[int] = 1,
    desc: str = "classifier",
    build: Callable[[int], torch.nn.Module] | None = None,
) -> dict:
    """Train ``seeds`` classifiers (different splits and initialisations) generated vs reference.

    ``build(n_inputs)`` replaces the DNN by another network (same protocol, calibration and outputs).

    Returns ``{"auc_mean", "auc_std", "jsd_mean", "jsd_std", "runs": [...], "config": {...}}``.
    """
    cfg = cfg or ClassifierConfig()
    x_gen = np.ascontiguousarray(x_gen, dtype=np.float64)
    x_ref = np.ascontiguousarray(x_ref, dtype=np.float64)
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    runs = []
    for s in seed_list:
        rng = np.random.default_rng(1000 + s)
        sg = split_indices(len(x_gen), rng)
        sr = split_indices(len(x_ref), rng)
        parts = []
        for ig, ir in zip(sg, sr):
            x = np.concatenate([x_gen[ig], x_ref[ir]])
            y = np.concatenate([np.zeros(len(ig)), np.ones(len(ir))])
            parts.append((x, y))
        (xtr, ytr), (xva, yva), (xte, yte) = parts
        model, best_epoch, best_acc = train_binary(xtr, ytr, xva, yva, cfg, seed=s, desc=f"{desc} seed {s}", build=build)
        p = calibrated_scores(model, xva, yva, xte, cfg.device, cfg.predict_batch)
        auc, jsd = auc_jsd(yte, p)
        runs.append(ClassifierRun(s, auc, jsd, best_epoch, best_acc, len(ytr), len(yva), len(yte)))
    aucs = np.array([r.auc for r in runs])
    jsds = np.array([r.jsd for r in runs])
    return {
        "auc_mean": float(aucs.mean()),
        "auc_std": float(aucs.std(ddof=1)) if len(aucs) > 1 else 0.0,
        "jsd_mean": float(jsds.mean()),
        "jsd_std": float(jsds.std(ddof=1)) if len(jsds) > 1 else 0.0,
        "runs": [asdict(r) for r in runs],
        "config": {k: v for k, v in asdict(cfg).items() if k != "progress"},
    }
