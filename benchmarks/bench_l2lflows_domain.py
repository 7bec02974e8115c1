"""L2LFlows voxel inputs vs the spline domain, and diffuse generated layers (issue 15).

zuko's rational-quadratic splines act on ``[-bound, bound]`` and are the identity outside it.  With
the per-voxel standardisation of the logit voxels (``voxel_standardise=true``, the old default) a
hit in a sparse back layer of Geant4 ds2 lands 7-27 standard deviations above the empty-voxel
peak, outside the domain of 5: the causal flow cannot model it and samples a *diffuse* layer (its
energy spread over nearly every voxel).  This script measures both sides, per layer:

* ``--train FILE``: the fraction of hit voxels (above the readout threshold) whose flow input lies
  outside the spline domain, for the old inputs (standardised, domain ``bound``) and for the
  presets' inputs (``voxel_standardise=false``, ``voxel_bound=14``), with the preprocessing
  constants fitted on the first ``--n`` showers exactly as training fits them;
* ``--generated FILE ... --reference FILE``: the fraction of non-empty layers with more than
  ``--diffuse`` hit voxels (Geant4 ds2: none beyond layer 20), and the hit spectrum per group of
  layers (``--groups``): hit voxels per shower, median hit energy and the fractions of hits below
  0.5 / 1 / 2 / 4 MeV.  Geant4 ds2 hits are mostly above one minimum-ionising crossing (~3 MeV
  after the 1/0.033 scaling) in every layer; a diffuse generated layer shows as many sub-MeV hits.

    python benchmarks/bench_l2lflows_domain.py --train g4_train10k_ds2.h5 --reference g4_test6k_ds2.h5 \
        --generated l2l10k_gen.h5 l2l10k_b14_gen.h5 --out benchmarks/results/l2lflows_domain.json
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from caloflows.geometry import load_geometry
from caloflows.io import ShowerData, read_showers
from caloflows.layerdata import MemoryColumns
from caloflows.models.l2lflows import L2LFlows, L2LFlowsConfig, compute_constants


def outside_domain(data: ShowerData, geometry, cfg: L2LFlowsConfig, seed: int = 0) -> list[float]:
    """Per layer: the fraction of hit voxels whose causal-flow input lies outside the spline domain."""
    model = L2LFlows(geometry, cfg)
    model.set_constants(compute_constants(MemoryColumns(data, geometry), cfg)[0])
    x = torch.as_tensor(np.asarray(data.showers, dtype=np.float64))
    hit = x > geometry.threshold_mev
    x = x + cfg.voxel_noise_kev * 1e-3 * torch.rand(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    y = model.voxels_forward(x, 0, geometry.n_voxels)
    return fraction_per_layer((y.abs() > cfg.voxel_spline_bound) & hit, hit, geometry)


def fraction_per_layer(out: torch.Tensor, hit: torch.Tensor, geometry) -> list[float]:
    """Per layer: the fraction of the ``hit`` voxels that are ``out`` (NaN for a layer without hits)."""
    res = []
    for i in range(geometry.n_layers):
        sl = geometry.layer_slice(i)
        n_hit = int(hit[:, sl].sum())
        res.append(float(out[:, sl].sum()) / n_hit if n_hit else float("nan"))
    return res


def domain_report(train: str, n: int, geometry, outside, configs: dict, digits: int = 2) -> dict:
    """Per-layer fractions of hit voxels outside the spline domain, ``outside(data, geometry, cfg)``,
    for each labelled config, on the first ``n`` showers of ``train`` (printed, one line per config)."""
    full = read_showers(train)
    d = ShowerData(full.incident_energies[:n], np.asarray(full.showers[:n]))
    res: dict = {"train": train, "n_showers": len(d)}
    for label, cfg in configs.items():
        res[label] = outside(d, geometry, cfg)
        print(label, " ".join(f"{x:.{digits}f}" for x in res[label]))
    return res


def diffuse_layers(showers: np.ndarray, geometry, n_diffuse: int) -> list[float]:
    """Per layer: the fraction of non-empty layers with more than ``n_diffuse`` hit voxels."""
    res = []
    for i in range(geometry.n_layers):
        occ = (np.asarray(showers[:, geometry.layer_slice(i)]) > 0).sum(1)
        nz = occ > 0
        res.append(float((occ[nz] > n_diffuse).mean()) if nz.any() else float("nan"))
    return res


HIT_EDGES_MEV = (0.5, 1.0, 2.0, 4.0)


def hit_spectrum(showers: np.ndarray, geometry, groups: list[tuple[int, int]]) -> dict:
    """Per layer group ``(first, last)``: hit voxels per shower, median hit energy (MeV) and the
    fractions of the hits below each of :data:`HIT_EDGES_MEV`."""
    li = geometry.layer_index
    out = {}
    for lo, hi in groups:
        x = np.asarray(showers[:, (li >= lo) & (li <= hi)])
        h = x[x > 0]
        out[f"{lo}-{hi}"] = {"hits_per_shower": float((x > 0).sum(1).mean()),
                             "median_mev": float(np.median(h)) if h.size else float("nan"),
                             **{f"below_{e:g}_mev": float((h < e).mean()) if h.size else float("nan")
                                for e in HIT_EDGES_MEV}}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--geometry", default="ds2")
    ap.add_argument("--train", help="training file: the causal-flow inputs outside the spline domain")
    ap.add_argument("--n", type=int, default=3000, help="showers of --train used (default 3000)")
    ap.add_argument("--reference", help="Geant4 file for the diffuse-layer fractions")
    ap.add_argument("--generated", nargs="*", default=[], help="generated files for the diffuse-layer fractions")
    ap.add_argument("--diffuse", type=int, default=30, help="hit voxels above which a layer counts as diffuse")
    ap.add_argument("--groups", default="0-4,5-14,15-23,24-30,31-44", help="layer groups of the hit spectrum")
    ap.add_argument("--out")
    a = ap.parse_args()
    groups = [tuple(int(x) for x in grp.split("-")) for grp in a.groups.split(",")]
    g = load_geometry(a.geometry)
    res: dict = {"geometry": g.name, "layers": list(range(g.n_layers))}
    if a.train:
        old = L2LFlowsConfig.preset("quick", g).override(["voxel_standardise=true", "voxel_bound=null"])
        new = L2LFlowsConfig.preset("quick", g)
        res["hits_outside_spline_domain"] = domain_report(a.train, a.n, g, outside_domain, {
            f"standardised, domain {old.voxel_spline_bound:g} (old)": old,
            f"logit as it is, domain {new.voxel_spline_bound:g} (presets)": new})
    if a.reference or a.generated:
        res["diffuse_layer_fraction"] = {"n_diffuse": a.diffuse}
        res["hit_spectrum"] = {}
        for f in ([a.reference] if a.reference else []) + list(a.generated):
            x = np.asarray(read_showers(f).showers)
            v = diffuse_layers(x, g, a.diffuse)
            res["diffuse_layer_fraction"][f] = v
            res["hit_spectrum"][f] = hit_spectrum(x, g, groups)  # type: ignore[arg-type]
            print(f, " ".join(f"{x:.2f}" for x in v))
            for grp, d in res["hit_spectrum"][f].items():
                print(f"  layers {grp}: " + " ".join(f"{k} {v:.3g}" for k, v in d.items()))
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()
