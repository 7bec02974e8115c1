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
from ..geometry import Geometry
from ..io import ShowerData
from ..layerdata import TrainingShowers
from ..postprocess import threshold_renormalise
from ..training.distributed import DistContext
from ..training.loop import ArraySource, TrainConfig
from .base import Generator
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
from .settings import LayerwiseSettings, medium_voxel_cut

__all__ = ["ICaloFlow", "ICaloFlowConfig", "MEDIUM_STUDENT_EPOCHS"]

#: Distillation epochs of the ``medium`` preset's IAF students (quick: 5; measured: 3 -> 0.866,
#: 8 -> 0.647 high-level AUC on ds2 with the 2 MeV cut, issue 15).
MEDIUM_STUDENT_EPOCHS = 8


@dataclass
class ICaloFlowConfig(LayerwiseSettings):
    """Hyper-parameters (defaults: review sec. 4.2, dataset 2; shared ones in :class:`LayerwiseSettings`)."""

    TITLE: ClassVar[str] = "iCaloFlow"

    edf_transforms: int = 6
    transforms: int = 8
    hidden: list = field(default_factory=lambda: [256, 256])
    student_hidden: list = field(default_factory=lambda: [384, 384])
    noise_kev: float = 1.0
    distill_intermediate: bool = True
    chunk_rows: int = 512
    edf_train: dict = field(default_factory=lambda: asdict(TrainConfig(epochs=100, batch_size=256, base_lr=4e-5, max_lr=1e-3)))
    teacher_train: dict = field(default_factory=lambda: asdict(TrainConfig(epochs=100, batch_size=512, base_lr=4e-5, max_lr=1e-3)))
    student_train: dict = field(default_factory=lambda: asdict(TrainConfig(epochs=50, batch_size=512, base_lr=4e-5, max_lr=1e-3)))


def _quick(g: Geometry) -> ICaloFlowConfig:
    return ICaloFlowConfig(
        **PAPER_ENERGY_INPUTS,
        edf_transforms=4, transforms=4, hidden=[128], student_hidden=[192],
        edf_train=quick_energy_train(),
        teacher_train=asdict(TrainConfig(epochs=10, batch_size=512, base_lr=1e-4, max_lr=2e-3)),
        student_train=asdict(TrainConfig(epochs=5, batch_size=512, base_lr=1e-4, max_lr=2e-3)),
    )


def _full(g: Geometry) -> ICaloFlowConfig:
    if g.n_voxels > 20_000:  # ds3: flow-3 with one hidden layer (review sec. 4.2)
        return ICaloFlowConfig(**PAPER_ENERGY_INPUTS, hidden=[256], student_hidden=[384])
    return ICaloFlowConfig(**PAPER_ENERGY_INPUTS)


def _medium(g: Geometry) -> ICaloFlowConfig:
    # Issue 15 (README "iCaloFlow on 10000 showers, with the 2 MeV cut"): the quick networks and
    # teacher schedule (52 minutes of one core on 10000 Geant4 ds2 showers), the IAF students distilled
    # 8 epochs instead of 5 (35 minutes on the first 3000 showers), and the threshold-aware generation cut
    # (L2LFlows eqs. B.8-B.9) at the MIP scale on Par04 geometries.  Measured with 3 classifier seeds
    # on 6000 held-out showers: student distilled 3 epochs 0.866 +- 0.005, 8 epochs 0.647 +- 0.002
    # (teacher 0.704 +- 0.007); high-level AUC below 0.85 in about 1.3 CPU-hours.
    c = _quick(g)
    c.student_train = {**c.student_train, "epochs": MEDIUM_STUDENT_EPOCHS}
    c.voxel_cut_mev = medium_voxel_cut(g)
    return c


ICaloFlowConfig.PRESETS = {"quick": _quick, "medium": _medium, "full": _full}


class ICaloFlow(EnergyFlowModel, Generator):
    """iCaloFlow generator: flow-1 (energies), flow-2 (layer 0), flow-3 (layers >= 1), students."""

    kind = "icaloflow"
    Config = ICaloFlowConfig
    stages = {"train": "flow-1 and the flow-2 / flow-3 MAF teachers", "distill": "the IAF students of flows 2 and 3"}
    variants = ("teacher", "student")
    weight_files = {"energy": ("flow1_energy.safetensors", "train"), "teacher2": ("flow2_teacher.safetensors", "train"),
                    "teacher3": ("flow3_teacher.safetensors", "train"),
                    "student2": ("flow2_student.safetensors", "distill"),
                    "student3": ("flow3_student.safetensors", "distill")}
    cfg: ICaloFlowConfig

    def build(self) -> None:
        g, c, k = self.geometry, self.cfg, self.n_params
        if g.n_layers < 2:
            raise UsageError("iCaloFlow needs a geometry with at least 2 layers")
        if len(set(g.layer_sizes)) != 1 or g.layer_sizes[0] < 2:
            raise UsageError(f"iCaloFlow's shared layer flow needs equal layers of >= 2 voxels; "
                             f"{g.name!r} has layer sizes {sorted(set(g.layer_sizes))}")
        n, L = g.layer_sizes[0], g.n_layers
        self.n = n
        self.energy_flow = EnergyFlow(L, c.edf_transforms, tuple(c.edf_hidden), c.bins, c.energy_spline_bound,
                                      seed=c.seed, n_params=k, degrees=c.made_degrees)
        self.ctx2, self.ctx3 = 2 + k, n + 3 + (L - 1) + k

        def flow(context: int, hidden: list, inverse: bool) -> ConditionalFlow:
            return ConditionalFlow(n, context, embed=False, transforms=c.transforms, hidden=hidden, bins=c.bins,
                                   bound=c.voxel_spline_bound, inverse=inverse, degrees=c.made_degrees)

        self.flows: dict[str, ConditionalFlow] = {
            "teacher2": flow(self.ctx2, c.hidden, False), "teacher3": flow(self.ctx3, c.hidden, False),
            "student2": flow(self.ctx2, c.student_hidden, True), "student3": flow(self.ctx3, c.student_hidden, True),
        }
        self.nets: dict[str, nn.Module] = {"energy": self.energy_flow, **self.flows}
        self._consts: dict | None = None
        self._energy_consts: EnergyConstants | None = None

    def networks(self) -> dict[str, nn.Module]:
        return self.nets

    def variant_ready(self, variant: str | None) -> bool:
        w = "student" if variant == "student" else "teacher"
        return self.trained["energy"] and self.trained[f"{w}2"] and self.trained[f"{w}3"]

    def set_constants(self, c: dict) -> None:
        self._consts = c
        self._energy_consts = EnergyConstants.from_dict(c["energy"])

    # ------------------------------------------------------------------ preprocessing
    def fit_constants(self, data: "ShowerData | TrainingShowers") -> None:
        """Energy-flow constants and the per-voxel logit mean / std (layer 0; layers >= 1 pooled).

        The voxel statistics accumulate chunk by chunk over ``std_rows`` showers (whole chunks in
        an order drawn from the seed), so they need one chunk of memory, not the file.
        """
        c = self.cfg
        t = data if isinstance(data, TrainingShowers) else TrainingShowers.from_data(data, self.geometry, c.chunk_rows)
        energy = EnergyConstants.fit(t.E, t.einc, seed=c.seed, alpha=c.alpha, standardise=c.energy_standardise)
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
        if not c.voxel_standardise:  # the logit fractions as they are, unstandardised
            m0, s0, m, s1 = np.zeros_like(m0), np.ones_like(s0), np.zeros_like(m), np.ones_like(s1)
        self._consts = {"energy": energy.to_dict(), "incident_energies": einc_summary(t.einc),
                       "mean0": m0.tolist(), "std0": np.maximum(s0, 1e-3).tolist(),
                       "mean": m.tolist(), "std": np.maximum(s1, 1e-3).tolist()}
        self._energy_consts = energy

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

    def context2(self, E0: Tensor, einc: Tensor, params: Tensor) -> Tensor:
        c = torch.stack([self.energy_consts.condition(einc)[:, 0], self._econd(E0)], 1)
        return torch.cat([c, params.to(c.dtype)], 1)

    def context3(self, y_prev: Tensor, E_i: Tensor, E_prev: Tensor, einc: Tensor, layer: Tensor,
                 params: Tensor) -> Tensor:
        onehot = nn.functional.one_hot(layer - 1, self.geometry.n_layers - 1).to(y_prev.dtype)
        return torch.cat([y_prev, torch.stack([self.energy_consts.condition(einc)[:, 0], self._econd(E_i),
                                               self._econd(E_prev)], 1), onehot, params.to(y_prev.dtype)], 1)

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
        par_all = self.condition_spec.features(t.params)

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
                c = self.context2(E0, torch.as_tensor(einc_all[k]), torch.as_tensor(par_all[k]))
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
                c = self.context3(yp, Ei, Ep, torch.as_tensor(einc_all[shw]), torch.as_tensor(lay),
                                  torch.as_tensor(par_all[shw]))
            out = (y.float(), c.float())
            if with_z:
                out = out + (torch.randn(y.shape, generator=gen),)
            return out

        return inputs

    def _energy_inputs(self, t: TrainingShowers):
        ec = self.energy_consts
        E_all, einc_all, par_all = t.E, t.einc, self.condition_spec.features(t.params)

        def inputs(ii, raw, gen):
            return (ec.forward(ec.noisy(torch.as_tensor(E_all[ii]), gen)).float(),
                    EnergyFlow.context(ec, torch.as_tensor(einc_all[ii]), torch.as_tensor(par_all[ii])).float())

        return inputs

    # ------------------------------------------------------------------ training
    def training_showers(self, data: "ShowerData | str | Path") -> TrainingShowers:
        """Training showers from memory or from a CaloChallenge file (validated, layer energies)."""
        self.training_conditions(data)
        t = TrainingShowers.open(data, self.geometry, self.cfg.chunk_rows, self.cfg.cache_mb)
        if t.n < 10:
            raise UsageError(f"need at least 10 training showers, got {t.n}")
        return t

    def _fit_train(self, data: "ShowerData | str | Path", out_dir: Path, *, resume: bool, device: str,
                   progress: bool, ctx: DistContext,
                   networks: tuple[str, ...] = ("energy", "teacher2", "teacher3")) -> dict:
        """Train flow-1 and the flow-2 / flow-3 teachers (``networks``) into ``out_dir`` (a file is
        streamed if large)."""
        t = self.training_showers(data)
        if self._consts is None or not resume:
            self.fit_constants(t)
        self.to(ctx.device(device))
        if ctx.is_main:
            self.save(out_dir)
        L, tc = self.geometry.n_layers, self.cfg.teacher_train
        summary = {}
        for name in networks:
            if name == "energy":
                summary[name] = self.train_network(name, self.energy_flow, ArraySource(np.zeros((t.n, 0), np.float32)),
                                                   self._energy_inputs(t), out_dir, self.cfg.edf_train, ctx, norm=L,
                                                   progress=progress, resume=resume)
            elif name in ("teacher2", "teacher3"):
                which = int(name[-1])
                summary[name] = self.train_network(name, self.nets[name], t.source(which),
                                                   self._data_inputs(t, which, False), out_dir, tc, ctx, norm=self.n,
                                                   progress=progress, resume=resume)
            else:
                raise UsageError(f"unknown iCaloFlow network {name!r} (energy, teacher2, teacher3)")
        return summary

    def _fit_distill(self, data: "ShowerData | str | Path", out_dir: Path, *, resume: bool, device: str,
                     progress: bool, ctx: DistContext, epochs: int | None = None) -> dict:
        """Train the IAF students of flow-2 and flow-3 from their teachers (probability density distillation)."""
        for name in ("teacher2", "teacher3"):
            if not self.trained[name]:
                raise ModelDirError(f"{out_dir}: the {name} flow is not trained yet; run 'caloflows train icaloflow' first")
        t = self.training_showers(data)
        self.to(ctx.device(device))
        self.with_student_epochs(epochs)
        return {f"student{w}": self.train_student(
            f"student{w}", self.flows[f"teacher{w}"], self.flows[f"student{w}"], t.source(w),
            self._data_inputs(t, w, True), out_dir, self.cfg.student_train, ctx,
            intermediate=self.cfg.distill_intermediate, progress=progress, resume=resume) for w in (2, 3)}

    # ------------------------------------------------------------------ sampling
    def _flow(self, which: int, student: bool) -> ConditionalFlow:
        return self.flows[f"{'student' if student else 'teacher'}{which}"]

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
    def sample_layers(self, E: Tensor, einc: Tensor, params: Tensor | None = None, student: bool = True,
                      generator: torch.Generator | None = None, progress: bool = False,
                      float64: bool | None = None) -> Tensor:
        """Flow-2 then flow-3 layer by layer: ``(E_i, E_inc) -> voxels`` (float64), each layer
        post-processed (threshold-aware renormalisation, L2LFlows appendix B.3)."""
        g, n = self.geometry, self.n
        params = einc.new_zeros(len(einc), self.n_params) if params is None else params
        use64 = (not student) if float64 is None else float64
        thr = self.voxel_cut
        out = torch.zeros(len(einc), g.n_voxels, dtype=torch.float64, device=self.device)
        y = self._draw(self._flow(2, student), self.context2(E[:, 0], einc, params), use64, generator)
        y = torch.nan_to_num(y, nan=0.0, posinf=50.0, neginf=-50.0)
        out[:, :n] = self._place(y, E[:, 0], True, thr)
        y_prev = self.normed_forward(self.normed_inverse(y, True), False)
        f3 = self._flow(3, student)
        for i in tqdm(range(1, g.n_layers), desc="layers", leave=False, disable=None if progress else True):
            lay = torch.full((len(einc),), i, dtype=torch.long, device=self.device)
            c = self.context3(y_prev, E[:, i], E[:, i - 1], einc, lay, params)
            y = torch.nan_to_num(self._draw(f3, c, use64, generator), nan=0.0, posinf=50.0, neginf=-50.0)
            out[:, i * n:(i + 1) * n] = self._place(y, E[:, i], False, thr)
            y_prev = y
        return out

    def _sample_batch(self, einc: Tensor, params: Tensor, generator: torch.Generator, variant: str | None) -> Tensor:
        E = self.energy_flow.sample_energies(einc, self.energy_consts, self.cfg.max_ratio, self.cfg.max_resample,
                                             generator, params)
        return self.sample_layers(E, einc, params, variant == "student", generator)

    def _log_prob_batch(self, showers: Tensor, einc: Tensor, params: Tensor, variant: str | None) -> Tensor:
        """log p of the preprocessed shower: flow-1 + flow-2 + flow-3 over layers (teachers unless asked)."""
        g, n, L = self.geometry, self.n, self.geometry.n_layers
        ec = self.energy_consts
        student = variant == "student"
        f2, f3 = self._flow(2, student), self._flow(3, student)
        s = showers
        E = torch.as_tensor(g.layer_energies(g.apply_threshold(s.cpu().numpy())), device=s.device)
        E = E + ec.noise_mean_kev * P.KEV
        x = s.reshape(len(s), L, n) + 0.5 * self.cfg.noise_kev * P.KEV
        fr = x / x.sum(2, keepdim=True)
        with F.double_precision(self.energy_flow, f2, f3):
            lp = self.energy_flow(ec.forward(E), EnergyFlow.context(ec, einc, params))
            lp = lp + f2(self.normed_forward(fr[:, 0], True), self.context2(E[:, 0], einc, params))
            yp = self.normed_forward(fr[:, 0], False)
            for i in range(1, L):
                y = self.normed_forward(fr[:, i], False)
                lay = torch.full((len(s),), i, dtype=torch.long, device=s.device)
                lp = lp + f3(y, self.context3(yp, E[:, i], E[:, i - 1], einc, lay, params))
                yp = y
        return lp
