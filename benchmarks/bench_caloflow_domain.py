"""CaloFlow flow-II inputs vs the spline domain, and the sparse voxels the flow never generates (issue 15).

The L2LFlows defect of stop 12 (``bench_l2lflows_domain.py``) in CaloFlow's flow-II: the logit voxel
fractions standardised per voxel put the rare hits of sparse voxels -- the outer rings of the first
layer, the last layer -- many standard deviations above the empty-voxel noise, outside the
``[-5, 5]`` domain of zuko's splines, where they are the identity.  The flow then never generates
those hits: Geant4's layer 0 of ds2-coarse has hits in its outer rings, the model none, and its
radial width is too small (``width_r/0``, the worst high-level feature of every CaloFlow model).
This script measures, per layer:

* ``--train FILE``: the fraction of hit voxels whose flow-II input lies outside the spline domain,
  for the standardised inputs (domain ``bound``) and for ``voxel_standardise=false,
  voxel_bound=14``, the preprocessing constants fitted on the first ``--n`` showers as training does;
* ``--reference FILE --generated FILE ...``: the hit occupancy of each radial ring of the layers
  ``--ring-layers`` (fraction of showers with a hit in a voxel of that ring), the mean radial width
  per layer (the evaluation's ``width_r``), and the hit spectrum of ``bench_l2lflows_domain.py``.

    python benchmarks/bench_caloflow_domain.py --geometry ds2-coarse --train g4_train10k_ds2-coarse.h5 \
        --reference g4_test6k_ds2-coarse.h5 --generated cf10k_gen.h5 cf10k_domain_gen.h5 --out domain.json
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from bench_l2lflows_domain import domain_report, fraction_per_layer, hit_spectrum

from caloflows.evaluation.features import compute_features
from caloflows.geometry import load_geometry
from caloflows.io import ShowerData, read_showers
from caloflows.models.caloflow import CaloFlow, CaloFlowConfig


def outside_domain(data: ShowerData, geometry, cfg: CaloFlowConfig, seed: int = 0) -> list[float]:
    """Per layer: the fraction of hit voxels whose flow-II input lies outside the spline domain."""
    model = CaloFlow(geometry, cfg)
    model.fit_constants(data, seed=seed)
    x = torch.as_tensor(np.asarray(data.showers, dtype=np.float64))
    e = torch.as_tensor(np.asarray(data.incident_energies, dtype=np.float64)).ravel()
    y = model.flow2_inputs(x, e, generator=torch.Generator().manual_seed(seed))[0]
    hit = x > geometry.threshold_mev
    return fraction_per_layer((y.abs() > cfg.voxel_spline_bound) & hit, hit, geometry)


def ring_occupancy(showers: np.ndarray, geometry, layer: int) -> dict[str, float]:
    """Radial ring (centre in mm) of ``layer`` -> fraction of its voxels with a hit, over all showers."""
    sl = geometry.layer_slice(layer)
    r = np.round(np.asarray(geometry.r_centers)[sl], 2)
    x = np.asarray(showers[:, sl]) > 0
    return {f"{rr:g}": float(x[:, r == rr].mean()) for rr in np.unique(r)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--geometry", default="ds2-coarse")
    ap.add_argument("--preset", default="medium", help="CaloFlow preset whose preprocessing is measured")
    ap.add_argument("--train", help="training file: the flow-II inputs outside the spline domain")
    ap.add_argument("--n", type=int, default=3000, help="showers of --train used (default 3000)")
    ap.add_argument("--reference", help="Geant4 file for the ring occupancies and widths")
    ap.add_argument("--generated", nargs="*", default=[], help="generated files")
    ap.add_argument("--ring-layers", default="0,8", help="layers whose ring occupancies are reported")
    ap.add_argument("--out")
    a = ap.parse_args()
    g = load_geometry(a.geometry)
    res: dict = {"geometry": g.name, "layers": list(range(g.n_layers))}
    if a.train:
        old = CaloFlowConfig.preset(a.preset, g)
        new = old.override(["voxel_standardise=false", "voxel_bound=14"])
        res["hits_outside_spline_domain"] = domain_report(a.train, a.n, g, outside_domain, {
            f"standardised, domain {old.voxel_spline_bound:g}": old,
            f"logit as it is, domain {new.voxel_spline_bound:g}": new}, digits=3)
    layers = [int(x) for x in a.ring_layers.split(",") if x]
    files = ([a.reference] if a.reference else []) + list(a.generated)
    for f in files:
        s = read_showers(f)
        x = np.asarray(s.showers)
        t = compute_features(x, np.asarray(s.incident_energies).ravel(), g).table()
        entry = {"ring_occupancy": {str(i): ring_occupancy(x, g, i) for i in layers},
                 "mean_width_r": [float(np.nanmean(t[f"width_r/{lid}"])) for lid in
                                  [lay["id"] for lay in g.to_dict()["layers"]]],
                 "hit_spectrum": hit_spectrum(x, g, [(i, i) for i in range(g.n_layers)])}
        res.setdefault("samples", {})[f] = entry
        print(f, "mean width_r", " ".join(f"{w:.2f}" for w in entry["mean_width_r"]))
        for i in layers:
            rings = entry["ring_occupancy"][str(i)]
            print(f"  layer {i} ring occupancy", " ".join(f"{r}:{v:.4f}" for r, v in rings.items()))
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()
