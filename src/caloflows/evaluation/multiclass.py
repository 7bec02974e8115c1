"""Multiclass classifier test between several generated samples (review sec. 8.3, eqs. 41, 42).

One classifier learns "sample 1 vs sample 2 vs ... vs sample n"; evaluated on the reference
(Geant4) showers, the mean log-posterior

    LP(model i | samples j) = 1/N sum_{x_k in j} log p_model i(x_k)        (eq. 41)

tells which generated sample the reference is closest to (largest LP).  As a self-consistency
check (eq. 42) the classifier must identify the held-out test split of each sample:
LP(model i | samples i) > LP(model i | samples j != i) for every i.

Network (review sec. 8.3): one hidden layer of 4096, leaky ReLU 0.01, softmax output, batches of
2000, up to 25 epochs stopping once the validation loss stops improving, best state by validation
loss.  The review uses schedule-free AdamW (lr 1e-3); that package is not a dependency here, so
plain ``torch.optim.AdamW`` with lr 1e-3 is used.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import EvaluationError
from .classifier import _show_progress, build_dnn, predict_logits, split_indices

__all__ = ["MulticlassConfig", "multiclass_test", "log_posterior_matrix"]


@dataclass
class MulticlassConfig:
    hidden: int = 4096
    n_hidden_layers: int = 1
    epochs: int = 25
    batch_size: int = 2000
    lr: float = 1e-3
    patience: int = 3
    device: str = "cpu"
    progress: bool | None = None


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def log_posterior_matrix(log_p: list[np.ndarray]) -> np.ndarray:
    """LP[i, j] = mean over samples j of log p_i (eq. 41); ``log_p[j]`` is (N_j, n_models)."""
    return np.stack([lp.mean(axis=0) for lp in log_p], axis=1)


def _train(xtr, ytr, xva, yva, n_classes: int, cfg: MulticlassConfig, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    dev = cfg.device
    model = build_dnn(xtr.shape[1], cfg.hidden, cfg.n_hidden_layers, n_out=n_classes).to(dev, torch.float64)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(xtr), torch.from_numpy(ytr.astype(np.int64))
    best, best_state, bad = np.inf, None, 0
    bar = tqdm(range(cfg.epochs), desc=f"multiclass seed {seed}", disable=not _show_progress(cfg.progress), leave=False)
    for _ in bar:
        model.train()
        perm = torch.from_numpy(rng.permutation(len(xt)))
        for i in range(0, len(perm), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            opt.zero_grad()
            loss = loss_fn(model(xt[idx].to(dev)), yt[idx].to(dev))
            loss.backward()
            opt.step()
        lp = _log_softmax(predict_logits(model, xva, dev))
        val_loss = float(-np.mean(lp[np.arange(len(yva)), yva]))
        bar.set_postfix(val_loss=f"{val_loss:.4f}")
        if val_loss < best:
            best, best_state, bad = val_loss, copy.deepcopy(model.state_dict()), 0
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    if best_state is None:  # no epoch, or the validation loss was never finite
        raise EvaluationError(f"multiclass seed {seed}: training produced no model (epochs={cfg.epochs})")
    model.load_state_dict(best_state)
    return model


def multiclass_test(
    samples: dict[str, np.ndarray],
    reference: np.ndarray,
    cfg: MulticlassConfig | None = None,
    seeds: int = 1,
) -> dict:
    """Train the multiclass classifier on the generated ``samples`` (name -> (N, D) inputs) and
    report the mean log-posterior of every model on the reference (eq. 41, averaged over seeds),
    the LP matrix on the held-out test splits and whether eq. 42 holds for every seed."""
    cfg = cfg or MulticlassConfig()
    names = list(samples)
    if len(names) < 2:
        raise ValueError("the multiclass test needs at least two generated samples")
    xs = [np.ascontiguousarray(samples[n], dtype=np.float64) for n in names]
    ref = np.ascontiguousarray(reference, dtype=np.float64)
    lp_ref_runs, lp_test_runs, ok_runs = [], [], []
    for s in range(seeds):
        rng = np.random.default_rng(2000 + s)
        splits = [split_indices(len(x), rng) for x in xs]
        merged = []
        for part in range(3):
            x = np.concatenate([x[sp[part]] for x, sp in zip(xs, splits)])
            y = np.concatenate([np.full(len(sp[part]), k) for k, sp in enumerate(splits)])
            merged.append((x, y))
        model = _train(*merged[0], *merged[1], len(names), cfg, seed=s)
        test_lp = [_log_softmax(predict_logits(model, x[sp[2]], cfg.device)) for x, sp in zip(xs, splits)]
        m = log_posterior_matrix(test_lp)
        ok = all(m[i, i] > m[i, j] for i in range(len(names)) for j in range(len(names)) if j != i)
        lp_ref_runs.append(_log_softmax(predict_logits(model, ref, cfg.device)).mean(axis=0))
        lp_test_runs.append(m)
        ok_runs.append(bool(ok))
    lp_ref = np.array(lp_ref_runs)
    return {
        "models": names,
        "log_posterior_reference": {n: float(v) for n, v in zip(names, lp_ref.mean(axis=0))},
        "log_posterior_reference_std": {n: float(v) for n, v in zip(names, lp_ref.std(axis=0))},
        "closest_to_reference": names[int(np.argmax(lp_ref.mean(axis=0)))],
        "log_posterior_test_matrix": np.mean(lp_test_runs, axis=0).tolist(),
        "self_consistent_eq42": ok_runs,
        "config": {k: v for k, v in asdict(cfg).items() if k != "progress"},
    }
