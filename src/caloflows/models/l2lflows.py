"""L2LFlows: an energy distribution flow plus one causal flow per layer (``l2lflows.txt``; review sec. 4.1).

* Energy distribution flow (:mod:`caloflows.models.energy_flow`): ``p(E_0..E_{L-1} | E_inc)``,
  appendix B.1; samples with ``E_dep / E_inc > max_ratio`` (2.6) are drawn again.
* Causal flow ``i`` (sec. 3.2, eq. 3.7): ``p(I_i | G_i(I_{i-5}, ..., I_{i-1}, E_i, E_inc))``, a MAF
  with RQS (table 4: 4 MADE blocks, one hidden layer of 128, 8 bins, reversed orders) whose
  context passes through the embedding network ``G_i`` (256, 128 -> 64) trained jointly; flow 0
  has no embedding (context ``E_0, E_inc``).  Preprocessing (B.2): ``U(0, 1 keV)`` noise,
  ``l_alpha(I / max)`` with the per-layer training maximum, then per-voxel standardisation
  (not in the paper: zuko's splines act on [-5, 5]); ``E_i`` is the thresholded layer sum plus
  the B.1 noise, conditioned as ``log10(E_i / GeV + 1e-6) + 1`` (B.7); ``E_inc`` as B.3.
  The context layers enter in the same preprocessed space as the flow outputs, so at
  generation the raw samples of the previous flows are used directly.
* Training in float32, sampling in float64 (appendix A); layers are sampled in order and each
  is post-processed with the threshold-aware renormalisation of appendix B.3
  (:mod:`caloflows.postprocess`), so every layer sums exactly to its ``E_i`` with no voxel
  below the threshold.

Each flow is trained independently ("the log-likelihood is additive", sec. 4.1): ``train(...,
layers=[10, ..., 19])`` trains a subset into a model directory; the preprocessing constants are
computed deterministically from the training file (same data and seed -> same constants) and
every weight file records the hash of the constants it was trained with.  :func:`gather`
combines directories trained on several machines; :meth:`L2LFlows.load` refuses a directory
with missing layers (naming them) or with layers trained on other constants.

Training data are read per layer as contiguous HDF5 column blocks
(:mod:`caloflows.layerdata`): only the columns of layer ``i`` and its context layers, kept in
memory up to ``cache_mb`` and streamed chunk by chunk beyond.  Training runs under torchrun
with DistributedDataParallel (:mod:`caloflows.training.layer_loop`).

Deviations (documented): no random-rotation augmentation; E_max and the E_inc range come from
the training data instead of the ILD constants; ``log_prob`` is the density of the
preprocessed representation (energy flow + all causal flows), not of voxel energies in MeV.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .. import flows as F
from .. import preprocessing as P
from ..errors import ModelDirError, UsageError
from ..geometry import Geometry, load_geometry
from ..io import ShowerData
from ..layerdata import ColumnBlock, LayerColumns, LayerStats, MemoryColumns, context_layers, parse_layers
from ..postprocess import threshold_renormalise
from ..training.checkpoint import read_json, read_model_config, save_weights, write_json, write_model_config
from ..training.distributed import DistContext
from ..training.loop import ArraySource, StreamSource, TrainConfig, fit_flow
from .base import Generator, need
from .embedding import ConditionalFlow
from .energy_flow import (
    PAPER_ENERGY_INPUTS,
    EnergyConstants,
    EnergyFlow,
    EnergyFlowModel,
    einc_summary,
    layer_energy_condition,
    quick_energy_train,
)
from .settings import UNSTANDARDISED_VOXEL_INPUTS, LayerwiseSettings, medium_voxel_cut

__all__ = ["L2LFlows", "L2LFlowsConfig", "gather", "format_layers"]

#: settings that may differ between the runs that train the layers of one model
RUNTIME_SETTINGS = {"cache_mb", "chunk_rows", "edf_train", "cf_train", "max_ratio", "max_resample", "postprocess",
                    "voxel_cut_mev"}
KIND = "l2lflows"
CONSTANTS_FILE = "constants.json"
ENERGY_FILE = "energy_flow.safetensors"


def layer_file(i: int) -> str:
    return f"causal_layer_{i:03d}.safetensors"


def format_layers(layers: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    out, layers = [], sorted(layers)
    k = 0
    while k < len(layers):
        j = k
        while j + 1 < len(layers) and layers[j + 1] == layers[j] + 1:
            j += 1
        out.append(str(layers[k]) if j == k else f"{layers[k]}-{layers[j]}")
        k = j + 1
    return ", ".join(out)


@dataclass
class L2LFlowsConfig(LayerwiseSettings):
    """Hyper-parameters (defaults: L2LFlows table 4; shared ones in :class:`LayerwiseSettings`)."""

    RANGES: ClassVar[dict] = {**LayerwiseSettings.RANGES, "n_cond": (0, None, False)}

    n_cond: int = 5
    cf_transforms: int = 4
    cf_hidden: list = field(default_factory=lambda: [128])
    embed_hidden: list = field(default_factory=lambda: [256, 128])
    embed_out: int = 64
    voxel_noise_kev: float = 1.0
    chunk_rows: int = 4096
    edf_train: dict = field(default_factory=lambda: asdict(TrainConfig(epochs=200, batch_size=256, base_lr=6e-6, max_lr=6e-5, val_fraction=0.1)))
    cf_train: dict = field(default_factory=lambda: asdict(TrainConfig(epochs=200, batch_size=1024, base_lr=6e-5, max_lr=6e-4, val_fraction=0.1)))


# The voxel-flow inputs of the presets: the logit values as they are (eq. B.4), inside a spline
# domain of 14 (settings.UNSTANDARDISED_VOXEL_INPUTS).  iCaloFlow keeps the standardisation: its
# inputs are fractions of E_i, and on Geant4 ds2 they stay within +-4.5.  Every preset also gives the
# energy flow its paper inputs (energy_flow.PAPER_ENERGY_INPUTS).


def _quick(g: Geometry) -> L2LFlowsConfig:
    return L2LFlowsConfig(
        **UNSTANDARDISED_VOXEL_INPUTS, **PAPER_ENERGY_INPUTS,
        cf_hidden=[64], embed_hidden=[128, 64], embed_out=32,
        edf_train=quick_energy_train(val_fraction=0.1),
        cf_train=asdict(TrainConfig(epochs=10, batch_size=256, base_lr=1e-4, max_lr=2e-3, val_fraction=0.1)),
    )


#: causal-flow epochs of the ``medium`` preset (quick: 10).  On 10000 Geant4 ds2 showers, 25 epochs
#: lower the mean best validation loss from 0.710 to 0.659 nats per voxel and, with the 2 MeV cut, the
#: high-level AUC from 0.829 +- 0.010 to 0.778 +- 0.016 (README "L2LFlows: the cut at the MIP scale,
#: and more epochs"); training 2.3 CPU-hours instead of 1.3
MEDIUM_CAUSAL_EPOCHS = 25


def _medium(g: Geometry) -> L2LFlowsConfig:
    # Issue 15: the quick networks, their causal flows trained 2.5x longer (about 1 hour of 2 CPU
    # cores on 10000 ds2 showers), and the threshold-aware generation cut (eqs. B.8-B.9) at the MIP
    # scale on Par04 geometries.
    c = _quick(g)
    c.cf_train = {**c.cf_train, "epochs": MEDIUM_CAUSAL_EPOCHS}
    c.voxel_cut_mev = medium_voxel_cut(g)
    return c


def _full(g: Geometry) -> L2LFlowsConfig:
    return L2LFlowsConfig(**UNSTANDARDISED_VOXEL_INPUTS, **PAPER_ENERGY_INPUTS)


L2LFlowsConfig.PRESETS = {"quick": _quick, "medium": _medium, "full": _full}


def compute_constants(cols, cfg: L2LFlowsConfig, progress: bool = False) -> tuple[dict, LayerStats]:
    """Preprocessing constants from the training data; deterministic given the data and ``cfg.seed``.

    One streaming pass for layer energies and maxima, one over the first ``std_rows`` rows for
    the per-voxel standardisation of ``l_alpha((I + noise) / max_layer)``.
    """
    g = cols.geometry
    stats = cols.scan(progress=progress)
    energy = EnergyConstants.fit(stats.layer_energies, stats.incident_energies, seed=cfg.seed, alpha=cfg.alpha,
                                 standardise=cfg.energy_standardise)
    noise = cfg.voxel_noise_kev * P.KEV
    vmax = np.maximum(stats.layer_max_voxel, 0.0) + noise + 1e-9
    vmax_col = vmax[g.layer_index]
    m = min(cfg.std_rows, cols.n)
    s1 = np.zeros(g.n_voxels)
    s2 = np.zeros(g.n_voxels)
    logit = P.Logit(cfg.alpha)
    rows = LayerColumns.scan_rows(cols)  # type: ignore[arg-type]
    for a in range(0, m, rows):
        b = min(a + rows, m)
        x = cols.read(0, g.n_voxels, a, b).astype(np.float64)
        x = x + noise * np.random.default_rng([cfg.seed, 23, a]).random(x.shape)
        y = logit.forward(np.clip(x / vmax_col, 0.0, 1.0))
        s1 += y.sum(0)
        s2 += (y * y).sum(0)
    mean = s1 / m
    std = np.sqrt(np.maximum(s2 / m - mean**2, 0.0))
    std = np.maximum(std, 1e-3)
    if not cfg.voxel_standardise:  # eq. B.4 as it is: the flows see l_alpha(I / max)
        mean, std = np.zeros_like(mean), np.ones_like(std)
    consts = {
        "n_showers": int(cols.n),
        "energy": energy.to_dict(),
        "voxel_max": vmax.tolist(),
        "voxel_mean": mean.tolist(),
        "voxel_std": std.tolist(),
        "incident_energies": einc_summary(stats.incident_energies),
    }
    return consts, stats


def constants_sha(consts: dict) -> str:
    body = {k: v for k, v in consts.items() if k != "sha"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def _close(a, b, rtol: float = 1e-6) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = set(a) - {"sha"}
        return keys == set(b) - {"sha"} and all(_close(a[k], b[k], rtol) for k in keys)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_close(x, y, rtol) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(a - b) <= rtol * max(abs(a), abs(b), 1e-12)
    return a == b


def _read_meta(path: Path) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return dict(f.metadata() or {})
    except Exception as exc:  # noqa: BLE001
        raise ModelDirError(f"{path}: corrupt or unreadable weight file ({type(exc).__name__}: {exc})") from None


# ---------------------------------------------------------------------------- the model
class L2LFlows(EnergyFlowModel, Generator):
    """L2LFlows generator for a geometry: energy flow + one causal flow per layer.

    The causal flows are built lazily (a job training ``--layers 10-19`` holds only those);
    each is initialised from ``(seed, layer)`` alone, so a layer trained alone has the weights
    it would have in a run of all layers.
    """

    kind = KIND
    Config = L2LFlowsConfig
    stages = {"train": "the energy flow and the causal flows (any --layers subset; --gather joins them)"}
    cfg: L2LFlowsConfig

    def build(self) -> None:
        g = self.geometry
        if g.n_layers < 2:
            raise UsageError("L2LFlows needs a geometry with at least 2 layers")
        small = [i for i, n in enumerate(g.layer_sizes) if n < 2]
        if small:
            raise UsageError(f"L2LFlows needs at least 2 voxels per layer; layers {small} have fewer")
        self._consts: dict | None = None
        self._energy_consts: EnergyConstants | None = None
        self.energy_flow: EnergyFlow | None = None
        self.causal: dict[int, ConditionalFlow] = {}

    def networks(self) -> dict[str, nn.Module]:
        nets: dict[str, nn.Module] = {} if self.energy_flow is None else {"energy_flow": self.energy_flow}
        nets.update({f"causal_layer_{i:03d}": m for i, m in sorted(self.causal.items())})
        return nets

    def variant_ready(self, variant: str | None) -> bool:
        return self.energy_flow is not None and len(self.causal) == self.geometry.n_layers

    def stage_done(self, stage: str) -> bool:
        return stage == "train" and self.variant_ready(None)

    def parameter_counts(self) -> dict[str, int]:
        out = {"energy_flow": F.count_parameters(self.energy_flow) if self.energy_flow is not None else 0}
        out["causal"] = sum(F.count_parameters(m) for m in self.causal.values())
        return out

    # ------------------------------------------------------------------ networks
    def build_energy_flow(self) -> EnergyFlow:
        torch.manual_seed(self.cfg.seed * 7919)
        c = self.cfg
        return EnergyFlow(self.geometry.n_layers, c.edf_transforms, tuple(c.edf_hidden), c.bins, c.energy_spline_bound,
                          seed=c.seed, n_params=self.n_params, degrees=c.made_degrees)

    def context_size(self, i: int) -> int:
        g = self.geometry
        return sum(g.layer_sizes[j] for j in context_layers(i, self.cfg.n_cond)) + 2 + self.n_params

    def build_causal(self, i: int) -> ConditionalFlow:
        """Causal flow ``i``, initialised from ``(seed, i)`` only (same weights in any subset run)."""
        torch.manual_seed(self.cfg.seed * 7919 + 1000 + i)
        c = self.cfg
        return ConditionalFlow(self.geometry.layer_sizes[i], self.context_size(i), embed=i > 0 and c.n_cond > 0,
                               embed_hidden=c.embed_hidden, embed_out=c.embed_out, transforms=c.cf_transforms,
                               hidden=c.cf_hidden, bins=c.bins, bound=c.voxel_spline_bound, degrees=c.made_degrees)

    # ------------------------------------------------------------------ constants
    def set_constants(self, consts: dict) -> None:
        self._consts = {**consts, "sha": constants_sha(consts)}
        self._energy_consts = EnergyConstants.from_dict(consts["energy"])
        g = self.geometry
        self._vmax_col = np.asarray(consts["voxel_max"], dtype=np.float64)[g.layer_index]
        self._mean = np.asarray(consts["voxel_mean"], dtype=np.float64)
        self._std = np.asarray(consts["voxel_std"], dtype=np.float64)

    def _cols(self, c0: int, c1: int, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        def col(a: np.ndarray) -> Tensor:
            return torch.as_tensor(a[c0:c1], dtype=like.dtype, device=like.device)

        return col(self._vmax_col), col(self._mean), col(self._std)

    def voxels_forward(self, x: Tensor, c0: int, c1: int) -> Tensor:
        """B.4 + standardisation for columns ``[c0, c1)``: ``(l_alpha(x / max) - mean) / std``."""
        vmax, mean, std = self._cols(c0, c1, x)
        return (P.Logit(self.cfg.alpha).forward((x / vmax).clamp(0.0, 1.0)) - mean) / std

    def voxels_inverse(self, y: Tensor, c0: int, c1: int) -> Tensor:
        vmax, mean, std = self._cols(c0, c1, y)
        return P.Logit(self.cfg.alpha).inverse(y * std + mean).clamp(0.0, 1.0) * vmax

    def conditions(self, E_i: Tensor, einc: Tensor, params: Tensor) -> Tensor:
        """Eq. B.7 of E_i, eq. B.3 of E_inc, then the detector-parameter features."""
        c = torch.stack([layer_energy_condition(E_i), self.energy_consts.condition(einc)[:, 0]], 1)
        return torch.cat([c, params.to(c.dtype)], 1)

    # ------------------------------------------------------------------ training inputs
    def _energy_inputs(self, stats: LayerStats, par_all: np.ndarray):
        E_all, einc_all = stats.layer_energies, stats.incident_energies
        ec = self.energy_consts

        def inputs(ii, raw, gen):
            E = torch.as_tensor(E_all[ii])
            e = torch.as_tensor(einc_all[ii])
            return ec.forward(ec.noisy(E, gen)).float(), EnergyFlow.context(ec, e, torch.as_tensor(par_all[ii])).float()

        return inputs

    def _causal_inputs(self, i: int, stats: LayerStats, par_all: np.ndarray):
        g = self.geometry
        ctx = context_layers(i, self.cfg.n_cond)
        c0 = int(g.layer_offsets[ctx[0] if ctx else i])
        t0, t1 = int(g.layer_offsets[i]), int(g.layer_offsets[i + 1])
        noise = self.cfg.voxel_noise_kev * P.KEV
        E_all, einc_all = stats.layer_energies[:, i], stats.incident_energies
        ec = self.energy_consts

        def inputs(ii, raw, gen):
            x = torch.as_tensor(raw, dtype=torch.float64)
            x = x + noise * torch.rand(x.shape, dtype=torch.float64, generator=gen)
            y = self.voxels_forward(x, c0, t1)
            E = ec.noisy(torch.as_tensor(E_all[ii]), gen)
            cond = self.conditions(E, torch.as_tensor(einc_all[ii]), torch.as_tensor(par_all[ii]))
            context = torch.cat([y[:, :t0 - c0], cond], 1)
            return y[:, t0 - c0:].float(), context.float()

        return inputs, c0, t1

    # ------------------------------------------------------------------ training
    def _prepare(self, cols, out_dir: Path, ctx: DistContext, progress: bool) -> LayerStats:
        consts, stats = compute_constants(cols, self.cfg, progress=progress and ctx.is_main)
        cpath = out_dir / CONSTANTS_FILE
        if cpath.exists():
            old = read_json(cpath, "preprocessing constants")
            if not _close(old, consts):
                raise ModelDirError(
                    f"{out_dir}: holds layers trained on other data or settings (preprocessing constants differ); "
                    "use a new --out directory")
            consts = {k: v for k, v in old.items() if k != "sha"}
        if (out_dir / "config.json").exists():
            old_cfg = read_model_config(out_dir, kind=KIND, geometry=self.geometry)["config"].get("l2lflows", {})
            new_cfg = self.cfg.to_dict()
            diff = sorted(k for k in new_cfg if k not in RUNTIME_SETTINGS and old_cfg.get(k) != new_cfg[k])
            if diff:
                raise ModelDirError(f"{out_dir}: holds an L2LFlows model with other settings ({', '.join(diff)}); "
                                    "use a new --out directory")
        self.set_constants(consts)
        if ctx.is_main:
            write_model_config(out_dir, KIND, self.geometry, self.config_record())
            if not cpath.exists():
                write_json(cpath, {**consts, "sha": self.consts["sha"]})
        ctx.barrier()
        return stats

    def train(self, data: "ShowerData | str | os.PathLike", out_dir: str | os.PathLike, *,
              layers: Sequence[int] | str | None = None, energy: bool = True, resume: bool = False,
              device: str = "cpu", progress: bool = True, ctx: DistContext | None = None) -> dict:
        """Train the energy flow (if ``energy``) and the causal flows of ``layers`` (default all; an
        empty sequence: none, the energy flow alone) into ``out_dir``.

        ``data`` is a file path (streamed per layer) or in-memory :class:`~caloflows.io.ShowerData`.
        Returns a summary with best validation losses and seconds per epoch of every flow.
        """
        ctx = ctx or DistContext()
        g = self.geometry
        # an empty sequence (not None, which means all) trains the energy flow alone
        energy_only = layers is not None and not isinstance(layers, str) and len(layers) == 0
        layer_list = [] if energy_only else parse_layers(layers, g.n_layers)
        if not layer_list and not energy:
            raise UsageError("nothing to train: no layers and no energy flow")
        out_dir = Path(out_dir)
        self.training_conditions(data)
        cols = (LayerColumns(data, g, self.cfg.chunk_rows) if isinstance(data, (str, os.PathLike))
                else MemoryColumns(data, g, self.cfg.chunk_rows))
        if cols.n < 10:
            raise UsageError(f"{cols.path}: need at least 10 training showers, got {cols.n}")
        from ..io import read_conditions

        par_all = self.condition_spec.features(read_conditions(data)[1])
        self.device = ctx.device(device)
        stats = self._prepare(cols, out_dir, ctx, progress)
        summary: dict = {"layers": {}, "streaming": {}}
        if energy:
            self.energy_flow = self.build_energy_flow().to(self.device)
            r = fit_flow(self.energy_flow, ArraySource(np.zeros((cols.n, 0), np.float32)), self._energy_inputs(stats, par_all), "energy_flow", out_dir,
                         TrainConfig(**self.cfg.edf_train), ctx=ctx, device=self.device, norm=g.n_layers,
                         progress=progress, resume=resume)
            if ctx.is_main:
                save_weights(out_dir / ENERGY_FILE, self.energy_flow.state_dict(), self.weight_metadata("energy_flow"))
            summary["energy_flow"] = {"best_val": r.best_val, "epochs": r.epochs_run, "seconds": r.seconds,
                                      "seconds_per_epoch": float(np.mean(r.history["seconds"])) if r.history["seconds"] else None}
        for i in layer_list:
            flow = self.build_causal(i).to(self.device)
            inputs, c0, c1 = self._causal_inputs(i, stats, par_all)
            block = ColumnBlock(cols, c0, c1, cache_mb=self.cfg.cache_mb)
            r = fit_flow(flow, StreamSource(cols.n, cols.chunk_rows, block.get), inputs, f"causal_layer_{i:03d}", out_dir, TrainConfig(**self.cfg.cf_train),
                         ctx=ctx, device=self.device, norm=g.layer_sizes[i], progress=progress, resume=resume)
            self.causal[i] = flow
            if ctx.is_main:
                save_weights(out_dir / layer_file(i), flow.state_dict(), self.weight_metadata(f"causal_layer_{i:03d}"))
            summary["layers"][i] = {"best_val": r.best_val, "epochs": r.epochs_run, "seconds": r.seconds,
                                    "seconds_per_epoch": float(np.mean(r.history["seconds"])) if r.history["seconds"] else None}
            summary["streaming"][i] = block.streaming
            del block
        ctx.barrier()
        return summary

    def _fit_train(self, data: "ShowerData | str | os.PathLike", out_dir: Path, *, resume: bool, device: str,
                   progress: bool, ctx: DistContext, layers: "Sequence[int] | str | None" = None,
                   energy: bool = True) -> dict:
        """Stage ``train``: the energy flow (if ``energy``) and the causal flows of ``layers`` (:meth:`train`)."""
        return self.train(data, out_dir, layers=layers, energy=energy, resume=resume, device=device,
                          progress=progress, ctx=ctx)

    # ------------------------------------------------------------------ sampling
    def _check_complete(self) -> None:
        missing = [i for i in range(self.geometry.n_layers) if i not in self.causal]
        if self.energy_flow is None or missing:
            what = []
            if self.energy_flow is None:
                what.append("the energy flow")
            if missing:
                what.append(f"causal flows of layers {format_layers(missing)}")
            raise ModelDirError(f"L2LFlows model is incomplete: {' and '.join(what)} not trained "
                                f"(train them with 'caloflows train l2lflows --layers ...' and gather)")

    @torch.no_grad()
    def sample_layers(self, E: Tensor, einc: Tensor, params: Tensor | None = None,
                      generator: torch.Generator | None = None, progress: bool = False) -> Tensor:
        """Walk the causal flows layer by layer: ``(E_i, E_inc, theta) -> voxels`` (float64, on the model's device)."""
        g = self.geometry
        params = einc.new_zeros(len(einc), self.n_params) if params is None else params
        n = len(einc)
        out = torch.zeros(n, g.n_voxels, dtype=torch.float64, device=self.device)
        ys: dict[int, Tensor] = {}
        thr = self.voxel_cut
        for i in tqdm(range(g.n_layers), desc="layers", leave=False, disable=None if progress else True):
            flow = self.causal[i]
            t0, t1 = int(g.layer_offsets[i]), int(g.layer_offsets[i + 1])
            parts = [ys[j] for j in context_layers(i, self.cfg.n_cond)]
            context = torch.cat(parts + [self.conditions(E[:, i], einc, params)], 1)
            with F.double_precision(flow):
                y = flow.sample(context, generator=generator)
            y = torch.nan_to_num(y, nan=0.0, posinf=50.0, neginf=-50.0)
            ys[i] = y
            x = self.voxels_inverse(y, t0, t1)
            if self.cfg.postprocess == "threshold":
                v = threshold_renormalise(x, E[:, i], thr)
            else:
                v = P.renormalise_layers(x, E[:, i:i + 1], np.array([0, t1 - t0]))
                v = torch.where(v >= thr, v, torch.zeros_like(v))
            out[:, t0:t1] = v
            drop = [j for j in ys if j <= i - self.cfg.n_cond]
            for j in drop:
                del ys[j]
        return out

    def _sample_batch(self, einc: Tensor, params: Tensor, generator: torch.Generator, variant: str | None) -> Tensor:
        """``E_inc -> energy flow -> causal flows 0..L-1 -> B.3 post-processing`` for one batch."""
        ef = need(self.energy_flow, "the L2LFlows energy flow")
        E = ef.sample_energies(einc, self.energy_consts, self.cfg.max_ratio, self.cfg.max_resample, generator, params)
        return self.sample_layers(E, einc, params, generator)

    def _log_prob_batch(self, showers: Tensor, einc: Tensor, params: Tensor, variant: str | None) -> Tensor:
        """log p of the preprocessed shower: energy flow + every causal flow (noise at its mid-point)."""
        self._check_complete()
        g, ec, s, e = self.geometry, self.energy_consts, showers, einc
        E = torch.as_tensor(g.layer_energies(g.apply_threshold(s.cpu().numpy())), device=self.device)
        E = E + ec.noise_mean_kev * P.KEV
        y_all = self.voxels_forward(s + 0.5 * self.cfg.voxel_noise_kev * P.KEV, 0, g.n_voxels)
        ef = need(self.energy_flow, "the L2LFlows energy flow")
        with F.double_precision(ef, *self.causal.values()):
            lp = ef(ec.forward(E), EnergyFlow.context(ec, e, params))
            for i in range(g.n_layers):
                ctx = context_layers(i, self.cfg.n_cond)
                c0 = int(g.layer_offsets[ctx[0] if ctx else i])
                t0, t1 = int(g.layer_offsets[i]), int(g.layer_offsets[i + 1])
                context = torch.cat([y_all[:, c0:t0], self.conditions(E[:, i], e, params)], 1)
                lp = lp + self.causal[i](y_all[:, t0:t1], context)
        return lp

    # ------------------------------------------------------------------ files
    def weight_metadata(self, name: str) -> dict[str, str]:
        """Every weight file records the hash of the constants it was trained with (and its layer)."""
        meta = {**super().weight_metadata(name), "constants_sha": self.consts["sha"]}
        if name.startswith("causal_layer_"):
            meta["layer"] = str(int(name[len("causal_layer_"):]))
        return meta

    @classmethod
    def load(cls, directory: str | os.PathLike, device: str = "cpu", geometry: Geometry | str | None = None,
             require_complete: bool = True) -> "L2LFlows":
        """Load a model directory; with ``require_complete`` refuses one with missing layers."""
        directory = Path(directory)
        g = load_geometry(geometry) if geometry is not None else None
        model = cls._from_record(directory, read_model_config(directory, kind=KIND, geometry=g))
        cpath = directory / CONSTANTS_FILE
        if not model._load_constants(directory, required=require_complete):
            return model.to(device)
        sha = model.consts["sha"]

        def check(path: Path) -> None:
            meta = _read_meta(path)
            if meta.get("constants_sha") != sha:
                raise ModelDirError(f"{path}: trained with other preprocessing constants than {cpath} "
                                    "(other data or settings); retrain this layer or gather consistent directories")

        if (directory / ENERGY_FILE).exists():
            check(directory / ENERGY_FILE)
            model.energy_flow = model.build_energy_flow()
            model.load_network(directory / ENERGY_FILE, "energy_flow")
        for i in range(model.geometry.n_layers):
            p = directory / layer_file(i)
            if p.exists():
                check(p)
                model.causal[i] = model.build_causal(i)
                model.load_network(p, f"causal_layer_{i:03d}")
        if require_complete:
            try:
                model._check_complete()
            except ModelDirError as exc:
                raise ModelDirError(f"{directory}: {exc}") from None
        return model.to(device)


# ---------------------------------------------------------------------------- gather
def gather(sources: Sequence[str | os.PathLike], out: str | os.PathLike) -> dict:
    """Combine L2LFlows directories trained on different machines into ``out``.

    Every source must hold the same geometry, settings and (numerically equal) preprocessing
    constants; weight files are copied (re-stamped with ``out``'s constants hash).  Returns
    ``{"layers": [...], "energy_flow": bool, "missing": [...]}``; a layer found in two sources
    is an error.
    """
    out = Path(out)
    srcs = [Path(s) for s in sources]
    if not srcs:
        raise UsageError("give at least one source directory to gather")
    first = read_model_config(srcs[0], kind=KIND)
    consts0 = read_json(srcs[0] / CONSTANTS_FILE, "preprocessing constants")
    found: dict[str, Path] = {}
    for s in srcs:
        d = read_model_config(s, kind=KIND, geometry=first["geometry"])
        a, b = d["config"].get("l2lflows", {}), first["config"].get("l2lflows", {})
        diff = sorted(k for k in set(a) | set(b) if k not in RUNTIME_SETTINGS and a.get(k) != b.get(k))
        if diff:
            raise ModelDirError(f"{s}: trained with other settings than {srcs[0]} ({', '.join(diff)})")
        c = read_json(s / CONSTANTS_FILE, "preprocessing constants")
        if not _close(c, consts0):
            raise ModelDirError(f"{s}: preprocessing constants differ from {srcs[0]} (trained on other data?)")
        sha = c.get("sha")
        for p in sorted(s.glob("*.safetensors")):
            if p.name != ENERGY_FILE and not p.name.startswith("causal_layer_"):
                continue
            if _read_meta(p).get("constants_sha") != sha:
                raise ModelDirError(f"{p}: trained with other constants than {s / CONSTANTS_FILE}")
            if p.name in found and found[p.name].resolve() != p.resolve():
                raise ModelDirError(f"{p.name} is in both {found[p.name].parent} and {s}; keep only one")
            found[p.name] = p
    model = L2LFlows._from_record(srcs[0], first)
    model.set_constants({k: v for k, v in consts0.items() if k != "sha"})
    out.mkdir(parents=True, exist_ok=True)
    if (out / CONSTANTS_FILE).exists() and not _close(read_json(out / CONSTANTS_FILE, "preprocessing constants"), consts0):
        raise ModelDirError(f"{out}: holds a model with other preprocessing constants; gather into a new directory")
    write_model_config(out, KIND, model.geometry, first["config"])
    write_json(out / CONSTANTS_FILE, model.consts)
    from safetensors.torch import load_file

    for name, p in found.items():
        dst = out / name
        if dst.resolve() == p.resolve():
            meta = _read_meta(p)
            if meta.get("constants_sha") == model.consts["sha"]:
                continue
        meta = {**_read_meta(p), "constants_sha": model.consts["sha"]}
        save_weights(dst, load_file(str(p)), meta)
        for extra in (f"history_{p.stem}.json", f"loss_{p.stem}.png"):  # the training record travels along
            if (p.parent / extra).exists():
                shutil.copyfile(p.parent / extra, out / extra)
    layers = sorted(int(n[len("causal_layer_"):-len(".safetensors")]) for n in found if n.startswith("causal_layer_"))
    missing = [i for i in range(model.geometry.n_layers) if i not in layers]
    return {"layers": layers, "energy_flow": ENERGY_FILE in found, "missing": missing}
