"""``evaluate()``: the CaloChallenge evaluation of a generated sample against a reference.

Runs the selected metrics (review sec. 8; CaloFlow paper sec. 4 and appendix B) on showers
thresholded as the official evaluation does, computes every number also between two random
halves of the reference (the Geant4-vs-Geant4 noise floor) where that makes sense, and
optionally writes the report directory (PNGs, ``metrics.json``, ``report.html``) atomically.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from ..errors import EvaluationError
from ..geometry import Geometry, guess_geometry, load_geometry
from ..io import ShowerData
from .classifier import ClassifierConfig, binary_test, build_dnn
from .cnn import CNNConfig, check_cnn_geometry, cnn_builder
from .correlations import layer_correlations
from .distances import adapted_sizes, fpd, kpd
from .features import HighLevelFeatures, compute_features
from .histograms import (
    OUT_OF_RANGE_Z,
    compare_histograms,
    eratio_per_energy,
    eratio_separation_per_energy,
    voxel_bins,
    voxel_result,
)
from .inputs import classifier_inputs
from .manifold import log_voxels, prdc
from .multiclass import MulticlassConfig, multiclass_test
from .params import count_parameters
from .stream import (
    VOXEL_BUDGET,
    SampleScan,
    peek_sample,
    sample_length,
    scan_sample,
    voxel_histogram,
    voxel_subsample_size,
)

__all__ = [
    "evaluate",
    "EvaluationError",
    "EvaluationWarning",
    "ALL_METRICS",
    "FAST_METRICS",
    "PRDC_VOXEL_BUDGET",
    "DEFAULT_METRICS",
    "CLASSIFIER_METRICS",
    "MIN_CLASSIFIER_SHOWERS",
    "parse_metrics",
]

#: binary classifier metric name -> input set of :func:`classifier_inputs`
CLASSIFIER_METRICS = {"cls-low": "low", "cls-low-normed": "low-normed", "cls-logit": "logit", "cls-high": "high",
                      "cls-cnn": "low"}
ALL_METRICS = ("hist", "corr", "fpd", "kpd", "prdc", *CLASSIFIER_METRICS, "multiclass", "paraflow", "supercalo")
#: geometry-specific metrics: the ParaFlow shower shapes (grid geometries) and SuperCalo's rho / rings
SPECIAL_METRICS = ("paraflow", "supercalo")
#: what ``all`` expands to: every metric but the CNN (hours on a CPU, regular geometries only) and the
#: geometry-specific ones; ask for those by name
ALL_GROUP = tuple(m for m in ALL_METRICS if m != "cls-cnn" and m not in SPECIAL_METRICS)
FAST_METRICS = ("hist", "corr", "fpd", "kpd")
DEFAULT_METRICS = ("hist", "corr", "fpd", "kpd", "prdc")
#: fewest showers per sample for a 60/20/20 classifier split (>= 20 test showers per class)
MIN_CLASSIFIER_SHOWERS = 100
#: PRDC uses at most this many showers per sample (pairwise distances are O(n m))
PRDC_MAX_SHOWERS = 10_000
#: ... and at most this many voxel values per subsample (10000 ds2 showers, 1604 ds3 showers), so that
#: two float64 subsamples stay near 1 GB
PRDC_VOXEL_BUDGET = 65_000_000
#: KS-test p-value below which the incident-energy spectra are reported as different
EINC_P_VALUE = 1e-3


class EvaluationWarning(UserWarning):
    """Inputs that can be evaluated but whose numbers need care (e.g. different E_inc spectra)."""


def parse_metrics(spec: str | Iterable[str]) -> list[str]:
    """``"hist,cls-low"`` -> ["hist", "cls-low"]; ``all`` (every metric but ``cls-cnn``), ``fast`` and
    ``default`` expand."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    out: list[str] = []
    for s in items:
        group = {"all": ALL_GROUP, "fast": FAST_METRICS, "default": DEFAULT_METRICS}.get(s)
        for m in group or (s,):
            if m not in ALL_METRICS:
                raise EvaluationError(f"unknown metric {m!r}; choose from {', '.join(ALL_METRICS)}, all, fast, default")
            if m not in out:
                out.append(m)
    if not out:
        raise EvaluationError("no metric selected")
    return out


# ------------------------------------------------------------------ inputs
def _name(sample, default: str) -> str:
    return str(sample) if isinstance(sample, (str, os.PathLike)) else default


def _resolve_geometry(geometry, gen: ShowerData, ref: ShowerData, gname: str, rname: str) -> Geometry:
    vg, vr = gen.showers.shape[1], ref.showers.shape[1]
    if vg != vr:
        raise EvaluationError(
            f"{gname} has {vg} voxels per shower but {rname} has {vr}: the files are from different geometries"
        )
    file_geoms = {}
    for d, n in ((gen, gname), (ref, rname)):
        if "geometry" in d.attrs:
            with contextlib.suppress(Exception):  # unknown name in a foreign file: not an error by itself
                file_geoms[n] = load_geometry(d.attrs["geometry"])
    if len(file_geoms) == 2:
        a, b = file_geoms.values()
        if not a.same_layout(b):
            raise EvaluationError(
                f"{gname} was written for geometry {a.name!r} but {rname} for {b.name!r} (different voxel layouts)"
            )
    if geometry is None:
        g = next(iter(file_geoms.values()), None) or guess_geometry(vg)
        if g is None:
            raise EvaluationError(f"{gname}: cannot tell the geometry of {vg}-voxel showers; pass --geometry")
    else:
        g = load_geometry(geometry)
    if g.n_voxels != vg:
        raise EvaluationError(
            f"{gname} and {rname} have {vg} voxels per shower but geometry {g.name!r} has {g.n_voxels}"
        )
    for d, n in ((gen, gname), (ref, rname)):
        _check_particle_and_threshold(g, d.attrs, n, file_geoms.get(n))
    return g


_PARTICLE_NAMES = {"e-": "electron", "electron": "electron", "11": "electron", "e+": "positron",
                   "positron": "positron", "-11": "positron", "gamma": "photon", "photon": "photon",
                   "22": "photon", "pi+": "pion", "pi-": "pion", "pion": "pion", "211": "pion", "-211": "pion"}


def _check_particle_and_threshold(g: Geometry, attrs: Mapping, name: str, file_geo: Geometry | None) -> None:
    """Refuse a geometry (e.g. a same-layout binning XML of another particle) whose particle or
    voxel threshold contradicts what the file records: the threshold changes every feature."""
    fp = _PARTICLE_NAMES.get(str(attrs.get("particle", "")).strip().lower())
    gp = _PARTICLE_NAMES.get(str(g.particle or "").strip().lower())
    if fp and gp and fp != gp:
        raise EvaluationError(
            f"{name}: file holds {attrs.get('particle')} showers but geometry {g.name!r} is for {g.particle} "
            f"(voxel threshold {g.threshold_mev:.4g} MeV); use the binning of the file's particle"
        )
    if file_geo is not None and file_geo.same_layout(g) and not np.isclose(file_geo.threshold_mev, g.threshold_mev):
        raise EvaluationError(
            f"{name}: written for geometry {file_geo.name!r} (voxel threshold {file_geo.threshold_mev:.4g} MeV) but "
            f"geometry {g.name!r} applies {g.threshold_mev:.4g} MeV; pass the file's geometry"
        )


def _compare_incident_energies(gen: np.ndarray, ref: np.ndarray, gname: str) -> str | None:
    """KS two-sample test of the incident-energy spectra; a one-line warning if they differ."""
    if np.array_equal(np.sort(gen), np.sort(ref)):
        return None
    ks = stats.ks_2samp(gen, ref)
    ug, ur = np.unique(gen), np.unique(ref)
    extra = ""
    if len(ur) <= 20:
        missing = np.setdiff1d(ur, ug)
        unexpected = np.setdiff1d(ug, ur)
        if missing.size:
            extra += f"; energies missing from generated: {', '.join(f'{e / 1e3:.4g}' for e in missing)} GeV"
        if unexpected.size and len(ug) <= 50:
            extra += f"; energies not in reference: {', '.join(f'{e / 1e3:.4g}' for e in unexpected)} GeV"
    if ks.pvalue >= EINC_P_VALUE and not extra:
        return None
    return (
        f"{gname}: incident-energy distribution differs from the reference (KS D={ks.statistic:.3f}, "
        f"p={ks.pvalue:.2g}; median {np.median(gen) / 1e3:.4g} vs {np.median(ref) / 1e3:.4g} GeV, "
        f"range {gen.min() / 1e3:.4g}-{gen.max() / 1e3:.4g} vs {ref.min() / 1e3:.4g}-{ref.max() / 1e3:.4g} GeV"
        f"{extra}); histogram metrics compare different mixtures of energies"
    )


# ------------------------------------------------------------------ metrics
def _hist_metrics(gen_f, ref_f, halves, voxel=None) -> tuple[dict, dict]:
    results = compare_histograms(gen_f, ref_f, halves, voxel=voxel)
    by_kind: dict[str, dict[str, list]] = {}
    for key, r in results.items():
        kind = key.partition("/")[0]
        d = by_kind.setdefault(kind, {"generated": [], "reference_halves": []})
        d["generated"].append(r.separation_power)
        d["reference_halves"].append(r.ref_band)
    mean_by_kind = {}
    for k, v in by_kind.items():
        g = np.array(v["generated"], dtype=float)
        h = np.array(v["reference_halves"], dtype=float)
        mean_by_kind[k] = {
            "generated": float(np.nanmean(g)) if np.isfinite(g).any() else float("nan"),
            "reference_halves": float(np.nanmean(h)) if np.isfinite(h).any() else float("nan"),
            "n_features": int(len(g)),
            "n_undefined": int(np.count_nonzero(~np.isfinite(g))),  # S = NaN: a histogram empty in range
        }
    eratio = eratio_per_energy(gen_f, ref_f, ref_halves=halves)
    per_e = eratio_separation_per_energy(gen_f, ref_f, ref_halves=halves)
    flagged = [k for k, r in results.items() if r.out_of_range_flag]
    if per_e:
        flagged += [f"E_ratio@{row['e_inc_mev'] / 1e3:.4g}GeV" for row in per_e if row["out_of_range_flag"]]
    out: dict[str, Any] = {
        "out_of_range_flagged": flagged,
        "out_of_range_note": (
            "features whose generated fraction of entries outside the histogram range exceeds the reference's by "
            f"more than {OUT_OF_RANGE_Z:g} standard errors; the separation power ignores such entries"
        ),
        "separation_power": {k: r.to_json() for k, r in results.items()},
        "mean_separation_power_by_kind": mean_by_kind,
        "eratio_per_energy": eratio,
        "data": {k: {"edges": r.edges, "generated": r.gen, "reference": r.ref} for k, r in results.items()},
    }
    if per_e is not None:
        out["eratio_separation_per_energy"] = per_e
    return out, results


def _distance_inputs(f: HighLevelFeatures) -> np.ndarray:
    return classifier_inputs(f, "high")


def _fpd_kpd(which: str, gen_x, ref_x, half_x, seed: int) -> dict:
    d = gen_x.shape[1]
    n = min(len(gen_x), len(ref_x))
    sz = adapted_sizes(n, d)
    hz = adapted_sizes(min(len(half_x[0]), len(half_x[1])), d)
    if which == "fpd":
        v, e = fpd(ref_x, gen_x, min_samples=sz["fpd_min_samples"], max_samples=sz["fpd_max_samples"], seed=seed)
        hv, he = fpd(half_x[0], half_x[1], min_samples=hz["fpd_min_samples"], max_samples=hz["fpd_max_samples"], seed=seed)
        sizes = {k: sz[k] for k in ("fpd_min_samples", "fpd_max_samples")}
    else:
        v, e = kpd(ref_x, gen_x, batch_size=sz["kpd_batch_size"], seed=seed)
        hv, he = kpd(half_x[0], half_x[1], batch_size=hz["kpd_batch_size"], seed=seed)
        sizes = {"kpd_batch_size": sz["kpd_batch_size"], "reference_halves_batch_size": hz["kpd_batch_size"]}
    return {
        "value_x1e3": 1e3 * v,
        "error_x1e3": 1e3 * e,
        "reference_halves_x1e3": 1e3 * hv,
        "reference_halves_error_x1e3": 1e3 * he,
        "n_features": d,
        "sizes": sizes,
    }


def _prdc_metrics(gscan: SampleScan, rscan: SampleScan, sub: dict) -> dict:
    """PRDC on the bounded voxel subsamples chosen in :func:`evaluate`; one pair in memory at a time."""
    out: dict[str, Any] = {"k": 5, "max_showers": PRDC_MAX_SHOWERS, "n_showers": int(len(sub["prdc_gen"]))}
    lv = lambda scan, idx: log_voxels(scan.kept_voxels, scan.kept_rows(idx))  # noqa: E731
    out["generated"] = prdc(lv(rscan, sub["prdc_ref"]), lv(gscan, sub["prdc_gen"]), k=5)
    h0, h1 = sub["prdc_halves"]
    out["reference_halves"] = prdc(lv(rscan, h0), lv(rscan, h1), k=5)
    return out


# ------------------------------------------------------------------ evaluate
def _any_energy(sample: "ShowerData | str | os.PathLike", max_showers: int | None) -> bool:
    """Whether any voxel of the (first ``max_showers``) showers is non-zero; stops at the first chunk that has one."""
    if isinstance(sample, ShowerData):
        return bool(np.any(sample.showers[:max_showers]))
    from ..io import iter_showers

    return any(np.any(c.showers) for c in iter_showers(sample, 10_000, validate=False, stop=max_showers))


def evaluate(
    generated,
    reference,
    geometry=None,
    metrics: str | Iterable[str] = DEFAULT_METRICS,
    out: str | os.PathLike | None = None,
    *,
    seeds: int = 1,
    device: str = "cpu",
    classifier: ClassifierConfig | None = None,
    multiclass: MulticlassConfig | None = None,
    compare: Mapping[str, object] | None = None,
    label: str | None = None,
    max_showers: int | None = None,
    plots: bool = True,
    model_parameters: int | None = None,
    seed: int = 0,
    classifier_floor: bool = False,
    force: bool = False,
    cnn: CNNConfig | None = None,
    voxel_budget: int | None = VOXEL_BUDGET,
) -> dict:
    """Evaluate ``generated`` against ``reference`` showers; return every number as a dict.

    Args:
        generated, reference: HDF5 paths or :class:`ShowerData`.
        geometry: name (``ds1-photons``, ``1-photons``, ``2``, ...), binning XML or Geometry;
            default: the files' ``geometry`` attribute, else the catalogue entry with that voxel count.
        metrics: subset of :data:`ALL_METRICS` (list or comma-separated; ``all``/``fast``/``default``).
        out: report directory to write (atomically); None: only return the numbers.
        seeds: classifier runs per input set (mean and std reported).
        device: torch device for the classifiers (``cpu``, ``cuda``).
        classifier, multiclass: network settings (defaults: review sec. 8.3).
        compare: further generated samples (name -> path or ShowerData) for the multiclass test.
        label: name of the generated sample in plots and the multiclass test.
        max_showers: use only the first N showers of every file.
        plots: draw the PNGs (only with ``out``).
        model_parameters: trainable parameters of the generating model, recorded in the report.
        seed: seed of the reference split into halves and the subsampling.
        classifier_floor: also train every binary classifier on the two reference halves
            (the Geant4-vs-Geant4 AUC floor; doubles the classifier time).
        force: replace an existing ``out`` that is a caloflows report (and holds nothing
            else); without it an existing non-empty ``out`` is refused before any work
            (:func:`caloflows.outputs.check_report_dir`).
        cnn: architecture of the ``cls-cnn`` 3D ResNet (default: ResNet-18, official widths).
        voxel_budget: most voxel values per sample kept for the low-level classifiers (default
            2.5e8: every shower of ds1/ds2 files up to 38k showers, 6172 ds3 showers); a larger
            sample is subsampled at random, recorded in ``inputs.voxel_subsamples``. None: no limit.

    Samples are read in chunks (:mod:`.stream`): memory is bounded by the features (~400 floats a
    ds3 shower) and the voxel subsamples, not by the file size.
    """
    t_start = time.perf_counter()
    metrics = parse_metrics(metrics)
    gname, rname = _name(generated, "generated"), _name(reference, "reference")
    label = label or (Path(gname).stem if isinstance(generated, (str, os.PathLike)) else "generated")
    if out is not None:
        from ..outputs import check_report_dir

        paths = [x for x in (generated, reference, *(compare or {}).values()) if isinstance(x, (str, os.PathLike))]
        check_report_dir(out, paths, force=force)
    for s, sname in ((generated, gname), (reference, rname)):
        if not isinstance(s, (ShowerData, str, os.PathLike)):
            raise TypeError(f"{sname}: expected a file path or ShowerData, got {type(s).__name__}")
    first_gen, first_ref = peek_sample(generated, gname), peek_sample(reference, rname)  # first chunks validated
    n_gen, n_ref = sample_length(generated, max_showers), sample_length(reference, max_showers)
    for src, n, nm in ((generated, n_gen, gname), (reference, n_ref, rname)):
        if n < 2:
            raise EvaluationError(f"{nm}: {n} shower(s); the evaluation needs at least 2 (the reference is "
                                  f"split into two halves for the Geant4 floor)")
        if not _any_energy(src, max_showers):
            raise EvaluationError(f"{nm}: every shower is zero (no energy in any voxel); nothing to evaluate")
    geo = _resolve_geometry(geometry, first_gen, first_ref, gname, rname)
    del first_gen, first_ref
    cls_wanted = [m for m in metrics if m in CLASSIFIER_METRICS or m == "multiclass"]
    for n, nm in ((n_gen, gname), (n_ref, rname)):
        if cls_wanted and n < MIN_CLASSIFIER_SHOWERS:
            raise EvaluationError(
                f"{nm}: {n} showers are too few for the classifier split ({', '.join(cls_wanted)} need at "
                f"least {MIN_CLASSIFIER_SHOWERS} per sample for 60/20/20)"
            )
    if classifier_floor and any(m in CLASSIFIER_METRICS for m in metrics) and n_ref // 2 < MIN_CLASSIFIER_SHOWERS:
        raise EvaluationError(
            f"{rname}: {n_ref} showers are too few for the classifier floor (two halves of at least "
            f"{MIN_CLASSIFIER_SHOWERS} showers each are needed)"
        )
    if "cls-cnn" in metrics:
        check_cnn_geometry(geo)
    others: dict[str, object] = {}
    if "multiclass" in metrics:
        for k, v in (compare or {}).items():
            nv = peek_sample(v, _name(v, k)).showers.shape[1]
            if nv != geo.n_voxels:
                raise EvaluationError(f"{_name(v, k)}: {nv} voxels, geometry {geo.name!r} has {geo.n_voxels}")
            if sample_length(v, max_showers) < MIN_CLASSIFIER_SHOWERS:
                raise EvaluationError(f"{_name(v, k)}: {sample_length(v, max_showers)} showers are too few for the "
                                      f"multiclass split (need {MIN_CLASSIFIER_SHOWERS})")
            others[k] = v
        if not others:
            raise EvaluationError("multiclass needs at least one more generated sample to compare with (--compare FILE)")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise EvaluationError(f"device {device!r} requested but no CUDA GPU is available")
    n_feat = _distance_inputs(compute_features(np.zeros((1, geo.n_voxels)), np.ones(1), geo)).shape[1]
    if ("fpd" in metrics or "kpd" in metrics) and min(n_gen, n_ref // 2) < 2 * n_feat + 2:
        raise EvaluationError(
            f"FPD/KPD need at least {2 * (2 * n_feat + 2)} reference and {2 * n_feat + 2} generated showers for "
            f"{n_feat} features (have {n_ref} and {n_gen})"
        )
    if "prdc" in metrics and min(n_gen, n_ref // 2) <= 5:
        raise EvaluationError("PRDC with k=5 needs more than 5 generated and 10 reference showers")

    # --- which showers keep their voxels (bounded subsamples, see .stream)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n_ref)
    half_idx = (np.sort(perm[: n_ref // 2]), np.sort(perm[n_ref // 2 :]))
    ref_groups = np.zeros(n_ref, dtype=np.int8)
    ref_groups[half_idx[1]] = 1

    def pick(idx: np.ndarray, m: int) -> np.ndarray:
        return idx if len(idx) <= m else np.sort(rng.choice(idx, m, replace=False))

    m_prdc = min(PRDC_MAX_SHOWERS, voxel_subsample_size(max(n_gen, n_ref), geo.n_voxels, PRDC_VOXEL_BUDGET))
    m_cls = voxel_subsample_size(max(n_gen, n_ref), geo.n_voxels, voxel_budget)
    keep_gen: list[np.ndarray] = []
    keep_ref: list[np.ndarray] = []
    sub: dict[str, Any] = {}
    if "prdc" in metrics:
        sub["prdc_gen"] = pick(np.arange(n_gen), m_prdc)
        sub["prdc_halves"] = (pick(half_idx[0], m_prdc), pick(half_idx[1], m_prdc))
        both = np.union1d(*sub["prdc_halves"])
        sub["prdc_ref"] = pick(both, m_prdc) if n_ref > m_prdc else np.arange(n_ref)
        keep_gen.append(sub["prdc_gen"])
        keep_ref += [both, sub["prdc_ref"]]
    voxel_cls = [m for m in metrics if (m in CLASSIFIER_METRICS and CLASSIFIER_METRICS[m] != "high") or m == "multiclass"]
    if voxel_cls:
        sub["cls_gen"], sub["cls_ref"] = pick(np.arange(n_gen), m_cls), pick(np.arange(n_ref), m_cls)
        keep_gen.append(sub["cls_gen"])
        keep_ref.append(sub["cls_ref"])
    cat = lambda parts: np.unique(np.concatenate(parts)) if parts else None  # noqa: E731

    timing: dict[str, float] = {}
    t = time.perf_counter()
    rscan = scan_sample(reference, geo, rname, max_showers=max_showers, keep=cat(keep_ref))
    vedges = voxel_bins(np.array([rscan.voxel_max.max()]), geo) if "hist" in metrics else None
    gscan = scan_sample(generated, geo, gname, max_showers=max_showers, keep=cat(keep_gen), voxel_edges=vedges)
    rhist = (voxel_histogram(reference, geo, vedges, max_showers=max_showers, groups=ref_groups, n_groups=2)
             if vedges is not None else None)
    gen_f, ref_f = gscan.features, rscan.features
    halves = (ref_f.subset(half_idx[0]), ref_f.subset(half_idx[1]))
    timing["features"] = time.perf_counter() - t

    warn_list: list[str] = []
    w = _compare_incident_energies(gen_f.incident_energies, ref_f.incident_energies, gname)
    if w:
        warn_list.append(w)
        warnings.warn(w, EvaluationWarning, stacklevel=2)

    result: dict = {
        "caloflows_version": _version(),
        "inputs": {
            "generated": gname,
            "reference": rname,
            "label": label,
            "geometry": geo.name,
            "n_voxels": geo.n_voxels,
            "threshold_mev": geo.threshold_mev,
            "n_generated": n_gen,
            "n_reference": n_ref,
            "reference_halves": [len(halves[0]), len(halves[1])],
            "voxel_subsamples": {
                "note": "showers whose voxels enter PRDC and the low-level classifiers; all showers while a sample "
                        "holds at most the budget of voxel values (bounded memory, see caloflows.evaluation.stream)",
                "prdc_showers": int(len(sub["prdc_gen"])) if "prdc_gen" in sub else None,
                "prdc_voxel_budget": PRDC_VOXEL_BUDGET,
                "classifier_showers": [int(len(sub["cls_gen"])), int(len(sub["cls_ref"]))] if "cls_gen" in sub else None,
                "classifier_voxel_budget": voxel_budget,
            },
        },
        "metrics_run": metrics,
        "warnings": warn_list,
    }
    if model_parameters is not None:
        result["inputs"]["model_trainable_parameters"] = int(model_parameters)

    # Statistical noise of S (and the finite-sample FPD floor) scales as 1/N1 + 1/N2: rescale the
    # reference-halves numbers to the sample sizes of the generated-vs-reference comparison.
    floor_scale = (1 / n_gen + 1 / n_ref) / (1 / len(halves[0]) + 1 / len(halves[1]))
    result["inputs"]["floor_scale"] = floor_scale
    hist_results = None
    corr = None
    if "hist" in metrics:
        t = time.perf_counter()
        gh = gscan.voxel_hist
        if vedges is None or gh is None or rhist is None:  # all three are computed above when "hist" is asked for
            raise EvaluationError("voxel histograms were not accumulated")
        rt = rhist.total()
        vres = voxel_result(vedges, gh.counts[0], (gh.underflow[0], gh.overflow[0], gh.entries[0]), rt.counts[0],
                            (rt.underflow[0], rt.overflow[0], rt.entries[0]), (rhist.counts[0], rhist.counts[1]))
        result["histograms"], hist_results = _hist_metrics(gen_f, ref_f, halves, vres)
        for v in result["histograms"]["mean_separation_power_by_kind"].values():
            v["reference_halves_scaled"] = v["reference_halves"] * floor_scale
        timing["hist"] = time.perf_counter() - t
    if "corr" in metrics:
        t = time.perf_counter()
        corr = layer_correlations(gen_f.e_layers, ref_f.e_layers)
        band = layer_correlations(halves[0].e_layers, halves[1].e_layers)
        corr["reference_halves_max_abs_difference"] = band["max_abs_difference"]
        corr["reference_halves_mean_abs_difference"] = band["mean_abs_difference"]
        corr["layer_ids"] = ref_f.layer_ids
        result["correlations"] = corr
        timing["corr"] = time.perf_counter() - t
    if "fpd" in metrics or "kpd" in metrics:
        gx, rx = _distance_inputs(gen_f), _distance_inputs(ref_f)
        hx = (rx[half_idx[0]], rx[half_idx[1]])
        for which in ("fpd", "kpd"):
            if which in metrics:
                t = time.perf_counter()
                result[which] = _fpd_kpd(which, gx, rx, hx, seed=42 + seed)
                if which == "fpd":  # FPD of finite samples has a floor ~ 1/N1 + 1/N2; KPD is unbiased
                    result[which]["reference_halves_scaled_x1e3"] = result[which]["reference_halves_x1e3"] * floor_scale
                timing[which] = time.perf_counter() - t
        del gx, rx, hx  # bounded memory: PRDC and the classifiers come next
    if "prdc" in metrics:
        t = time.perf_counter()
        result["prdc"] = _prdc_metrics(gscan, rscan, sub)
        timing["prdc"] = time.perf_counter() - t

    cfg = replace(classifier or ClassifierConfig(), device=device)
    for m in metrics:
        if m in CLASSIFIER_METRICS:
            t = time.perf_counter()
            kind = CLASSIFIER_METRICS[m]
            build = cnn_builder(geo, cnn) if m == "cls-cnn" else None
            if kind == "high":
                fg, fr, fh = gen_f, ref_f, halves
            else:
                fg, fr = gscan.kept_features(sub["cls_gen"]), rscan.kept_features(sub["cls_ref"])
                fh = (rscan.kept_features(np.intersect1d(sub["cls_ref"], half_idx[0])),
                      rscan.kept_features(np.intersect1d(sub["cls_ref"], half_idx[1])))
            xg, xr = classifier_inputs(fg, kind), classifier_inputs(fr, kind)
            r = binary_test(xg, xr, cfg, seeds=seeds, desc=m, build=build)
            r["input_set"] = kind
            r["n_features"] = int(xg.shape[1])
            r["n_showers"] = [len(xg), len(xr)]
            if build is None:
                r["network"] = f"DNN, {cfg.n_hidden_layers} x {cfg.hidden} leaky ReLU (official: 3 x 2048)"
                r["trainable_parameters"] = count_parameters(build_dnn(xg.shape[1], cfg.hidden, cfg.n_hidden_layers))
            else:
                r["network"] = f"3D ResNet {(cnn or CNNConfig()).to_dict()}"
                r["trainable_parameters"] = count_parameters(build(xg.shape[1]))
            del xg, xr
            if classifier_floor:
                fl = binary_test(classifier_inputs(fh[0], kind), classifier_inputs(fh[1], kind), cfg,
                                 seeds=seeds, desc=f"{m} reference halves", build=build)
                r["reference_halves"] = {k: fl[k] for k in ("auc_mean", "auc_std", "jsd_mean", "jsd_std", "runs")}
            result.setdefault("classifiers", {})[m] = r
            timing[m] = time.perf_counter() - t
    if "multiclass" in metrics:
        t = time.perf_counter()
        mcfg = replace(multiclass or MulticlassConfig(), device=device)
        samples = {label: classifier_inputs(gscan.kept_features(sub["cls_gen"]), "low")}
        for k, v in others.items():
            n_o = sample_length(v, max_showers)
            o = scan_sample(v, geo, _name(v, k), max_showers=max_showers, keep=pick(np.arange(n_o), m_cls))
            samples[k] = classifier_inputs(o.kept_features(), "low")
        result["multiclass"] = multiclass_test(samples, classifier_inputs(rscan.kept_features(sub["cls_ref"]), "low"),
                                               mcfg, seeds=seeds)
        result["multiclass"]["input_set"] = "low"
        bad = [i for i, ok in enumerate(result["multiclass"]["self_consistent_eq42"]) if not ok]
        if bad:
            w = (f"multiclass classifier fails the eq. 42 self-consistency check for seed(s) {bad}: it cannot tell "
                 f"the generated samples apart, so its log-posteriors on the reference are not meaningful")
            warn_list.append(w)
            warnings.warn(w, EvaluationWarning, stacklevel=2)
        timing["multiclass"] = time.perf_counter() - t

    result["timing_s"] = timing
    if out is not None:
        from .report import ReportDirectory, write_html, write_metrics_json

        with ReportDirectory(out, force=force) as tmp:
            images: list[tuple[str, str]] = []
            images += _special_metrics(metrics, generated, reference, geo, tmp, plots, label, seed, result, timing)
            if plots:
                t = time.perf_counter()
                images = _draw(tmp, gscan, rscan, hist_results, result, corr, label) + images
                timing["plots"] = time.perf_counter() - t
            timing["total"] = time.perf_counter() - t_start
            result["plots"] = [name for _, name in images]
            write_metrics_json(tmp / "metrics.json", result)
            write_html(tmp, result, images)
        result["report_dir"] = str(out)
    else:
        import tempfile

        with tempfile.TemporaryDirectory() as tmpdir:
            _special_metrics(metrics, generated, reference, geo, Path(tmpdir), False, label, seed, result, timing)
        timing["total"] = time.perf_counter() - t_start
    return result


def _special_metrics(metrics, generated, reference, geo, out_dir: Path, plots: bool, label: str, seed: int,
                     result: dict, timing: dict) -> list[tuple[str, str]]:
    """The geometry-specific metrics (``paraflow``: paper sec. 4 shower shapes and the fig. 9 (d, b)
    mean maps; ``supercalo``: rho of eq. 3 and the ring statistics of fig. 12), written into
    ``out_dir``; returns the plots for the report.  Both load the samples whole (ds1/ds2 sizes)."""
    images: list[tuple[str, str]] = []
    before = set(os.listdir(out_dir))
    if "paraflow" in metrics:
        from .paraflow import paraflow_report

        if geo.kind != "grid":
            raise EvaluationError(f"metric 'paraflow' needs the ParaFlow grid geometry (paraflow-8x16), not {geo.name!r}")
        t = time.perf_counter()
        result["paraflow"] = paraflow_report(generated, reference, out_dir, gen_label=label, plots=plots)
        timing["paraflow"] = time.perf_counter() - t
    if "supercalo" in metrics:
        from .supercalo import supercalo_metrics

        t = time.perf_counter()
        from ..io import read_showers

        g, r = ((s if isinstance(s, ShowerData) else read_showers(s)) for s in (generated, reference))
        perm = np.random.default_rng(seed).permutation(len(r))
        halves = (r.showers[perm[: len(r) // 2]], r.showers[perm[len(r) // 2:]])
        result["supercalo"] = supercalo_metrics(g.showers, r.showers, geo, reference_halves=halves,
                                                out=out_dir if plots else None, gen_label=label)
        timing["supercalo"] = time.perf_counter() - t
    for name in sorted(set(os.listdir(out_dir)) - before):
        if name.endswith(".png"):
            images.append((name[:-4].replace("_", " "), name))
    return images


def _draw(tmp: Path, gscan, rscan, hist_results, result, corr, label) -> list[tuple[str, str]]:
    ref_f = rscan.features
    from . import plots as P

    images: list[tuple[str, str]] = []

    def add(title, name):
        if name:
            images.append((title, name))

    if hist_results is not None:
        add("Separation power of every histogram", P.plot_separation_powers(hist_results, str(tmp / "separation_powers.png")))
        for kind, title in (
            ("E_ratio", "Deposited over incident energy"),
            ("E_layer", "Layer energies"),
            ("voxel", "Voxel energy distribution"),
            ("EC_eta", "Centre of energy in eta"),
            ("EC_phi", "Centre of energy in phi"),
            ("EC_r", "Centre of energy in r"),
            ("width_eta", "Width in eta"),
            ("width_phi", "Width in phi"),
            ("width_r", "Width in r"),
            ("sparsity", "Sparsity per layer"),
        ):
            add(title, P.plot_feature_group(hist_results, kind, str(tmp / f"hist_{kind}.png"), gen_label=label))
        c = result["histograms"]["eratio_per_energy"]
        add("E_dep/E_inc per incident energy (CaloFlow figs 7, 8)", P.plot_eratio_per_energy(c, str(tmp / "eratio_per_energy.png"), label))
        add("Mean and RMS ratios of E_dep/E_inc (CaloFlow fig. 9)", P.plot_mean_rms_ratios(c, str(tmp / "eratio_mean_rms.png")))
    if corr is not None:
        add("Layer-energy correlations (review eq. 40)", P.plot_correlations(corr, ref_f.layer_ids, str(tmp / "correlations.png")))
    add(
        "Average shower per layer",
        P.plot_average_showers(ref_f.geometry, gscan.mean_voxels, rscan.mean_voxels, str(tmp / "average_showers.png")),
    )
    return images


def _version() -> str:
    from .. import __version__

    return __version__
