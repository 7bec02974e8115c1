"""``evaluate()``: the CaloChallenge evaluation of a generated sample against a reference.

Runs the selected metrics (review sec. 8; CaloFlow paper sec. 4 and appendix B) on showers
thresholded as the official evaluation does, computes every number also between two random
halves of the reference (the Geant4-vs-Geant4 noise floor) where that makes sense, and
optionally writes the report directory (PNGs, ``metrics.json``, ``report.html``) atomically.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
from scipy import stats

from ..geometry import Geometry, guess_geometry, load_geometry
from ..io import ShowerData, read_showers
from .classifier import ClassifierConfig, binary_test, build_dnn
from .correlations import layer_correlations
from .distances import adapted_sizes, fpd, kpd
from .features import HighLevelFeatures, compute_features
from .histograms import compare_histograms, eratio_per_energy
from .inputs import classifier_inputs
from .manifold import log_voxels, prdc
from .multiclass import MulticlassConfig, multiclass_test
from .params import count_parameters
from ..errors import EvaluationError

__all__ = [
    "evaluate",
    "EvaluationError",
    "EvaluationWarning",
    "ALL_METRICS",
    "FAST_METRICS",
    "DEFAULT_METRICS",
    "CLASSIFIER_METRICS",
    "MIN_CLASSIFIER_SHOWERS",
    "parse_metrics",
]

#: binary classifier metric name -> input set of :func:`classifier_inputs`
CLASSIFIER_METRICS = {"cls-low": "low", "cls-low-normed": "low-normed", "cls-logit": "logit", "cls-high": "high"}
ALL_METRICS = ("hist", "corr", "fpd", "kpd", "prdc", *CLASSIFIER_METRICS, "multiclass")
FAST_METRICS = ("hist", "corr", "fpd", "kpd")
DEFAULT_METRICS = ("hist", "corr", "fpd", "kpd", "prdc")
#: fewest showers per sample for a 60/20/20 classifier split (>= 20 test showers per class)
MIN_CLASSIFIER_SHOWERS = 100
#: PRDC uses at most this many showers per sample (pairwise distances are O(n m))
PRDC_MAX_SHOWERS = 10_000
#: KS-test p-value below which the incident-energy spectra are reported as different
EINC_P_VALUE = 1e-3


class EvaluationWarning(UserWarning):
    """Inputs that can be evaluated but whose numbers need care (e.g. different E_inc spectra)."""


def parse_metrics(spec: str | Iterable[str]) -> list[str]:
    """``"hist,cls-low"`` -> ["hist", "cls-low"]; ``all``, ``fast`` and ``default`` expand."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    out: list[str] = []
    for s in items:
        group = {"all": ALL_METRICS, "fast": FAST_METRICS, "default": DEFAULT_METRICS}.get(s)
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


def _load(sample, what: str, max_showers: int | None) -> ShowerData:
    if isinstance(sample, ShowerData):
        data = sample if max_showers is None else sample.subset(slice(0, max_showers))
        _check_finite(data, what)
        if len(data) == 0:
            raise EvaluationError(f"{what}: holds no showers")
        return data
    if isinstance(sample, (str, os.PathLike)):
        return read_showers(sample, stop=max_showers)  # raises ShowerFileError naming the file
    raise TypeError(f"{what}: expected a file path or ShowerData, got {type(sample).__name__}")


def _check_finite(d: ShowerData, what: str) -> None:
    if not np.isfinite(d.incident_energies).all() or (d.incident_energies <= 0).any():
        raise EvaluationError(f"{what}: incident energies contain NaN, inf or non-positive values")
    if not np.isfinite(d.showers).all():
        i, j = np.argwhere(~np.isfinite(d.showers))[0]
        raise EvaluationError(f"{what}: shower {i}, voxel {j} is NaN or inf")
    if (d.showers < 0).any():
        raise EvaluationError(f"{what}: showers contain negative voxel energies")


def _resolve_geometry(geometry, gen: ShowerData, ref: ShowerData, gname: str, rname: str) -> Geometry:
    vg, vr = gen.showers.shape[1], ref.showers.shape[1]
    if vg != vr:
        raise EvaluationError(
            f"{gname} has {vg} voxels per shower but {rname} has {vr}: the files are from different geometries"
        )
    file_geoms = {}
    for d, n in ((gen, gname), (ref, rname)):
        if "geometry" in d.attrs:
            try:
                file_geoms[n] = load_geometry(d.attrs["geometry"])
            except Exception:  # unknown name in a foreign file: not an error by itself
                pass
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
def _hist_metrics(gen_f, ref_f, halves) -> tuple[dict, dict]:
    results = compare_histograms(gen_f, ref_f, halves)
    by_kind: dict[str, dict[str, list]] = {}
    for key, r in results.items():
        kind = key.partition("/")[0]
        d = by_kind.setdefault(kind, {"generated": [], "reference_halves": []})
        d["generated"].append(r.separation_power)
        d["reference_halves"].append(r.ref_band)
    mean_by_kind = {
        k: {
            "generated": float(np.nanmean(v["generated"])) if np.isfinite(v["generated"]).any() else float("nan"),
            "reference_halves": float(np.nanmean(np.array(v["reference_halves"], dtype=float)))
            if np.isfinite(np.array(v["reference_halves"], dtype=float)).any() else float("nan"),
        }
        for k, v in by_kind.items()
    }
    eratio = eratio_per_energy(gen_f, ref_f, ref_halves=halves)
    out = {
        "separation_power": {k: r.to_json() for k, r in results.items()},
        "mean_separation_power_by_kind": mean_by_kind,
        "eratio_per_energy": eratio,
        "data": {k: {"edges": r.edges, "generated": r.gen, "reference": r.ref} for k, r in results.items()},
    }
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


def _prdc_metrics(gen_f, ref_f, halves, rng) -> dict:
    def pick(v):
        return v if len(v) <= PRDC_MAX_SHOWERS else v[rng.choice(len(v), PRDC_MAX_SHOWERS, replace=False)]

    out = {"k": 5, "max_showers": PRDC_MAX_SHOWERS}
    out["generated"] = prdc(log_voxels(pick(ref_f.voxels)), log_voxels(pick(gen_f.voxels)), k=5)
    out["reference_halves"] = prdc(log_voxels(pick(halves[0].voxels)), log_voxels(pick(halves[1].voxels)), k=5)
    return out


# ------------------------------------------------------------------ evaluate
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
    """
    t_start = time.perf_counter()
    metrics = parse_metrics(metrics)
    gname, rname = _name(generated, "generated"), _name(reference, "reference")
    label = label or (Path(gname).stem if isinstance(generated, (str, os.PathLike)) else "generated")
    if out is not None:
        from ..outputs import check_report_dir

        paths = [x for x in (generated, reference, *(compare or {}).values()) if isinstance(x, (str, os.PathLike))]
        check_report_dir(out, paths, force=force)
    gen = _load(generated, gname, max_showers)
    ref = _load(reference, rname, max_showers)
    for d, n in ((gen, gname), (ref, rname)):
        if len(d) < 2:
            raise EvaluationError(f"{n}: {len(d)} shower(s); the evaluation needs at least 2 (the reference is "
                                  f"split into two halves for the Geant4 floor)")
        if not np.any(d.showers):
            raise EvaluationError(f"{n}: every shower is zero (no energy in any voxel); nothing to evaluate")
    geo = _resolve_geometry(geometry, gen, ref, gname, rname)
    cls_wanted = [m for m in metrics if m in CLASSIFIER_METRICS or m == "multiclass"]
    for d, n in ((gen, gname), (ref, rname)):
        if cls_wanted and len(d) < MIN_CLASSIFIER_SHOWERS:
            raise EvaluationError(
                f"{n}: {len(d)} showers are too few for the classifier split ({', '.join(cls_wanted)} need at "
                f"least {MIN_CLASSIFIER_SHOWERS} per sample for 60/20/20)"
            )
    if classifier_floor and any(m in CLASSIFIER_METRICS for m in metrics) and len(ref) // 2 < MIN_CLASSIFIER_SHOWERS:
        raise EvaluationError(
            f"{rname}: {len(ref)} showers are too few for the classifier floor (two halves of at least "
            f"{MIN_CLASSIFIER_SHOWERS} showers each are needed)"
        )
    others: dict[str, ShowerData] = {}
    if "multiclass" in metrics:
        for k, v in (compare or {}).items():
            others[k] = _load(v, _name(v, k), max_showers)
            if others[k].showers.shape[1] != geo.n_voxels:
                raise EvaluationError(f"{_name(v, k)}: {others[k].showers.shape[1]} voxels, geometry {geo.name!r} has {geo.n_voxels}")
            if len(others[k]) < MIN_CLASSIFIER_SHOWERS:
                raise EvaluationError(f"{_name(v, k)}: {len(others[k])} showers are too few for the multiclass split (need {MIN_CLASSIFIER_SHOWERS})")
        if not others:
            raise EvaluationError("multiclass needs at least one more generated sample to compare with (--compare FILE)")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise EvaluationError(f"device {device!r} requested but no CUDA GPU is available")

    warn_list: list[str] = []
    w = _compare_incident_energies(gen.incident_energies, ref.incident_energies, gname)
    if w:
        warn_list.append(w)
        warnings.warn(w, EvaluationWarning, stacklevel=2)

    timing: dict[str, float] = {}
    t = time.perf_counter()
    gen_f = compute_features(gen.showers, gen.incident_energies, geo)
    ref_f = compute_features(ref.showers, ref.incident_energies, geo)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(ref_f))
    halves = (ref_f.subset(np.sort(perm[: len(perm) // 2])), ref_f.subset(np.sort(perm[len(perm) // 2 :])))
    timing["features"] = time.perf_counter() - t

    n_feat = _distance_inputs(ref_f.subset(slice(0, 1))).shape[1]
    if ("fpd" in metrics or "kpd" in metrics) and min(len(gen), len(halves[0])) < 2 * n_feat + 2:
        raise EvaluationError(
            f"FPD/KPD need at least {2 * (2 * n_feat + 2)} reference and {2 * n_feat + 2} generated showers for "
            f"{n_feat} features (have {len(ref)} and {len(gen)})"
        )
    if "prdc" in metrics and min(len(gen), len(halves[0])) <= 5:
        raise EvaluationError("PRDC with k=5 needs more than 5 generated and 10 reference showers")

    result: dict = {
        "caloflows_version": _version(),
        "inputs": {
            "generated": gname,
            "reference": rname,
            "label": label,
            "geometry": geo.name,
            "n_voxels": geo.n_voxels,
            "threshold_mev": geo.threshold_mev,
            "n_generated": len(gen),
            "n_reference": len(ref),
            "reference_halves": [len(halves[0]), len(halves[1])],
        },
        "metrics_run": metrics,
        "warnings": warn_list,
    }
    if model_parameters is not None:
        result["inputs"]["model_trainable_parameters"] = int(model_parameters)

    # Statistical noise of S (and the finite-sample FPD floor) scales as 1/N1 + 1/N2: rescale the
    # reference-halves numbers to the sample sizes of the generated-vs-reference comparison.
    floor_scale = (1 / len(gen) + 1 / len(ref)) / (1 / len(halves[0]) + 1 / len(halves[1]))
    result["inputs"]["floor_scale"] = floor_scale
    hist_results = None
    corr = None
    if "hist" in metrics:
        t = time.perf_counter()
        result["histograms"], hist_results = _hist_metrics(gen_f, ref_f, halves)
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
        hx = (rx[np.sort(perm[: len(perm) // 2])], rx[np.sort(perm[len(perm) // 2 :])])
        for which in ("fpd", "kpd"):
            if which in metrics:
                t = time.perf_counter()
                result[which] = _fpd_kpd(which, gx, rx, hx, seed=42 + seed)
                if which == "fpd":  # FPD of finite samples has a floor ~ 1/N1 + 1/N2; KPD is unbiased
                    result[which]["reference_halves_scaled_x1e3"] = result[which]["reference_halves_x1e3"] * floor_scale
                timing[which] = time.perf_counter() - t
    if "prdc" in metrics:
        t = time.perf_counter()
        result["prdc"] = _prdc_metrics(gen_f, ref_f, halves, rng)
        timing["prdc"] = time.perf_counter() - t

    cfg = replace(classifier or ClassifierConfig(), device=device)
    for m in metrics:
        if m in CLASSIFIER_METRICS:
            t = time.perf_counter()
            kind = CLASSIFIER_METRICS[m]
            xg, xr = classifier_inputs(gen_f, kind), classifier_inputs(ref_f, kind)
            r = binary_test(xg, xr, cfg, seeds=seeds, desc=m)
            r["input_set"] = kind
            r["n_features"] = int(xg.shape[1])
            r["trainable_parameters"] = count_parameters(build_dnn(xg.shape[1], cfg.hidden, cfg.n_hidden_layers))
            if classifier_floor:
                fl = binary_test(classifier_inputs(halves[0], kind), classifier_inputs(halves[1], kind), cfg,
                                 seeds=seeds, desc=f"{m} reference halves")
                r["reference_halves"] = {k: fl[k] for k in ("auc_mean", "auc_std", "jsd_mean", "jsd_std", "runs")}
            result.setdefault("classifiers", {})[m] = r
            timing[m] = time.perf_counter() - t
    if "multiclass" in metrics:
        t = time.perf_counter()
        mcfg = replace(multiclass or MulticlassConfig(), device=device)
        samples = {label: classifier_inputs(gen_f, "low")}
        for k, d in others.items():
            samples[k] = classifier_inputs(compute_features(d.showers, d.incident_energies, geo), "low")
        result["multiclass"] = multiclass_test(samples, classifier_inputs(ref_f, "low"), mcfg, seeds=seeds)
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
            if plots:
                t = time.perf_counter()
                images = _draw(tmp, gen_f, ref_f, hist_results, result, corr, label)
                timing["plots"] = time.perf_counter() - t
            timing["total"] = time.perf_counter() - t_start
            result["plots"] = [name for _, name in images]
            write_metrics_json(tmp / "metrics.json", result)
            write_html(tmp, result, images)
        result["report_dir"] = str(out)
    else:
        timing["total"] = time.perf_counter() - t_start
    return result


def _draw(tmp: Path, gen_f, ref_f, hist_results, result, corr, label) -> list[tuple[str, str]]:
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
        P.plot_average_showers(ref_f.geometry, gen_f.voxels.mean(axis=0), ref_f.voxels.mean(axis=0), str(tmp / "average_showers.png")),
    )
    return images


def _version() -> str:
    from .. import __version__

    return __version__
