"""iCaloFlow: inductive CaloFlow for high-granularity calorimeters (review sec. 4.2).

Three flows:

* flow-1 ``p_1(E_i | E_inc)``: the energy distribution flow shared with L2LFlows
  (:mod:`caloflows.models.energy_flow`; outliers with ``E_dep / E_inc > max_ratio`` redrawn);
* flow-2 ``p_2(Î_0 | E_inc, E_0)``: unit-normalised voxels of the first layer;
* flow-3 ``p_3(Î_i | E_inc, E_i, E_{i-1}, Î_{i-1}, onehot(i))``: ONE flow for every layer
  ``i >= 1``, conditioned on the previous layer's normalised voxels and the one-hot layer number
  (all layers must have the same number of voxels).

Flows 2 and 3 are MAF teachers with RQS transforms (ds2: 8 MADE blocks with two hidden layers
of 256); each gets an IAF student (hidden 384) trained by probability density distillation
(:func:`caloflows.flows.distillation_loss`: x- and z-losses, optionally per MADE block).

Preprocessing: ``U(0, 1 keV)`` noise, division by the layer sum (``Î``), logit with alpha=1e-6,
per-voxel standardisation (layer 0 on its own, layers >= 1 pooled); conditions
``E_inc`` as L2LFlows eq. B.3 and ``log10(E / GeV + 1e-6) + 1`` (eq. B.7) for ``E_i, E_{i-1}``.
The context ``Î_{i-1}`` is in the standardised logit space, so generation feeds the previous
flow's raw output.  Sampling walks the layers in order; each layer is scaled to ``E_i`` with
the threshold-aware post-processing of L2LFlows appendix B.3 (or a plain renormalisation and
cut, ``postprocess="renormalise"``).  Teachers sample in float64, students in float32.

Training rows are showers for flow-2 and (shower, layer) pairs for flow-3; the trainer is the
DDP-capable :func:`caloflows.training.layer_loop.fit_flow`.  Training from a file holds only
the layer energies in memory: showers up to ``cache_mb`` are read once, larger files (ds3) are
streamed in chunks of ``chunk_rows`` showers (chunk order and rows within a chunk shuffled per
epoch), and the standardisation constants come from a streaming pass over ``std_rows`` showers.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .. import flows as F
from .. import preprocessing as P
from ..geometry import Geometry, load_geometry
from ..io import ShowerData, _check_values
from ..layerdata import ColumnBlock, LayerColumns
from ..postprocess import threshold_renormalise
from ..training.checkpoint import (ModelDirError, load_weights, read_json, read_model_config, save_weights,
                                   write_json, write_model_config)
from ..training.distributed import DistContext
from ..training.layer_loop import ArraySource, StreamSource, fit_flow
from ..training.loop import TrainConfig, resolve_device
from .base import Generator, incident_energies
from .embedding import ConditionalFlow
from .energy_flow import EnergyConstants, EnergyFlow, einc_summary, layer_energy_condition
from .settings import override_settings, preset_config

__all__ = ["ICaloFlow", "ICaloFlowConfig", "TrainingShowers", "GENERATOR", "PRESETS", "train_from_args", "distill_from_args"]

GENERATOR = "ICaloFlow"
KIND = "icaloflow"
CONSTANTS_FILE = "constants.json"
WEIGHTS = {"energy": "flow1_energy.safetensors", "teacher2": "flow2_teacher.safetensors",
           "teacher3": "flow3_teacher.safetensors", "student2": "flow2_student.safetensors",
           "student3": "flow3_student.safetensors"}


@dataclass
class ICaloFlowConfig:
    """Hyper-parameters (defaults: review sec. 4.2, dataset 2)."""

    edf_transforms: int = 6
    edf_hidden: list = field(default_factory=lambda: [64])
    transforms: int = 8
    hidden: list = field(default_factory=lambda: [256, 256])
    student_hidden: list = field(default_factory=lambda: [384, 384])
    bins: int = 8
    bound: float = 5.0
    alpha: float = 1e-6
    noise_kev: float = 1.0
    max_ratio: float | None = 2.6
    max_resample: int = 20
    postprocess: str = "threshold"
    distill_intermediate: bool = True
    chunk_rows: int = 512
    cache_mb: float = 1024.0
    std_rows: int = 20_000
    seed: int = 0
    edf_train: dict = field(default_factory=lambda: asdict(TrainConfig(epochs=100, batch_size=256, base_lr=4e-5, max_lr=1e-3)))
    teacher_train: dict = field(default_factory=lambda: asdict(TrainConfig(epochs=100, batch_size=512, base_lr=4e-5, max_lr=1e-3)))
    student_train: dict = field(default_factory=lambda: asdict(TrainConfig(epochs=50, batch_size=512, base_lr=4e-5, max_lr=1e-3)))

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: dict) -> "ICaloFlowConfig":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ModelDirError(f"unknown iCaloFlow settings {sorted(unknown)}")
        c = cls(**d)
        if c.postprocess not in ("threshold", "renormalise"):
            raise ValueError(f"postprocess must be 'threshold' or 'renormalise', got {c.postprocess!r}")
        return c

    @classmethod
    def preset(cls, name: str, geometry: Geometry) -> "ICaloFlowConfig":
        return preset_config(PRESETS, name, geometry)


def _quick(g: Geometry) -> ICaloFlowConfig:
    return ICaloFlowConfig(
        edf_transforms=4, transforms=4, hidden=[128], student_hidden=[192],
        edf_train=asdict(TrainConfig(epochs=20, batch_size=256, base_lr=1e-4, max_lr=2e-3)),
        teacher_train=asdict(TrainConfig(epochs=10, batch_size=512, base_lr=1e-4, max_lr=2e-3)),
        student_train=asdict(TrainConfig(epochs=5, batch_size=512, base_lr=1e-4, max_lr=2e-3)),
    )


def _full(g: Geometry) -> ICaloFlowConfig:
    if g.n_voxels > 20_000:  # ds3: flow-3 with one hidden layer (review sec. 4.2)
        return ICaloFlowConfig(hidden=[256], student_hidden=[384])
    return ICaloFlowConfig()


PRESETS = {"quick": _quick, "full": _full}


class TrainingShowers:
    """iCaloFlow's view of its training showers: layer energies in memory, voxels cached or streamed.

    Rows of flow-2 are showers; rows of flow-3 are ``(shower, layer)`` pairs numbered
    ``shower * (L - 1) + layer - 1``, so a chunk of ``chunk_rows`` showers is a contiguous block
    of pair rows.  When the voxels are cached (in-memory data, or a file below ``cache_mb``)
    batches gather from the array; otherwise :meth:`source` streams chunks from the file and
    hands each batch its own voxels (``[layer i, layer i-1]`` per pair).

    Args:
        einc: incident energies (N,), MeV.
        E: layer energies after the threshold cut (N, L), MeV.
        geometry: the voxel geometry (equal layers).
        chunk_rows: showers per streamed chunk.
        cached: all voxels (N, n_voxels) float32, or None to stream from ``block``.
        block: the file's full-width :class:`~caloflows.layerdata.ColumnBlock`.
    """

    def __init__(self, einc: np.ndarray, E: np.ndarray, geometry: Geometry, chunk_rows: int,
                 cached: np.ndarray | None = None, block: ColumnBlock | None = None) -> None:
        if cached is None and block is None:
            raise ValueError("give the cached voxels or a column block to stream")
        self.einc, self.E, self.geometry = einc, E, geometry
        self.n, self.chunk_rows = len(einc), max(1, int(chunk_rows))
        self.cached, self.block = cached, block

    @classmethod
    def from_data(cls, data: ShowerData, geometry: Geometry, chunk_rows: int) -> "TrainingShowers":
        geometry.check_showers(data.showers, "training showers")
        einc = np.asarray(data.incident_energies, dtype=np.float64).reshape(-1)
        _check_values("<training showers>", einc, np.asarray(data.showers))
        sh = np.asarray(data.showers, dtype=np.float32)
        E = geometry.layer_energies(geometry.apply_threshold(sh.astype(np.float64)))
        return cls(einc, E, geometry, chunk_rows, cached=sh)

    @classmethod
    def open(cls, data: "ShowerData | str | os.PathLike", geometry: Geometry, chunk_rows: int = 512,
             cache_mb: float = 1024.0) -> "TrainingShowers":
        """In-memory showers as they are; a file: one validating pass, then cached or streamed."""
        if isinstance(data, ShowerData):
            return cls.from_data(data, geometry, chunk_rows)
        cols = LayerColumns(data, geometry, chunk_rows)
        stats = cols.scan()
        block = ColumnBlock(cols, 0, geometry.n_voxels, cache_mb)
        return cls(stats.incident_energies, stats.layer_energies, geometry, chunk_rows, block.cached, block)

    @property
    def streaming(self) -> bool:
        return self.cached is None

    @property
    def n_chunks(self) -> int:
        return (self.n + self.chunk_rows - 1) // self.chunk_rows

    def chunk_bounds(self, k: int) -> tuple[int, int]:
        return k * self.chunk_rows, min((k + 1) * self.chunk_rows, self.n)

    def rows(self, a: int, b: int) -> np.ndarray:
        """Voxels of showers ``[a, b)`` (float32)."""
        return self.cached[a:b] if self.cached is not None else self.block.get(a, b)

    def _pairs(self, a: int, b: int) -> np.ndarray:
        L, n = self.geometry.n_layers, self.geometry.layer_sizes[0]
        s0, s1 = a // (L - 1), (b - 1) // (L - 1) + 1
        grid = self.rows(s0, s1).reshape(s1 - s0, L, n)
        k = np.arange(a, b)
        shw, lay = k // (L - 1) - s0, 1 + k % (L - 1)
        return np.concatenate([grid[shw, lay], grid[shw, lay - 1]], 1)

    def source(self, which: int):
        """Batch source of flow-2 (``which=2``) or flow-3 rows for :func:`fit_flow`."""
        L, n = self.geometry.n_layers, self.geometry.layer_sizes[0]
        rows = self.n if which == 2 else self.n * (L - 1)
        if self.cached is not None:  # full shuffle; the inputs gather from the array
            return ArraySource(np.zeros((rows, 0), np.float32))
        if which == 2:
            return StreamSource(rows, self.chunk_rows, lambda a, b: self.rows(a, b)[:, :n])
        return StreamSource(rows, self.chunk_rows * (L - 1), self._pairs)


class _DistillObjective(nn.Module):
    """Wraps teacher + student so that ``-forward(...)`` per row is the distillation loss."""

    def __init__(self, teacher: ConditionalFlow, student: ConditionalFlow, intermediate: bool) -> None:
        super().__init__()
        self.teacher, self.student, self.intermediate = teacher, student, intermediate

    def forward(self, y: Tensor, c: Tensor, z: Tensor) -> Tensor:
        return -F.distillation_loss(self.teacher.flow, self.student.flow, y, c, z, self.intermediate, reduce=False)


class ICaloFlow(Generator):
    """iCaloFlow generator: flow-1 (energies), flow-2 (layer 0), flow-3 (layers >= 1), students."""

    kind = KIND

    def __init__(self, geometry: Geometry | str, config: ICaloFlowConfig | None = None) -> None:
        self.geometry = g = load_geometry(geometry)
        if g.n_layers < 2:
            raise ValueError("iCaloFlow needs a geometry with at least 2 layers")
        if len(set(g.layer_sizes)) != 1 or g.layer_sizes[0] < 2:
            raise ValueError(f"iCaloFlow's shared layer flow needs equal layers of >= 2 voxels; "
                             f"{g.name!r} has layer sizes {sorted(set(g.layer_sizes))}")
        self.cfg = config or ICaloFlowConfig()
        self.config = self.cfg.to_dict()
        c, n, L = self.cfg, g.layer_sizes[0], g.n_layers
        self.n = n
        torch.manual_seed(c.seed * 7919)
        self.energy_flow = EnergyFlow(L, c.edf_transforms, tuple(c.edf_hidden), c.bins, c.bound, seed=c.seed)
        kw = dict(embed=False, transforms=c.transforms, bins=c.bins, bound=c.bound)
        self.ctx2, self.ctx3 = 2, n + 3 + (L - 1)
        self.nets: dict[str, ConditionalFlow | EnergyFlow] = {
            "energy": self.energy_flow,
            "teacher2": ConditionalFlow(n, self.ctx2, hidden=c.hidden, **kw),
            "teacher3": ConditionalFlow(n, self.ctx3, hidden=c.hidden, **kw),
            "student2": ConditionalFlow(n, self.ctx2, hidden=c.student_hidden, inverse=True, **kw),
            "student3": ConditionalFlow(n, self.ctx3, hidden=c.student_hidden, inverse=True, **kw),
        }
        self.trained = {k: False for k in self.nets}
        self.consts: dict | None = None
        self.energy_consts: EnergyConstants | None = None
        self.device = torch.device("cpu")

    def to(self, device) -> "ICaloFlow":
        self.device = resolve_device(str(device)) if not isinstance(device, torch.device) else device
        for m in self.nets.values():
            m.to(self.device)
        return self

    # ------------------------------------------------------------------ preprocessing
    def fit_constants(self, data: "ShowerData | TrainingShowers") -> None:
        """Energy-flow constants and the per-voxel logit mean / std (layer 0; layers >= 1 pooled).

        The voxel statistics accumulate chunk by chunk over ``std_rows`` showers (whole chunks in
        an order drawn from the seed), so they need one chunk of memory, not the file.
        """
        c = self.cfg
        t = data if isinstance(data, TrainingShowers) else TrainingShowers.from_data(data, self.geometry, c.chunk_rows)
        energy = EnergyConstants.fit(t.E, t.einc, seed=c.seed, alpha=c.alpha)
        rng = np.random.default_rng([c.seed, 31])
        acc = np.zeros((4, self.n))  # sum / sum of squares, layer 0 and layers >= 1
        cnt = np.zeros(2)
        seen = 0
        for k in rng.permutation(t.n_chunks):
            if seen >= c.std_rows:
                break
            a, b = t.chunk_bounds(int(k))
            b = min(b, a + c.std_rows - seen)
            grid = t.rows(a, b).astype(np.float64).reshape(b - a, self.geometry.n_layers, self.n)
            grid = grid + c.noise_kev * P.KEV * rng.random(grid.shape)
            y = P.Logit(c.alpha).forward(grid / grid.sum(2, keepdims=True))
            acc[0] += y[:, 0].sum(0)
            acc[1] += (y[:, 0] ** 2).sum(0)
            acc[2] += y[:, 1:].sum((0, 1))
            acc[3] += (y[:, 1:] ** 2).sum((0, 1))
            cnt += (b - a, (b - a) * (self.geometry.n_layers - 1))
            seen += b - a
        m0, m = acc[0] / cnt[0], acc[2] / cnt[1]
        s0 = np.sqrt(np.maximum(acc[1] / cnt[0] - m0**2, 0.0))
        s1 = np.sqrt(np.maximum(acc[3] / cnt[1] - m**2, 0.0))
        self.consts = {"energy": energy.to_dict(), "incident_energies": einc_summary(t.einc),
                       "mean0": m0.tolist(), "std0": np.maximum(s0, 1e-3).tolist(),
                       "mean": m.tolist(), "std": np.maximum(s1, 1e-3).tolist()}
        self.energy_consts = energy

    def _ms(self, first: bool, like: Tensor) -> tuple[Tensor, Tensor]:
        k = ("mean0", "std0") if first else ("mean", "std")
        return (torch.as_tensor(self.consts[k[0]], dtype=like.dtype, device=like.device),
                torch.as_tensor(self.consts[k[1]], dtype=like.dtype, device=like.device))

    def normed_forward(self, frac: Tensor, first: bool) -> Tensor:
        m, s = self._ms(first, frac)
        return (P.Logit(self.cfg.alpha).forward(frac.clamp(0.0, 1.0)) - m) / s

    def normed_inverse(self, y: Tensor, first: bool) -> Tensor:
        m, s = self._ms(first, y)
        return P.Logit(self.cfg.alpha).inverse(y * s + m).clamp_min(0.0)

    def _econd(self, E: Tensor) -> Tensor:
        return layer_energy_condition(E)

    def context2(self, E0: Tensor, einc: Tensor) -> Tensor:
        return torch.stack([self.energy_consts.condition(einc)[:, 0], self._econd(E0)], 1)

    def context3(self, y_prev: Tensor, E_i: Tensor, E_prev: Tensor, einc: Tensor, layer: Tensor) -> Tensor:
        onehot = nn.functional.one_hot(layer - 1, self.geometry.n_layers - 1).to(y_prev.dtype)
        return torch.cat([y_prev, torch.stack([self.energy_consts.condition(einc)[:, 0], self._econd(E_i),
                                               self._econd(E_prev)], 1), onehot], 1)

    # ------------------------------------------------------------------ training inputs
    def _data_inputs(self, t: "TrainingShowers", which: int, with_z: bool):
        """Input builder for flow-2 (``which=2``, rows = showers) or flow-3 (rows = shower x layer).

        ``raw`` holds the batch's voxels when the rows are streamed (:meth:`TrainingShowers.source`:
        layer 0 for flow-2, ``[layer i, layer i-1]`` for flow-3); otherwise it has no columns and
        the voxels are gathered from the in-memory showers.
        """
        n, L = self.n, self.geometry.n_layers
        noise = self.cfg.noise_kev * P.KEV
        ec = self.energy_consts
        E_all, einc_all = t.E, t.einc

        def normed(x: Tensor, gen) -> Tensor:
            x = x + noise * torch.rand(x.shape, dtype=x.dtype, generator=gen)
            return x / x.sum(1, keepdim=True)

        def inputs(ii, raw, gen):
            k = np.asarray(ii)
            streamed = raw is not None and raw.shape[1] > 0
            if which == 2:
                s = raw if streamed else t.cached[k, :n]
                y = self.normed_forward(normed(torch.as_tensor(s, dtype=torch.float64), gen), True)
                E0 = ec.noisy(torch.as_tensor(E_all[k, 0]), gen)
                c = self.context2(E0, torch.as_tensor(einc_all[k]))
            else:
                shw, lay = k // (L - 1), 1 + k % (L - 1)
                if streamed:
                    cur, prev = raw[:, :n], raw[:, n:]
                else:
                    cols = lay[:, None] * n + np.arange(n)[None, :]
                    cur, prev = t.cached[shw[:, None], cols], t.cached[shw[:, None], cols - n]
                y = self.normed_forward(normed(torch.as_tensor(cur, dtype=torch.float64), gen), False)
                # context: pooled space for every layer
                yp = self.normed_forward(normed(torch.as_tensor(prev, dtype=torch.float64), gen), False)
                Ei = ec.noisy(torch.as_tensor(E_all[shw, lay]), gen)
                Ep = ec.noisy(torch.as_tensor(E_all[shw, lay - 1]), gen)
                c = self.context3(yp, Ei, Ep, torch.as_tensor(einc_all[shw]), torch.as_tensor(lay))
            out = (y.float(), c.float())
            if with_z:
                out = out + (torch.randn(y.shape, generator=gen),)
            return out

        return inputs

    def _energy_inputs(self, E_all, einc_all):
        ec = self.energy_consts

        def inputs(ii, raw, gen):
            return (ec.forward(ec.noisy(torch.as_tensor(E_all[ii]), gen)).float(),
                    ec.condition(torch.as_tensor(einc_all[ii])).float())

        return inputs

    # ------------------------------------------------------------------ training
    def training_showers(self, data: "ShowerData | str | os.PathLike") -> "TrainingShowers":
        """Training showers from memory or from a CaloChallenge file (validated, layer energies)."""
        t = TrainingShowers.open(data, self.geometry, self.cfg.chunk_rows, self.cfg.cache_mb)
        if t.n < 10:
            raise ValueError(f"need at least 10 training showers, got {t.n}")
        return t

    def fit(self, data: "ShowerData | str | os.PathLike", out_dir: str | os.PathLike, *, resume: bool = False,
            device: str = "cpu", progress: bool = True, stages: tuple[str, ...] = ("energy", "teacher2", "teacher3"),
            ctx: DistContext | None = None) -> dict:
        """Train flow-1 and the flow-2 / flow-3 teachers (``stages``) into ``out_dir``.

        ``data``: showers in memory or the path of a training file (streamed if large).
        """
        ctx = ctx or DistContext()
        out_dir = Path(out_dir)
        t = self.training_showers(data)
        if self.consts is None or not resume:
            self.fit_constants(t)
        self.to(ctx.device(device))
        if ctx.is_main:
            self.save(out_dir)
        L = self.geometry.n_layers
        summary = {}
        for stage in stages:
            if stage == "energy":
                src, fn, norm = ArraySource(np.zeros((t.n, 0), np.float32)), self._energy_inputs(t.E, t.einc), L
                tc = self.cfg.edf_train
            elif stage in ("teacher2", "teacher3"):
                which = 2 if stage == "teacher2" else 3
                src, fn, norm = t.source(which), self._data_inputs(t, which, False), self.n
                tc = self.cfg.teacher_train
            else:
                raise ValueError(f"unknown stage {stage!r}")
            r = fit_flow(self.nets[stage], src, fn, stage, out_dir, TrainConfig(**tc), ctx=ctx, device=self.device,
                         norm=norm, progress=progress, resume=resume)
            self.trained[stage] = True
            if ctx.is_main:
                self.save(out_dir)
            summary[stage] = {"best_val": r.best_val, "epochs": r.epochs_run, "seconds": r.seconds,
                              "seconds_per_epoch": float(np.mean(r.history["seconds"])) if r.history["seconds"] else None}
        return summary

    def distill(self, data: "ShowerData | str | os.PathLike", out_dir: str | os.PathLike, *, resume: bool = False, device: str = "cpu",
                progress: bool = True, epochs: int | None = None, ctx: DistContext | None = None,
                flows: tuple[int, ...] = (2, 3)) -> dict:
        """Train the IAF students of flow-2 and flow-3 (``flows``) from their teachers (probability density distillation)."""
        ctx = ctx or DistContext()
        for t in ("teacher2", "teacher3"):
            if not self.trained[t]:
                raise ModelDirError(f"{out_dir}: the {t} flow is not trained yet; run 'caloflows train icaloflow' first")
        t = self.training_showers(data)
        self.to(ctx.device(device))
        tc = dict(self.cfg.student_train)
        if epochs is not None:
            tc["epochs"] = int(epochs)
            self.cfg.student_train = tc
            self.config = self.cfg.to_dict()
        summary = {}
        for which in flows:
            teacher, student = self.nets[f"teacher{which}"], self.nets[f"student{which}"]
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
            obj = _DistillObjective(teacher, student, self.cfg.distill_intermediate)
            try:
                r = fit_flow(obj, t.source(which), self._data_inputs(t, which, True),
                             f"student{which}", out_dir, TrainConfig(**tc), ctx=ctx, device=self.device, norm=1.0,
                             progress=progress, resume=resume, params=list(student.parameters()))
            finally:
                for p in teacher.parameters():
                    p.requires_grad_(True)
            self.trained[f"student{which}"] = True
            if ctx.is_main:
                self.save(out_dir)
            summary[f"student{which}"] = {"best_val": r.best_val, "epochs": r.epochs_run, "seconds": r.seconds}
        return summary

    # ------------------------------------------------------------------ sampling
    def _flow(self, which: int, student: bool) -> ConditionalFlow:
        return self.nets[f"{'student' if student else 'teacher'}{which}"]

    def _draw(self, flow: ConditionalFlow, c: Tensor, use64: bool, gen) -> Tensor:
        if use64:
            with F.double_precision(flow):
                return flow.sample(c.double(), generator=gen)
        return flow.sample(c.float(), generator=gen).double()

    def _place(self, y: Tensor, E_i: Tensor, first: bool, thr: float) -> Tensor:
        frac = torch.nan_to_num(self.normed_inverse(y, first), nan=0.0, posinf=0.0)
        if self.cfg.postprocess == "threshold":
            return threshold_renormalise(frac, E_i, thr)
        v = P.renormalise_layers(frac, E_i[:, None], np.array([0, self.n]))
        return torch.where(v >= thr, v, torch.zeros_like(v))

    @torch.no_grad()
    def sample_layers(self, E: Tensor, einc: Tensor, student: bool, generator=None, progress: bool = False,
                      threshold: bool = True, float64: bool | None = None) -> Tensor:
        """Flow-2 then flow-3 layer by layer: ``(E_i, E_inc) -> voxels`` (float64)."""
        g, n = self.geometry, self.n
        use64 = (not student) if float64 is None else float64
        thr = g.threshold_mev if threshold else 0.0
        out = torch.zeros(len(einc), g.n_voxels, dtype=torch.float64, device=self.device)
        y = self._draw(self._flow(2, student), self.context2(E[:, 0], einc), use64, generator)
        y = torch.nan_to_num(y, nan=0.0, posinf=50.0, neginf=-50.0)
        out[:, :n] = self._place(y, E[:, 0], True, thr)
        y_prev = self.normed_forward(self.normed_inverse(y, True), False)
        f3 = self._flow(3, student)
        for i in tqdm(range(1, g.n_layers), desc="layers", leave=False, disable=None if progress else True):
            lay = torch.full((len(einc),), i, dtype=torch.long, device=self.device)
            c = self.context3(y_prev, E[:, i], E[:, i - 1], einc, lay)
            y = torch.nan_to_num(self._draw(f3, c, use64, generator), nan=0.0, posinf=50.0, neginf=-50.0)
            out[:, i * n:(i + 1) * n] = self._place(y, E[:, i], False, thr)
            y_prev = y
        return out

    def sample(self, n_or_energies, batch_size: int = 10_000, *, seed: int | None = None, device: str = "cpu",
               progress: bool = False, student: bool | None = None, threshold: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Generate showers (student if trained, else teacher)."""
        if not self.trained["energy"]:
            raise ModelDirError("flow-1 is not trained; run 'caloflows train icaloflow' first")
        if student is None:
            student = self.trained["student2"] and self.trained["student3"]
        need = ["student2", "student3"] if student else ["teacher2", "teacher3"]
        if not all(self.trained[k] for k in need):
            raise ModelDirError(f"iCaloFlow {'students' if student else 'teachers'} not trained"
                                + ("; run 'caloflows distill' first" if student else ""))
        if str(device) != str(self.device):
            self.to(device)
        rng = np.random.default_rng(seed)
        einc = incident_energies(n_or_energies, self.consts["incident_energies"], rng)
        gen = torch.Generator(device=self.device).manual_seed(int(rng.integers(2**62)))
        for m in self.nets.values():
            m.eval()
        out = np.empty((len(einc), self.geometry.n_voxels), dtype=np.float32)
        bs = max(1, int(batch_size))
        for a in tqdm(range(0, len(einc), bs), desc="generate (icaloflow)", disable=None if progress else True):
            e = torch.as_tensor(einc[a:a + bs], dtype=torch.float64, device=self.device)
            E = self.energy_flow.sample_energies(e, self.energy_consts, self.cfg.max_ratio, self.cfg.max_resample, gen)
            out[a:a + bs] = self.sample_layers(E, e, student, gen, progress, threshold).cpu().numpy()
        return einc, out

    @torch.no_grad()
    def log_prob(self, showers: np.ndarray, incident_energies: np.ndarray, batch_size: int = 1000,
                 student: bool = False) -> np.ndarray:
        """log p of the preprocessed shower: flow-1 + flow-2 + flow-3 over layers (teachers by default)."""
        g, n, L = self.geometry, self.n, self.geometry.n_layers
        g.check_showers(showers)
        ec = self.energy_consts
        f2, f3 = self._flow(2, student), self._flow(3, student)
        res = []
        for a in range(0, len(showers), batch_size):
            s = np.asarray(showers[a:a + batch_size], dtype=np.float64)
            e = torch.as_tensor(np.asarray(incident_energies[a:a + batch_size], dtype=np.float64).reshape(-1))
            E = torch.as_tensor(g.layer_energies(g.apply_threshold(s))) + ec.noise_mean_kev * P.KEV
            x = torch.as_tensor(s).reshape(len(s), L, n) + 0.5 * self.cfg.noise_kev * P.KEV
            fr = x / x.sum(2, keepdim=True)
            with F.double_precision(self.energy_flow, f2, f3):
                lp = self.energy_flow(ec.forward(E), ec.condition(e))
                y0 = self.normed_forward(fr[:, 0], True)
                lp = lp + f2(y0, self.context2(E[:, 0], e))
                yp = self.normed_forward(fr[:, 0], False)
                for i in range(1, L):
                    y = self.normed_forward(fr[:, i], False)
                    lay = torch.full((len(s),), i, dtype=torch.long)
                    lp = lp + f3(y, self.context3(yp, E[:, i], E[:, i - 1], e, lay))
                    yp = y
            res.append(lp.numpy())
        return np.concatenate(res)

    # ------------------------------------------------------------------ files
    def save(self, directory: str | os.PathLike) -> None:
        d = Path(directory)
        write_model_config(d, KIND, self.geometry, {"icaloflow": self.cfg.to_dict(), "trained": dict(self.trained)})
        if self.consts is not None:
            write_json(d / CONSTANTS_FILE, self.consts)
        for k, m in self.nets.items():
            if self.trained[k]:
                save_weights(d / WEIGHTS[k], m.state_dict(), {"kind": KIND, "network": k})

    @classmethod
    def load(cls, directory: str | os.PathLike, device: str = "cpu", geometry: Geometry | str | None = None) -> "ICaloFlow":
        g = load_geometry(geometry) if geometry is not None else None
        d = read_model_config(directory, kind=KIND, geometry=g)
        try:
            cfg = ICaloFlowConfig.from_dict(d["config"]["icaloflow"])
            trained = dict(d["config"]["trained"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelDirError(f"{directory}: malformed iCaloFlow config ({exc})") from None
        model = cls(d["geometry"], cfg)
        cpath = Path(directory) / CONSTANTS_FILE
        if cpath.exists():
            c = read_json(cpath, "preprocessing constants")
            try:
                model.consts = c
                model.energy_consts = EnergyConstants.from_dict(c["energy"])
            except (KeyError, TypeError, ValueError) as exc:
                raise ModelDirError(f"{cpath}: malformed preprocessing constants ({exc})") from None
        elif any(trained.values()):
            raise ModelDirError(f"{directory}: {CONSTANTS_FILE} is missing")
        for k, m in model.nets.items():
            if trained.get(k):
                path = Path(directory) / WEIGHTS[k]
                sd = load_weights(path)
                try:
                    m.load_state_dict(sd)
                except RuntimeError as exc:
                    raise ModelDirError(f"{path}: weights do not fit the configured network ({str(exc).splitlines()[0]})") from None
                model.trained[k] = True
        return model.to(device)

    def parameter_counts(self) -> dict:
        return {k: F.count_parameters(m) for k, m in self.nets.items()}


# ---------------------------------------------------------------------------- CLI hooks
def train_from_args(args) -> dict:
    """Run ``caloflows train icaloflow`` (flow-1 and both teachers; torchrun-aware)."""
    from ..training.distributed import init_from_env

    ctx = init_from_env()
    g = load_geometry(args.geometry)
    if args.resume and os.path.exists(os.path.join(args.out, "config.json")):
        model = ICaloFlow.load(args.out, geometry=g)
    else:
        d = ICaloFlowConfig.preset(args.preset, g).to_dict()
        if args.epochs is not None:
            d["edf_train"]["epochs"] = d["teacher_train"]["epochs"] = args.epochs
        if args.seed is not None:
            d["seed"] = args.seed
            for k in ("edf_train", "teacher_train", "student_train"):
                d[k]["seed"] = args.seed
        model = ICaloFlow(g, ICaloFlowConfig.from_dict(override_settings(d, args.set, "iCaloFlow")))
    try:
        return model.fit(args.data, args.out, resume=args.resume, device=args.device, progress=True, ctx=ctx)
    finally:
        ctx.shutdown()


def distill_from_args(args) -> dict:
    """Run ``caloflows distill MODEL_DIR --data TRAIN.h5`` for an iCaloFlow model."""
    from ..training.distributed import init_from_env

    ctx = init_from_env()
    model = ICaloFlow.load(args.model_dir)
    try:
        return model.distill(args.data, args.model_dir, resume=args.resume, device=args.device, epochs=args.epochs, ctx=ctx)
    finally:
        ctx.shutdown()
