"""The report directory: PNGs, ``metrics.json`` and a self-contained ``report.html``.

The report is built in a temporary directory next to the target and renamed into place only
when complete (:class:`ReportDirectory`), so a failed run never leaves a complete-looking report.
The HTML page embeds every plot as base64 and uses inline CSS only: it reads offline.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np

from .histograms import OUT_OF_RANGE_Z

__all__ = ["ReportDirectory", "to_jsonable", "write_metrics_json", "write_html"]


class ReportDirectory:
    """Context manager: yields a temporary directory, renamed to ``out`` on success.

    The temporary directory carries the report marker (:data:`caloflows.outputs.REPORT_MARKER`).
    An existing ``out`` is replaced only if :func:`caloflows.outputs.check_report_dir` allows it
    (``force`` and a caloflows report holding nothing else), and only after the new report is
    complete; on error the temporary directory is removed and ``out`` is left untouched.
    """

    def __init__(self, out: str | os.PathLike, *, force: bool = False):
        self.out = Path(out)
        self.force = force

    def __enter__(self) -> Path:
        from ..outputs import REPORT_MARKER, check_report_dir, temp_prefix

        check_report_dir(self.out, force=self.force)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(self.out.name), suffix=".tmp", dir=self.out.parent))
        from .. import __version__

        (self.tmp / REPORT_MARKER).write_text(json.dumps({"written_by": "caloflows evaluate",
                                                          "caloflows_version": __version__}) + "\n")
        return self.tmp

    def __exit__(self, et, ev, tb) -> Literal[False]:
        from ..outputs import replace_dir

        if et is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp, 0o777 & ~umask)  # mkdtemp creates 0700; a report is meant to be shared
        try:
            replace_dir(self.tmp, self.out, force=self.force)
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        return False


def to_jsonable(obj):
    """numpy arrays/scalars -> lists/floats, NaN/inf -> None (strict JSON), recursively."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    return obj


def write_metrics_json(path: str | os.PathLike, metrics: dict) -> None:
    Path(path).write_text(json.dumps(to_jsonable(metrics), indent=1, allow_nan=False))


# ---------------------------------------------------------------------- HTML
CSS = """
body{font-family:sans-serif;max-width:1300px;margin:auto;padding:1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em 0;font-size:13px}
td,th{border:1px solid #bbb;padding:2px 8px;text-align:right}
th{background:#eee} td.l,th.l{text-align:left}
img{max-width:100%;border:1px solid #ddd;margin:4px 0}
.warn{background:#fff3cd;border:1px solid #e0c060;padding:6px;margin:4px 0}
h2{border-bottom:2px solid #ccc;margin-top:1.5em}
"""


def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, (int, np.integer)):
        return str(v)
    if isinstance(v, (float, np.floating)):
        if not math.isfinite(v):
            return "–"
        return f"{v:.{digits}g}"
    return html.escape(str(v))


def _table(header: list[str], rows: list[list], left: int = 1) -> str:
    h = "".join(f"<th class='l'>{html.escape(c)}</th>" if i < left else f"<th>{html.escape(c)}</th>"
                for i, c in enumerate(header))
    body = []
    for r in rows:
        cells = "".join(f"<td class='l'>{_fmt(c)}</td>" if i < left else f"<td>{_fmt(c)}</td>" for i, c in enumerate(r))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{h}</tr>{''.join(body)}</table>"


def _img(directory: Path, name: str, title: str) -> str:
    data = base64.b64encode((directory / name).read_bytes()).decode()
    return f"<h3>{html.escape(title)}</h3><img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>"


def write_html(directory: Path, metrics: dict, images: list[tuple[str, str]]) -> None:
    """Write ``report.html`` into ``directory``: summary and metric tables, then every plot."""
    m = to_jsonable(metrics)
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>caloflows evaluation</title>"
             f"<style>{CSS}</style></head><body><h1>caloflows evaluation report</h1>"]
    inp = m.get("inputs", {})
    parts.append(_table(["", "value"], [
        ["generated", inp.get("generated")], ["reference", inp.get("reference")],
        ["geometry", inp.get("geometry")], ["showers (generated / reference)",
                                            f"{inp.get('n_generated')} / {inp.get('n_reference')}"],
        ["voxel threshold [MeV]", inp.get("threshold_mev")], ["caloflows", m.get("caloflows_version")],
        ["metrics", ", ".join(m.get("metrics_run", []))], ["time [s]", m.get("timing_s", {}).get("total")],
    ]))
    for w in m.get("warnings", []):
        parts.append(f"<div class='warn'>&#9888; {html.escape(w)}</div>")
    flagged = (m.get("histograms") or {}).get("out_of_range_flagged") or []
    if flagged:
        parts.append("<div class='warn'>&#9888; <b>Out of range:</b> the generated sample has significantly more "
                     "entries outside the histogram range than the reference for "
                     f"{html.escape(', '.join(flagged))}. The separation power ignores these entries, so it can "
                     "look small for a gross defect; see the out-of-range columns below.</div>")
    parts.append("<h2>Summary</h2>")
    parts.append(_table(["metric", "generated vs reference", "reference half vs half (Geant4 floor)",
                         "floor scaled to the sample sizes"], _summary_rows(m)))
    parts.append("<p>The floor is computed between two random halves of the reference. Separation powers and "
                 "the FPD of finite samples grow like 1/N<sub>1</sub> + 1/N<sub>2</sub>; the last column rescales "
                 f"the halves' value by {_fmt((m.get('inputs') or {}).get('floor_scale'))} to the sizes of the "
                 "generated-vs-reference comparison.</p>")
    if "histograms" in m:
        h = m["histograms"]
        sp = h["separation_power"]
        order = sorted(sp, key=lambda k: not sp[k].get("out_of_range_flag"))  # flagged first
        rows = [[k, v["separation_power"], v["reference_halves"], v.get("out_of_range_generated"),
                 v.get("out_of_range_reference"), "FLAG" if v.get("out_of_range_flag") else ""]
                for k, v in ((k, sp[k]) for k in order)]
        parts.append("<h2>Separation powers (review eq. 39)</h2>")
        parts.append("<p>Out of range: fraction of entries outside the histogram range (under- plus overflow), "
                     "which the separation power ignores; FLAG: generated fraction above the reference's by more "
                     f"than {OUT_OF_RANGE_Z:g} standard errors. S is undefined (–) when a histogram has no entry in range.</p>")
        parts.append(_table(["feature", "S gen vs ref", "S ref half vs half", "out of range gen", "out of range ref",
                             ""], rows))
        pe = h.get("eratio_separation_per_energy")
        if pe:
            parts.append("<h2>Separation power of E<sub>tot</sub>/E<sub>inc</sub> per incident energy (official, "
                         "dataset 1)</h2>")
            rows = [[f"{g['e_inc_mev'] / 1e3:.4g} GeV", g["n_gen"], g["n_ref"], g["separation_power"],
                     g["reference_halves"], g["out_of_range_generated"], g["out_of_range_reference"],
                     "FLAG" if g["out_of_range_flag"] else ""] for g in pe]
            parts.append(_table(["E_inc", "N gen", "N ref", "S gen vs ref", "S ref halves", "out of range gen",
                                 "out of range ref", ""], rows))
        c = h.get("eratio_per_energy")
        if c:
            parts.append("<h2>E<sub>dep</sub>/E<sub>inc</sub> per incident energy (CaloFlow table 4, figs 7-10)</h2>")
            rows = [[f"{g['e_inc_min_mev'] / 1e3:.4g}-{g['e_inc_max_mev'] / 1e3:.4g} GeV", g["n_gen"], g["n_ref"],
                     g["chi2"], g["ndf"], g["mean_ratio"], g["rms_ratio"], g.get("chi2_reference_halves")]
                    for g in c["groups"]]
            parts.append(_table(["E_inc", "N gen", "N ref", "chi2", "NDF", "mean gen/ref", "RMS gen/ref",
                                 "chi2 ref halves"], rows))
    if "classifiers" in m:
        parts.append("<h2>Binary classifiers (review sec. 8.3)</h2>")
        rows = [[k, v["auc_mean"], v["auc_std"], v["jsd_mean"], v["jsd_std"], len(v["runs"]),
                 (v.get("reference_halves") or {}).get("auc_mean")] for k, v in m["classifiers"].items()]
        parts.append(_table(["input set", "AUC mean", "AUC std", "JSD mean", "JSD std", "seeds",
                             "AUC ref halves"], rows))
    if "multiclass" in m:
        mc = m["multiclass"]
        parts.append("<h2>Multiclass classifier (review eqs. 41, 42)</h2>")
        rows = [[n, mc["log_posterior_reference"][n], mc["log_posterior_reference_std"][n]] for n in mc["models"]]
        parts.append(_table(["model", "LP(model | reference)", "std over seeds"], rows))
        parts.append(f"<p>closest to reference: <b>{html.escape(mc['closest_to_reference'])}</b>; "
                     f"eq. 42 self-consistency per seed: {html.escape(str(mc['self_consistent_eq42']))}</p>")
    for title, name in images:
        parts.append(_img(directory, name, title))
    parts.append("</body></html>")
    (directory / "report.html").write_text("\n".join(parts), encoding="utf-8")


def _summary_rows(m: dict) -> list[list]:
    rows: list[list] = []
    h = m.get("histograms")
    if h and h.get("out_of_range_flagged"):
        rows.append(["OUT OF RANGE (flagged features)", ", ".join(h["out_of_range_flagged"]), None])
    if h:
        for kind, v in h["mean_separation_power_by_kind"].items():
            rows.append([f"mean S, {kind}", v["generated"], v["reference_halves"], v.get("reference_halves_scaled")])
        c = h.get("eratio_per_energy")
        if c:
            rows.append(["chi2/NDF E_dep/E_inc per E_inc", f"{c['chi2']:.1f}/{c['ndf']} = {c['chi2_per_ndf']:.3g}"
                         if c["chi2_per_ndf"] is not None else None,
                         (c.get("reference_halves") or {}).get("chi2_per_ndf")])
    if "correlations" in m:
        rows.append(["max |PCC gen - PCC ref|", m["correlations"]["max_abs_difference"],
                     m["correlations"].get("reference_halves_max_abs_difference")])
    for key, label in (("fpd", "FPD x 1e3"), ("kpd", "KPD x 1e3")):
        if key in m:
            d = m[key]
            rows.append([label, f"{_fmt(d['value_x1e3'])} ± {_fmt(d['error_x1e3'])}",
                         f"{_fmt(d.get('reference_halves_x1e3'))} ± {_fmt(d.get('reference_halves_error_x1e3'))}",
                         d.get("reference_halves_scaled_x1e3")])
    if "prdc" in m:
        for k, v in m["prdc"]["generated"].items():
            rows.append([k, v, (m["prdc"].get("reference_halves") or {}).get(k)])
    for k, v in m.get("classifiers", {}).items():
        fl = v.get("reference_halves")
        rows.append([f"AUC {k}", f"{_fmt(v['auc_mean'])} ± {_fmt(v['auc_std'])}",
                     f"{_fmt(fl['auc_mean'])} ± {_fmt(fl['auc_std'])}" if fl else None])
    return rows
