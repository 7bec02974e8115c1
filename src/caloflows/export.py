"""ONNX export of a trained CaloFlow, iCaloFlow or ParaFlow student sampler, and an ONNX Runtime sampler (issue 13).

The whole generation chain of :class:`caloflows.models.caloflow.CaloFlow` with its IAF student
becomes one ONNX graph (opset >= 17), the way Geant4's Par04 ML fast-simulation example runs
its generator in C++ through ONNX Runtime:

``E_inc -> flow-I (MAF, sampled sequentially: its L steps per block unrolled) -> layer
energies -> flow-II student (IAF, one pass per block) -> inverse logit / standardisation ->
exact layer renormalisation -> voxel threshold -> showers (MeV)``

(CaloFlow, arXiv:2106.05285 sec. 3 and ``caloflow_dataset1.txt``; student: CaloFlow II,
arXiv:2110.11377).  Graph inputs: ``z1`` (B, L) float64 and ``z2`` (B, V) float32 standard
normal latent noise, ``einc`` (B,) float64 incident energies in MeV and ``conditions``
(B, C) float32, a placeholder for extra conditions (C = 0 for CaloFlow, which has none; it is
accepted and ignored).  Output: ``showers`` (B, V) float32 MeV.  Flow-I runs in float64 as the
torch path does; the student in float32.

Deviation from the torch path: flow-I's outlier rejection (rows with ``E_dep / E_inc`` above
``max_ratio`` are drawn again) is a data-dependent loop that an ONNX graph cannot express.
The graph instead scales such rows down to the bound (the torch path's own fallback after
``max_resample`` failed tries) and zeroes non-finite layer energies.  With the default
``max_ratio`` (the training maximum of ``E_dep / E_inc``) flow-I respects the bound by
construction (the unit-space decoding clamps ``u_0 <= 1``), so the two agree; a model trained
with a lower ``max_ratio`` gets the bound itself more often than the torch path would.

iCaloFlow (:class:`caloflows.models.icaloflow.ICaloFlow`, review sec. 4.2) exports the same way
(:class:`ICaloFlowSampler`, same graph inputs and output): ``E_inc -> flow-1 (MAF, float64,
unrolled) -> layer energies -> flow-2 student (layer 0) -> flow-3 student for layers 1..L-1,
each conditioned on the previous layer (the layer loop unrolled; flow-3's weights are stored
once and shared by the L-1 calls) -> per-layer post-processing (threshold-aware
renormalisation, L2LFlows appendix B.3, or plain renormalisation and cut)``.  ``z2`` holds the
students' latent noise layer after layer; ``conditions`` carries the model's detector-parameter
features (:meth:`caloflows.conditions.ConditionSpec.features`, ``K`` columns, ``K = 0`` for a
model without parameters).  Flow-1's outlier rejection becomes the same scaling to the bound.

ParaFlow (:class:`caloflows.models.paraflow.ParaFlow`, ``paraflow.txt`` sec. 3) has one flow over
all crystals (:class:`ParaFlowSampler`, same graph inputs and output): ``(E_inc, d, b) -> eq. 1
context -> IAF student (float32, one pass per block) -> inverse standardisation and logit ->
E_inc * fraction -> clamp at 0 -> crystals below zero_below_kev set to 0 -> geometry threshold``.
``z1`` (B, L) float64 is a placeholder (kept in the graph, ignored), ``z2`` (B, V) float32 is the
student's latent, ``conditions`` (B, K) the detector-parameter features (eq. 1 of each parameter,
:meth:`ConditionSpec.features`).  Deviation: the torch path draws rows with non-finite crystals
again (and rows with ``E_dep / E_inc > max_ratio`` when ``max_ratio`` is set); the graph zeroes
non-finite crystals and scales rows above ``max_ratio * E_inc`` down to the bound (the torch
path's own fallback after ``max_resample`` failed tries).  E_inc at or below eq. 1's domain
(``E_min - 1 GeV``) is refused by :class:`OnnxSampler` (the torch path's ConditionsError).

The model's metadata go into the ONNX ``metadata_props`` under the key ``caloflows`` (JSON):
format, kind, network, caloflows version, geometry (:meth:`Geometry.to_dict`), preprocessing
constants, threshold, latent dimensions and input/output names.

>>> from caloflows.models import load_model
>>> export_onnx(load_model("runs/caloflow"), "caloflow.onnx")  # doctest: +SKIP
>>> einc, showers = OnnxSampler("caloflow.onnx").sample(1000, seed=1)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from . import __version__
from . import preprocessing as P
from .errors import ModelDirError, OutputError, UsageError
from .io import ShowerData
from .lean import LeanFlow
from .postprocess import threshold_renormalise_layers

__all__ = ["CaloFlowSampler", "ICaloFlowSampler", "ParaFlowSampler", "export_onnx", "OnnxSampler", "OnnxGenerator", "METADATA_KEY", "FORMAT", "OPSET"]

METADATA_KEY = "caloflows"
FORMAT = "caloflows-onnx-sampler/1"
OPSET = 17
INPUTS = ("z1", "z2", "einc", "conditions")
OUTPUTS = ("showers",)


def _finite_and_bounded(x: Tensor, einc: Tensor, bound: float | None) -> Tensor:
    """Non-finite values -> 0, clamp at 0, and rows with ``sum > bound * E_inc`` scaled down onto
    the bound (``bound`` None: no scaling).  The graph's stand-in for the redraw loop of
    :func:`caloflows.models.base.sample_with_rejection`, whose own fallback after ``max_resample``
    failed tries does the same; an ONNX graph cannot loop on data-dependent rows."""
    x = torch.where(torch.isfinite(x), x, torch.zeros_like(x)).clamp_min(0.0)
    if bound is None:
        return x
    s = x.sum(1, keepdim=True)
    lim = bound * einc[:, None]
    return torch.where(s > lim, x * (lim / s.clamp_min(1e-30)), x)


class CaloFlowSampler(nn.Module):
    """The CaloFlow student sampling chain as one traceable module (fixed latent noise in).

    ``forward(z1, z2, einc, conditions) -> showers``; see the module docstring.  Built from a
    trained :class:`~caloflows.models.caloflow.CaloFlow` (uses its attributes ``flow1``,
    ``student``, ``std1``, ``std2``, ``logit``, ``unit``, ``geometry``, ``cfg``).
    """

    def __init__(self, model, threshold: bool = True) -> None:
        super().__init__()
        if not (model.trained.get("flow1") and model.trained.get("student")):
            raise ModelDirError("export needs a CaloFlow model with trained flow-I and student "
                                "(run 'caloflows train caloflow' and 'caloflows distill')")
        self.flow1 = LeanFlow.from_flow(model.flow1).double()
        self.flow2 = LeanFlow.from_flow(model.student).float()
        self.logit, self.unit, self.std1, self.std2 = model.logit, model.unit, model.std1, model.std2
        self.offsets = [int(o) for o in model.geometry.layer_offsets]
        self.threshold = float(model.geometry.threshold_mev) if threshold else None
        self.cut = model.generation_cut  # threshold-aware renormalisation (L2LFlows B.9) when set
        self.single_hit = model.cfg.single_hit_mev  # with the cut: sub-cut layers as one hit
        self.bound = float(model.cfg.max_ratio if model.cfg.max_ratio is not None else model.unit.u0_max)
        self.n_layers, self.n_voxels = model.geometry.n_layers, model.geometry.n_voxels
        self.student_dtype = torch.float32

    def student_in(self, dtype: torch.dtype) -> "CaloFlowSampler":
        """Run the student in ``dtype`` (float64: the reference for the float32 accuracy check)."""
        self.flow2 = self.flow2.to(dtype)
        self.student_dtype = dtype
        return self

    def layer_energies(self, z1: Tensor, einc: Tensor) -> Tensor:
        """Flow-I: latent (B, L) float64, E_inc (B,) MeV -> layer energies (B, L) MeV float64."""
        y = self.flow1(z1, P.log_einc(einc)[:, None])
        u = self.logit.inverse(self.std1.inverse(y)).clamp(0.0, 1.0)
        return _finite_and_bounded(self.unit.inverse(u, einc), einc, self.bound)  # no rejection loop in ONNX

    def voxels(self, z2: Tensor, E: Tensor, einc: Tensor) -> Tensor:
        """Student: latent (B, V) float32 and layer energies -> voxels (B, V) MeV float64, before the threshold."""
        c = torch.cat([P.log_einc(einc)[:, None], P.log_layer_energy(E)], 1).to(self.student_dtype)
        y = self.flow2(z2.to(self.student_dtype), c).double()
        frac = self.logit.inverse(self.std2.inverse(y))
        frac = torch.where(torch.isfinite(frac), frac, torch.zeros_like(frac))
        if self.cut is None:
            return P.renormalise_layers(frac, E, np.asarray(self.offsets))
        return threshold_renormalise_layers(frac, E, np.asarray(self.offsets), self.cut, self.single_hit)

    def forward(self, z1: Tensor, z2: Tensor, einc: Tensor, conditions: Tensor | None = None) -> Tensor:
        einc = einc.double().reshape(-1)
        E = self.layer_energies(z1.double(), einc)
        v = self.voxels(z2, E, einc)
        if self.threshold is not None:
            v = torch.where(v < self.threshold, torch.zeros_like(v), v)
        v = v.float()
        if conditions is not None:  # placeholder input (CaloFlow has no extra conditions): keep it in the graph
            v = v + 0.0 * conditions.sum(1, keepdim=True)
        return v


class ICaloFlowSampler(nn.Module):
    """The iCaloFlow student sampling chain as one traceable module (fixed latent noise in).

    ``forward(z1, z2, einc, conditions) -> showers`` with ``z1`` (B, L) float64 flow-1 noise,
    ``z2`` (B, V) the students' noise (layer 0 for flow-2, then layer i for flow-3), ``einc``
    (B,) MeV and ``conditions`` (B, K) the detector-parameter features.  Same arithmetic as
    :meth:`ICaloFlow.sample_layers` with ``student=True`` given the same noise (flow-1 in
    float64, students in float32), except flow-1's outlier redraw (scaled to the bound instead).
    """

    def __init__(self, model, threshold: bool = True) -> None:
        super().__init__()
        if not model.variant_ready("student"):
            raise ModelDirError("export needs an iCaloFlow model with trained flow-1 and students "
                                "(run 'caloflows train icaloflow' and 'caloflows distill')")
        self.model = model  # constants and condition helpers (not a submodule: its flows are not traced)
        self.flow1 = LeanFlow.from_flow(model.energy_flow.flow).double()
        self.flow2 = LeanFlow.from_flow(model.flows["student2"].flow).float()
        self.flow3 = LeanFlow.from_flow(model.flows["student3"].flow).float()
        g = model.geometry
        self.n, self.n_layers, self.n_voxels = model.n, g.n_layers, g.n_voxels
        # the cut t of the per-layer post-processing: the readout threshold, or ``voxel_cut_mev``
        self.threshold = float(model.voxel_cut) if threshold or model.cfg.voxel_cut_mev is not None else 0.0
        self.max_ratio = None if model.cfg.max_ratio is None else float(model.cfg.max_ratio)
        self.postprocess = model.cfg.postprocess

    def __setattr__(self, name, value) -> None:
        if name == "model":  # keep the Generator out of nn.Module's registries
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def layer_energies(self, z1: Tensor, einc: Tensor, params: Tensor) -> Tensor:
        """Flow-1: latent (B, L) float64 -> layer energies (B, L) MeV, outliers scaled to the bound."""
        from .models.energy_flow import EnergyFlow

        ec = self.model.energy_consts
        return _finite_and_bounded(ec.inverse(self.flow1(z1, EnergyFlow.context(ec, einc, params))), einc,
                                   self.max_ratio)

    def _place(self, y: Tensor, E_i: Tensor, first: bool) -> Tensor:
        from .postprocess import threshold_renormalise

        m = self.model
        frac = m.normed_inverse(y, first)
        frac = torch.where(torch.isfinite(frac), frac, torch.zeros_like(frac))
        if self.postprocess == "threshold":
            return threshold_renormalise(frac, E_i, self.threshold)
        v = P.renormalise_layers(frac, E_i[:, None], np.array([0, self.n]))
        return torch.where(v >= self.threshold, v, torch.zeros_like(v))

    @staticmethod
    def _clean(y: Tensor) -> Tensor:  # torch.nan_to_num(nan=0, posinf=50, neginf=-50), ONNX-friendly
        y = torch.where(torch.isnan(y), torch.zeros_like(y), y)
        return torch.where(torch.isinf(y), torch.sign(y) * 50.0, y)

    def forward(self, z1: Tensor, z2: Tensor, einc: Tensor, conditions: Tensor | None = None) -> Tensor:
        m, n = self.model, self.n
        einc = einc.double().reshape(-1)
        params = (conditions.double() if conditions is not None
                  else torch.zeros(einc.shape[0], 0, dtype=torch.float64))
        E = self.layer_energies(z1.double(), einc, params)
        z2 = z2.float()
        y = self._clean(self.flow2(z2[:, :n], m.context2(E[:, 0], einc, params).float()).double())
        parts = [self._place(y, E[:, 0], True)]
        y_prev = m.normed_forward(m.normed_inverse(y, True), False)
        for i in range(1, self.n_layers):
            lay = torch.zeros_like(einc, dtype=torch.long) + i
            c = m.context3(y_prev, E[:, i], E[:, i - 1], einc, lay, params).float()
            y = self._clean(self.flow3(z2[:, i * n:(i + 1) * n], c).double())
            parts.append(self._place(y, E[:, i], False))
            y_prev = y
        return torch.cat(parts, 1).float()


class ParaFlowSampler(nn.Module):
    """The ParaFlow student sampling chain as one traceable module (fixed latent noise in).

    ``forward(z1, z2, einc, conditions) -> showers`` with ``z1`` (B, L) float64 a placeholder
    (ParaFlow has a single flow; kept in the graph by a ``0.0 *`` term), ``z2`` (B, V) float32
    the student's latent, ``einc`` (B,) MeV and ``conditions`` (B, K) the detector-parameter
    features (:meth:`ConditionSpec.features`, what :meth:`ParaFlow.sample` passes as ``params``).
    Same arithmetic as :meth:`ParaFlow.sample_latent` with the student followed by the
    post-steps of :meth:`ParaFlow._sample_batch` and the geometry threshold of
    :meth:`Generator.sample` (``paraflow.txt`` sec. 3; student: CaloFlow II, arXiv:2110.11377),
    except the redraw of non-finite rows (and rows above ``max_ratio``): non-finite crystals are
    set to 0 and rows above ``max_ratio * E_inc`` scaled down to it.

    Example:
        >>> sampler = ParaFlowSampler(load_model("pf_model")).eval()      # doctest: +SKIP
        >>> z2 = torch.randn(5, 128)                                       # doctest: +SKIP
        >>> feats = torch.tensor([[0.17, 0.0]] * 5)                        # doctest: +SKIP
        >>> sampler(torch.zeros(5, 1, dtype=torch.float64), z2, torch.full((5,), 5e4), feats).shape  # doctest: +SKIP
        torch.Size([5, 128])
    """

    def __init__(self, model, threshold: bool = True) -> None:
        super().__init__()
        if not model.variant_ready("student"):
            raise ModelDirError("export needs a ParaFlow model with a trained student "
                                "(run 'caloflows train paraflow' and 'caloflows distill')")
        if model.cfg.condition_on_conversion:
            raise UsageError("export of a ParaFlow model with condition_on_conversion is not supported: its "
                             "conversion flag is drawn outside the flow (generate with the torch backend)")
        self.flow = LeanFlow.from_flow(model.student).float()
        self.logit, self.std = model.logit, model.std
        self.einc_range, self.unit_mev = model.einc_range, float(model.einc_unit_mev)
        self.zero_below = float(model.cfg.zero_below_kev) * P.KEV
        self.max_ratio = None if model.cfg.max_ratio is None else float(model.cfg.max_ratio)
        self.threshold = float(model.geometry.threshold_mev) if threshold else None
        self.n_params = model.n_params

    def context(self, einc: Tensor, conditions: Tensor) -> Tensor:
        """Eq. 1 of E_inc (float64, :func:`~caloflows.models.paraflow.einc_feature`) and the parameter features."""
        from .models.paraflow import einc_feature

        lo, hi = self.einc_range
        f = einc_feature(einc, lo, hi, self.unit_mev)
        return torch.cat([f[:, None], conditions.double()], 1)

    def forward(self, z1: Tensor, z2: Tensor, einc: Tensor, conditions: Tensor | None = None) -> Tensor:
        einc = einc.double().reshape(-1)
        if conditions is None:
            if self.n_params:
                raise UsageError(f"the ParaFlow sampler needs {self.n_params} detector-parameter feature column(s)")
            conditions = torch.zeros(einc.shape[0], 0, dtype=torch.float64)
        y = self.flow(z2.float(), self.context(einc, conditions).float()).double()
        x = self.logit.inverse(self.std.inverse(y)) * einc[:, None]  # ParaFlow.decode
        x = _finite_and_bounded(x, einc, self.max_ratio)  # no redraw loop in ONNX
        x = torch.where(x < self.zero_below, torch.zeros_like(x), x)
        if self.threshold is not None:
            x = torch.where(x < self.threshold, torch.zeros_like(x), x)
        return x.float() + 0.0 * z1.float().sum(1, keepdim=True)  # z1: placeholder input, kept in the graph


def _common_metadata(model, kind: str, n_conditions: int) -> dict:
    """Metadata every exported sampler carries (format, versions, geometry, layout sizes)."""
    g = model.geometry
    return {
        "format": FORMAT,
        "kind": kind,
        "network": "student",
        "caloflows_version": __version__,
        "torch_version": torch.__version__,
        "opset": OPSET,
        "geometry": g.to_dict(),
        "n_layers": g.n_layers,
        "n_voxels": g.n_voxels,
        "n_conditions": n_conditions,
        "threshold_mev": float(g.threshold_mev),
    }


def _metadata(model) -> dict:
    kind = getattr(model, "kind", "caloflow")
    if kind == "icaloflow":
        return _metadata_icaloflow(model)
    if kind == "paraflow":
        return _metadata_paraflow(model)
    g = model.geometry
    return {
        **_common_metadata(model, getattr(model, "kind", "caloflow"), 0),
        "max_ratio": float(model.cfg.max_ratio if model.cfg.max_ratio is not None else model.unit.u0_max),
        "constants": {
            "logit": model.logit.to_dict(), "unit_space": model.unit.to_dict(),
            "flow1_standardize": model.std1.to_dict(), "flow2_standardize": model.std2.to_dict(),
            "incident_energies": model.einc_dist,
        },
        "config": model.cfg.to_dict(),
        "inputs": {"z1": ["batch", g.n_layers, "float64"], "z2": ["batch", g.n_voxels, "float32"],
                   "einc": ["batch", "float64", "MeV"], "conditions": ["batch", 0, "float32", "placeholder"]},
        "outputs": {"showers": ["batch", g.n_voxels, "float32", "MeV"]},
        "notes": "flow-I outliers (E_dep/E_inc > max_ratio) are scaled to the bound, not redrawn",
    }


def _metadata_icaloflow(model) -> dict:
    g, k = model.geometry, model.n_params
    return {
        **_common_metadata(model, "icaloflow", k),
        "condition_spec": model.condition_spec.to_dict(),
        "max_ratio": None if model.cfg.max_ratio is None else float(model.cfg.max_ratio),
        "postprocess": model.cfg.postprocess,
        "constants": model.constants(),
        "config": model.cfg.to_dict(),
        "inputs": {"z1": ["batch", g.n_layers, "float64"],
                   "z2": ["batch", g.n_voxels, "float32", "layer 0 (flow-2) then layers 1.. (flow-3)"],
                   "einc": ["batch", "float64", "MeV"],
                   "conditions": ["batch", k, "float32", "detector-parameter features in [-1, 1]"]},
        "outputs": {"showers": ["batch", g.n_voxels, "float32", "MeV"]},
        "notes": "flow-1 outliers (E_dep/E_inc > max_ratio) are scaled to the bound, not redrawn",
    }


def _metadata_paraflow(model) -> dict:
    g, k = model.geometry, model.n_params
    lo, hi = model.einc_range
    return {
        **_common_metadata(model, "paraflow", k),
        "condition_spec": model.condition_spec.to_dict(),
        "max_ratio": None if model.cfg.max_ratio is None else float(model.cfg.max_ratio),
        "zero_below_kev": float(model.cfg.zero_below_kev),
        "constants": model.constants(),  # with "incident_energies": the training E_inc law
        "einc_domain": {"training_range_mev": [lo, hi], "min_exclusive_mev": lo - float(model.einc_unit_mev)},
        "config": model.cfg.to_dict(),
        "inputs": {"z1": ["batch", g.n_layers, "float64", "placeholder (ParaFlow has one flow)"],
                   "z2": ["batch", g.n_voxels, "float32", "student latent"],
                   "einc": ["batch", "float64", "MeV"],
                   "conditions": ["batch", k, "float32", "detector-parameter features (eq. 1, in [-1, 1])"]},
        "outputs": {"showers": ["batch", g.n_voxels, "float32", "MeV"]},
        "notes": "rows are not redrawn: non-finite crystals are set to 0 and, if max_ratio is set, rows with "
                 "E_dep/E_inc > max_ratio are scaled to the bound",
    }


def export_onnx(model, out: str | os.PathLike, *, force: bool = False, opset: int = OPSET) -> Path:
    """Export the student sampler of a trained CaloFlow, iCaloFlow or ParaFlow ``model`` to ``out`` (one ONNX graph).

    Refuses an existing ``out`` unless ``force``; writes atomically.  Needs the ``onnx``
    package (``pip install caloflows[onnx]``).  Returns the path.
    """
    try:
        import onnx
    except ImportError:
        raise OutputError("ONNX export needs the onnx package: pip install 'caloflows[onnx]'") from None
    from .io import atomic_output
    from .models.caloflow import CaloFlow
    from .models.icaloflow import ICaloFlow
    from .models.paraflow import ParaFlow

    samplers = {CaloFlow: CaloFlowSampler, ICaloFlow: ICaloFlowSampler, ParaFlow: ParaFlowSampler}
    cls = next((c for c in samplers if isinstance(model, c)), None)
    if cls is None:
        raise ModelDirError(f"ONNX export supports CaloFlow, iCaloFlow and ParaFlow models, not {type(model).__name__}")
    if opset < 17:
        raise ValueError("opset must be >= 17")
    if getattr(model.cfg, "student_weights", "float32") != "float32":
        raise UsageError(f"student_weights={model.cfg.student_weights} is a torch sampling option; the ONNX graph "
                         "holds the float32 weights (export without it)")
    out = Path(out)
    if out.exists() and not force:
        raise OutputError(f"{out} exists; use --force to overwrite it")
    sampler = samplers[cls](model).eval()
    g = model.geometry
    B = 2
    einc0 = float(np.mean(model.einc_range)) if cls is ParaFlow else 1e4  # inside eq. 1's domain
    args = (torch.zeros(B, g.n_layers, dtype=torch.float64), torch.zeros(B, g.n_voxels),
            torch.full((B,), einc0, dtype=torch.float64), torch.zeros(B, 0 if cls is CaloFlow else model.n_params))
    dyn = {"z1": {0: "batch"}, "z2": {0: "batch"}, "einc": {0: "batch"}, "conditions": {0: "batch"},
           "showers": {0: "batch"}}
    with atomic_output(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.onnx.export(sampler, args, tmp, input_names=list(INPUTS), output_names=list(OUTPUTS),
                              dynamic_axes=dyn, opset_version=opset, dynamo=False)
        m = onnx.load(tmp)
        meta = m.metadata_props.add()
        meta.key, meta.value = METADATA_KEY, json.dumps(_metadata(model))
        title = {"ICaloFlow": "iCaloFlow"}.get(cls.__name__, cls.__name__)
        m.doc_string = f"caloflows {__version__} {title} student sampler for geometry {g.name}"
        m.producer_name = "caloflows"
        onnx.checker.check_model(m)
        onnx.save(m, tmp)
    return out


class OnnxSampler:
    """Generate showers with an exported CaloFlow, iCaloFlow or ParaFlow sampler in ONNX Runtime.

    Checks the file before use: a missing, corrupt or foreign ``.onnx`` raises
    :class:`~caloflows.errors.ModelDirError` with a one-line message naming the file.

    >>> einc, showers = OnnxSampler("caloflow.onnx", threads=1).sample(np.full(10, 5e4), seed=0)  # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike, threads: int = 1) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelDirError("the onnxruntime backend needs: pip install 'caloflows[onnx]'") from None
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelDirError(f"{self.path}: no such ONNX file")
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
        so.log_severity_level = 4
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelDirError(f"{self.path}: not a readable ONNX model ({msg[:200]})") from None
        raw = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        try:
            meta = json.loads(raw) if raw is not None else None
        except ValueError:
            meta = None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ModelDirError(f"{self.path}: not a caloflows sampler (no '{METADATA_KEY}' metadata of format {FORMAT})")
        names = [i.name for i in self.session.get_inputs()]
        if names != list(INPUTS) or [o.name for o in self.session.get_outputs()] != list(OUTPUTS):
            raise ModelDirError(f"{self.path}: unexpected graph inputs/outputs {names}")
        self.metadata = meta
        self.n_layers, self.n_voxels = int(meta["n_layers"]), int(meta["n_voxels"])
        self.n_conditions = int(meta.get("n_conditions", 0))

    @property
    def geometry(self):
        from .geometry import geometry_from_dict

        return geometry_from_dict(self.metadata["geometry"])

    def _check_einc(self, einc: np.ndarray, warn: bool = False) -> None:
        """E_inc inside the graph's domain (ParaFlow's eq. 1: ``E_inc > E_min - 1 GeV``), else a
        :class:`~caloflows.errors.ConditionsError`; with ``warn``, a ConditionsWarning for E_inc
        outside the training range (as the torch path)."""
        dom = self.metadata.get("einc_domain")
        if not dom:
            return
        from .conditions import ConditionsWarning
        from .errors import ConditionsError

        e = np.asarray(einc, dtype=np.float64)
        lo, hi = dom["training_range_mev"]
        if np.any(e <= dom["min_exclusive_mev"]):
            raise ConditionsError(f"{self.path}: incident energies down to {e.min():g} MeV: eq. 1 needs E_inc > "
                                  f"{dom['min_exclusive_mev']:g} MeV (training range [{lo:g}, {hi:g}] MeV)")
        out = (e < lo * (1 - 1e-9)) | (e > hi * (1 + 1e-9))
        if warn and np.any(out):
            warnings.warn(f"{int(out.sum())} incident energies outside the training range [{lo:g}, {hi:g}] MeV; "
                          "the model extrapolates", ConditionsWarning, stacklevel=3)

    def run(self, z1: np.ndarray, z2: np.ndarray, einc: np.ndarray, conditions: np.ndarray | None = None) -> np.ndarray:
        """The graph on given latent noise: (B, L), (B, V), (B,) [, (B, K) condition features]
        -> showers (B, V) float32 MeV."""
        k = self.n_conditions
        self._check_einc(einc)
        if conditions is None:
            if k:
                raise UsageError(f"{self.path}: the sampler needs {k} detector-parameter feature column(s)")
            conditions = np.zeros((len(einc), 0), dtype=np.float32)
        conditions = np.ascontiguousarray(conditions, dtype=np.float32).reshape(len(einc), k)
        feeds = {"z1": np.ascontiguousarray(z1, dtype=np.float64), "z2": np.ascontiguousarray(z2, dtype=np.float32),
                 "einc": np.ascontiguousarray(einc, dtype=np.float64).reshape(-1), "conditions": conditions}
        return self.session.run(None, feeds)[0]

    def sample(self, n_or_energies, seed: int | None = None, batch_size: int = 1000,
               conditions: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(E_inc (N,) MeV, showers (N, V) float32 MeV)``: ``n`` draws from the training E_inc law
        stored in the metadata, or the given energies (with ``conditions`` (N, K), the detector-
        parameter features, for a model that has parameters); latent noise from ``numpy`` seeded by ``seed``."""
        from .models.base import incident_energies

        rng = np.random.default_rng(seed)
        einc = incident_energies(n_or_energies, self.metadata["constants"]["incident_energies"], rng)
        self._check_einc(einc, warn=True)
        out = np.empty((len(einc), self.n_voxels), dtype=np.float32)
        bs = max(1, int(batch_size))
        for a in range(0, len(einc), bs):
            e = einc[a:a + bs]
            z1 = rng.standard_normal((len(e), self.n_layers))
            z2 = rng.standard_normal((len(e), self.n_voxels), dtype=np.float32)
            out[a:a + bs] = self.run(z1, z2, e, None if conditions is None else conditions[a:a + bs])
        return einc, out


class OnnxGenerator:
    """An exported sampler with the part of the :class:`~caloflows.models.base.Generator` interface
    that generation uses (``caloflows generate FILE.onnx --backend onnxruntime``): geometry, the
    training E_inc law, the detector-parameter spec (iCaloFlow and ParaFlow models may have parameters),
    ``sample(...) -> ShowerData`` (student only)."""

    variants = ("student",)

    def __init__(self, path: str | os.PathLike, threads: int = 1) -> None:
        from .conditions import ConditionSpec
        from .errors import ConditionsError

        self.sampler = OnnxSampler(path, threads=threads)
        self.geometry = self.sampler.geometry
        self.kind = str(self.sampler.metadata.get("kind", "caloflow"))
        try:
            self.condition_spec = ConditionSpec.from_dict(self.sampler.metadata.get("condition_spec"))
        except (ConditionsError, KeyError, TypeError, ValueError) as exc:
            raise ModelDirError(f"{self.sampler.path}: malformed condition spec in the metadata ({exc})") from None
        self.n_params = len(self.condition_spec)
        if self.n_params != self.sampler.n_conditions:
            raise ModelDirError(f"{self.sampler.path}: metadata lists {self.n_params} parameters but the graph "
                                f"takes {self.sampler.n_conditions}")

    def einc_law(self) -> dict:
        return self.sampler.metadata["constants"]["incident_energies"]

    def sample(self, conditions, batch_size: int = 1000, *, seed: int | None = None, device: str | None = None,
               progress: bool = False, variant: str | None = None) -> ShowerData:
        from .conditions import Conditions
        from .errors import ConditionsError

        if variant not in (None, "student"):
            raise UsageError(f"{self.sampler.path}: an exported sampler holds the student only (not {variant!r})")
        if isinstance(conditions, Conditions):
            cond = self.condition_spec.check(conditions, "conditions")
            feats = np.asarray(self.condition_spec.features(cond.values), dtype=np.float32) if self.n_params else None
            einc, showers = self.sampler.sample(cond.incident_energies, seed=seed, batch_size=batch_size,
                                                conditions=feats)
            return ShowerData(einc, showers, cond.values if self.n_params else None, cond.names,
                              attrs={"generator": self.kind, "backend": "onnxruntime"})
        if self.n_params:
            raise ConditionsError(f"{self.sampler.path}: the model is conditioned on {list(self.condition_spec.names)}; "
                                  "give their values")
        einc, showers = self.sampler.sample(conditions, seed=seed, batch_size=batch_size)
        return ShowerData(einc, showers, attrs={"generator": self.kind, "backend": "onnxruntime"})
