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
* Student IAF: the conditioner of block k reads the latent-side coordinates while its spline
  acts in the same sense as the teacher's (:func:`caloflows.flows.build_iaf`), and the student
  starts from the teacher's weights (:func:`caloflows.flows.init_student_from_teacher`).
  CaloFlow II matched RQS parameters block by block; here coordinates after every block are
  matched (``distill_intermediate``), which the warm start makes easy: on the test geometry the
  teacher-vs-student classifier AUC drops from ~0.7 (cold start) to ~0.51-0.53.
* The z-loss uses the conditions (E_inc and E_i) of the training batch -- the paper's photon
  choice; the pion variant with uniform E_inc is not implemented.
* ``quick`` preset: 4 MADE blocks in flow-II (8 in ``full``) to fit minutes on 2 CPU cores.
* The teacher samples with an exact sequential inverse of its one-hidden-layer MADEs
  (:func:`caloflows.flows.inverse_path`, ``fast=True``), not zuko's D full network passes.
* ``max_ratio`` defaults to the training maximum of E_dep/E_inc, which flow-I respects by
  construction (logit unit space); set it lower to reject tail outliers.
* ``log_prob`` is the density of the preprocessed representation (flow-I + flow-II), not of
  voxel energies in MeV.
"""

from __future__ import annotations

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
from ..io import ShowerData
from ..training.checkpoint import (
    ModelDirError,
    load_weights,
    read_json,
    read_model_config,
    save_weights,
    write_json,
    write_model_config,
)
from ..training.loop import TrainConfig, Trainer, resolve_device
from .base import Generator, einc_summary, incident_energies
from .settings import override_settings, preset_config

__all__ = ["CaloFlow", "CaloFlowConfig", "PRESETS", "GENERATOR", "apply_overrides", "train_caloflow", "train_from_args", "distill_from_args"]

GENERATOR = "CaloFlow"
KIND = "caloflow"
CONSTANTS_FILE = "constants.json"
WEIGHTS = {"flow1": "flow1.safetensors", "teacher": "flow2_teacher.safetensors", "student": "flow2_student.safetensors"}


@dataclass
class CaloFlowConfig:
    """Hyper-parameters of CaloFlow (defaults: the paper's photon setup)."""

    flow1_transforms: int = 6
    flow1_hidden: tuple = (64, 64)
    flow1_noise_kev: float = 1.0
    flow2_transforms: int = 8
    flow2_hidden: int = 378
    flow2_noise_kev: float = 1.0
    student_hidden: int = 736
    bins: int = 8
    bound: float = 5.0
    alpha: float = 1e-6
    distill_intermediate: bool = True
    student_from_teacher: bool = True  # warm start (flows.init_student_from_teacher)
    max_ratio: float | None = None  # E_dep/E_inc bound; None: training-set maximum
    max_resample: int = 20
    flow1_train: dict = field(default_factory=lambda: asdict(TrainConfig(epochs=100, batch_size=200, base_lr=4e-5, max_lr=1e-3)))
    flow2_train: dict = field(default_factory=lambda: asdict(TrainConfig(epochs=100, batch_size=200, base_lr=5e-5, max_lr=2e-3, schedule="cyclic")))
    student_train: dict = field(default_factory=lambda: asdict(TrainConfig(epochs=100, batch_size=175, base_lr=4e-5, max_lr=1e-3)))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["flow1_hidden"] = list(self.flow1_hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CaloFlowConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ModelDirError(f"unknown CaloFlow settings {sorted(unknown)}")
        d = dict(d)
        if "flow1_hidden" in d:
            d["flow1_hidden"] = tuple(d["flow1_hidden"])
        return cls(**d)

    @classmethod
    def preset(cls, name: str, geometry: Geometry) -> "CaloFlowConfig":
        """``quick`` (small, minutes on 2 CPU cores) or ``full`` (paper sizes, hidden = voxels)."""
        return preset_config(PRESETS, name, geometry)


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


PRESETS = {"quick": _quick, "full": _full}


# ---------------------------------------------------------------------------- the model
class CaloFlow(Generator):
    """CaloFlow generator (flow-I, flow-II teacher, flow-II student) for one geometry."""

    kind = KIND

    def __init__(self, geometry: Geometry | str, config: CaloFlowConfig | None = None) -> None:
        self.geometry = load_geometry(geometry)
        if self.geometry.n_layers < 2:
            raise ValueError("CaloFlow needs a geometry with at least 2 layers")
        self.cfg = config or CaloFlowConfig()
        self.config = self.cfg.to_dict()
        g, c = self.geometry, self.cfg
        self.flow1 = F.build_maf(g.n_layers, 1, c.flow1_transforms, c.flow1_hidden, c.bins, c.bound)
        self.teacher = F.build_maf(g.n_voxels, 1 + g.n_layers, c.flow2_transforms, (c.flow2_hidden,), c.bins, c.bound)
        self.student = F.build_iaf(g.n_voxels, 1 + g.n_layers, c.flow2_transforms, (c.student_hidden,), c.bins, c.bound)
        self.logit = P.Logit(c.alpha)
        self.unit: P.UnitSpaceEnergies | None = None
        self.std1: P.Standardize | None = None
        self.std2: P.Standardize | None = None
        self.einc_dist: dict | None = None
        self.trained = {"flow1": False, "teacher": False, "student": False}
        self._layer_index = torch.as_tensor(g.layer_index, dtype=torch.long)
        self.device = torch.device("cpu")

    # ------------------------------------------------------------------ device
    def to(self, device: str | torch.device) -> "CaloFlow":
        self.device = resolve_device(str(device)) if not isinstance(device, torch.device) else device
        for m in (self.flow1, self.teacher, self.student):
            m.to(self.device)
        self._layer_index = self._layer_index.to(self.device)
        return self

    # ------------------------------------------------------------------ preprocessing (torch)
    def _layer_sums(self, x: Tensor) -> Tensor:
        out = torch.zeros(x.shape[0], self.geometry.n_layers, dtype=x.dtype, device=x.device)
        return out.index_add_(1, self._layer_index.to(x.device), x)

    def flow1_inputs(self, showers: Tensor, einc: Tensor, noise: bool = True) -> tuple[Tensor, Tensor]:
        """(standardised logit unit-space layer energies, condition) for flow-I."""
        x = P.add_uniform_noise(showers, self.cfg.flow1_noise_kev * P.KEV) if noise else showers
        u = self.unit.forward(self._layer_sums(x), einc).clamp(0.0, 1.0)
        y = self.std1.forward(self.logit.forward(u))
        return y, P.log_einc(einc)[:, None]

    def flow2_inputs(self, showers: Tensor, einc: Tensor, noise: bool = True) -> tuple[Tensor, Tensor]:
        """(standardised logit layer-normalised voxels, conditions) for flow-II."""
        x = P.add_uniform_noise(showers, self.cfg.flow2_noise_kev * P.KEV) if noise else showers
        E = self._layer_sums(x)
        frac = x / E.clamp_min(1e-30)[:, self._layer_index.to(x.device)]
        y = self.std2.forward(self.logit.forward(frac.clamp(0.0, 1.0)))
        return y, self.flow2_context(E, einc)

    @staticmethod
    def flow2_context(layer_energies: Tensor, einc: Tensor) -> Tensor:
        return torch.cat([P.log_einc(einc)[:, None], P.log_layer_energy(layer_energies)], 1)

    def fit_constants(self, data: ShowerData, seed: int = 0, max_rows: int = 50_000) -> None:
        """Preprocessing constants from the training data (u0_max, standardisation, E_inc law)."""
        rng = np.random.default_rng(seed)
        sh = np.asarray(data.showers, dtype=np.float64)
        einc = np.asarray(data.incident_energies, dtype=np.float64)
        sel = rng.permutation(len(sh))[:max_rows]
        # u0_max: maximum of sum E / E_inc over the training set (noise included as in training)
        nz1 = self.cfg.flow1_noise_kev * P.KEV * np.asarray(self.geometry.layer_sizes).sum()
        self.unit = P.UnitSpaceEnergies.fit(sh.sum(1, keepdims=True) + nz1, einc)
        sh_t = torch.as_tensor(sh[sel])
        e_t = torch.as_tensor(einc[sel])
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            x1 = P.add_uniform_noise(sh_t, self.cfg.flow1_noise_kev * P.KEV)
            u = self.unit.forward(self._layer_sums(x1), e_t).clamp(0, 1)
            self.std1 = P.Standardize.fit(self.logit.forward(u).numpy())
            x2 = P.add_uniform_noise(sh_t, self.cfg.flow2_noise_kev * P.KEV)
            E = self._layer_sums(x2)
            frac = (x2 / E[:, self._layer_index]).clamp(0, 1)
            self.std2 = P.Standardize.fit(self.logit.forward(frac).numpy())
        self.einc_dist = einc_summary(einc)

    # ------------------------------------------------------------------ losses
    def flow1_loss(self, model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        showers, einc = batch
        y, c = self.flow1_inputs(showers, einc.to(showers.dtype))
        return -model(c).log_prob(y).mean() / y.shape[1]

    def flow2_loss(self, model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        showers, einc = batch
        y, c = self.flow2_inputs(showers, einc.to(showers.dtype))
        return -model(c).log_prob(y).mean() / y.shape[1]

    def distill_loss(self, student: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        """x-loss + z-loss of probability density distillation (CaloFlow II sec. 3).

        x-loss: data -> teacher -> z' -> student -> x'' compared with x; z-loss: z -> student ->
        x' -> teacher -> z'' compared with z; mean squared errors at the endpoints and, with
        ``distill_intermediate``, after every MADE block (:func:`caloflows.flows.distillation_loss`).
        The conditions are those of the training batch.
        """
        showers, einc = batch
        y, c = self.flow2_inputs(showers, einc.to(showers.dtype))
        return F.distillation_loss(self.teacher, student, y, c, None, self.cfg.distill_intermediate)

    # ------------------------------------------------------------------ training
    def _tensors(self, data: ShowerData) -> tuple[Tensor, Tensor]:
        return (torch.as_tensor(np.asarray(data.showers, dtype=np.float32)),
                torch.as_tensor(np.asarray(data.incident_energies, dtype=np.float32)))

    def _check_data(self, data: ShowerData) -> None:
        self.geometry.check_showers(data.showers, "training showers")
        if len(data) < 10:
            raise ValueError(f"need at least 10 training showers, got {len(data)}")

    def fit(self, data: ShowerData, out_dir: str | os.PathLike, *, resume: bool = False, device: str = "cpu",
            progress: bool = True, stages: tuple[str, ...] = ("flow1", "teacher")) -> dict:
        """Train flow-I and the flow-II teacher (``stages``), saving to ``out_dir`` after each."""
        self._check_data(data)
        self.to(device)
        out_dir = Path(out_dir)
        if self.unit is None or not resume:
            self.fit_constants(data, seed=int(self.cfg.flow1_train.get("seed", 0)))
        self.save(out_dir)
        tensors = self._tensors(data)
        summary = {}
        if "flow1" in stages:
            tr = Trainer(self.flow1, self.flow1_loss, "flow1", out_dir, TrainConfig(**self.cfg.flow1_train), self.device, progress)
            r = tr.fit(tensors, resume=resume)
            self.trained["flow1"] = True
            self.save(out_dir)
            summary["flow1"] = {"best_val": r.best_val, "epochs": r.epochs_run, "seconds": r.seconds}
        if "teacher" in stages:
            tr = Trainer(self.teacher, self.flow2_loss, "flow2_teacher", out_dir, TrainConfig(**self.cfg.flow2_train), self.device, progress)
            r = tr.fit(tensors, resume=resume)
            self.trained["teacher"] = True
            self.save(out_dir)
            summary["teacher"] = {"best_val": r.best_val, "epochs": r.epochs_run, "seconds": r.seconds}
        return summary

    def distill(self, data: ShowerData, out_dir: str | os.PathLike, *, resume: bool = False, device: str = "cpu",
                progress: bool = True, epochs: int | None = None) -> dict:
        """Train the IAF student of flow-II from the trained teacher (probability density distillation)."""
        if not self.trained["teacher"]:
            raise ModelDirError(f"{out_dir}: the flow-II teacher is not trained yet; run 'caloflows train caloflow' first")
        self._check_data(data)
        self.to(device)
        cfg = dict(self.cfg.student_train)
        if epochs is not None:
            cfg["epochs"] = int(epochs)
            self.cfg.student_train = cfg
            self.config = self.cfg.to_dict()
        self.teacher.eval()
        resuming = resume and (Path(out_dir) / "checkpoints" / "flow2_student_last.pt").exists()
        if self.cfg.student_from_teacher and not resuming:
            F.init_student_from_teacher(self.student, self.teacher)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        try:
            tr = Trainer(self.student, self.distill_loss, "flow2_student", out_dir, TrainConfig(**cfg), self.device, progress)
            r = tr.fit(self._tensors(data), resume=resume)
        finally:
            for p in self.teacher.parameters():
                p.requires_grad_(True)
        self.trained["student"] = True
        self.save(out_dir)
        return {"student": {"best_val": r.best_val, "epochs": r.epochs_run, "seconds": r.seconds}}

    # ------------------------------------------------------------------ sampling
    def decode_flow1(self, y: Tensor, einc: Tensor) -> tuple[Tensor, Tensor]:
        """Flow-I output -> (layer energies, E_dep = u_0 u0_max E_inc); rows of the first sum to the second."""
        u = self.logit.inverse(self.std1.inverse(y)).clamp(0.0, 1.0)
        return self.unit.inverse(u, einc), u[:, 0] * self.unit.u0_max * einc

    @torch.no_grad()
    def sample_layer_energies(self, einc: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Flow-I: E_inc (MeV) -> layer energies (MeV), float64, with outlier rejection.

        Rows whose ``E_dep / E_inc`` exceeds ``max_ratio`` (default: the training maximum) or
        are not finite are drawn again, up to ``max_resample`` times; every row sums exactly to
        ``u_0 u0_max E_inc``.
        """
        einc = einc.to(self.device, torch.float64)
        bound = self.cfg.max_ratio if self.cfg.max_ratio is not None else self.unit.u0_max
        out = torch.empty(len(einc), self.geometry.n_layers, dtype=torch.float64, device=self.device)
        todo = torch.arange(len(einc), device=self.device)
        with F.double_precision(self.flow1):
            for _ in range(self.cfg.max_resample + 1):
                e = einc[todo]
                y = F.flow_sample(self.flow1, P.log_einc(e)[:, None], generator=generator)
                E, _ = self.decode_flow1(y, e)
                ok = torch.isfinite(E).all(1) & (E.sum(1) / e <= bound)
                out[todo[ok]] = E[ok]
                todo = todo[~ok]
                if len(todo) == 0:
                    break
        if len(todo):  # still outliers after max_resample tries: scale them down to the bound
            E = torch.nan_to_num(E[~ok], nan=0.0, posinf=0.0).clamp_min(0)
            s = E.sum(1, keepdim=True)
            E = torch.where(s > 0, E / s.clamp_min(1e-30) * bound * einc[todo][:, None], E)
            out[todo] = E
        return out

    @torch.no_grad()
    def sample_voxels(self, layer_energies: Tensor, einc: Tensor, student: bool = True,
                      generator: torch.Generator | None = None, float64: bool | None = None) -> Tensor:
        """Flow-II: (E_i, E_inc) -> voxels (MeV) whose layers sum exactly to E_i (no threshold cut)."""
        flow = self.student if student else self.teacher
        use64 = (not student) if float64 is None else float64
        E = layer_energies.to(self.device, torch.float64)
        c = self.flow2_context(E, einc.to(self.device, torch.float64))
        if use64:
            with F.double_precision(flow):
                y = F.flow_sample(flow, c, generator=generator)
        else:
            y = F.flow_sample(flow, c.float(), generator=generator).double()
        frac = self.logit.inverse(self.std2.inverse(y))
        frac = torch.nan_to_num(frac, nan=0.0, posinf=1.0, neginf=0.0)
        offs = self.geometry.layer_offsets
        return P.renormalise_layers(frac, E, offs)

    def sample(self, n_or_energies, batch_size: int = 10_000, *, seed: int | None = None, device: str = "cpu",
               progress: bool = False, student: bool | None = None, threshold: bool = True,
               micro_batch: int = 512) -> tuple[np.ndarray, np.ndarray]:
        """Generate showers: ``E_inc -> flow-I -> flow-II -> renormalise -> threshold``.

        ``student=None`` uses the student if trained, else the teacher.  On CPU the student
        processes a batch in pieces of at most ``micro_batch`` rows (same distribution, less memory
        traffic).  Returns
        ``(E_inc (N,) MeV, showers (N, V) float32 MeV)``.
        """
        if not self.trained["flow1"]:
            raise ModelDirError("flow-I is not trained; run 'caloflows train caloflow' first")
        if student is None:
            student = self.trained["student"]
        which = "student" if student else "teacher"
        if not self.trained[which]:
            raise ModelDirError(f"the flow-II {which} is not trained" + ("; run 'caloflows distill' first" if student else ""))
        if str(device) != str(self.device):
            self.to(device)
        rng = np.random.default_rng(seed)
        einc = incident_energies(n_or_energies, self.einc_dist, rng)
        gen = torch.Generator(device=self.device).manual_seed(int(rng.integers(2**62)))
        for m in (self.flow1, self.teacher, self.student):
            m.eval()
        out = np.empty((len(einc), self.geometry.n_voxels), dtype=np.float32)
        bs = max(1, int(batch_size))
        for a in tqdm(range(0, len(einc), bs), desc=f"generate ({which})", disable=None if progress else True):
            e = torch.as_tensor(einc[a:a + bs], dtype=torch.float64, device=self.device)
            # the student's spline arithmetic is memory-bound: run big batches in cache-sized pieces
            step = len(e) if not student or self.device.type != "cpu" else max(1, int(micro_batch))
            parts = []
            for i in range(0, len(e), step):
                E = self.sample_layer_energies(e[i:i + step], gen)
                parts.append(self.sample_voxels(E, e[i:i + step], student=student, generator=gen))
            v = torch.cat(parts).cpu().numpy()
            if threshold:
                v = self.geometry.apply_threshold(v)
            out[a:a + bs] = v
        return einc, out

    # ------------------------------------------------------------------ density
    @torch.no_grad()
    def log_prob(self, showers: np.ndarray, incident_energies: np.ndarray, batch_size: int = 1000,
                 student: bool = False) -> np.ndarray:
        """log p_1 + log p_2 of the preprocessed shower (no noise added; teacher by default)."""
        self.geometry.check_showers(showers)
        flow = self.student if student else self.teacher
        res = []
        for a in range(0, len(showers), batch_size):
            s = torch.as_tensor(np.asarray(showers[a:a + batch_size], dtype=np.float64), device=self.device)
            e = torch.as_tensor(np.asarray(incident_energies[a:a + batch_size], dtype=np.float64), device=self.device)
            s = s + 0.5 * self.cfg.flow2_noise_kev * P.KEV  # mid-point of the dequantisation noise
            with F.double_precision(self.flow1, flow):
                y1, c1 = self.flow1_inputs(s, e, noise=False)
                y2, c2 = self.flow2_inputs(s, e, noise=False)
                res.append((self.flow1(c1).log_prob(y1) + flow(c2).log_prob(y2)).cpu().numpy())
        return np.concatenate(res)

    # ------------------------------------------------------------------ files
    def save(self, directory: str | os.PathLike) -> None:
        """Write config.json, constants.json and the weights of the trained flows."""
        d = Path(directory)
        write_model_config(d, KIND, self.geometry, {"caloflow": self.cfg.to_dict(), "trained": dict(self.trained)})
        if self.unit is not None:
            write_json(d / CONSTANTS_FILE, {
                "logit": self.logit.to_dict(), "unit_space": self.unit.to_dict(),
                "flow1_standardize": self.std1.to_dict(), "flow2_standardize": self.std2.to_dict(),
                "incident_energies": self.einc_dist,
            })
        for name, m in (("flow1", self.flow1), ("teacher", self.teacher), ("student", self.student)):
            if self.trained[name]:
                save_weights(d / WEIGHTS[name], m.state_dict(), {"kind": KIND, "network": name})

    @classmethod
    def load(cls, directory: str | os.PathLike, device: str = "cpu", geometry: Geometry | str | None = None) -> "CaloFlow":
        """Load a model directory; refuses other model kinds, geometries or format versions."""
        g = load_geometry(geometry) if geometry is not None else None
        d = read_model_config(directory, kind=KIND, geometry=g)
        try:
            cfg = CaloFlowConfig.from_dict(d["config"]["caloflow"])
            trained = dict(d["config"]["trained"])
        except (KeyError, TypeError) as exc:
            raise ModelDirError(f"{directory}: malformed CaloFlow config ({exc})") from None
        model = cls(d["geometry"], cfg)
        cpath = Path(directory) / CONSTANTS_FILE
        if os.path.exists(cpath):
            c = read_json(cpath, "preprocessing constants")
            try:
                model.logit = P.from_dict(c["logit"])
                model.unit = P.from_dict(c["unit_space"])
                model.std1 = P.from_dict(c["flow1_standardize"])
                model.std2 = P.from_dict(c["flow2_standardize"])
                model.einc_dist = c["incident_energies"]
            except (KeyError, TypeError, ValueError) as exc:
                raise ModelDirError(f"{cpath}: malformed preprocessing constants ({exc})") from None
        elif any(trained.values()):
            raise ModelDirError(f"{directory}: {CONSTANTS_FILE} is missing")
        for name, m in (("flow1", model.flow1), ("teacher", model.teacher), ("student", model.student)):
            if trained.get(name):
                sd = load_weights(Path(directory) / WEIGHTS[name])
                try:
                    m.load_state_dict(sd)
                except RuntimeError as exc:
                    raise ModelDirError(f"{Path(directory) / WEIGHTS[name]}: weights do not fit the configured network "
                                        f"({str(exc).splitlines()[0]})") from None
                model.trained[name] = True
        return model.to(device)

    def parameter_counts(self) -> dict:
        return {k: F.count_parameters(m) for k, m in (("flow1", self.flow1), ("teacher", self.teacher), ("student", self.student))}


# ---------------------------------------------------------------------------- CLI hooks
def apply_overrides(cfg: CaloFlowConfig, overrides: list[str]) -> CaloFlowConfig:
    """Apply ``KEY=VALUE`` settings (``flow2_hidden=128``, ``flow2_train.epochs=5``); VALUE is JSON or text."""
    return CaloFlowConfig.from_dict(override_settings(cfg.to_dict(), overrides, "CaloFlow"))


def train_caloflow(data, geometry, out_dir, preset: str = "quick", *, overrides: list[str] | None = None,
                   epochs: int | None = None, seed: int | None = None, device: str = "cpu", resume: bool = False,
                   distill: bool = True, progress: bool = True) -> tuple["CaloFlow", dict]:
    """Python entry point of the main job: train flow-I and the teacher, then distill the student.

    ``data`` is a file path or :class:`~caloflows.io.ShowerData`; ``overrides`` are ``KEY=VALUE``
    settings as for ``--set``.  Returns ``(model, summary)``; the model directory is complete.
    """
    from ..io import read_showers

    g = load_geometry(geometry)
    if not isinstance(data, ShowerData):
        data = read_showers(data, geometry=g)
    if resume and os.path.exists(os.path.join(str(out_dir), "config.json")):
        model = CaloFlow.load(out_dir, geometry=g)
    else:
        cfg = CaloFlowConfig.preset(preset, g)
        if epochs is not None:
            for k in ("flow1_train", "flow2_train", "student_train"):
                setattr(cfg, k, {**getattr(cfg, k), "epochs": int(epochs)})
        if seed is not None:
            for k in ("flow1_train", "flow2_train", "student_train"):
                setattr(cfg, k, {**getattr(cfg, k), "seed": int(seed)})
        model = CaloFlow(g, apply_overrides(cfg, overrides or []))
    summary = model.fit(data, out_dir, resume=resume, device=device, progress=progress)
    if distill:
        summary.update(model.distill(data, out_dir, resume=resume, device=device, progress=progress))
    return model, summary


def train_from_args(args) -> dict:
    """Run ``caloflows train caloflow`` (flow-I and the flow-II teacher)."""
    from ..io import read_showers

    g = load_geometry(args.geometry)
    data = read_showers(args.data, geometry=g)
    if args.resume and os.path.exists(os.path.join(args.out, "config.json")):
        model = CaloFlow.load(args.out, geometry=g)
    else:
        cfg = CaloFlowConfig.preset(args.preset, g)
        if args.epochs is not None:
            cfg.flow1_train = {**cfg.flow1_train, "epochs": args.epochs}
            cfg.flow2_train = {**cfg.flow2_train, "epochs": args.epochs}
        if args.seed is not None:
            for k in ("flow1_train", "flow2_train", "student_train"):
                setattr(cfg, k, {**getattr(cfg, k), "seed": args.seed})
        cfg = apply_overrides(cfg, args.set)
        model = CaloFlow(g, cfg)
    return model.fit(data, args.out, resume=args.resume, device=args.device, progress=True)


def distill_from_args(args) -> dict:
    """Run ``caloflows distill MODEL_DIR --data TRAIN.h5`` for a CaloFlow model."""
    from ..io import read_showers

    model = CaloFlow.load(args.model_dir)
    data = read_showers(args.data, geometry=model.geometry)
    return model.distill(data, args.model_dir, resume=args.resume, device=args.device, epochs=args.epochs)
