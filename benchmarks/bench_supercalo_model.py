"""SuperCalo generator family: training seconds per stage and generation ms/shower for resampling
factors N (issue 11, paper arXiv:2308.11700 tables V/VI).  Speed only: no quality metrics (those
belong to ``bench_supercalo.py`` on Geant4 data).

Trains the ``quick`` preset (epochs overridden by ``--epochs``) on ``--data`` (default: toy ds2
showers written to a temporary file), then times ``sample_resampled(n, N)`` for every N, with
1 torch thread, the teacher and the student, repeating ``--repeat`` times (median).

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/bench_supercalo_model.py --grouping A --n-train 300 \
        --epochs 1 --n 100 --resample 1 5 10 --out benchmarks/results/supercalo_model_toy.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import numpy as np
import torch

from caloflows.geometry import load_geometry
from caloflows.io import read_showers, write_showers
from caloflows.models.supercalo import SuperCalo, SuperCaloConfig
from caloflows.toy_showers import toy_showers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="training file (default: toy showers)")
    ap.add_argument("--geometry", default="ds2")
    ap.add_argument("--grouping", default="A")
    ap.add_argument("--n-train", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--resample", type=int, nargs="+", default=[1, 5, 10])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="settings applied after --epochs (e.g. flow1_train.epochs=100, so that FLOW-1 is trained)")
    ap.add_argument("--generation-set", action="append", default=[], metavar="KEY=VALUE",
                    help="time the same model a second time with these generation settings, side by side "
                         "(e.g. coarse.voxel_cut_mev=0.5)")
    ap.add_argument("--out")
    a = ap.parse_args()
    torch.set_num_threads(1)
    tmp = tempfile.mkdtemp()
    data = os.path.join(tmp, "train.h5")
    if a.data is None:
        einc, sh = toy_showers(load_geometry(a.geometry), a.n_train, seed=0)
    else:  # the first --n-train showers of the file
        full = read_showers(a.data)
        einc, sh = full.incident_energies[:a.n_train], np.asarray(full.showers[:a.n_train])
    write_showers(data, einc, sh, geometry=a.geometry)
    cfg = SuperCaloConfig.preset("quick", a.geometry).override([f"coarse_graining={a.grouping}"]).replace_train(
        epochs=a.epochs).override(a.set)
    m = SuperCalo(a.geometry, cfg)
    res: dict = {"geometry": a.geometry, "grouping": a.grouping, "data": f"{a.data or 'toy'} x {len(einc)}",
                 "epochs": a.epochs, "settings": a.set, "n_per_call": a.n, "load_before": os.getloadavg()[0], "parameters": m.parameter_counts()}
    t0 = time.perf_counter()
    tr = m.fit(data, os.path.join(tmp, "m"), progress=False)
    res["train_seconds"] = time.perf_counter() - t0
    res["seconds_per_epoch"] = {"coarse." + k: v["seconds_per_epoch"] for k, v in tr["coarse"].items()}
    res["seconds_per_epoch"].update({k: tr[k]["seconds_per_epoch"] for k in ("flow1", "upsampler") if k in tr})
    t0 = time.perf_counter()
    m.fit(data, os.path.join(tmp, "m"), stage="distill", progress=False)
    res["distill_seconds"] = time.perf_counter() - t0
    einc = np.full(a.n, 10_000.0)  # 10 GeV
    res["ms_per_shower"] = {}
    # the upsampling cost scales with the coarse voxels above the cut: record the generated occupancy
    res["nonzero_fine_fraction"] = {"training": float((sh > 0).mean())}
    res["generation_settings"] = a.generation_set
    for label, settings in [("", [])] + ([(f" [{','.join(a.generation_set)}]", a.generation_set)]
                                         if a.generation_set else []):
        m.with_generation_settings(settings)
        for v in ("teacher", "student"):
            for N in a.resample:
                ts = []
                for r in range(a.repeat):
                    t0 = time.perf_counter()
                    out = m.sample_resampled(einc, N, batch_size=a.n, seed=r, variant=v)
                    ts.append(1e3 * (time.perf_counter() - t0) / a.n)
                key = f"{v} N={N}{label}"
                res["ms_per_shower"][key] = statistics.median(ts)
                res["nonzero_fine_fraction"][key] = float((np.asarray(out.showers) > 0).mean())
                print(f"{key}: {statistics.median(ts):.1f} ms/shower (median of {a.repeat})", flush=True)
    res["load_after"] = os.getloadavg()[0]
    print(json.dumps(res, indent=1))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
