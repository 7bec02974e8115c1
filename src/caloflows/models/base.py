"""The one contract every caloflows generator follows, and the work all of them share.

A generator learns ``p(shower | E_inc, theta)`` (``theta``: named detector parameters,
:mod:`caloflows.conditions`) for one :class:`~caloflows.geometry.Geometry` and lives in a
model directory.  :class:`Generator` owns everything that is not a family's own maths:

* settings: a :class:`~caloflows.models.settings.ModelConfig` dataclass with presets,
  ``--set`` overrides and validation; the networks are built after seeding torch with the
  config's ``seed``, so the same settings give the same initial weights;
* stages (``train``, ``distill``) and variants (``teacher``, ``student``) declared as data;
* sampling: conditions (E_inc drawn from the training law, or given, with parameters),
  seeding, batching, device, progress bar, evaluation mode and the voxel threshold;
* the density ``log p`` in batches;
* the model directory: ``config.json`` (kind, geometry, settings, trained networks,
  condition spec), ``constants.json`` (preprocessing constants), one safetensors file per
  trained network, and nested sub-models in sub-directories;
* ``to(device)`` and parameter counts.

A family implements only what is its own: :meth:`Generator.build` (its networks),
``_fit_<stage>`` (how one stage trains), :meth:`Generator._sample_batch` (one batch of
showers; :meth:`Generator._batches` too where it draws in other groups, as SuperCalo's
resampling), :meth:`Generator._log_prob_batch`, and its preprocessing constants.

Example:
    >>> import caloflows
    >>> model = caloflows.models.load_model("runs/demo/model")          # doctest: +SKIP
    >>> data = model.sample(1000, seed=1)                               # doctest: +SKIP
    >>> data.showers.shape                                              # doctest: +SKIP
    (1000, 648)
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..conditions import Conditions, ConditionSpec
from ..errors import ConditionsError, ModelDirError, UsageError
from ..geometry import Geometry, load_geometry
from ..io import ShowerData
from ..lean import set_sampling_weights
from ..training.checkpoint import (
    load_weights,
    read_json,
    read_model_config,
    save_weights,
    write_json,
    write_model_config,
)
from ..training.distributed import DistContext
from ..training.loop import resolve_device
from .settings import ModelConfig

__all__ = ["Generator", "einc_summary", "einc_draw", "incident_energies", "sample_with_rejection", "need"]

G = TypeVar("G", bound="Generator")
T = TypeVar("T")


def need(value: T | None, what: str) -> T:
    """``value``, or a ModelDirError saying that ``what`` does not exist yet (the model is not trained)."""
    if value is None:
        raise ModelDirError(f"{what} not available: the model is not trained yet")
    return value
CONSTANTS_FILE = "constants.json"


class Generator(abc.ABC):
    """Base of every generator family (see the module docstring).

    Class attributes a family sets:
        kind: name in ``config.json`` and on the command line (``caloflow``).
        Config: its :class:`~caloflows.models.settings.ModelConfig` dataclass.
        stages: ``{stage: help}``; ``fit(stage=...)`` calls ``self._fit_<stage>``.
        variants: sampling variants (``("teacher", "student")``) or ``()``.
        weight_files: network name -> (file name in the model directory, stage that trains it).
        condition_scaling: how the training pipeline (:func:`caloflows.api.train`) maps named
            detector parameters to [-1, 1] (:meth:`ConditionSpec.fit`): ``linear`` or ``log``
            (ParaFlow eq. 1).
    """

    kind: ClassVar[str] = ""
    Config: ClassVar[type[Any]] = ModelConfig
    stages: ClassVar[dict[str, str]] = {"train": "train the model"}
    variants: ClassVar[tuple[str, ...]] = ()
    weight_files: ClassVar[dict[str, tuple[str, str]]] = {}
    condition_scaling: ClassVar[str] = "linear"
    #: settings that act only at generation time and may be changed on a trained model
    #: (``caloflows generate --set KEY=VALUE``)
    generation_settings: ClassVar[tuple[str, ...]] = ()

    def __init__(self, geometry: Geometry | str, config: Any | None = None,
                 conditions: ConditionSpec | None = None) -> None:
        self.geometry = load_geometry(geometry)
        self.cfg = config if config is not None else self.Config()
        self.cfg.validate()
        self.condition_spec = conditions or ConditionSpec()
        self.device = torch.device("cpu")
        self.trained: dict[str, bool] = {}
        with torch.random.fork_rng():
            torch.manual_seed(int(getattr(self.cfg, "seed", 0)) * 7919)
            self.build()
        self.trained = {name: False for name in self.networks()}

    # ------------------------------------------------------------------ family hooks
    @abc.abstractmethod
    def build(self) -> None:
        """Create the networks (torch is seeded from the config before this is called)."""

    @abc.abstractmethod
    def networks(self) -> dict[str, nn.Module]:
        """The networks by name (the keys of :attr:`weight_files` / :attr:`trained`)."""

    @abc.abstractmethod
    def _sample_batch(self, einc: Tensor, params: Tensor, generator: torch.Generator,
                      variant: str | None) -> Tensor:
        """Showers (float64, MeV, before the threshold) for one batch of E_inc (MeV) and
        parameter features (``(B, K)`` in [-1, 1], :meth:`ConditionSpec.features`)."""

    @abc.abstractmethod
    def _log_prob_batch(self, showers: Tensor, einc: Tensor, params: Tensor, variant: str | None) -> Tensor:
        """``log p`` of one batch (float64 tensors on the model's device)."""

    def _batches(self, einc: np.ndarray, feats: np.ndarray, batch_size: int, generator: torch.Generator,
                 variant: str | None) -> Iterator[tuple[int, Tensor]]:
        """``(first row, showers)`` of each network pass of :meth:`sample`: :meth:`_sample_batch` on
        ``batch_size`` rows at a time.  Families that draw in other groups (SuperCalo's resampling:
        one coarse pass for N fine passes) override this."""
        for a in range(0, len(einc), batch_size):
            yield a, self._sample_batch(*self._condition_rows(einc, feats, slice(a, a + batch_size)), generator, variant)

    def _condition_rows(self, einc: np.ndarray, feats: np.ndarray, rows: Any) -> tuple[Tensor, Tensor]:
        """E_inc (MeV) and parameter features of ``rows`` as float64 tensors on the model's device."""
        return (torch.as_tensor(einc[rows], dtype=torch.float64, device=self.device),
                torch.as_tensor(feats[rows], dtype=torch.float64, device=self.device))

    def constants(self) -> dict | None:
        """Preprocessing constants to store in ``constants.json`` (None before training)."""
        return None

    def set_constants(self, constants: dict) -> None:  # noqa: B027 (optional hook)
        """Restore what :meth:`constants` returned (raise KeyError/TypeError/ValueError if malformed)."""

    def submodels(self) -> dict[str, "Generator"]:
        """Nested generators saved in sub-directories of the model directory (SuperCalo's coarse model)."""
        return {}

    def einc_law(self) -> dict:
        """The incident-energy law of the training data (:func:`einc_summary`)."""
        c = self.constants()
        if not c or "incident_energies" not in c:
            raise ModelDirError(f"{self.kind} model has no training data summary yet (not trained)")
        return c["incident_energies"]

    # ------------------------------------------------------------------ common properties
    @property
    def config(self) -> dict:
        """The settings as a JSON-ready dict."""
        return self.cfg.to_dict()

    @property
    def n_params(self) -> int:
        """Number of named detector parameters the model is conditioned on (besides E_inc)."""
        return len(self.condition_spec)

    def to(self: G, device: str | torch.device) -> G:
        """Move every network to ``device`` (``cpu``, ``cuda``, ``cuda:N``)."""
        self.device = device if isinstance(device, torch.device) else resolve_device(str(device))
        for m in self.networks().values():
            m.to(self.device)
        for sub in self.submodels().values():
            sub.to(self.device)
        return self

    def parameter_counts(self) -> dict[str, int]:
        """Trainable parameters per network."""
        return {k: sum(p.numel() for p in m.parameters()) for k, m in self.networks().items()}

    def stage_done(self, stage: str) -> bool:
        """Whether ``stage`` has been completed (the networks it trains are all trained)."""
        nets = self.stage_networks(stage)
        return bool(nets) and all(self.trained.get(n, False) for n in nets)

    def stage_networks(self, stage: str) -> list[str]:
        """Networks trained by ``stage`` (from :attr:`weight_files`)."""
        return [name for name, (_, st) in self.weight_files.items() if st == stage]

    # ------------------------------------------------------------------ training
    def fit(self, data: "ShowerData | str | os.PathLike[str]", out_dir: str | os.PathLike[str], *,
            stage: str = "train", resume: bool = False, device: str = "cpu", progress: bool = True,
            ctx: DistContext | None = None, **options: Any) -> dict:
        """Run training stage ``stage`` (see :attr:`stages`) on ``data`` (a file or ShowerData), writing
        the model directory ``out_dir``; ``resume`` continues an interrupted run.  Returns a summary."""
        if stage not in self.stages:
            raise UsageError(f"a {self.kind} model has no stage {stage!r} (stages: {', '.join(self.stages)})")
        fn: Callable[..., dict] = getattr(self, f"_fit_{stage}")
        ctx = ctx or DistContext()
        return fn(data, Path(out_dir), resume=resume, device=device, progress=progress, ctx=ctx, **options)

    def train_network(self, name: str, module: nn.Module, source: Any, inputs: Callable[..., tuple[Tensor, ...]],
                      out_dir: Path, train: Mapping[str, Any], ctx: DistContext, *, norm: float = 1.0,
                      progress: bool = True, resume: bool = False, params: Sequence[nn.Parameter] | None = None,
                      checkpoint: str | None = None) -> dict:
        """Train one network with the shared loop (:func:`~caloflows.training.loop.fit_flow`), mark it
        trained, save the model directory (rank 0) and return its summary.

        ``module(*inputs)`` returns ``log p`` per row (:class:`~caloflows.flows.LogProb`); ``source``
        yields the row batches and ``inputs(rows, raw, generator)`` turns them into tensors.
        """
        from ..training.loop import TrainConfig, fit_flow

        r = fit_flow(module, source, inputs, checkpoint or name, out_dir, TrainConfig(**train), ctx=ctx,
                     device=self.device, norm=norm, progress=progress, resume=resume, params=params)
        self.trained[name] = True
        if ctx.is_main:
            self.save(out_dir)
        sec = r.history.get("seconds") or []
        return {"best_val": r.best_val, "epochs": r.epochs_run, "seconds": r.seconds,
                "seconds_per_epoch": float(np.mean(sec)) if sec else None}

    def train_student(self, name: str, teacher: nn.Module, student: nn.Module, source: Any,
                      inputs: Callable[..., tuple[Tensor, ...]], out_dir: Path, train: Mapping[str, Any],
                      ctx: DistContext, *, intermediate: bool = True, warm_start: Callable[[], object] | None = None,
                      progress: bool = True, resume: bool = False, checkpoint: str | None = None,
                      norm: float = 1.0, wrap: Callable[[nn.Module], nn.Module] | None = None) -> dict:
        """Distill IAF ``student`` from MAF ``teacher`` (zuko flows, or modules with a ``.flow``) by
        probability density distillation (CaloFlow II, arXiv:2110.11377, sec. 3; x- and z-loss,
        per MADE block with ``intermediate``; :class:`caloflows.flows.DistillationObjective`).

        The teacher is frozen while the student trains; ``warm_start()`` runs unless an interrupted
        distillation is resumed; ``inputs`` must also return the latent ``z`` of the z-loss.
        ``wrap(objective)`` adapts the per-row objective to the source's batches (SuperCalo: rows
        of (shower, coarse voxel) pairs summed per shower); ``norm`` as for :meth:`train_network`.
        """
        from .. import flows as F

        ckpt = out_dir / "checkpoints" / f"{checkpoint or name}_last.pt"
        if warm_start is not None and not (resume and ckpt.exists()):
            warm_start()
        teacher.eval()
        frozen = [p for p in teacher.parameters() if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        try:
            obj: nn.Module = F.DistillationObjective(getattr(teacher, "flow", teacher),
                                                     getattr(student, "flow", student), intermediate)
            if wrap is not None:
                obj = wrap(obj)
            return self.train_network(name, obj, source, inputs, out_dir, train, ctx, norm=norm, progress=progress,
                                      resume=resume, params=list(student.parameters()), checkpoint=checkpoint)
        finally:
            for p in frozen:
                p.requires_grad_(True)

    def with_student_epochs(self, epochs: int | None) -> None:
        """``distill --epochs N``: set the epochs of the student's training settings."""
        if epochs is not None:
            self.cfg = self.cfg.override([f"student_train.epochs={int(epochs)}"])

    def training_arrays(self, data: "ShowerData | str | os.PathLike[str]",
                        min_showers: int = 10) -> tuple[ShowerData, np.ndarray]:
        """Training showers in memory (read from a file and validated if a path), checked against the
        geometry and the model's parameters, with the parameters' network features ``(N, K)``."""
        from ..io import read_showers

        where = "training showers" if isinstance(data, ShowerData) else str(data)
        if not isinstance(data, ShowerData):
            data = read_showers(data, geometry=self.geometry)
        self.geometry.check_showers(data.showers, where)
        self.training_conditions(data, where)
        if len(data) < min_showers:
            raise UsageError(f"need at least {min_showers} training showers, got {len(data)}")
        vals = data.conditions if data.conditions is not None else np.zeros((len(data), 0))
        return data, np.asarray(self.condition_spec.features(np.asarray(vals, dtype=np.float64)))

    def training_conditions(self, data: "ShowerData | str | os.PathLike[str]", where: str | None = None) -> None:
        """Check that ``data`` carries exactly the model's named parameters (ConditionsError otherwise);
        ``where`` names it in the message (default: the path, or "training showers")."""
        from ..io import read_conditions

        where = where or (str(data) if not isinstance(data, ShowerData) else "training showers")
        names, _ = read_conditions(data) if not isinstance(data, ShowerData) else (data.condition_names, None)
        if tuple(names) != self.condition_spec.names:
            have = list(names) or "none"
            raise ConditionsError(f"{where}: has condition parameters {have} but the model is conditioned on "
                                  f"{list(self.condition_spec.names) or 'E_inc only'}")

    # ------------------------------------------------------------------ sampling
    def default_variant(self) -> str | None:
        """The variant :meth:`sample` uses by default: the last declared one that is trained."""
        for v in reversed(self.variants):
            if self.variant_ready(v):
                return v
        return self.variants[0] if self.variants else None

    def variant_ready(self, variant: str | None) -> bool:
        """Whether the networks of ``variant`` are trained (families with variants override)."""
        return all(self.trained.values())

    def _check_variant(self, variant: str | None) -> str | None:
        if variant is None:
            variant = self.default_variant()
        elif variant not in self.variants:
            have = ", ".join(self.variants) if self.variants else "none"
            raise UsageError(f"a {self.kind} model has no variant {variant!r} (variants: {have})")
        if not self.variant_ready(variant):
            hint = "; run 'caloflows distill' first" if variant == "student" else \
                f"; run 'caloflows train {self.kind}' first"
            raise ModelDirError(f"the {self.kind} model's {variant or 'networks'} are not trained{hint}")
        return variant

    def conditions_for(self, what: "int | np.ndarray | Conditions", rng: np.random.Generator,
                       where: str = "conditions") -> Conditions:
        """The conditions a :meth:`sample` call generates for: ``n`` E_inc drawn from the training
        law, the given E_inc (MeV), or :class:`Conditions` checked against the model's parameters."""
        if isinstance(what, Conditions):
            return self.condition_spec.check(what, where)
        if len(self.condition_spec):
            raise ConditionsError(f"{where}: the model is conditioned on {list(self.condition_spec.names)}; "
                                  "give their values (a file with a 'conditions' dataset, or --condition NAME=VALUE)")
        return Conditions(incident_energies(what, self.einc_law(), rng))

    def sample(self, conditions: "int | np.ndarray | Conditions", batch_size: int = 10_000, *,
               seed: int | None = None, device: str | None = None, progress: bool = False,
               variant: str | None = None, threshold: bool = True) -> ShowerData:
        """Generate showers.

        Args:
            conditions: a number of showers (E_inc drawn from the training law), an array of E_inc
                in MeV, or :class:`~caloflows.conditions.Conditions` (required for a model with
                detector parameters).
            batch_size: showers per network pass.
            seed: makes the result reproducible (same seed, same showers).
            variant: ``teacher`` / ``student`` for families that have them (default: student if
                trained).
            threshold: zero voxels below the geometry's readout threshold.

        Returns:
            :class:`~caloflows.io.ShowerData` with the conditions and showers (float32, MeV).
        """
        if int(batch_size) < 1:
            raise UsageError("batch size must be at least 1")
        variant = self._check_variant(variant)
        if device is not None and str(device) != str(self.device):
            self.to(device)
        rng = np.random.default_rng(seed)
        cond = self.conditions_for(conditions, rng)
        gen = torch.Generator(device=self.device).manual_seed(int(rng.integers(2**62)))
        self._prepare_sampling()
        n, bs = len(cond), int(batch_size)
        out = np.empty((n, self.geometry.n_voxels), dtype=np.float32)
        feats = self.condition_spec.features(cond.values)
        desc = f"generate ({self.kind}{'' if variant is None else ' ' + variant})"
        with torch.no_grad(), tqdm(total=n, desc=desc, unit="shower", disable=None if progress else True) as bar:
            for a, t in self._batches(cond.incident_energies, feats, bs, gen, variant):
                v = t.cpu().numpy()
                out[a:a + len(v)] = self.geometry.apply_threshold(v) if threshold else v
                bar.update(len(v))
        return ShowerData(cond.incident_energies, out, cond.values if self.n_params else None, cond.names,
                          {"generator": self.kind, "variant": variant or "default"})

    def _generation_settings(self) -> tuple[str, ...]:
        """:attr:`generation_settings`, plus ``student_weights`` for families with a student variant."""
        return self.generation_settings + (("student_weights",) if "student" in self.variants else ())

    def _prepare_sampling(self, weights: str | None = None) -> None:
        """Networks (and sub-models') in eval mode, their IAF students' output layers as
        ``weights`` (default: the ``student_weights`` setting; :func:`caloflows.lean.set_sampling_weights`)."""
        weights = weights or str(getattr(self.cfg, "student_weights", "float32"))
        for m in self.networks().values():
            _eval(m)
            try:
                set_sampling_weights(m, weights)
            except RuntimeError as e:
                raise UsageError(f"student_weights={weights}: {e}") from None
        for sub in self.submodels().values():
            sub._prepare_sampling(weights)

    def with_generation_settings(self, items: Sequence[str] | None) -> "Generator":
        """Apply ``KEY=VALUE`` generation-time settings (only those in :attr:`generation_settings`,
        and ``student_weights`` for families with a student)."""
        if not items:
            return self
        allowed_keys = self._generation_settings()
        for item in items:
            key = item.split("=", 1)[0].strip()
            if key not in allowed_keys:
                allowed = ", ".join(allowed_keys) or "none"
                raise UsageError(f"--set {item!r}: {key!r} is not a generation setting of {self.kind} models "
                                 f"(allowed: {allowed}; other settings are fixed by training)")
        self.cfg = self.cfg.override(list(items))
        return self

    # ------------------------------------------------------------------ density
    def log_prob(self, showers: np.ndarray, conditions: "np.ndarray | Conditions", batch_size: int = 1000,
                 variant: str | None = None) -> np.ndarray:
        """``log p(shower | conditions)`` per shower, of the model's preprocessed representation
        (see each family's docs); ``conditions`` is an E_inc array (MeV) or :class:`Conditions`."""
        self.geometry.check_showers(showers)
        if variant is not None:
            variant = self._check_variant(variant)
        cond = conditions if isinstance(conditions, Conditions) else Conditions(np.asarray(conditions))
        cond = self.condition_spec.check(cond, "log_prob conditions")
        if len(cond) != len(showers):
            raise ConditionsError(f"log_prob: {len(showers)} showers but {len(cond)} conditions")
        feats = self.condition_spec.features(cond.values)
        res = []
        with torch.no_grad():
            for a in range(0, len(showers), batch_size):
                s = torch.as_tensor(np.asarray(showers[a:a + batch_size], dtype=np.float64), device=self.device)
                e = torch.as_tensor(cond.incident_energies[a:a + batch_size], dtype=torch.float64, device=self.device)
                p = torch.as_tensor(feats[a:a + batch_size], dtype=torch.float64, device=self.device)
                res.append(self._log_prob_batch(s, e, p, variant).cpu().numpy())
        return np.concatenate(res)

    # ------------------------------------------------------------------ model directory
    def config_record(self) -> dict:
        """What ``config.json`` stores under ``config``."""
        return {self.kind: self.cfg.to_dict(), "trained": dict(self.trained),
                "conditions": self.condition_spec.to_dict()}

    def weight_file(self, name: str) -> str:
        """File of network ``name`` in the model directory (default: ``NAME.safetensors``)."""
        return self.weight_files[name][0] if name in self.weight_files else f"{name}.safetensors"

    def weight_metadata(self, name: str) -> dict[str, str]:
        """Metadata stored in weight file ``name`` (families add e.g. a constants hash)."""
        return {"kind": self.kind, "network": name}

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write config, constants, the trained networks and any sub-models to ``directory``."""
        d = Path(directory)
        write_model_config(d, self.kind, self.geometry, self.config_record())
        consts = self.constants()
        if consts is not None:
            write_json(d / CONSTANTS_FILE, consts)
        for name, net in self.networks().items():
            if self.trained.get(name, True):  # networks not tracked in ``trained`` exist only once trained
                save_weights(d / self.weight_file(name), net.state_dict(), self.weight_metadata(name))
        for name, sub in self.submodels().items():
            sub.save(d / name)

    @classmethod
    def _from_record(cls: type[G], directory: Path, record: dict) -> G:
        """Construct the (untrained) model described by a ``config.json`` record."""
        try:
            cfg = cls.Config.from_dict(record["config"][cls.kind])
            spec = ConditionSpec.from_dict(record["config"].get("conditions"))
        except (KeyError, TypeError) as exc:
            raise ModelDirError(f"{directory}: malformed {cls.kind} config ({exc})") from None
        except (ConditionsError, ValueError) as exc:
            raise ModelDirError(f"{directory}/config.json: {exc}") from None
        return cls(record["geometry"], cfg, spec)

    def load_network(self, path: Path, name: str) -> None:
        """Load the weights of network ``name`` from ``path`` (refusing files that do not fit)."""
        sd = load_weights(path)
        try:
            self.networks()[name].load_state_dict(sd)
        except RuntimeError as exc:
            raise ModelDirError(f"{path}: weights do not fit the configured network "
                                f"({str(exc).splitlines()[0]})") from None

    def _load_constants(self, directory: Path, required: bool) -> bool:
        cpath = directory / CONSTANTS_FILE
        if not cpath.exists():
            if required:
                raise ModelDirError(f"{directory}: {CONSTANTS_FILE} is missing")
            return False
        c = read_json(cpath, "preprocessing constants")
        try:
            self.set_constants(c)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelDirError(f"{cpath}: malformed preprocessing constants ({exc})") from None
        return True

    @classmethod
    def load(cls: type[G], directory: str | os.PathLike[str], device: str = "cpu",
             geometry: Geometry | str | None = None) -> G:
        """Load a model directory written by :meth:`save`; refuses other kinds, geometries, versions,
        missing constants and weight files that do not fit the configured networks."""
        directory = Path(directory)
        g = load_geometry(geometry) if geometry is not None else None
        record = read_model_config(directory, kind=cls.kind, geometry=g)
        model = cls._from_record(directory, record)
        trained = dict(record["config"].get("trained", {}))
        model._load_constants(directory, required=any(trained.values()))
        for name in model.networks():
            if trained.get(name):
                model.load_network(directory / model.weight_file(name), name)
                model.trained[name] = True
        model._load_submodels(directory, device)
        return model.to(device)

    def _load_submodels(self, directory: Path, device: str) -> None:  # noqa: B027 (optional hook)
        """Load nested sub-models (families with :meth:`submodels` override)."""


def _eval(module: nn.Module) -> None:
    """``module.eval()`` if any submodule is in training mode.  The list of submodules is kept with
    the module (a network's structure does not change): ``eval()`` walks and re-sets the whole tree,
    which cost ~1 ms per batch-1 ``sample`` call (issue 13 profile)."""
    mods = module.__dict__.get("_caloflows_modules")
    if mods is None:
        mods = module.__dict__["_caloflows_modules"] = list(module.modules())
    if any(m.training for m in mods):
        module.eval()


# ---------------------------------------------------------------------------- incident energies
def einc_summary(einc: np.ndarray) -> dict:
    """The incident-energy law of the training data (discrete values or 1001 quantiles)."""
    u, c = np.unique(einc, return_counts=True)
    if len(u) <= 64:
        return {"kind": "discrete", "values": u.tolist(), "weights": (c / c.sum()).tolist()}
    return {"kind": "quantiles", "quantiles": np.quantile(einc, np.linspace(0, 1, 1001)).tolist()}


def einc_draw(summary: Mapping[str, Any], n: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``n`` incident energies from a law made by :func:`einc_summary`."""
    if summary["kind"] == "discrete":
        return rng.choice(np.asarray(summary["values"]), size=n, p=np.asarray(summary["weights"]))
    q = np.asarray(summary["quantiles"])
    return np.interp(rng.random(n), np.linspace(0, 1, len(q)), q)


def incident_energies(n_or_energies: "int | np.ndarray | Sequence[float]", summary: Mapping[str, Any],
                      rng: np.random.Generator) -> np.ndarray:
    """The E_inc (MeV) a ``sample()`` call generates: ``n`` draws from the training law, or the
    given array, checked to be non-empty, finite and positive."""
    if np.ndim(n_or_energies) == 0:
        n = int(n_or_energies)  # type: ignore[arg-type]
        if n < 1:
            raise UsageError("number of showers must be positive")
        return einc_draw(summary, n, rng)
    einc = np.asarray(n_or_energies, dtype=np.float64).reshape(-1)
    if len(einc) == 0 or not np.all(np.isfinite(einc)) or np.any(einc <= 0):
        raise UsageError("incident energies must be a non-empty array of positive, finite values")
    return einc


def sample_with_rejection(draw: Callable[[Tensor, Tensor], Tensor], einc: Tensor, params: Tensor,
                          max_ratio: float | None, max_resample: int) -> Tensor:
    """Layer energies from ``draw(einc, params)`` with the outlier rejection of CaloFlow / L2LFlows.

    Rows whose ``E_dep / E_inc`` exceeds ``max_ratio`` or that are not finite are drawn again, up
    to ``max_resample`` times; rows still failing are scaled down onto the bound (L2LFlows
    appendix B.1; CaloFlow sec. 4: "reject E_dep > E_inc" generalised to a bound).
    """
    einc = einc.to(torch.float64)
    out: Tensor | None = None
    todo = torch.arange(len(einc), device=einc.device)
    E = ok = None
    for _ in range(max_resample + 1):
        E = draw(einc[todo], params[todo])
        if out is None:
            out = torch.empty(len(einc), E.shape[1], dtype=torch.float64, device=einc.device)
        ok = torch.isfinite(E).all(1)
        if max_ratio is not None:
            ok &= E.sum(1) / einc[todo] <= max_ratio
        out[todo[ok]] = E[ok]
        todo = todo[~ok]
        if len(todo) == 0:
            break
    assert out is not None and E is not None and ok is not None
    if len(todo):
        Eb = torch.nan_to_num(E[~ok], nan=0.0, posinf=0.0).clamp_min(0)
        s = Eb.sum(1, keepdim=True)
        lim = (max_ratio if max_ratio is not None else 1.0) * einc[todo][:, None]
        out[todo] = torch.where(s > lim, Eb / s.clamp_min(1e-300) * lim, Eb)
    return out
