"""SuperCalo: a coarse CaloFlow plus one super-resolution flow per coarse voxel
(Pang, Raine, Shih, arXiv:2308.11700, sec. IV and appendix B; review sec. 4.4).

The chain, ``E_inc -> fine layer energies -> coarse voxels -> fine voxels``:

* **FLOW-1** ``p(E_0..E_{L-1} | E_inc)``, the *fine* layer energies (45 on ds2).  When a coarse
  voxel spans one fine layer (``f_z = 1``, choice B) the coarse geometry has the fine layers,
  so FLOW-1 is the nested coarse CaloFlow's flow-I.  When it spans several (``f_z > 1``, choice
  A: 5), the coarse CaloFlow's flow-I would only learn the 9 coarse layer sums, but SUPERCALO
  is conditioned on the fine layer energies: SuperCalo then owns a FLOW-1 network ``flow1``
  (:class:`~caloflows.models.energy_flow.EnergyFlow`, the L2LFlows/iCaloFlow energy flow and
  its preprocessing) on the fine layer energies, and the coarse CaloFlow's flow-I is trained
  with it but not used for sampling.
* **FLOW-2** ``p(coarse voxels | E_inc, coarse layer energies)``: the nested coarse CaloFlow's
  flow-II (MAF teacher, or the distilled IAF student: variants ``teacher`` / ``student``),
  conditioned on the coarse layer energies -- FLOW-1's fine layer energies summed over each
  group of ``f_z`` layers.  The coarse model is a full
  :class:`~caloflows.models.caloflow.CaloFlow` on ``CoarseMap.coarse`` (its own preprocessing,
  CaloFlow's, instead of appendix B4/B5), saved in the sub-directory ``coarse/``.
* **SUPERCALO** ``p(relative fine energies of one coarse voxel | conditions)``: the conditions
  of table I (:func:`caloflows.superres.build_conditions`, B1-B9), followed by the named
  detector-parameter features (beyond the paper), trained on (shower, coarse voxel) rows whose
  fine showers are streamed from the training file chunk by chunk (the batch source is over
  showers; every batch expands its showers into their coarse-voxel rows, noise B6/B8 drawn
  from the training loop's counter-based generator).
* The appendix-B cut (the geometry's readout threshold, 15.15 keV for ds2/ds3) is applied to
  the outputs of all three flows; upsampled fine voxels of a coarse voxel are renormalised to
  sum exactly to it (:func:`caloflows.superres.assemble_fine`).

Resampling (sec. V C, tables V/VI): with factor ``N`` (``resample`` setting or the ``resample``
argument of :meth:`SuperCalo.sample_resampled`), ``ceil(n / N)`` coarse showers are drawn and
each is upsampled ``N`` times.  :meth:`SuperCalo.upsample` upsamples given coarse showers (the
paper's table III study).

**SUPERCALO student** (beyond the paper; this package's answer to the sampling cost): an IAF with
SUPERCALO's architecture, distilled from it by probability density distillation (CaloFlow II,
arXiv:2110.11377, sec. 3, as CaloFlow's flow-II student), started from the teacher's weights.  The
MAF's sequential inverse takes ``k`` MADE passes per block (10 for choice A), the IAF one, so the
upsampling cost that bounds the gain of resampling (table VI) falls.  ``caloflows distill`` trains
it after the coarse FLOW-2 student; ``--set up_student=true`` samples with it (a generation
setting, with either coarse variant).

``log_prob`` (of the preprocessed representation, noise at its mid-point / none):
``log p_FLOW-1 + log p_FLOW-2 + sum over coarse voxels of log p_SUPERCALO``; for ``f_z = 1`` the
first two are the coarse CaloFlow's ``log_prob`` of the coarse-grained shower.  With
``flow1_context=coarse_layers`` (beyond the paper) FLOW-1 is ``p(E_0..E_{L-1} | E_inc, coarse layer
energies)``, drawn after the coarse CaloFlow's flow-I, and ``log_prob`` is the coarse CaloFlow's
``log_prob`` + ``log p_FLOW-1(fine layers | E_inc, their coarse sums)`` + the SUPERCALO sum (the
fine layer energies are rescaled to the coarse sums when sampling, so this is the density of the
chain's flows, not of the constrained layer energies).

Example:
    >>> from caloflows.models.supercalo import SuperCalo, SuperCaloConfig
    >>> m = SuperCalo("ds2", SuperCaloConfig.preset("quick", "ds2"))              # doctest: +SKIP
    >>> m.fit("train.h5", "model")                    # coarse model + SUPERCALO  # doctest: +SKIP
    >>> m.fit("train.h5", "model", stage="distill")   # coarse FLOW-2 student     # doctest: +SKIP
    >>> m.sample(1000, seed=1).showers.shape                                     # doctest: +SKIP
    (1000, 6480)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from .. import flows as F
from ..coarsegraining import CoarseGraining, CoarseMap
from ..conditions import Conditions
from ..errors import ConditionsError, ConfigError, GeometryError, ModelDirError, UsageError
from ..io import ShowerData, iter_showers, read_conditions
from ..superres import SuperCaloPreprocessing, apply_cut, assemble_fine, build_conditions, build_rows, fit_fine_layers
from ..training.distributed import DistContext
from ..training.loop import ArraySource, StreamSource, TrainConfig
from .base import Generator, einc_summary, need
from .caloflow import CaloFlow, CaloFlowConfig
from .energy_flow import (
    PAPER_ENERGY_INPUTS,
    EnergyConstants,
    EnergyFlow,
    effective_cut,
    layer_energy_condition,
    quick_energy_train,
)
from .settings import EnergyFlowSettings

if TYPE_CHECKING:
    from ..lean import LeanFlow

__all__ = ["SuperCalo", "SuperCaloConfig", "UpsamplerLogProb", "CoarseVoxelSum"]


@dataclass
class SuperCaloConfig(EnergyFlowSettings):
    """SuperCalo settings: the coarse-graining, the nested coarse CaloFlow's settings (``coarse``,
    a :class:`~caloflows.models.caloflow.CaloFlowConfig` dict: ``coarse.flow2_hidden=...``), the
    own FLOW-1 for ``f_z > 1`` (``flow1_*``), the SUPERCALO flow (``up_*``, ``upsampler_train``;
    its ``batch_size`` counts coarse voxels, as the paper's 60k) and the resampling factor."""

    TITLE: ClassVar[str] = "SuperCalo"
    RANGES: ClassVar[dict] = {**EnergyFlowSettings.RANGES, "up_bound": (0, None, True), "max_ratio": (0, None, True),
                              "voxel_cut_mev": (0, None, True), "fine_layer_fit": (0, None, False)}
    CHOICES: ClassVar[dict] = {**EnergyFlowSettings.CHOICES, "up_precision": ("float32", "float64"),
                               "coarse_layer_energies": ("flow1", "coarse"),
                               "flow1_context": ("einc", "coarse_layers")}

    coarse_graining: str = "A"
    coarse: dict = field(default_factory=lambda: CaloFlowConfig().to_dict())
    flow1_transforms: int = 6
    flow1_hidden: list = field(default_factory=lambda: [64, 64])
    max_ratio: float | None = None  # E_dep/E_inc bound of FLOW-1 (f_z > 1); None: training maximum
    up_transforms: int = 8
    up_hidden: list = field(default_factory=lambda: [128, 128])
    up_bins: int = 8
    up_bound: float = 14.0
    resample: int = 1
    #: SUPERCALO sampling precision: float32 (default; checked against float64 on a fixed latent in
    #: benchmarks/bench_supercalo_upsampling_speed.py) or float64
    up_precision: str = "float32"
    #: the cut ``t`` (MeV) of the generated fine voxels; None: the geometry's readout threshold (the
    #: paper).  A generation setting (issue 15): every coarse voxel's upsampled fine voxels get the
    #: threshold-aware renormalisation (L2LFlows eqs. B.8-B.9, here per coarse voxel: the dimmest are
    #: dropped until the survivors, renormalised to the coarse voxel's energy, are all >= t), and,
    #: unless ``coarse.voxel_cut_mev`` is set, FLOW-2's coarse voxels the same cut per coarse layer, so
    #: coarse voxels and layer energies are kept exactly and no fine voxel lies in (0, t)
    voxel_cut_mev: float | None = None
    #: iterations of the fit of the upsampled fine layers to FLOW-1's fine layer energies
    #: (:func:`caloflows.superres.fit_fine_layers`; beyond the paper, stop 17); 0: none (the paper).  A
    #: generation setting; it acts only when a coarse voxel spans several fine layers (f_z > 1, choice A)
    fine_layer_fit: int = 0
    #: where the coarse layer energies of the full chain come from (f_z > 1): ``flow1`` (the paper: FLOW-1's
    #: fine layer energies, summed per coarse layer) or ``coarse`` (beyond the paper, stop 23: the nested
    #: coarse CaloFlow's own flow-I, the one its flow-II trained with; FLOW-1's fine energies are then
    #: rescaled in every coarse layer to its energy, as for ``--coarse`` upsampling).  A generation setting
    coarse_layer_energies: str = "flow1"
    #: what FLOW-1 is conditioned on (f_z > 1): ``einc`` (the paper: E_inc and the detector parameters)
    #: or ``coarse_layers`` (beyond the paper, stop 26: also the coarse layer energies, eq. B.7 each,
    #: ``log10(E_c / GeV + 1e-6) + 1``).  With ``coarse_layers`` FLOW-1 draws the split of every coarse
    #: layer's energy over its ``f_z`` fine layers *given* that energy, ``p(E_fine | E_inc, E_coarse)``,
    #: instead of drawing the fine layers blind and rescaling them to a coarse sum they were not drawn
    #: with; the coarse layer energies then come from the coarse CaloFlow's flow-I
    #: (``coarse_layer_energies=coarse``, required) or from the given coarse showers (``--coarse``).
    #: A training setting: it sets FLOW-1's number of inputs
    flow1_context: str = "einc"
    #: sample SUPERCALO with its distilled IAF student instead of the MAF's sequential inverse (beyond
    #: the paper; ``caloflows distill`` trains it).  A generation setting
    up_student: bool = False
    #: evaluate SUPERCALO's splines through ``torch.compile`` when sampling (:class:`caloflows.lean.LeanFlow`
    #: ``compiled``): about a minute of compilation on the first call, then faster for large samples.  A
    #: generation setting; the same draws to float round-off
    up_compile: bool = False
    chunk_showers: int = 256
    flow1_train: dict = field(default_factory=lambda: asdict(TrainConfig(epochs=100, batch_size=256, base_lr=4e-5, max_lr=1e-3)))
    upsampler_train: dict = field(default_factory=lambda: asdict(TrainConfig(
        epochs=40, batch_size=60_000, base_lr=2e-5, max_lr=1e-3, annihilation=0.1)))
    #: distillation of the SUPERCALO student (not in the paper; ``batch_size`` counts coarse voxels)
    upsampler_student_train: dict = field(default_factory=lambda: asdict(TrainConfig(
        epochs=10, batch_size=60_000, base_lr=1e-4, max_lr=1e-3)))

    def validate(self) -> None:
        super().validate()
        try:
            CoarseGraining.parse(self.coarse_graining)
        except (GeometryError, ConfigError, ValueError) as exc:
            raise ConfigError(f"setting coarse_graining={self.coarse_graining!r}: {exc}") from None
        if not isinstance(self.coarse, dict):
            raise ConfigError(f"setting coarse={self.coarse!r}: must be a dict of CaloFlow settings")
        CaloFlowConfig.from_dict(self.coarse)
        if self.flow1_context == "coarse_layers" and self.coarse_layer_energies != "coarse":
            raise ConfigError("setting flow1_context=coarse_layers needs coarse_layer_energies=coarse: FLOW-1 then "
                              "draws the fine layers given the coarse flow-I's layer energies")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SuperCaloConfig":
        """Also completes ``coarse`` with the CaloFlow defaults, so that a model saved before a CaloFlow
        setting existed (``voxel_standardise``, stop 20) takes ``--set coarse.voxel_standardise=...``."""
        d = dict(d)
        if isinstance(d.get("coarse"), dict):
            d["coarse"] = CaloFlowConfig.from_dict(d["coarse"]).to_dict()
        return super().from_dict(d)

    def coarse_config(self) -> CaloFlowConfig:
        """The nested coarse CaloFlow's settings; its initialisation ``seed`` and its ``made_degrees``
        are this config's (so ``--seed`` reaches it; ``coarse.seed`` and ``coarse.made_degrees`` are not
        used)."""
        d = {**self.coarse, "seed": self.seed, "made_degrees": self.made_degrees}
        if self.voxel_cut_mev is not None and d.get("voxel_cut_mev") is None:
            d["voxel_cut_mev"] = self.voxel_cut_mev  # the fine cut's coarse half (see ``voxel_cut_mev``)
        return CaloFlowConfig.from_dict(d)

    def replace_train(self, **entries: Any) -> "SuperCaloConfig":
        """Also sets ``entries`` in the coarse model's ``*_train`` dicts."""
        d = self.to_dict()
        for dd in (d, d["coarse"]):
            for k in dd:
                if k.endswith("_train"):
                    dd[k].update(entries)
        return type(self).from_dict(d)


def _quick(g: Any) -> SuperCaloConfig:
    # 2 CPU cores, minutes: the quick CaloFlow on the coarse geometry, SUPERCALO as
    # upsampler.PRESETS["quick"] (4 MADE blocks of 2 x 64, batches of 10k coarse voxels, 6 epochs).
    return SuperCaloConfig(
        **PAPER_ENERGY_INPUTS,
        coarse=CaloFlowConfig.preset("quick", g).to_dict(), flow1_transforms=4, flow1_hidden=[64, 64],
        up_transforms=4, up_hidden=[64, 64],
        flow1_train=quick_energy_train(),
        upsampler_train=asdict(TrainConfig(epochs=6, batch_size=10_000, base_lr=2e-5, max_lr=2e-3, annihilation=0.1)),
        upsampler_student_train=asdict(TrainConfig(epochs=2, batch_size=10_000, base_lr=1e-4, max_lr=1e-3)))


def _full(g: Any) -> SuperCaloConfig:
    # table II: FLOW-1 6 MADE blocks of 2 x 64, FLOW-2 = CaloFlow's full flow-II, SUPERCALO 8 blocks
    # of 2 x 128, 8 bins, tail bound 14, batches of 60k coarse voxels, OneCycle 2e-5 -> 1e-3, 40 epochs.
    return SuperCaloConfig(**PAPER_ENERGY_INPUTS, coarse=CaloFlowConfig.preset("full", g).to_dict())


SuperCaloConfig.PRESETS = {"quick": _quick, "full": _full}


class CoarseVoxelSum(nn.Module):
    """``forward(*tensors (B, Vc, ...))`` = a per-row module applied to the ``B Vc`` (shower, coarse
    voxel) rows, summed over the ``Vc`` coarse voxels: one value per shower (the SUPERCALO student's
    distillation objective over the training loop's per-shower batches)."""

    def __init__(self, rows: nn.Module) -> None:
        super().__init__()
        self.rows = rows

    def forward(self, *tensors: Tensor) -> Tensor:
        b, v = tensors[0].shape[:2]
        return self.rows(*(t.reshape(b * v, -1) for t in tensors)).reshape(b, v).sum(1)


class UpsamplerLogProb(nn.Module):
    """``forward(target (B, Vc, k), cond (B, Vc, C))`` = the sum over the ``Vc`` coarse voxels of
    SUPERCALO's log p, one value per shower (so the training loop's per-shower batches and DDP
    shards stay whole showers)."""

    def __init__(self, flow: nn.Module) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, target: Tensor, cond: Tensor) -> Tensor:
        b, v, k = target.shape
        return F.flow_log_prob(self.flow, target.reshape(b * v, k), cond.reshape(b * v, -1)).reshape(b, v).sum(1)


class SuperCalo(Generator):
    """SuperCalo generator (see the module docstring)."""

    kind = "supercalo"
    Config = SuperCaloConfig
    stages = {"train": "coarse CaloFlow (flow-I + flow-II teacher), FLOW-1 if f_z > 1, then the SUPERCALO upsampler",
              "distill": "the coarse model's flow-II IAF student, then the SUPERCALO IAF student (distillation)"}
    variants = ("teacher", "student")
    weight_files = {"flow1": ("flow1.safetensors", "train"), "upsampler": ("upsampler.safetensors", "train"),
                    "up_student": ("upsampler_student.safetensors", "distill")}
    #: ``coarse.voxel_cut_mev``: the coarse CaloFlow's threshold-aware cut (L2LFlows eqs. B.8-B.9) on
    #: FLOW-2's coarse voxels, so that SUPERCALO upsamples no sub-MIP coarse voxel (issue 15)
    #: ``voxel_cut_mev``: the same cut on the fine voxels of every coarse voxel (and on the coarse voxels)
    #: ``fine_layer_fit``: iterations of the fit of the fine layers to FLOW-1's energies (f_z > 1)
    #: ``up_student``: sample SUPERCALO with its distilled IAF student
    #: ``up_compile``: SUPERCALO's splines through torch.compile
    #: ``coarse_layer_energies``: the coarse layer energies from FLOW-1 (the paper) or the coarse flow-I
    generation_settings = ("voxel_cut_mev", "fine_layer_fit", "up_student", "up_compile", "coarse.voxel_cut_mev",
                           "max_ratio", "coarse_layer_energies")
    cfg: SuperCaloConfig

    # ------------------------------------------------------------------ networks
    def build(self) -> None:
        c, k = self.cfg, self.n_params
        try:
            self.cmap: CoarseMap = CoarseGraining.parse(c.coarse_graining).bind(self.geometry)
        except GeometryError as exc:
            raise ConfigError(f"setting coarse_graining={c.coarse_graining!r} does not fit geometry "
                              f"{self.geometry.name!r}: {exc} (try --set coarse_graining=B or RxAxZ)") from None
        ccfg = c.coarse_config()
        self.coarse = CaloFlow(self.cmap.coarse, ccfg, self.condition_spec)
        self.f_z = self.cmap.grouping.f_z
        #: FLOW-1 given the coarse layer energies (``flow1_context=coarse_layers``)
        self.flow1_given_coarse = self.f_z > 1 and c.flow1_context == "coarse_layers"
        n1 = k + (self.cmap.nc_z if self.flow1_given_coarse else 0)
        self.flow1 = (EnergyFlow(self.geometry.n_layers, c.flow1_transforms, tuple(c.flow1_hidden), c.bins,
                                 c.energy_spline_bound,
                                 seed=c.seed, n_params=n1, degrees=c.made_degrees) if self.f_z > 1 else None)
        # conditions: table I (prep.condition_dim) + detector parameters
        cond_dim = 8 + self.f_z + self.cmap.nc_z + self.cmap.nc_r + k
        self.upflow = F.build_maf(self.cmap.group_size, cond_dim, c.up_transforms, tuple(c.up_hidden), c.up_bins,
                                  c.up_bound, degrees=c.made_degrees)
        # built last: the networks above keep the initial weights they had before the student existed
        self.up_student = F.build_iaf(self.cmap.group_size, cond_dim, c.up_transforms, tuple(c.up_hidden), c.up_bins,
                                      c.up_bound, degrees=c.made_degrees)
        self._prep: SuperCaloPreprocessing | None = None
        self._energy: EnergyConstants | None = None
        self._ratio_max: float | None = None
        self.einc_dist: dict | None = None

    def networks(self) -> dict[str, nn.Module]:
        nets: dict[str, nn.Module] = {"upsampler": self.upflow}
        if self.flow1 is not None:
            nets["flow1"] = self.flow1
        nets["up_student"] = self.up_student
        return nets

    def _own_trained(self, stage: str = "train") -> bool:
        """Whether this model's own networks of ``stage`` (not the coarse model's) are trained."""
        return all(self.trained[n] for n in self.stage_networks(stage) if n in self.trained)

    def submodels(self) -> dict[str, Generator]:
        return {"coarse": self.coarse}

    def _load_submodels(self, directory: Path, device: str) -> None:
        sub = directory / "coarse"
        if (sub / "config.json").exists():
            self.coarse = CaloFlow.load(sub, device=device, geometry=self.cmap.coarse)
            if self.coarse.condition_spec != self.condition_spec:
                raise ModelDirError(f"{sub}: the coarse model's conditions differ from the SuperCalo model's")
        elif any(self.trained.values()):
            raise ModelDirError(f"{sub}: the coarse model directory is missing")

    def stage_done(self, stage: str) -> bool:
        return self._own_trained(stage) and self.coarse.stage_done(stage)

    def variant_ready(self, variant: str | None) -> bool:
        """``variant`` names the coarse FLOW-2 network (teacher / student); the SUPERCALO student
        (``up_student``) is checked by :meth:`_check_variant`."""
        return self._own_trained() and self.coarse.variant_ready(variant)

    def _check_variant(self, variant: str | None) -> str | None:
        variant = super()._check_variant(variant)
        self._check_up_student()
        return variant

    def _check_up_student(self) -> None:
        if self.cfg.up_student and not self.trained["up_student"]:
            raise ModelDirError("the SuperCalo model's SUPERCALO student is not distilled (setting up_student=true); "
                                "run 'caloflows distill' first or leave the setting out")

    def parameter_counts(self) -> dict[str, int]:
        out = super().parameter_counts()
        out.update({f"coarse.{k}": v for k, v in self.coarse.parameter_counts().items()})
        return out

    # ------------------------------------------------------------------ constants
    @property
    def prep(self) -> SuperCaloPreprocessing:
        return need(self._prep, "SuperCalo preprocessing constants")

    def constants(self) -> dict | None:
        if self._prep is None:
            return None
        return {"coarse_graining": self.cmap.grouping.to_dict(), "upsampler": self.prep.to_dict(),
                "flow1": None if self._energy is None else self._energy.to_dict(),
                "ratio_max": self._ratio_max, "incident_energies": self.einc_dist}

    def set_constants(self, c: dict) -> None:
        if CoarseGraining.from_dict(c["coarse_graining"]).factors != self.cmap.grouping.factors:
            raise ValueError("constants were written for another coarse-graining")
        self._prep = SuperCaloPreprocessing.from_dict(c["upsampler"])
        self._energy = None if c.get("flow1") is None else EnergyConstants.from_dict(c["flow1"])
        self._ratio_max = c.get("ratio_max")
        self.einc_dist = c["incident_energies"]

    # ------------------------------------------------------------------ training
    def _scan(self, data: "ShowerData | str | Path") -> tuple[ShowerData, np.ndarray, np.ndarray]:
        """One pass over the training showers: (coarse ShowerData with the conditions, fine layer
        energies (N, L), parameter features (N, K)); fine showers are not kept for a file (memory:
        N x (n_coarse x 4 + L x 8) bytes, 270 MB for 100k ds2 showers with choice A)."""
        blocks: Iterable[ShowerData]
        if isinstance(data, ShowerData):
            blocks = [data]
        else:
            blocks = iter_showers(data, max(1, self.cfg.chunk_showers), self.geometry)
        einc, coarse, layers = [], [], []
        self._coarse_max = 0.0
        for blk in blocks:
            sh = np.asarray(self.geometry.check_showers(blk.showers, "training showers"), dtype=np.float64)
            einc.append(np.asarray(blk.incident_energies, dtype=np.float64))
            c = self.cmap.coarse_grain(sh)
            self._coarse_max = max(self._coarse_max, float(c.max(initial=0.0)))
            coarse.append(c.astype(np.float32))
            layers.append(self.geometry.layer_energies(sh))
        e = np.concatenate(einc)
        if len(e) < 10:
            raise UsageError(f"need at least 10 training showers, got {len(e)}")
        names, vals = read_conditions(data)
        cd = ShowerData(e, np.concatenate(coarse), vals if names else None, tuple(names))
        feats = self.condition_spec.features(vals if names else np.zeros((len(e), 0)))
        return cd, np.concatenate(layers), np.asarray(feats, dtype=np.float64)

    def _fine_source(self, data: "ShowerData | str | Path", n: int):
        if isinstance(data, ShowerData):
            return ArraySource(np.asarray(data.showers, dtype=np.float32))
        from ..layerdata import LayerColumns

        cols = LayerColumns(data, self.geometry, chunk_rows=max(1, self.cfg.chunk_showers))
        V = self.geometry.n_voxels
        return StreamSource(n, cols.chunk_rows, lambda a, b: cols.read(0, V, a, b))

    def _up_inputs(self, einc: np.ndarray, feats: np.ndarray, with_z: bool = False):
        """Batches of showers -> (target (B, Vc, k), conditions (B, Vc, C)[, latent z (B, Vc, k)])."""
        cmap, prep = self.cmap, self.prep

        def inputs(ii: np.ndarray, raw: np.ndarray, gen: torch.Generator) -> tuple[Tensor, ...]:
            ii = np.asarray(ii)
            rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=gen)))
            r = build_rows(einc[ii], np.asarray(raw, dtype=np.float64), cmap, prep, rng)
            b, v = len(ii), cmap.n_coarse
            c = self._with_params(r.cond.reshape(b, v, -1), feats[ii])
            t = torch.as_tensor(r.target.reshape(b, v, -1), dtype=torch.float32)
            out = (t, torch.as_tensor(c, dtype=torch.float32))
            return (*out, torch.randn(t.shape, generator=gen)) if with_z else out

        return inputs

    @staticmethod
    def _with_params(cond: np.ndarray, feats: np.ndarray) -> np.ndarray:
        """Append the (N, K) parameter features to (N, Vc, C) SUPERCALO conditions."""
        if feats.shape[1] == 0:
            return cond
        return np.concatenate([cond, np.broadcast_to(feats[:, None, :], cond.shape[:2] + feats.shape[1:])], -1)

    def _fit_train(self, data: "ShowerData | str | Path", out_dir: Path, *, resume: bool, device: str,
                   progress: bool, ctx: DistContext, networks: Sequence[str] = ("coarse", "flow1", "upsampler")) -> dict:
        """Coarse CaloFlow (flow-I + teacher), FLOW-1 (f_z > 1), then SUPERCALO on streamed rows;
        ``networks`` picks which of (``coarse``, ``flow1``, ``upsampler``) train: e.g. SUPERCALO again
        with another schedule, starting from its current weights (a warm restart); the constants of
        the networks that train are fitted again from ``data``, the others' are kept."""
        unknown = sorted(set(networks) - {"coarse", "flow1", "upsampler"})
        if unknown:
            raise UsageError(f"unknown SuperCalo network {unknown[0]!r} (coarse, flow1, upsampler)")
        self.training_conditions(data)
        cdata, layers, feats = self._scan(data)
        self.to(ctx.device(device))
        einc = np.asarray(cdata.incident_energies, dtype=np.float64)
        # constants of the networks that train now (a network kept as it is keeps its own)
        if self._prep is None or (not resume and "upsampler" in networks):
            self._prep = SuperCaloPreprocessing._from_maxima(self._coarse_max,
                                                              float(layers.max(initial=0.0)), self.cmap)
        if self.einc_dist is None or (not resume and "flow1" in networks):
            self._ratio_max = float(np.max(layers.sum(1) / einc))
            self.einc_dist = einc_summary(einc)
            if self.flow1 is not None:
                self._energy = EnergyConstants.fit(layers, einc, seed=self.cfg.seed, alpha=self.cfg.alpha,
                                                   standardise=self.cfg.energy_standardise)
        if ctx.is_main:
            self.save(out_dir)
        out: dict[str, Any] = {}
        if "coarse" in networks:
            out["coarse"] = self.coarse.fit(cdata, out_dir / "coarse", stage="train", resume=resume, device=device,
                                            progress=progress, ctx=ctx)
        if self.flow1 is not None and "flow1" in networks:
            ec = need(self._energy, "FLOW-1 constants")
            E_t = torch.as_tensor(layers)
            e_t = torch.as_tensor(einc)
            p_t = self._flow1_params(torch.as_tensor(feats), self._coarse_layer_sums(torch.as_tensor(layers)))

            def f1_inputs(ii: np.ndarray, raw: np.ndarray, gen: torch.Generator) -> tuple[Tensor, ...]:
                k = torch.as_tensor(np.asarray(ii))
                y = ec.forward(ec.noisy(E_t[k], gen)).float()
                return y, EnergyFlow.context(ec, e_t[k], p_t[k]).float()

            out["flow1"] = self.train_network("flow1", self.flow1, ArraySource(layers.astype(np.float32)), f1_inputs,
                                              out_dir, self.cfg.flow1_train, ctx, norm=self.geometry.n_layers,
                                              progress=progress, resume=resume)
        if "upsampler" not in networks:
            return out
        tc = self._row_schedule(self.cfg.upsampler_train)
        out["upsampler"] = self.train_network("upsampler", UpsamplerLogProb(self.upflow),
                                              self._fine_source(data, len(einc)), self._up_inputs(einc, feats),
                                              out_dir, tc, ctx, norm=self.cmap.n_coarse, progress=progress,
                                              resume=resume)
        return out

    def _row_schedule(self, train: dict, epochs: int | None = None) -> dict:
        """A SUPERCALO schedule for the shared loop: ``batch_size`` from coarse voxels (the paper's unit)
        to whole showers (the loop's batches); ``epochs`` overrides."""
        tc = dict(train)
        tc["batch_size"] = max(1, int(round(tc["batch_size"] / self.cmap.n_coarse)))
        if epochs is not None:
            tc["epochs"] = int(epochs)
        return tc

    def _fit_distill(self, data: "ShowerData | str | Path", out_dir: Path, *, resume: bool, device: str,
                     progress: bool, ctx: DistContext, epochs: int | None = None,
                     networks: Sequence[str] = ("coarse", "upsampler")) -> dict:
        """Distill the coarse model's flow-II IAF student (CaloFlow's distillation on coarse showers),
        then the SUPERCALO IAF student on streamed (shower, coarse voxel) rows; ``networks`` picks
        (``coarse``, ``upsampler``); ``epochs`` overrides both schedules."""
        unknown = sorted(set(networks) - {"coarse", "upsampler"})
        if unknown:
            raise UsageError(f"unknown SuperCalo student {unknown[0]!r} (coarse, upsampler)")
        if not self.coarse.trained.get("teacher"):
            raise ModelDirError(f"{out_dir}: the coarse flow-II teacher is not trained yet; "
                                "run 'caloflows train supercalo' first")
        if "upsampler" in networks and not self.trained["upsampler"]:
            raise ModelDirError(f"{out_dir}: the SUPERCALO flow is not trained yet; run 'caloflows train supercalo' first")
        self.training_conditions(data)
        cdata, _, feats = self._scan(data)
        out: dict[str, Any] = {}
        if "coarse" in networks:
            out["coarse"] = self.coarse.fit(cdata, out_dir / "coarse", stage="distill", resume=resume, device=device,
                                            progress=progress, ctx=ctx, epochs=epochs)
        if "upsampler" in networks:
            self.to(ctx.device(device))
            tc = self._row_schedule(self.cfg.upsampler_student_train, epochs)
            einc = np.asarray(cdata.incident_energies, dtype=np.float64)
            out["upsampler"] = self.train_student(
                "up_student", self.upflow, self.up_student, self._fine_source(data, len(einc)),
                self._up_inputs(einc, feats, with_z=True), out_dir, tc, ctx, norm=self.cmap.n_coarse,
                warm_start=lambda: F.init_student_from_teacher(self.up_student, self.upflow), progress=progress,
                resume=resume, checkpoint="upsampler_student", wrap=CoarseVoxelSum)
        elif ctx.is_main:
            self.save(out_dir)
        return out

    def with_generation_settings(self, items: Sequence[str] | None) -> "SuperCalo":
        """As :meth:`Generator.with_generation_settings`; ``coarse.*`` items reach the nested coarse CaloFlow."""
        super().with_generation_settings(items)
        self.coarse.cfg = self.cfg.coarse_config()
        return self

    # ------------------------------------------------------------------ sampling
    @property
    def cut(self) -> float:
        """The appendix-B cut on every flow's output: the geometry's readout threshold (MeV)."""
        return float(self.geometry.threshold_mev)

    @property
    def fine_cut(self) -> float:
        """The cut (MeV) of the upsampled fine voxels: ``voxel_cut_mev`` where it is set (never below
        :attr:`cut`), else :attr:`cut`."""
        return effective_cut(self.geometry, self.cfg.voxel_cut_mev)

    def _coarse_layer_sums(self, E: Tensor) -> Tensor:
        return E.reshape(len(E), self.cmap.nc_z, self.f_z).sum(2)

    def _flow1_params(self, params: Tensor, Ec: Tensor) -> Tensor:
        """FLOW-1's context after the E_inc condition: the parameter features, followed for
        ``flow1_context=coarse_layers`` by eq. B.7 of every coarse layer energy ``Ec`` (B, L / f_z)."""
        if not self.flow1_given_coarse:
            return params
        return torch.cat([params.to(torch.float64), layer_energy_condition(Ec.to(torch.float64))], 1)

    def _fine_layers_in(self, E: np.ndarray, Ec: np.ndarray) -> np.ndarray:
        """Fine layer energies ``E`` (B, L) rescaled in every group of ``f_z`` layers to the coarse layer
        energies ``Ec`` (B, L / f_z): each fine layer keeps its share of the group (equal shares where
        the group is empty)."""
        g = E.reshape(len(E), self.cmap.nc_z, self.f_z)
        s = g.sum(2, keepdims=True)
        share = np.where(s > 0, g / np.where(s > 0, s, 1.0), 1.0 / self.f_z)
        return (share * Ec[:, :, None]).reshape(len(E), -1)

    @torch.no_grad()
    def sample_coarse(self, einc: Tensor, params: Tensor, generator: torch.Generator | None,
                      variant: str | None) -> tuple[Tensor, Tensor]:
        """FLOW-1 and FLOW-2: E_inc -> (coarse showers (B, n_coarse), fine layer energies (B, L)),
        float64 MeV, each flow's output cut at :attr:`cut`."""
        einc = einc.to(self.device, torch.float64)
        params = params.to(self.device, torch.float64)
        if self.flow1 is None:
            E = apply_cut(self.coarse.sample_layer_energies(einc, params, generator), self.cut)
            Ec = E
        elif self.flow1_given_coarse:  # coarse layers from the coarse flow-I, then their fine split given them
            ec = need(self._energy, "FLOW-1 constants")
            Ec = apply_cut(self.coarse.sample_layer_energies(einc, params, generator), self.cut)
            E = self.flow1.sample_energies(einc, ec, None, self.cfg.max_resample, generator,
                                           self._flow1_params(params, Ec))
            E = torch.as_tensor(self._fine_layers_in(apply_cut(E, self.cut).cpu().numpy(), Ec.cpu().numpy()),
                                device=self.device)
        else:
            ec = need(self._energy, "FLOW-1 constants")
            bound = self.cfg.max_ratio if self.cfg.max_ratio is not None else self._ratio_max
            E = apply_cut(self.flow1.sample_energies(einc, ec, bound, self.cfg.max_resample, generator, params),
                          self.cut)
            if self.cfg.coarse_layer_energies == "coarse":
                Ec = apply_cut(self.coarse.sample_layer_energies(einc, params, generator), self.cut)
                E = torch.as_tensor(self._fine_layers_in(E.cpu().numpy(), Ec.cpu().numpy()), device=self.device)
            else:
                Ec = self._coarse_layer_sums(E)
        coarse = apply_cut(self.coarse.sample_voxels(Ec, einc, params, student=variant == "student",
                                                     generator=generator), self.cut)
        if self.flow1 is None:
            E = torch.as_tensor(self.cmap.coarse.layer_energies(coarse.cpu().numpy()), device=self.device)
        return coarse, E

    #: (shower, coarse voxel) rows per SUPERCALO flow call when sampling, across showers (bounds memory:
    #: about 0.4 kB of conditions per row)
    batch_rows: int = 200_000
    #: rows per chunk of the lean MAF inverse (fits the (rows, hidden) working set in cache; 4096-16384
    #: were equally fast for 2 x 64 and 2 x 128 MADEs in bench_supercalo_upsampling_speed.py)
    lean_chunk: int = 8192

    def _lean_upsampler(self, dtype: torch.dtype, student: bool = False) -> "LeanFlow":
        """The lean snapshot (:class:`caloflows.lean.LeanFlow`) in ``dtype`` of the SUPERCALO flow (or
        of its IAF student), built once and rebuilt only when a weight changed (training step,
        ``load_state_dict``)."""
        from ..lean import LeanFlow

        net = self.up_student if student else self.upflow
        key = tuple((q.data_ptr(), q._version, q.dtype, q.device) for q in net.parameters())
        cache = self.__dict__.setdefault("_lean_up", {})
        compiled = bool(self.cfg.up_compile)
        hit = cache.get((dtype, student, compiled))
        if hit is not None and hit[0] == key:
            return hit[1]
        src = net
        if next(src.parameters()).dtype != dtype:
            import copy

            src = copy.deepcopy(src).to(dtype)
        lean = LeanFlow.from_flow(src, chunk=self.lean_chunk, compiled=compiled)
        cache[(dtype, student, compiled)] = (key, lean)
        return lean

    @torch.no_grad()
    def sample_relative(self, cond: np.ndarray, generator: torch.Generator | None = None, *,
                        precision: str | None = None, z: Tensor | None = None) -> np.ndarray:
        """SUPERCALO's inverse on (R, C) preprocessed condition rows -> (R, k) relative fine energies
        (float64, inverse of B9, clipped at 0), by the lean sequential MAF inverse in ``precision``
        (default the ``up_precision`` setting); ``z`` (R, k) fixes the latent noise (else drawn
        from ``generator`` in that precision).  With the ``up_student`` setting the distilled IAF
        student samples instead, one MADE pass per block."""
        prec = precision or self.cfg.up_precision
        if prec not in ("float32", "float64"):
            raise UsageError(f"SUPERCALO precision must be float32 or float64, got {prec!r}")
        dt = torch.float32 if prec == "float32" else torch.float64
        self._check_up_student()
        lean = self._lean_upsampler(dt, student=bool(self.cfg.up_student))
        k = self.cmap.group_size
        if len(cond) == 0:
            return np.zeros((0, k))
        if z is None:
            z = torch.randn(len(cond), k, dtype=dt, device=self.device, generator=generator)
        with torch.inference_mode():
            y = lean.sample(z.to(self.device, dt), torch.as_tensor(cond, dtype=dt, device=self.device))
        return self.prep.target_inverse(y)

    @torch.no_grad()
    def _upsample_rows(self, coarse: np.ndarray, einc: np.ndarray, layers: np.ndarray, feats: np.ndarray,
                       generator: torch.Generator | None, precision: str | None = None) -> np.ndarray:
        """SUPERCALO on the coarse voxels of (M, n_coarse) coarse showers -> (M, V) fine showers.

        Rows are (shower, coarse voxel) pairs batched across showers (up to :attr:`batch_rows` per
        flow call).  Only rows whose coarse energy passes the cut are sampled: a coarse voxel below
        it comes out empty after the cut and renormalisation whatever SUPERCALO draws
        (:func:`caloflows.postprocess.threshold_renormalise`), so skipping it changes no output
        distribution, only which latent draws are made.
        """
        cmap = self.cmap
        out = np.empty((len(coarse), self.geometry.n_voxels))
        per = max(1, int(self.batch_rows) // cmap.n_coarse)  # showers per flow call (bounded memory)
        cut = self.fine_cut
        for a in range(0, len(coarse), per):
            s = slice(a, a + per)
            c = coarse[s]
            si, vi = np.nonzero((c >= cut) & (c > 0))  # (shower, coarse voxel) pairs, shower-major
            rows = (si, vi)
            cond = build_conditions(einc[s], c, layers[s], cmap, self.prep, rows=rows)
            if feats.shape[1]:
                cond = np.concatenate([cond, feats[s][si]], axis=-1)
            rel = self.sample_relative(cond, generator, precision=precision)
            out[s] = assemble_fine(rel, c, cmap, cut, rows=rows)
            if self.cfg.fine_layer_fit and self.f_z > 1:
                out[s] = fit_fine_layers(out[s], c, layers[s], cmap, self.cfg.fine_layer_fit, cut)
        return out

    def _sample_batch(self, einc: Tensor, params: Tensor, generator: torch.Generator, variant: str | None) -> Tensor:
        """Full chain, one fine shower per coarse shower: FLOW-1, FLOW-2, SUPERCALO (float64 MeV)."""
        return torch.as_tensor(self._upsample_rows(*self._coarse_pass(einc, params, generator, variant), generator),
                               device=self.device)

    def _coarse_pass(self, einc: Tensor, params: Tensor, generator: torch.Generator,
                     variant: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`sample_coarse` for these rows: (coarse showers, E_inc, fine layer energies, parameter
        features) as float64 arrays, the inputs of :meth:`_upsample_rows`."""
        coarse, E = self.sample_coarse(einc, params, generator, variant)
        c, e, L, p = (t.detach().cpu().numpy().astype(np.float64) for t in (coarse, einc, E, params))
        return c, e, L, p

    def _batches(self, einc: np.ndarray, feats: np.ndarray, batch_size: int, generator: torch.Generator,
                 variant: str | None) -> Iterator[tuple[int, Tensor]]:
        """With ``resample = N`` (setting): the coarse shower of fine row ``j`` is that of row
        ``N (j // N)`` (E_inc and parameters of that row).  A pass of the coarse networks draws
        ``batch_size`` coarse showers, as for N = 1, and SUPERCALO upsamples them N times in passes of
        ``batch_size`` fine showers: resampling divides the coarse cost by N at the same batch
        (paper sec. V C), and memory stays that of N = 1."""
        N = max(1, int(self.cfg.resample))
        if N == 1:
            yield from super()._batches(einc, feats, batch_size, generator, variant)
            return
        n = len(einc)
        lead = np.arange(0, n, N)
        for a in range(0, len(lead), batch_size):
            rows = lead[a:a + batch_size]
            c, ee, L, pp = self._coarse_pass(*self._condition_rows(einc, feats, rows), generator, variant)
            first = int(rows[0])
            idx = np.repeat(np.arange(len(rows)), N)[:n - first]  # this pass's fine rows, shower-major
            for b in range(0, len(idx), batch_size):
                j = idx[b:b + batch_size]
                yield first + b, torch.as_tensor(self._upsample_rows(c[j], ee[j], L[j], pp[j], generator),
                                                 device=self.device)

    def sample_resampled(self, conditions: "int | np.ndarray | Conditions", resample: int, batch_size: int = 10_000,
                         **kw: Any) -> ShowerData:
        """:meth:`sample` with resampling factor ``resample`` (N): ``ceil(n / N)`` coarse showers, each
        upsampled N times; consecutive groups of N output showers share one coarse shower and E_inc
        (given E_inc / conditions are taken from every N-th row, and the output says so).

        ``batch_size`` is the rows of every network pass: ``batch_size`` coarse showers per pass of the
        coarse networks (as for N = 1, so that resampling divides their cost by N at the same batch),
        ``batch_size`` fine showers per SUPERCALO pass.
        """
        if int(resample) < 1:
            raise UsageError(f"resampling factor must be at least 1, got {resample}")
        old = self.cfg.resample
        self.cfg.resample = int(resample)
        try:
            d = self.sample(conditions, batch_size=batch_size, **kw)
        finally:
            self.cfg.resample = old
        lead = (np.arange(len(d)) // int(resample)) * int(resample)  # the rows the coarse showers were drawn for
        return ShowerData(d.incident_energies[lead], d.showers, None if d.conditions is None else d.conditions[lead],
                          d.condition_names, {**d.attrs, "resample": int(resample)})

    def upsample(self, coarse_showers: np.ndarray, einc: np.ndarray, resample: int = 1, seed: int | None = None, *,
                 layer_energies: np.ndarray | None = None, conditions: Conditions | None = None,
                 batch_size: int = 1000, threshold: bool = True) -> ShowerData:
        """Upsample given coarse showers (M, n_coarse) MeV, ``resample`` times each (table III study).

        The fine layer energies SUPERCALO is conditioned on: ``layer_energies`` if given, else the
        coarse layers' for ``f_z = 1``, else drawn from FLOW-1 given E_inc and rescaled in every
        group of ``f_z`` layers to the coarse layer's energy.  Returns the (M N, V) fine showers;
        shower-major: rows ``j N .. j N + N - 1`` come from coarse shower ``j``.
        """
        if not self._own_trained():
            raise ModelDirError(f"the {self.kind} upsampler is not trained; run 'caloflows train supercalo' first")
        self._check_up_student()
        if int(resample) < 1:
            raise UsageError(f"resampling factor must be at least 1, got {resample}")
        coarse = np.asarray(coarse_showers, dtype=np.float64)
        if coarse.ndim != 2 or coarse.shape[1] != self.cmap.n_coarse:
            raise ConditionsError(f"coarse showers: expected (M, {self.cmap.n_coarse}) for {self.cmap}, "
                                  f"got {coarse.shape}")
        einc = np.asarray(einc, dtype=np.float64).reshape(-1)
        if len(einc) != len(coarse):
            raise ConditionsError(f"{len(einc)} incident energies for {len(coarse)} coarse showers")
        cond = conditions if conditions is not None else Conditions(einc)
        cond = self.condition_spec.check(cond, "upsample conditions")
        feats = np.asarray(self.condition_spec.features(cond.values), dtype=np.float64)
        gen = torch.Generator(device=self.device).manual_seed(int(np.random.default_rng(seed).integers(2**62)))
        self._prepare_sampling()
        Ec = self.cmap.coarse.layer_energies(coarse)
        if layer_energies is not None:
            layers = np.asarray(layer_energies, dtype=np.float64)
            if layers.shape != (len(coarse), self.geometry.n_layers):
                raise ConditionsError(f"fine layer energies: expected ({len(coarse)}, {self.geometry.n_layers}), "
                                      f"got {layers.shape}")
        elif self.flow1 is None:
            layers = Ec
        else:
            ec = need(self._energy, "FLOW-1 constants")
            p1 = self._flow1_params(torch.as_tensor(feats, device=self.device), torch.as_tensor(Ec, device=self.device))
            with torch.no_grad():
                E = self.flow1.sample_energies(torch.as_tensor(einc, device=self.device), ec, None,
                                               self.cfg.max_resample, gen, p1).cpu().numpy()
            layers = self._fine_layers_in(E, Ec)
        N = int(resample)
        idx = np.repeat(np.arange(len(coarse)), N)
        out = np.empty((len(idx), self.geometry.n_voxels), dtype=np.float32)
        per = max(1, int(batch_size))
        with torch.no_grad():
            for a in range(0, len(idx), per):
                s_ = idx[a:a + per]
                v = self._upsample_rows(coarse[s_], einc[s_], layers[s_], feats[s_], gen)
                out[a:a + len(s_)] = self.geometry.apply_threshold(v) if threshold else v
        return ShowerData(einc[idx], out, cond.values[idx] if self.n_params else None, cond.names,
                          {"generator": self.kind, "variant": "upsample", "resample": N})

    # ------------------------------------------------------------------ density
    def _log_prob_batch(self, showers: Tensor, einc: Tensor, params: Tensor, variant: str | None) -> Tensor:
        """log p_FLOW-1 + log p_FLOW-2 (coarse model, teacher unless asked) + sum over coarse voxels
        of log p_SUPERCALO (rows without noise)."""
        fine = showers.detach().cpu().numpy().astype(np.float64)
        e = einc.detach().cpu().numpy().astype(np.float64)
        p = params.detach().cpu().numpy().astype(np.float64)
        coarse_np = self.cmap.coarse_grain(fine)
        coarse = torch.as_tensor(coarse_np, device=self.device)
        if self.flow1 is None:
            lp = self.coarse._log_prob_batch(coarse, einc, params, variant)
        else:
            ec = need(self._energy, "FLOW-1 constants")
            E = torch.as_tensor(self.geometry.layer_energies(fine), device=self.device)
            with F.double_precision(self.flow1):
                lp = self.flow1(ec.forward(E + ec.noise_mean_kev * 1e-3),
                                EnergyFlow.context(ec, einc, self._flow1_params(params, self._coarse_layer_sums(E))))
            if self.flow1_given_coarse:  # the coarse flow-I drew the coarse layers, FLOW-1 their fine split
                lp = lp + self.coarse._log_prob_batch(coarse, einc, params, variant)
            else:  # FLOW-2 given FLOW-1's sums
                flow = self.coarse.student if variant == "student" else self.coarse.teacher
                s = coarse + 0.5 * self.coarse.cfg.flow2_noise_kev * 1e-3
                with F.double_precision(flow):
                    y2, c2 = self.coarse.flow2_inputs(s, einc, params, noise=False)
                    lp = lp + flow(c2).log_prob(y2)
        r = build_rows(e, fine, self.cmap, self.prep)
        b, v = len(e), self.cmap.n_coarse
        c = self._with_params(r.cond.reshape(b, v, -1), p)
        with F.double_precision(self.upflow):
            lpu = UpsamplerLogProb(self.upflow)(torch.as_tensor(r.target.reshape(b, v, -1), device=self.device),
                                                torch.as_tensor(c, device=self.device))
        return lp.to(torch.float64) + lpu.to(torch.float64)


def load_coarse_file(path: str, model: SuperCalo) -> tuple[np.ndarray, np.ndarray | None, Conditions]:
    """Coarse showers of ``path`` for :meth:`SuperCalo.upsample`: a file on the model's coarse
    geometry, or a file of fine showers (coarse-grained here -- the table III study -- and their
    fine layer energies returned too).  Returns ``(coarse (M, n_coarse), fine layer energies
    (M, L) or None, conditions)``."""
    from ..errors import ShowerFileError
    from ..io import read_showers

    g = model.cmap
    d = read_showers(path)
    cond = Conditions.from_data(d)
    width = d.showers.shape[1] if d.showers.ndim == 2 else -1
    if width == g.n_coarse:
        return np.asarray(d.showers, dtype=np.float64), None, cond
    if width == g.fine.n_voxels:
        fine = np.asarray(d.showers, dtype=np.float64)
        return g.coarse_grain(fine), g.fine.layer_energies(fine), cond
    raise ShowerFileError(f"{path}: showers have {width} voxels; --coarse needs coarse showers of {g} "
                          f"({g.n_coarse} voxels) or fine {g.fine.name} showers ({g.fine.n_voxels} voxels)")
