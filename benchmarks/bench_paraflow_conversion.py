"""Where ParaFlow's cluster count goes wrong, per d bin and per conversion (issue 12, stop 25).

For each trained ParaFlow teacher given on the command line, on a held-out Geant4 file with the
``converted`` flags (``caloflows simulate --detector paraflow``):

* the mean cluster count, width w and R9 per d bin (``paraflow.txt`` figs. 6-9) and the 6 % check
  per (d, b) cell (:func:`caloflows.evaluation.paraflow.cell_agreement`), at the file's (E_inc, d, b);
* for the Geant4 photons that converted in the plate: the model's mean cluster count, share of
  showers with two or more clusters and hot-crystal extent along the bending direction, generated
  with the flag on (models with ``condition_on_conversion``: the law forced to P = 1; study models
  trained with the flag as a third condition column ``conv``: the true flags).

With ``--log-prob FILE...``: the teachers' mean log-likelihood per shower on each file (ParaFlow's
density of the preprocessed shower; with the flag, the mixture over it) and the paired difference
of every model against the first one.

Models with a ``conv`` condition column (the first experiment of stop 25: the flag copied into the
training file's ``conditions``) get their flags drawn from 1 - exp(-7/9 d) for the inclusive numbers.

    python benchmarks/bench_paraflow_conversion.py --heldout geant4_heldout.h5 --out study.json MODEL_DIR...
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import h5py
import numpy as np

D_EDGES = [0.5, 0.75, 1.0, 1.25, 1.5]


def main(argv: list[str] | None = None) -> dict:
    from caloflows.conditions import Conditions
    from caloflows.evaluation.paraflow import cell_agreement, hot_extent, n_clusters, paraflow_observables
    from caloflows.models import load_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--heldout", required=True, help="held-out Geant4 file with 'conditions' (d, b) and 'converted'")
    p.add_argument("--out", required=True, help="results JSON (an existing file is refused without --force)")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--log-prob", nargs="*", default=[], metavar="FILE",
                   help="only: paired held-out log-likelihood of the models on these files")
    p.add_argument("models", nargs="+")
    a = p.parse_args(argv)
    inputs = [os.path.abspath(x) for x in [a.heldout, *a.log_prob]]
    if os.path.abspath(a.out) in inputs:
        sys.exit(f"--out {a.out}: is one of the input files")
    if os.path.exists(a.out) and not a.force:
        sys.exit(f"--out {a.out}: exists (use --force to replace it)")
    if a.log_prob:
        return log_likelihoods(a.models, a.log_prob, a.out)
    with h5py.File(a.heldout, "r") as f:
        s = f["showers"][:].astype(np.float64)
        c = f["conditions"][:]
        conv = f["converted"][:] == 1
        e = f["incident_energies"][:, 0]
    ref_obs = paraflow_observables(s)

    def summary(sh: np.ndarray) -> dict:
        o = paraflow_observables(sh)
        per = {k: [float(o[k][(c[:, 0] >= D_EDGES[i]) & (c[:, 0] < D_EDGES[i + 1])].mean()) for i in range(4)]
               for k in ("n_clusters", "w", "R9")}
        ca = cell_agreement(o, c, ref_obs, c)
        cells = {k: {x: v[x] for x in ("n_within", "n_consistent", "n_outside", "max_abs_relative_difference")}
                 for k, v in ca["observables"].items()}
        return {"per_d_bin_mean": per, "cells_6pct": cells}

    def converted(sh: np.ndarray) -> dict:
        n = n_clusters(sh)
        return {"converted_mean_clusters": float(n.mean()), "converted_share_2plus": float((n >= 2).mean()),
                "converted_hot_extent_rows": float(hot_extent(sh).mean())}

    out: dict = {"d_edges": D_EDGES, "heldout": a.heldout, "n": len(s), "converted_fraction": float(conv.mean()),
                 "geant4": {"per_d_bin_mean": summary(s)["per_d_bin_mean"], **converted(s[conv])}}
    for name in a.models:
        m = load_model(name)
        names = m.condition_spec.names
        with open(f"{name}/history_teacher.json") as fh:
            hist = json.load(fh)
        r: dict = {"config": {k: getattr(m.cfg, k) for k in ("transforms", "hidden", "bins", "condition_on_conversion")},
                   "epochs": len(hist.get("val_loss", hist.get("history", {}).get("val_loss", [])))}
        rng = np.random.default_rng(a.seed + 4)
        if "conv" in names:
            flags = (rng.random(len(c)) < 1 - np.exp(-7 / 9 * c[:, 0])).astype(float)
            g = m.sample(Conditions(e, np.column_stack([c, flags]), names), seed=a.seed, variant="teacher").showers
            gc = m.sample(Conditions(e[conv], np.column_stack([c, conv])[conv], names), seed=a.seed + 1,
                          variant="teacher").showers
            r["flag_drawn_from"] = "1 - exp(-7/9 d)"
        else:
            g = m.sample(Conditions(e, c, names), seed=a.seed, variant="teacher").showers
            gc = None
            if m.cfg.condition_on_conversion:
                law = dict(m.conversion_law)
                m.conversion_law = {**law, "mu0": 1e3, "mu1": 0.0}  # P(conv) = 1: the converted component
                gc = m.sample(Conditions(e[conv], c[conv], names), seed=a.seed + 1, variant="teacher").showers
                m.conversion_law = law
        r.update(summary(np.asarray(g, dtype=np.float64)))
        if gc is not None:
            r.update(converted(np.asarray(gc, dtype=np.float64)))
        out[name] = r
        print(name, json.dumps(r["cells_6pct"]), r.get("converted_mean_clusters"), flush=True)
    _write_json(a.out, out)
    return out


def _write_json(path: str, obj: dict) -> None:
    """Atomic: a temporary file next to ``path`` renamed into place."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def log_likelihoods(models: list[str], files: list[str], out_path: str) -> dict:
    """Mean log p per shower of each model's teacher on each file, and the paired difference
    (same showers) of every model against the first."""
    from caloflows.conditions import Conditions
    from caloflows.io import read_showers
    from caloflows.models import load_model

    out: dict = {"models": models, "files": files}
    for path in files:
        d = read_showers(path)
        cond = Conditions(d.incident_energies, d.conditions, d.condition_names)
        lp = {m: load_model(m).log_prob(d.showers, cond, variant="teacher") for m in models}
        r: dict = {m: {"mean": float(v.mean()), "sem": float(v.std() / np.sqrt(len(v))), "n": len(v)} for m, v in lp.items()}
        for m in models[1:]:
            diff = lp[m] - lp[models[0]]
            r[f"{m} - {models[0]}"] = {"mean": float(diff.mean()), "sem": float(diff.std() / np.sqrt(len(diff)))}
        out[path] = r
        print(path, json.dumps(r), flush=True)
    _write_json(out_path, out)
    return out


if __name__ == "__main__":
    main()
