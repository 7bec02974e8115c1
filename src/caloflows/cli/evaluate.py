"""``caloflows evaluate GENERATED.h5 REFERENCE.h5 --geometry NAME --out DIR``: the CaloChallenge
evaluation (review sec. 8) as a report directory (PNGs, metrics.json, report.html)."""

from __future__ import annotations

import sys
import warnings

from . import UserError


def register(sub) -> None:
    # metric names spelled out here so that `caloflows --help` does not import torch
    ALL_METRICS = ("hist", "corr", "fpd", "kpd", "prdc", "cls-low", "cls-low-normed", "cls-logit", "cls-high",
                   "cls-cnn", "multiclass")
    DEFAULT_METRICS = ("hist", "corr", "fpd", "kpd", "prdc")
    p = sub.add_parser(
        "evaluate",
        help="compare generated showers with a Geant4 reference (CaloChallenge metrics, report)",
        description="Compare GENERATED with REFERENCE showers using the CaloChallenge metrics and write a "
        "report directory (PNGs, metrics.json, report.html). Every number is also computed between two "
        "halves of the reference (the Geant4 noise floor).",
    )
    p.add_argument("generated", help="HDF5 file with generated showers")
    p.add_argument("reference", help="HDF5 file with reference (Geant4) showers")
    p.add_argument("--geometry", help="geometry name (ds1-photons, ds1-pions, ds2, ds3, ds2-coarse; "
                   "1-photons, 1-pions, 2, 3) or binning XML; default: from the files")
    p.add_argument("--out", required=True, help="report directory to create (a new or empty directory)")
    p.add_argument("--force", action="store_true",
                   help="replace --out if it is a caloflows report directory holding nothing else")
    p.add_argument("--metrics", default=",".join(DEFAULT_METRICS),
                   help=f"comma-separated subset of {','.join(ALL_METRICS)}; or all (every metric but cls-cnn, "
                   f"the 3D-ResNet classifier for ds2/ds3), fast, default (default: %(default)s)")
    p.add_argument("--seeds", type=int, default=1, help="classifier runs per input set (mean and std; paper: 10)")
    p.add_argument("--device", default="cpu", help="torch device for the classifiers: cpu or cuda")
    p.add_argument("--epochs", type=int, help="classifier epochs, the best validation epoch is kept "
                   "(default: 50 binary, 25 multiclass as in the paper)")
    p.add_argument("--hidden", type=int, help="classifier hidden width (default: 2048 binary, 4096 multiclass)")
    p.add_argument("--classifier-layers", type=int, help="2048-wide layers of the binary DNN (default: 3, the "
                   "official network; 2: the shallower network of earlier caloflows versions)")
    p.add_argument("--compare", action="append", default=[], metavar="FILE",
                   help="another generated sample for the multiclass test (repeatable)")
    p.add_argument("--label", help="name of the generated sample in plots (default: file name)")
    p.add_argument("--max-showers", type=int, help="use only the first N showers of each file")
    p.add_argument("--classifier-floor", action="store_true",
                   help="also train each binary classifier on two halves of the reference (Geant4 AUC floor)")
    p.add_argument("--no-plots", action="store_true", help="write metrics.json and report.html without PNGs")
    p.set_defaults(func=run)


def _print_warning(message, category, filename, lineno, file=None, line=None):
    print(f"caloflows: warning: {message}", file=sys.stderr)


def summary_lines(r: dict) -> list[str]:
    lines = [f"report: {r.get('report_dir')}"]
    h = r.get("histograms")
    if h and h.get("out_of_range_flagged"):
        lines.append(f"  OUT OF RANGE (generated entries outside the histogram range significantly more often than "
                     f"the reference; their separation power ignores them): {', '.join(h['out_of_range_flagged'])}")
    if h:
        for k, v in h["mean_separation_power_by_kind"].items():
            lines.append(f"  mean separation power {k:<10} {v['generated']:.4g}  (Geant4 halves {v['reference_halves']:.4g},"
                         f" scaled to these sizes {v['reference_halves_scaled']:.4g})")
        c = h["eratio_per_energy"]
        lines.append(f"  chi2/NDF E_dep/E_inc per E_inc: {c['chi2']:.1f}/{c['ndf']} = {c['chi2_per_ndf']:.3g}"
                     f"  (Geant4 halves {c.get('reference_halves', {}).get('chi2_per_ndf', float('nan')):.3g})")
    for k in ("fpd", "kpd"):
        if k in r:
            d = r[k]
            scaled = f", scaled to these sizes {d['reference_halves_scaled_x1e3']:.4g}" if k == "fpd" else ""
            lines.append(f"  {k.upper()} x1e3: {d['value_x1e3']:.4g} +- {d['error_x1e3']:.2g}"
                         f"  (Geant4 halves {d['reference_halves_x1e3']:.4g} +- {d['reference_halves_error_x1e3']:.2g}{scaled})")
    if "prdc" in r:
        g, b = r["prdc"]["generated"], r["prdc"]["reference_halves"]
        lines.append("  " + ", ".join(f"{k} {g[k]:.3f} ({b[k]:.3f})" for k in g) + "  (Geant4 halves in brackets)")
    for k, v in r.get("classifiers", {}).items():
        fl = v.get("reference_halves")
        floor = f"  (Geant4 halves AUC {fl['auc_mean']:.4f} +- {fl['auc_std']:.4f})" if fl else ""
        lines.append(f"  {k}: AUC {v['auc_mean']:.4f} +- {v['auc_std']:.4f}, JSD {v['jsd_mean']:.4f}{floor}")
    if "multiclass" in r:
        mc = r["multiclass"]
        lines.append(f"  multiclass: closest to reference {mc['closest_to_reference']}, eq. 42 ok {mc['self_consistent_eq42']}")
    return lines


def run(args) -> int:
    from ..api import evaluate
    from ..evaluation.api import EvaluationError, EvaluationWarning
    from ..evaluation.classifier import ClassifierConfig
    from ..evaluation.multiclass import MulticlassConfig

    if args.seeds < 1 or (args.epochs is not None and args.epochs < 1) or (args.hidden is not None and args.hidden < 1):
        raise UserError("--seeds, --epochs and --hidden must be positive")
    if args.max_showers is not None and args.max_showers < 1:
        raise UserError("--max-showers must be positive")
    if args.classifier_layers is not None and args.classifier_layers < 1:
        raise UserError("--classifier-layers must be positive")
    set_ = {k: v for k, v in (("hidden", args.hidden), ("epochs", args.epochs)) if v is not None}
    bin_set = dict(set_, **({"n_hidden_layers": args.classifier_layers} if args.classifier_layers else {}))
    compare = {f"compare{i + 1}:{p}": p for i, p in enumerate(args.compare)}
    with warnings.catch_warnings():
        warnings.simplefilter("always", EvaluationWarning)
        old = warnings.showwarning
        warnings.showwarning = _print_warning
        try:
            r = evaluate(
                args.generated,
                args.reference,
                args.geometry,
                metrics=args.metrics,
                out=args.out,
                seeds=args.seeds,
                device=args.device,
                classifier=ClassifierConfig(**bin_set),
                multiclass=MulticlassConfig(**set_),
                compare=compare,
                label=args.label,
                max_showers=args.max_showers,
                plots=not args.no_plots,
                classifier_floor=args.classifier_floor,
                force=args.force,
            )
        except EvaluationError as exc:
            raise UserError(str(exc)) from None
        finally:
            warnings.showwarning = old
    print("\n".join(summary_lines(r)))
    return 0
