"""CaloFlow flow-I alone on Geant4 ds2-coarse (issue 15): what limits the deep layers' energies.

The layer energies of a generated CaloFlow shower are flow-I's: flow-II only distributes each
E_i over its layer's voxels, and the threshold-aware generation cut (``voxel_cut_mev = c``,
L2LFlows eqs. B.8-B.9) keeps E_i whole unless E_i < c, which empties the layer.  So the E_layer
histograms of the full model (and the empty-layer fractions) follow from flow-I's samples with
the rule ``E_i < c -> 0``, and flow-I costs seconds to train where flow-II costs a quarter of an
hour.  This script trains flow-I variants (training showers, epochs, width, the empty-layer
dequantisation ``empty_layer_noise_mev``), samples one set of layer energies per held-out Geant4
shower at its E_inc, and reports per layer the separation power of E_layer (the evaluation's
own binning, :func:`caloflows.evaluation.histograms.feature_bins`: 39 log bins above the
threshold, empty layers excluded as in the report) and the empty-layer fraction, next to the
same numbers for the two halves of the held-out file (the Geant4-vs-Geant4 floor).

Runs are ``NAME:N_TRAIN[:KEY=VALUE;KEY=VALUE...]`` with CaloFlow settings (dotted keys reach the
training dicts), on top of the ``quick`` preset; ``--cut`` is the generation cut c (MeV) unless a
run sets ``voxel_cut_mev`` itself::

    OMP_NUM_THREADS=2 python benchmarks/bench_flow1.py \\
        --train /data/g4_train10k_ds2-coarse.h5 --test /data/g4_test6k_ds2-coarse.h5 --cut 0.5 \\
        --runs quick:3000 quick:10000 ep100:10000:flow1_train.epochs=100 \\
        --out benchmarks/results/flow1_ds2coarse.json

``--family energy`` does the same for the energy distribution flow ``p(E_0..E_44 | E_inc)`` of
L2LFlows (appendix B.1), iCaloFlow (flow-1) and SuperCalo (FLOW-1) on the 45 fine layers of ds2
(L2LFlows ``quick`` preset + overrides, e.g. ``edf_train.epochs=100`` or SuperCalo's
``edf_hidden=[64,64]``); a layer below the readout threshold ends empty (B.3)::

    OMP_NUM_THREADS=1 python benchmarks/bench_flow1.py --family energy \\
        --train /data/g4_train10k_ds2.h5 --test /data/g4_test6k_ds2.h5 \\
        --runs quick:3000 e100:3000:edf_train.epochs=100 --out benchmarks/results/energy_flow_ds2.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def parse_run(spec: str) -> dict:
    """``NAME:N_TRAIN[:KEY=VALUE;...]`` -> {name, n_train, overrides}."""
    parts = spec.split(":", 2)
    if len(parts) < 2:
        raise SystemExit(f"bench_flow1: run {spec!r} is not NAME:N_TRAIN[:KEY=VALUE;...]")
    over = [kv for kv in parts[2].split(";") if kv] if len(parts) == 3 else []
    return {"name": parts[0], "n_train": int(parts[1]), "overrides": over}


def apply_layer_cut(energies: np.ndarray, cut: float) -> np.ndarray:
    """The generation cut seen at layer level: a layer whose energy is below ``cut`` ends empty
    (no voxel of it can carry ``cut``), any other layer keeps its energy exactly."""
    return np.where(energies < cut, 0.0, energies)


def compare_layers(gen: np.ndarray, ref: np.ndarray, geometry, einc_gen: np.ndarray, einc_ref: np.ndarray) -> dict:
    """Per layer: E_layer separation power (report binning, non-empty layers) and empty fractions;
    and the separation power of E_dep / E_inc."""
    from caloflows.evaluation.histograms import feature_bins, hist_counts, separation_power

    out = {"E_layer": [], "empty_gen": [], "empty_ref": []}
    for i in range(ref.shape[1]):
        edges, _ = feature_bins(f"E_layer/{i}", ref[:, i], geometry)
        hg, hr = hist_counts(gen[:, i], edges)[0], hist_counts(ref[:, i], edges)[0]
        out["E_layer"].append(round(separation_power(hg, hr), 5))
        out["empty_gen"].append(round(float((gen[:, i] <= 0).mean()), 5))
        out["empty_ref"].append(round(float((ref[:, i] <= 0).mean()), 5))
    g, r = gen.sum(1) / np.ravel(einc_gen), ref.sum(1) / np.ravel(einc_ref)
    edges, _ = feature_bins("E_ratio", r, geometry)
    out["E_ratio"] = round(separation_power(hist_counts(g, edges)[0], hist_counts(r, edges)[0]), 5)
    return out


def _history(directory: Path, name: str, info: dict, cpu: float, wall: float) -> dict:
    hist = json.loads((directory / f"history_{name}.json").read_text())
    return {"train_cpu_s": round(cpu, 1), "train_wall_s": round(wall, 1), "epochs": info["epochs"],
            "val_loss_first": hist["val_loss"][0], "val_loss_best": float(np.min(hist["val_loss"])),
            "train_loss_last": hist.get("train_loss", [None])[-1]}


def train_caloflow_flow1(data, g, overrides: list[str], einc: np.ndarray, a) -> tuple[np.ndarray, float, dict]:
    """CaloFlow's flow-I (quick preset + overrides, generation cut ``--cut``) trained on ``data``;
    one set of layer energies per held-out E_inc."""
    import torch

    from caloflows import flows as F
    from caloflows.models.caloflow import CaloFlow, CaloFlowConfig
    from caloflows.training.distributed import DistContext
    from caloflows.training.loop import ArraySource

    cfg = CaloFlowConfig.preset("quick", g).override([f"voxel_cut_mev={a.cut}"] + overrides).replace_train(seed=a.seed)
    model = CaloFlow(g, cfg)
    arrays, params = model.training_arrays(data)
    with tempfile.TemporaryDirectory() as tmp:
        c0, t0 = time.process_time(), time.time()
        model.fit_constants(arrays, seed=int(cfg.flow1_train.get("seed", 0)))
        info = model.train_network("flow1", F.LogProb(model.flow1), ArraySource(np.asarray(arrays.showers, np.float32)),
                                   model._inputs(arrays, params, "flow1"), Path(tmp), cfg.flow1_train,
                                   DistContext(), norm=g.n_layers, progress=False)
        out = _history(Path(tmp), "flow1", info, time.process_time() - c0, time.time() - t0)
    torch.set_num_threads(1)
    t1 = time.time()
    E = model.sample_layer_energies(torch.as_tensor(einc), generator=torch.Generator().manual_seed(a.seed + 1)).numpy()
    out["sample_s"] = round(time.time() - t1, 1)
    torch.set_num_threads(a.threads)
    return E, float(model.generation_cut or 0.0), out


def train_energy_flow(data, g, overrides: list[str], einc: np.ndarray, a) -> tuple[np.ndarray, float, dict]:
    """The energy distribution flow of L2LFlows / iCaloFlow flow-1 / SuperCalo FLOW-1 (L2LFlows
    appendix B.1; L2LFlows quick preset + overrides, e.g. ``edf_train.epochs=100``) trained on
    ``data``; a layer below the geometry's readout threshold ends empty (B.3)."""
    import torch

    from caloflows.models.l2lflows import L2LFlows, L2LFlowsConfig

    cfg = L2LFlowsConfig.preset("quick", g).override(overrides)
    model = L2LFlows(g, cfg)
    with tempfile.TemporaryDirectory() as tmp:
        c0, t0 = time.process_time(), time.time()
        summary = model.train(data, tmp, layers=[], energy=True, progress=False)
        out = _history(Path(tmp), "energy_flow", summary["energy_flow"], time.process_time() - c0, time.time() - t0)
    torch.set_num_threads(1)
    t1 = time.time()
    ef = model.energy_flow
    E = ef.sample_energies(torch.as_tensor(einc), model.energy_consts, model.cfg.max_ratio, model.cfg.max_resample,
                           torch.Generator().manual_seed(a.seed + 1)).numpy()
    out["sample_s"] = round(time.time() - t1, 1)
    torch.set_num_threads(a.threads)
    return E, float(g.threshold_mev), out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", required=True, type=Path)
    p.add_argument("--test", required=True, type=Path)
    p.add_argument("--runs", nargs="+", required=True)
    p.add_argument("--cut", type=float, default=0.5, help="generation cut c (MeV): E_i < c -> empty layer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--family", choices=("caloflow", "energy"), default="caloflow",
                   help="caloflow: CaloFlow flow-I on ds2-coarse; energy: the L2LFlows / iCaloFlow / SuperCalo energy flow on ds2")
    p.add_argument("--geometry", default=None, help="default ds2-coarse (caloflow) or ds2 (energy)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)

    import torch

    from caloflows.geometry import load_geometry
    from caloflows.io import read_showers

    torch.set_num_threads(a.threads)
    g = load_geometry(a.geometry or ("ds2-coarse" if a.family == "caloflow" else "ds2"))
    train_all, test = read_showers(a.train), read_showers(a.test)
    if test.showers.shape[1] != g.n_voxels:
        raise SystemExit(f"bench_flow1: {a.test} has {test.showers.shape[1]} voxels, geometry {g.name} {g.n_voxels}")
    ref = g.layer_energies(np.asarray(test.showers, dtype=np.float64))
    einc_np = np.asarray(test.incident_energies, dtype=np.float64).reshape(-1)
    h = len(ref) // 2
    res = json.loads(a.out.read_text()) if a.out.exists() else {}
    res.update({"date": time.strftime("%Y-%m-%d"), "train_file": str(a.train), "test_file": str(a.test),
                "family": a.family, "geometry": g.name,
                "n_test": len(ref), "cut_mev": a.cut, "threads": a.threads, "load_before": os.getloadavg(),
                "geant4_halves": compare_layers(ref[:h], ref[h:2 * h], g, einc_np[:h], einc_np[h:2 * h])})
    res.setdefault("runs", {})

    def save() -> None:
        tmp = a.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(res, indent=1))
        tmp.replace(a.out)

    save()
    train_and_sample = train_caloflow_flow1 if a.family == "caloflow" else train_energy_flow
    for spec in a.runs:
        run = parse_run(spec)
        data = train_all.subset(np.arange(min(run["n_train"], len(train_all))))
        torch.manual_seed(a.seed)
        E, cut, info = train_and_sample(data, g, run["overrides"], einc_np, a)
        r = compare_layers(apply_layer_cut(E, cut), ref, g, einc_np, einc_np)
        res["runs"][spec] = {"n_train": len(data), "overrides": run["overrides"], "cut_mev": cut, **info, **r}
        save()
        print(spec, "E_layer (last 5):", r["E_layer"][-5:], "worst:", int(np.argmax(r["E_layer"])),
              max(r["E_layer"]), f"val {info['val_loss_best']:.3f}", f"{info['train_wall_s']:.0f} s", flush=True)
    print("geant4 halves E_layer (last 5):", res["geant4_halves"]["E_layer"][-5:], "max:",
          max(res["geant4_halves"]["E_layer"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
