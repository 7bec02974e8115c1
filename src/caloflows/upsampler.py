"""The SUPERCALO flow as pure functions: fit on (shower, coarse voxel) rows, upsample coarse
showers, with the resampling factor N (Pang, Raine, Shih, arXiv:2308.11700, sec. III B, V C).

* :func:`fit_upsampler` trains a conditional MAF with RQS transforms (:func:`caloflows.flows.build_maf`)
  on the rows of a :class:`~caloflows.layerdata.CoarseVoxelRows` (streamed from a file) or
  :class:`~caloflows.layerdata.InMemoryCoarseVoxelRows`: mean negative log-likelihood, Adam,
  OneCycle LR per batch (base -> max over 45 % of the steps, back over 45 %, then an
  annihilation phase ending 10x below the base LR: the paper's 18 + 18 + 4 of 40 epochs),
  70 % / 30 % shower split, the epoch with the lowest validation loss kept.
* :func:`upsample` samples relative fine energies for every coarse voxel of the given coarse
  showers (float64 inverse), ``resample`` times per coarse shower (table V: draw n/N coarse
  showers and upsample each N times), then applies the 15.15 keV cut and the exact
  renormalisation (:func:`caloflows.superres.assemble_fine`).

Presets (:data:`PRESETS`): ``full`` = table II and sec. III B (8 MADE blocks of 2 x 128, 8 bins,
tail bound 14, batches of 60k coarse voxels, OneCycle 2e-5 -> 1e-3 over 40 epochs); ``quick``
is sized for 2 CPU cores.

>>> import numpy as np
>>> from caloflows.coarsegraining import CHOICES
>>> from caloflows.layerdata import InMemoryCoarseVoxelRows
>>> from caloflows.superres import SuperCaloPreprocessing
>>> from caloflows.toy_showers import toy_showers
>>> cmap = CHOICES["B"].bind("ds2")
>>> einc, fine = toy_showers(cmap.fine, 8, seed=0)
>>> rows = InMemoryCoarseVoxelRows(einc, fine, cmap, SuperCaloPreprocessing.fit(einc, fine, cmap))
>>> fit = fit_upsampler(rows, UpsamplerConfig(transforms=2, hidden_features=(16,), epochs=1, batch_size=512))
>>> out = upsample(fit, cmap.coarse_grain(fine[:2]), einc[:2], resample=3, seed=1)
>>> out.showers.shape, out.coarse_index.tolist()
((6, 6480), [0, 0, 0, 1, 1, 1])
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from .coarsegraining import CoarseMap
from .errors import ConditionsError, ConfigError
from .flows import build_maf, double_precision, flow_sample
from .superres import CUT_MEV, SuperCaloPreprocessing, assemble_fine, build_conditions

__all__ = ["UpsamplerConfig", "UpsamplerFit", "UpsampleResult", "PRESETS", "fit_upsampler", "upsample",
           "build_upsampler_flow", "resample_counts"]


@dataclass
class UpsamplerConfig:
    """Architecture and training schedule of the SUPERCALO flow (table II, sec. III B)."""

    transforms: int = 8
    hidden_features: tuple[int, ...] = (128, 128)
    bins: int = 8
    bound: float = 14.0
    epochs: int = 40
    batch_size: int = 60_000
    base_lr: float = 2e-5
    max_lr: float = 1e-3
    annihilation: float = 0.1  # 4 of 40 epochs
    val_fraction: float = 0.3
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        self.hidden_features = tuple(int(h) for h in self.hidden_features)
        checks = [("transforms", self.transforms >= 1), ("epochs", self.epochs >= 1), ("batch_size", self.batch_size >= 1),
                  ("bins", self.bins >= 2), ("bound", self.bound > 0), ("hidden_features", all(h > 0 for h in self.hidden_features)),
                  ("base_lr", 0 < self.base_lr <= self.max_lr), ("annihilation", 0 <= self.annihilation < 1),
                  ("val_fraction", 0 < self.val_fraction < 1)]
        bad = [k for k, ok in checks if not ok]
        if bad:
            raise ConfigError(f"SuperCalo upsampler: bad value for {', '.join(bad)} ({asdict(self)})")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden_features"] = list(self.hidden_features)
        return d


#: the paper's settings and a 2-core CPU preset
PRESETS: dict[str, UpsamplerConfig] = {
    "full": UpsamplerConfig(),
    "quick": UpsamplerConfig(transforms=4, hidden_features=(64, 64), epochs=6, batch_size=10_000, max_lr=2e-3),
}


def build_upsampler_flow(cmap: CoarseMap, prep: SuperCaloPreprocessing, config: UpsamplerConfig) -> nn.Module:
    """The conditional MAF: ``group_size`` features, ``prep.condition_dim(cmap)`` conditions."""
    return build_maf(cmap.group_size, context=prep.condition_dim(cmap), transforms=config.transforms,
                     hidden_features=config.hidden_features, bins=config.bins, bound=config.bound)


@dataclass
class UpsamplerFit:
    """A trained SUPERCALO flow with everything :func:`upsample` needs."""

    flow: nn.Module
    cmap: CoarseMap
    prep: SuperCaloPreprocessing
    config: UpsamplerConfig
    history: dict = field(default_factory=dict)
    best_epoch: int = 0


def _nll(flow: nn.Module, t: np.ndarray, c: np.ndarray, device: torch.device, dtype=torch.float32) -> Tensor:
    x = torch.as_tensor(t, dtype=dtype, device=device)
    cc = torch.as_tensor(c, dtype=dtype, device=device)
    return -flow(cc).log_prob(x).mean()


@torch.no_grad()
def _val_loss(flow: nn.Module, rows, val: np.ndarray, config: UpsamplerConfig, device: torch.device) -> float:
    tot, n = 0.0, 0
    # fixed noise for validation: comparable across epochs
    for t, c in rows.batches(config.batch_size, seed=config.seed + 1_000_003, epoch=0, showers=val,
                             shuffle=False, drop_last=False):
        tot += float(_nll(flow, t, c, device)) * len(t)
        n += len(t)
    return tot / max(n, 1)


def fit_upsampler(rows, config: UpsamplerConfig | None = None, progress: bool = False) -> UpsamplerFit:
    """Train the SUPERCALO flow on (shower, coarse voxel) rows (see module docstring).

    Args:
        rows: :class:`~caloflows.layerdata.CoarseVoxelRows` or :class:`~caloflows.layerdata.InMemoryCoarseVoxelRows`.
        config: :class:`UpsamplerConfig` (default: the ``full`` preset).

    ``history``: ``val_loss`` has the untrained flow's value first (epoch 0), then one per
    epoch; ``train_loss``, ``lr`` (the last LR the epoch used) and ``seconds`` (wall time of the
    epoch including its validation pass) one per epoch.
    """
    config = copy.deepcopy(PRESETS["full"] if config is None else config)
    device = torch.device(config.device)
    torch.manual_seed(config.seed)
    flow = build_upsampler_flow(rows.cmap, rows.prep, config).to(device)
    train, val = rows.split(config.val_fraction, seed=config.seed)
    if len(train) == 0 or len(val) == 0:
        raise ConfigError(f"SuperCalo upsampler: {rows.n} showers are too few for a "
                          f"{1 - config.val_fraction:.0%} / {config.val_fraction:.0%} split")
    n_train_rows = rows.n_rows(train)
    steps = max(1, n_train_rows // config.batch_size)
    drop_last = n_train_rows >= config.batch_size
    opt = torch.optim.Adam(flow.parameters(), lr=config.base_lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=config.max_lr, total_steps=steps * config.epochs,
        pct_start=max((1.0 - config.annihilation) / 2.0, 1e-3), anneal_strategy="linear", cycle_momentum=False,
        div_factor=config.max_lr / config.base_lr, final_div_factor=10.0, three_phase=True)
    hist: dict[str, list] = {"train_loss": [], "val_loss": [_val_loss(flow, rows, val, config, device)],
                             "lr": [], "seconds": []}
    best, best_state, done = hist["val_loss"][0], copy.deepcopy(flow.state_dict()), 0
    best_epoch = 0
    for epoch in range(1, config.epochs + 1):
        t0, tot, n = time.perf_counter(), 0.0, 0
        used_lr = opt.param_groups[0]["lr"]
        flow.train()
        for t, c in rows.batches(config.batch_size, seed=config.seed, epoch=epoch, showers=train, drop_last=drop_last):
            if done >= steps * config.epochs:
                break
            loss = _nll(flow, t, c, device)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            used_lr = opt.param_groups[0]["lr"]  # the LR of this step (after the last step the
            sched.step()                         # schedule extrapolates below zero)
            done += 1
            tot += float(loss.detach()) * len(t)
            n += len(t)
        flow.eval()
        v = _val_loss(flow, rows, val, config, device)
        hist["train_loss"].append(tot / max(n, 1))
        hist["val_loss"].append(v)
        hist["lr"].append(used_lr)
        hist["seconds"].append(time.perf_counter() - t0)
        if progress:
            print(f"supercalo epoch {epoch}: train {hist['train_loss'][-1]:.4f} val {v:.4f} "
                  f"({hist['seconds'][-1]:.1f} s)", flush=True)
        if math.isfinite(v) and v < best:
            best, best_state, best_epoch = v, copy.deepcopy(flow.state_dict()), epoch
    flow.load_state_dict(best_state)
    flow.eval()
    return UpsamplerFit(flow, rows.cmap, rows.prep, config, hist, best_epoch)


def resample_counts(n: int, resample: int) -> int:
    """Coarse showers to draw for ``n`` fine showers with resampling factor N: ``ceil(n / N)``."""
    if n < 0 or resample < 1:
        raise ConfigError(f"need n >= 0 and a resampling factor >= 1, got n={n}, N={resample}")
    return -(-n // resample)


@dataclass
class UpsampleResult:
    """``showers`` (M N, V) fine showers (float64, MeV), ``incident_energies`` (M N,) and
    ``coarse_index`` (M N,): which input coarse shower each came from (shower-major)."""

    incident_energies: np.ndarray
    showers: np.ndarray
    coarse_index: np.ndarray


@torch.no_grad()
def upsample(
    fit: UpsamplerFit,
    coarse_showers: np.ndarray,
    incident_energies: np.ndarray,
    layer_energies: np.ndarray | None = None,
    *,
    resample: int = 1,
    batch_rows: int = 100_000,
    seed: int | None = None,
    threshold: float = CUT_MEV,
    n: int | None = None,
) -> UpsampleResult:
    """Upsample coarse showers (M, n_coarse) ``resample`` times each (float64 sampling).

    Args:
        layer_energies: (M, n_fine_layers) fine layer energies (FLOW-1's output in the full
            chain, the true ones in the table III study).  Required when a coarse voxel spans
            several fine layers (choice A); with ``f_z = 1`` (choice B) they follow from the
            coarse shower and may be omitted.
        resample: N; the output holds N independent upsamplings of every coarse shower.
        n: keep only the first ``n`` outputs (e.g. n fine showers from ceil(n/N) coarse ones).
        batch_rows: coarse voxels per flow call (memory: about 1 kB per row in float64).
        seed: seed of the latent draws (None: torch's global generator).
    """
    cmap, prep, flow = fit.cmap, fit.prep, fit.flow
    coarse = np.asarray(coarse_showers, dtype=np.float64)
    einc = np.asarray(incident_energies, dtype=np.float64).reshape(-1)
    if coarse.ndim != 2 or coarse.shape[1] != cmap.n_coarse:
        raise ConditionsError(f"coarse showers: expected (M, {cmap.n_coarse}) for {cmap}, got {coarse.shape}")
    if len(einc) != len(coarse):
        raise ConditionsError(f"{len(einc)} incident energies for {len(coarse)} coarse showers")
    if resample < 1:
        raise ConfigError(f"resampling factor must be >= 1, got {resample}")
    if layer_energies is None:
        if cmap.grouping.f_z != 1:
            raise ConditionsError(f"{cmap.grouping.label}: coarse voxels span {cmap.grouping.f_z} fine layers, so "
                                  "SuperCalo needs the fine layer energies (FLOW-1's or the true ones)")
        layer_energies = cmap.coarse.layer_energies(coarse)
    layer_energies = np.asarray(layer_energies, dtype=np.float64)
    m = len(coarse)
    idx = np.repeat(np.arange(m), resample)
    if n is not None:
        idx = idx[:n]
    cond_rows = build_conditions(einc, coarse, layer_energies, cmap, prep).reshape(m * cmap.n_coarse, -1)
    Vc, k = cmap.n_coarse, cmap.group_size
    gen = None
    p = next(flow.parameters())
    if seed is not None:
        gen = torch.Generator(device=p.device).manual_seed(int(seed))
    fine = np.empty((len(idx), cmap.fine.n_voxels))
    per = max(1, batch_rows // Vc)  # fine showers per flow call
    cond = cond_rows.reshape(m, Vc, -1)
    with double_precision(flow):
        for a in range(0, len(idx), per):
            sel = idx[a:a + per]
            ct = torch.as_tensor(cond[sel].reshape(len(sel) * Vc, -1), dtype=torch.float64, device=p.device)
            y = flow_sample(flow, ct, generator=gen)
            rel = prep.target_inverse(y).reshape(len(sel), Vc, k)
            fine[a:a + len(sel)] = assemble_fine(rel, coarse[sel], cmap, threshold)
    return UpsampleResult(einc[idx], fine, idx)
