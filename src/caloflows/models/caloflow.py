"""CaloFlow: two-flow MAF teacher and IAF student (``caloflow_dataset1.txt``; review sec. 4.2).

Flow-I learns ``p_1(E_0..E_{L-1} | E_inc)``: layer energies of the noisy voxels (U(0, 1 keV)
noise added to every voxel before summing) in the recursive unit space (eq. 1, rescaled by
``max u_0`` of the training set), logit (alpha = 1e-6), standardised; MAF with RQS transforms,
6 MADE blocks with two hidden layers of 64; condition ``log10(E_inc / 33.3 GeV)`` (eq. 2).

Flow-II learns ``p_2(I_hat | E_i, E_inc)`` for all voxels: noisy voxels divided by their layer
energy, logit, standardised; MAF with RQS, 8 MADE blocks with one hidden layer; conditions
eq. 2 and ``log10((E_i + 1 keV) / 100 GeV) - 1`` (eq. 3).

The student is an IAF of flow-II (:func:`caloflows.flows.build_iaf`) trained by probability
density distillation (sec. 3.1; CaloFlow II, 2110.11377): the x-loss maps data ``x`` with the
teacher to ``z'`` and back with the student, the z-loss maps ``z ~ N(0, 1)`` with the student to
``x'`` and back with the teacher; both are mean squared errors at the flow endpoints and,
optionally, between the coordinates after every MADE block (block k of the student pairs with
block k of the teacher).

Sampling: ``E_inc -> flow-I -> E_i`` (rows with ``E_dep / E_inc`` above ``max_ratio`` or
non-finite values are drawn again) ``-> flow-II -> fractions``, clipped at 0 and renormalised
so that every layer sums exactly to its ``E_i``, then voxels below the geometry threshold are
zeroed.  The teacher samples in float64 (its inverse spline passes solve quadratics, D passes
per block); the student samples in one pass per block in float32.

Deviations from the paper, and why:

* Features are standardised after the logit: zuko's splines act on [-bound, bound] and are the
  identity outside, so unscaled logits (down to -13.8 for empty voxels) would bypass them.
  Standardised, the rare hits of sparse voxels land outside [-5, 5] too (ds2-coarse: 94-99 % of
  the hits in the outer rings of layer 0, 59 % in layer 8; the flow never generates them, stop 20).
  ``voxel_standardise=False, voxel_bound=14`` (:class:`~caloflows.models.settings.VoxelInputSettings`)
  feeds flow-II the logit voxels as they are, inside a spline domain that holds them all.
* Student IAF: the conditioner of block k reads the latent-side coordinates while its spline
  acts in the same sense as the teacher's (:func:`caloflows.flows.build_iaf`), and the student
  starts from the teacher's weights (:func:`caloflows.flows.init_student_from_teacher`).
  CaloFlow II matched RQS parameters block by block; here coordinates after every block are
  matched (``distill_intermediate``), which the warm start makes easy: on the test geometry the
  teacher-vs-student classifier AUC drops from ~0.7 (cold start) to ~0.51-0.53.
* The z-loss uses the conditions (E_inc and E_i) of the training batch -- the paper's photon
  choice; the pion variant with uniform E_inc is not implemented.
* ``quick`` preset: 6 MADE blocks of 128 in flow-II (8 of one hidden layer per voxel in ``full``)
  to fit minutes on 2 CPU cores; ``medium`` (issue 15): the quick networks with flow-I trained 5x
  longer, the student distilled 3x longer, flow-II's logit voxels unstandardised inside a spline
  domain of 14, and the threshold-aware 2 MeV generation cut on Par04 geometries, the best fidelity
  measured for about 1 hour of training on 2 CPU cores (README, "Fidelity study").
* The teacher samples with an exact sequential inverse of its one-hidden-layer MADEs
  (:func:`caloflows.flows.inverse_path`, ``fast=True``), not zuko's D full network passes.
* ``max_ratio`` defaults to the training maximum of E_dep/E_inc, which flow-I respects by
  construction (logit unit space); set it lower to reject tail outliers.
* ``log_prob`` is the density of the preprocessed representation (flow-I + flow-II), not of
  voxel energies in MeV.
* Detector parameters (beyond the paper, :mod:`caloflows.conditions`): each named parameter,
  mapped to [-1, 1] over its training range, is appended to the conditions of both flows.

Example:
    >>> import caloflows
    >>> model = CaloFlow("ds2-coarse", CaloFlowConfig.preset("quick", "ds2-coarse"))   # doctest: +SKIP
    >>> model.fit("train.h5", "model")                                 # flow-I + teacher  # doctest: +SKIP
    >>> model.fit("train.h5", "model", stage="distill")                # IAF student        # doctest: +SKIP
    >>> model.sample(1000, seed=1).showers.shape                                         # doctest: +SKIP
    (1000, 648)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from .. import flows as F
from .. import preprocessing as P
from ..errors import ModelDirError, UsageError
from ..geometry import Geometry
from ..io import ShowerData
from ..postprocess import threshold_renormalise_layers
from ..training.distributed import DistContext
from ..training.loop import ArraySource, TrainConfig
from .base import Generator, einc_summary, need, sample_with_rejection
from .settings import UNSTANDARDISED_VOXEL_INPUTS, VoxelInputSettings, medium_voxel_cut

__all__ = ["CaloFlow", "CaloFlowConfig"]


@dataclass
class CaloFlowConfig(VoxelInputSettings):
    """Hyper-parameters of CaloFlow (defaults: the paper's photon setup; shared ones in :class:`~caloflows.models.settings.VoxelInputSettings`)."""

    RANGES: ClassVar[dict[str, tuple[float | None, float | None, bool]]] = {
        **VoxelInputSettings.RANGES, "empty_voxel_noise_mev": (0, None, False),
        "empty_layer_noise_mev": (0, None, False), "voxel_cut_mev": (0, None, False),
        "single_hit_mev": (0, None, True)}

    flow1_transforms: int = 6
    flow1_hidden: tuple = (64, 64)
    flow1_noise_kev: float = 1.0
    flow2_transforms: int = 8
    flow2_hidden: int = 378
    flow2_noise_kev: float = 1.0
    student_hidden: int = 736
    distill_intermediate: bool = True
    student_from_teacher: bool = True  # warm start (flows.init_student_from_teacher)
    max_ratio: float | None = None  # E_dep/E_inc bound; None: training-set maximum
    #: dequantisation of empty voxels (issue 15): flow-II sees an empty voxel as U(0, t) MeV
    #: (t = this value) instead of the 1 keV noise; 0 keeps the paper's preprocessing
    empty_voxel_noise_mev: float = 0.0
    #: the same for empty layers in flow-I (and flow-II's conditions): E_i of an empty layer + U(0, t) MeV
    empty_layer_noise_mev: float = 0.0
    #: generation cut (MeV) with threshold-aware renormalisation (L2LFlows eqs. B.8-B.9); None: the
    #: paper's renormalise-then-cut at the geometry threshold, or ``empty_voxel_noise_mev`` if that is set
    voxel_cut_mev: float | None = None
    #: with the generation cut: a layer whose flow-I energy E_i is below the cut but at least this
    #: (MeV) keeps E_i in its brightest voxel instead of ending empty
    #: (:func:`caloflows.postprocess.threshold_renormalise`); None: such layers end empty (L2LFlows B.3)
    single_hit_mev: float | None = None
    flow1_train: dict = field(default_factory=lambda: asdict(TrainConfig(epochs=100, batch_size=200, base_lr=4e-5, max_lr=1e-3)))
    flow2_train: dict = field(default_factory=lambda: asdict(TrainConfig(epochs=100, batch_size=200, base_lr=5e-5, max_lr=2e-3, schedule="cyclic")))
    student_train: dict = field(default_factory=lambda: asdict(TrainConfig(epochs=100, batch_size=175, base_lr=4e-5, max_lr=1e-3)))


def _quick(g: Geometry) -> CaloFlowConfig:
    # Sized for the README main job (ds2-coarse, 648 voxels, about 12 minutes of training on 2 CPU
    # cores): on CPU the zuko spline arithmetic (B x D x bins elementwise, forward and backward)
    # costs more than the MADE matmuls, so the quick flow-II has 6 MADE blocks of 128 instead of
    # 8 of 648; the student has the teacher's width and is warm-started from it, so a few
    # distillation epochs suffice.  Measured on 3000 Geant4 ds2-coarse showers: 40 teacher epochs
    # reach a validation loss of 0.07 (10 epochs of a 4 x 64 flow: 0.43), and cut the high-level
    # classifier AUC of the teacher from 0.95 to 0.87.
    return CaloFlowConfig(
        flow2_transforms=6,
        flow2_hidden=128,
        student_hidden=128,
        flow1_train=asdict(TrainConfig(epochs=20, batch_size=256, base_lr=1e-4, max_lr=2e-3, patience=None)),
        flow2_train=asdict(TrainConfig(epochs=40, batch_size=256, base_lr=1e-4, max_lr=2e-3, patience=None)),
        student_train=asdict(TrainConfig(epochs=8, batch_size=256, base_lr=1e-4, max_lr=1e-3, patience=None)),
    )


def _full(g: Geometry) -> CaloFlowConfig:
    # paper: teacher hidden 378 / 533 = number of voxels, student ~2x (photons: 736)
    return CaloFlowConfig(
        flow2_hidden=g.n_voxels,
        student_hidden=2 * g.n_voxels,
        flow1_train=asdict(TrainConfig(epochs=100, batch_size=200, base_lr=4e-5, max_lr=1e-3, patience=20)),
        flow2_train=asdict(TrainConfig(epochs=100, batch_size=200, base_lr=5e-5, max_lr=2e-3, schedule="cyclic", patience=30)),
        student_train=asdict(TrainConfig(epochs=100, batch_size=175, base_lr=4e-5, max_lr=1e-3, patience=20)),
    )


def _medium(g: Geometry) -> CaloFlowConfig:
    # Issue 15 (README "Fidelity study"; benchmarks/bench_flow1.py, bench_fidelity.py): on 10000
    # Geant4 ds2-coarse showers, flow-I trained 100 instead of 20 epochs brings the E_layer separation
    # powers of the deep layers 6 / 7 / 8 from 0.060 / 0.053 / 0.122 to 0.017 / 0.036 / 0.066 (Geant4
    # halves: 0.011 / 0.021 / 0.068) and the empty-layer fractions to Geant4's, for ~7 more minutes of
    # training; the threshold-aware cut (L2LFlows eqs. B.8-B.9) at the MIP scale, MEDIUM_VOXEL_CUT_MEV,
    # removes the sub-MIP voxels a continuous flow puts into Geant4's empty gap (at 0.5 MeV: voxel
    # separation power 0.24 -> 0.05; at 2 MeV the teacher's high-level AUC 0.734 -> 0.670).  flow-II
    # keeps the quick networks: 40 teacher epochs on 10000 showers are ~45 minutes of 2 cores.  The
    # IAF student distils 24 epochs instead of 8 (the same OneCycle schedule stretched; ~45 minutes of
    # one core with --compile): with the 2 MeV cut its high-level AUC goes from 0.714 +- 0.007 to
    # 0.681 +- 0.004 (3 classifier seeds), within 0.011 of its teacher's 0.670 +- 0.005.  flow-II sees
    # the unstandardised logit voxels inside a spline domain of 14 (VoxelInputSettings; stop 20-21):
    # standardised, the rare hits of sparse voxels (layer 0's outer rings, layer 8) lay outside [-5, 5],
    # where the splines are the identity; teacher 0.670 -> 0.622 +- 0.024, student 0.681 -> 0.646 +-
    # 0.006 (low-level 0.535 +- 0.012), width_r/0 separation power 0.150 -> 0.020.
    c = replace(_quick(g), **UNSTANDARDISED_VOXEL_INPUTS)
    c.flow1_train = {**c.flow1_train, "epochs": 100}  # the quick schedule, 5x the epochs
    c.student_train = {**c.student_train, "epochs": 24}  # 3x the quick distillation
    c.voxel_cut_mev = medium_voxel_cut(g)
    return c


CaloFlowConfig.PRESETS = {"quick": _quick, "medium": _medium, "full": _full}



# ---------------------------------------------------------------------------- the model
class CaloFlow(Generator):
    """CaloFlow generator (flow-I, flow-II teacher, flow-II student) for one geometry."""

    kind = "caloflow"
    Config = CaloFlowConfig
    stages = {"train": "flow-I and the flow-II MAF teacher", "distill": "the flow-II IAF student (distillation)"}
    variants = ("teacher", "student")
    generation_settings = ("voxel_cut_mev", "single_hit_mev", "max_ratio")
    weight_files = {"flow1": ("flow1.safetensors", "train"), "teacher": ("flow2_teacher.safetensors", "train"),
                    "student": ("flow2_student.safetensors", "distill")}
    cfg: CaloFlowConfig

    def build(self) -> None:
        g, c, k = self.geometry, self.cfg, self.n_params
        if g.n_layers < 2:
            raise UsageError("CaloFlow needs a geometry with at least 2 layers")
        self.flow1 = F.build_maf(g.n_layers, 1 + k, c.flow1_transforms, c.flow1_hidden, c.bins, c.bound)
        vb = c.voxel_spline_bound  # flow-II's spline domain (VoxelInputSettings)
        self.teacher = F.build_maf(g.n_voxels, 1 + g.n_layers + k, c.flow2_transforms, (c.flow2_hidden,), c.bins, vb,
                                   degrees=c.made_degrees)
        self.student = F.build_iaf(g.n_voxels, 1 + g.n_layers + k, c.flow2_transforms, (c.student_hidden,), c.bins, vb,
                                   degrees=c.made_degrees)
        self.logit = P.Logit(c.alpha)
        self._unit: P.UnitSpaceEnergies | None = None
        self._std1: P.Standardize | None = None
        self._std2: P.Standardize | None = None
        self.einc_dist: dict | None = None
        self._layer_index = torch.as_tensor(g.layer_index, dtype=torch.long)

    def networks(self) -> dict[str, nn.Module]:
        return {"flow1": self.flow1, "teacher": self.teacher, "student": self.student}

    def variant_ready(self, variant: str | None) -> bool:
        return self.trained["flow1"] and self.trained["student" if variant == "student" else "teacher"]

    # ------------------------------------------------------------------ constants
    @property
    def unit(self) -> P.UnitSpaceEnergies:
        """Recursive unit-space map of flow-I (eq. 1, rescaled by the training maximum of u_0)."""
        return need(self._unit, "CaloFlow unit-space constants")

    @property
    def std1(self) -> P.Standardize:
        return need(self._std1, "CaloFlow flow-I standardisation")

    @property
    def std2(self) -> P.Standardize:
        return need(self._std2, "CaloFlow flow-II standardisation")

    def constants(self) -> dict | None:
        if self._unit is None:
            return None
        return {"logit": self.logit.to_dict(), "unit_space": self.unit.to_dict(),
                "flow1_standardize": self.std1.to_dict(), "flow2_standardize": self.std2.to_dict(),
                "incident_energies": self.einc_dist}

    def set_constants(self, c: dict) -> None:
        self.logit = P.from_dict(c["logit"])
        self._unit = P.from_dict(c["unit_space"])
        self._std1 = P.from_dict(c["flow1_standardize"])
        self._std2 = P.from_dict(c["flow2_standardize"])
        self.einc_dist = c["incident_energies"]

    # ------------------------------------------------------------------ preprocessing (torch)
    def _layer_sums(self, x: Tensor) -> Tensor:
        out = torch.zeros(x.shape[0], self.geometry.n_layers, dtype=x.dtype, device=x.device)
        return out.index_add_(1, self._layer_index.to(x.device), x)

    def flow1_inputs(self, showers: Tensor, einc: Tensor, params: Tensor | None = None, noise: bool = True,
                     generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(standardised logit unit-space layer energies, condition) for flow-I."""
        u = self.unit.forward(self.flow1_energies(showers, noise, generator), einc).clamp(0.0, 1.0)
        y = self.std1.forward(self.logit.forward(u))
        return y, self.flow1_context(einc, params)

    def flow1_energies(self, showers: Tensor, noise: bool = True, generator: torch.Generator | None = None) -> Tensor:
        """Layer energies flow-I learns: sums of the voxels with U(0, 1 keV) noise (the paper),
        dequantised where a layer is empty; ``noise=False``: no noise (the caller puts it at its mid-point)."""
        x = P.add_uniform_noise(showers, self.cfg.flow1_noise_kev * P.KEV, generator) if noise else showers
        return self._dequantise_layers(self._layer_sums(x), showers, noise, generator)

    def _dequantise_layers(self, E: Tensor, showers: Tensor, noise: bool, generator: torch.Generator | None) -> Tensor:
        """With ``empty_layer_noise_mev = t > 0``, an empty layer's energy becomes U(0, t) more than its
        keV noise sum (issue 15: the spike of empty layers next to energies >= 1 MIP); the generation
        cut (>= t) empties such layers again.  A layer at or below its keV noise sum counts as empty."""
        t = self.cfg.empty_layer_noise_mev
        if t <= 0:
            return E
        kev = max(self.cfg.flow1_noise_kev, self.cfg.flow2_noise_kev) * P.KEV
        sizes = torch.as_tensor(self.geometry.layer_sizes, dtype=E.dtype, device=E.device)
        empty = (self._layer_sums(showers) <= kev * sizes).to(E.dtype)
        u = torch.rand(E.shape, dtype=E.dtype, device=E.device, generator=generator) if noise else 0.5
        return E + empty * t * u

    def flow2_fractions(self, showers: Tensor, noise: bool = True,
                        generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(voxel fractions of their layer, layer energies E_i of the conditions) for flow-II.

        The paper adds U(0, 1 keV) to every voxel and conditions on the noisy layer sums.  With
        ``empty_voxel_noise_mev = t > 0`` an *empty* voxel is moreover dequantised to U(0, t):
        Geant4 voxels are either empty or mostly above one MIP (~1 MeV in ds2-coarse), a gap a
        continuous flow cannot leave empty at the keV scale; with noise of the gap's size the
        density is continuous and the generation cut at ``t`` (threshold-aware, L2LFlows B.9)
        removes it again.  The fractions are then of the dequantised layer sum, while the
        conditions stay the layer energies with the 1 keV noise (what flow-I generates).
        A voxel at or below the keV noise level counts as empty.  ``noise=False``: no noise is added
        (the caller puts the keV noise at its mid-point) and the dequantisation takes its mid-point.
        """
        kev = self.cfg.flow2_noise_kev * P.KEV
        x = P.add_uniform_noise(showers, kev, generator) if noise else showers
        S = self._layer_sums(x)
        E = self._dequantise_layers(S, showers, noise, generator)
        t = self.cfg.empty_voxel_noise_mev
        if t > 0:
            u = torch.rand(x.shape, dtype=x.dtype, device=x.device, generator=generator) if noise else 0.5
            x = x + (showers <= kev).to(x.dtype) * t * u
            S = self._layer_sums(x)
        frac = x / S.clamp_min(1e-30)[:, self._layer_index.to(x.device)]
        return frac.clamp(0.0, 1.0), E

    def flow2_inputs(self, showers: Tensor, einc: Tensor, params: Tensor | None = None, noise: bool = True,
                     generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(standardised logit layer-normalised voxels, conditions) for flow-II."""
        frac, E = self.flow2_fractions(showers, noise, generator)
        return self.std2.forward(self.logit.forward(frac)), self.flow2_context(E, einc, params)

    @staticmethod
    def _with_params(c: Tensor, params: Tensor | None) -> Tensor:
        return c if params is None or params.shape[1] == 0 else torch.cat([c, params.to(c.dtype)], 1)

    def flow1_context(self, einc: Tensor, params: Tensor | None = None) -> Tensor:
        """Eq. 2, ``log10(E_inc / 33.3 GeV)``, then the detector parameters."""
        return self._with_params(P.log_einc(einc)[:, None], params)

    def flow2_context(self, layer_energies: Tensor, einc: Tensor, params: Tensor | None = None) -> Tensor:
        """Eqs. 2-3, then the detector parameters."""
        c = torch.cat([P.log_einc(einc)[:, None], P.log_layer_energy(layer_energies)], 1)
        return self._with_params(c, params)

    def fit_constants(self, data: ShowerData, seed: int = 0, max_rows: int = 50_000) -> None:
        """Preprocessing constants from the training data (u0_max, standardisation, E_inc law)."""
        rng = np.random.default_rng(seed)
        sh = np.asarray(data.showers, dtype=np.float64)
        einc = np.asarray(data.incident_energies, dtype=np.float64)
        sel = rng.permutation(len(sh))[:max_rows]
        # u0_max: maximum of sum E / E_inc over the training set (noise included as in training)
        nz1 = self.cfg.flow1_noise_kev * P.KEV * np.asarray(self.geometry.layer_sizes).sum()
        nz1 += self.cfg.empty_layer_noise_mev * self.geometry.n_layers  # bound of the empty-layer dequantisation
        self._unit = P.UnitSpaceEnergies.fit(sh.sum(1, keepdims=True) + nz1, einc)
        sh_t = torch.as_tensor(sh[sel])
        e_t = torch.as_tensor(einc[sel])
        gen = torch.Generator().manual_seed(seed)
        u = self.unit.forward(self.flow1_energies(sh_t, generator=gen), e_t).clamp(0, 1)
        self._std1 = P.Standardize.fit(self.logit.forward(u).numpy())
        frac = self.flow2_fractions(sh_t, generator=gen)[0]
        y2 = self.logit.forward(frac).numpy()
        n2 = y2.shape[1]  # unstandardised: the logit voxels as they are, inside voxel_bound
        self._std2 = P.Standardize.fit(y2) if self.cfg.voxel_standardise else P.Standardize([0.0] * n2, [1.0] * n2)
        self.einc_dist = einc_summary(einc)

    # ------------------------------------------------------------------ training
    def _inputs(self, data: ShowerData, params: np.ndarray, which: str, with_z: bool = False):
        einc = torch.as_tensor(np.asarray(data.incident_energies, dtype=np.float32))
        par = torch.as_tensor(params, dtype=torch.float32)
        make = self.flow1_inputs if which == "flow1" else self.flow2_inputs

        def inputs(ii: np.ndarray, raw: np.ndarray, gen: torch.Generator) -> tuple[Tensor, ...]:
            k = torch.as_tensor(np.asarray(ii))
            y, c = make(torch.as_tensor(raw), einc[k], par[k], generator=gen)
            return (y, c, torch.randn(y.shape, generator=gen)) if with_z else (y, c)

        return inputs

    def _fit_train(self, data: "ShowerData | str | Path", out_dir: Path, *, resume: bool, device: str,
                   progress: bool, ctx: DistContext) -> dict:
        """Train flow-I and the flow-II teacher, saving to ``out_dir`` after each."""
        data, params = self.training_arrays(data)
        self.to(ctx.device(device))
        if self._unit is None or not resume:
            self.fit_constants(data, seed=int(self.cfg.flow1_train.get("seed", 0)))
        if ctx.is_main:
            self.save(out_dir)
        src = ArraySource(np.asarray(data.showers, dtype=np.float32))
        g = self.geometry
        return {
            "flow1": self.train_network("flow1", F.LogProb(self.flow1), src, self._inputs(data, params, "flow1"),
                                        out_dir, self.cfg.flow1_train, ctx, norm=g.n_layers, progress=progress,
                                        resume=resume),
            "teacher": self.train_network("teacher", F.LogProb(self.teacher), src,
                                          self._inputs(data, params, "flow2"), out_dir, self.cfg.flow2_train, ctx,
                                          norm=g.n_voxels, progress=progress, resume=resume,
                                          checkpoint="flow2_teacher"),
        }

    def _fit_distill(self, data: "ShowerData | str | Path", out_dir: Path, *, resume: bool, device: str,
                     progress: bool, ctx: DistContext, epochs: int | None = None) -> dict:
        """Train the IAF student of flow-II from the trained teacher (probability density distillation)."""
        if not self.trained["teacher"]:
            raise ModelDirError(f"{out_dir}: the flow-II teacher is not trained yet; run 'caloflows train caloflow' first")
        data, params = self.training_arrays(data)
        self.to(ctx.device(device))
        self.with_student_epochs(epochs)
        warm = (lambda: F.init_student_from_teacher(self.student, self.teacher)) if self.cfg.student_from_teacher else None
        return {"student": self.train_student(
            "student", self.teacher, self.student, ArraySource(np.asarray(data.showers, dtype=np.float32)),
            self._inputs(data, params, "flow2", with_z=True), out_dir, self.cfg.student_train, ctx,
            intermediate=self.cfg.distill_intermediate, warm_start=warm, progress=progress, resume=resume,
            checkpoint="flow2_student")}

    # ------------------------------------------------------------------ sampling
    def decode_flow1(self, y: Tensor, einc: Tensor) -> tuple[Tensor, Tensor]:
        """Flow-I output -> (layer energies, E_dep = u_0 u0_max E_inc); rows of the first sum to the second."""
        u = self.logit.inverse(self.std1.inverse(y)).clamp(0.0, 1.0)
        return self.unit.inverse(u, einc), u[:, 0] * self.unit.u0_max * einc

    @torch.no_grad()
    def sample_layer_energies(self, einc: Tensor, params: Tensor | None = None,
                              generator: torch.Generator | None = None) -> Tensor:
        """Flow-I: E_inc (MeV) -> layer energies (MeV), float64, with outlier rejection
        (:func:`~caloflows.models.base.sample_with_rejection`; bound: ``max_ratio`` or the training maximum)."""
        einc = einc.to(self.device, torch.float64)
        params = torch.zeros(len(einc), 0, dtype=torch.float64, device=self.device) if params is None else params

        def draw(e: Tensor, p: Tensor) -> Tensor:
            y = F.flow_sample(self.flow1, self.flow1_context(e, p), generator=generator, dtype=torch.float64)
            return self.decode_flow1(y, e)[0]

        bound = self.cfg.max_ratio if self.cfg.max_ratio is not None else self.unit.u0_max
        return sample_with_rejection(draw, einc, params.to(torch.float64), bound, self.cfg.max_resample)

    @torch.no_grad()
    def sample_voxels(self, layer_energies: Tensor, einc: Tensor, params: Tensor | None = None, student: bool = True,
                      generator: torch.Generator | None = None, float64: bool | None = None) -> Tensor:
        """Flow-II: (E_i, E_inc) -> voxels (MeV) whose layers sum exactly to E_i (no threshold cut)."""
        flow = self.student if student else self.teacher
        use64 = (not student) if float64 is None else float64
        E = layer_energies.to(self.device, torch.float64)
        c = self.flow2_context(E, einc.to(self.device, torch.float64), params)
        if use64:
            y = F.flow_sample(flow, c, generator=generator, dtype=torch.float64)
        else:
            y = F.flow_sample(flow, c.float(), generator=generator).double()
        frac = self.logit.inverse(self.std2.inverse(y))
        return self.voxels_from_fractions(torch.nan_to_num(frac, nan=0.0, posinf=1.0, neginf=0.0), E)

    @property
    def generation_cut(self) -> float | None:
        """The cut (MeV) of the threshold-aware renormalisation, or None for the paper's renormalisation."""
        c = self.cfg
        if c.voxel_cut_mev is not None:
            return c.voxel_cut_mev
        return max(c.empty_voxel_noise_mev, c.empty_layer_noise_mev) or None

    def voxels_from_fractions(self, frac: Tensor, layer_energies: Tensor) -> Tensor:
        """Fractions -> voxels (MeV) whose layers sum exactly to ``E_i``.

        The paper (sec. 2.3) renormalises every layer to E_i; the geometry threshold is applied
        afterwards by :meth:`sample`.  With a :attr:`generation_cut` the dimmest voxels are dropped
        until the renormalised survivors are all above it (L2LFlows eqs. B.8-B.9,
        :func:`caloflows.postprocess.threshold_renormalise`).
        """
        cut = self.generation_cut
        if cut is None:
            return P.renormalise_layers(frac, layer_energies, self.geometry.layer_offsets)
        return threshold_renormalise_layers(frac, layer_energies, self.geometry.layer_offsets, cut,
                                            self.cfg.single_hit_mev)

    #: on CPU the student runs a batch in pieces of this many rows (its spline arithmetic is memory-bound)
    micro_batch: int = 512

    def _sample_batch(self, einc: Tensor, params: Tensor, generator: torch.Generator, variant: str | None) -> Tensor:
        student = variant == "student"
        step = len(einc) if not student or self.device.type != "cpu" else max(1, int(self.micro_batch))
        parts = []
        for i in range(0, len(einc), step):
            e, p = einc[i:i + step], params[i:i + step]
            E = self.sample_layer_energies(e, p, generator)
            parts.append(self.sample_voxels(E, e, p, student=student, generator=generator))
        return torch.cat(parts)

    # ------------------------------------------------------------------ density
    def _log_prob_batch(self, showers: Tensor, einc: Tensor, params: Tensor, variant: str | None) -> Tensor:
        """log p_1 + log p_2 of the preprocessed shower (noise at its mid-point; teacher unless asked)."""
        flow = self.student if variant == "student" else self.teacher
        s = showers + 0.5 * self.cfg.flow2_noise_kev * P.KEV
        with F.double_precision(self.flow1, flow):
            y1, c1 = self.flow1_inputs(s, einc, params, noise=False)
            y2, c2 = self.flow2_inputs(s, einc, params, noise=False)
            return self.flow1(c1).log_prob(y1) + flow(c2).log_prob(y2)
