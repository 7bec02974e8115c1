"""ParaFlow sampling on the lean path vs zuko's inverse (issue 13), alternated in one process.

``model.sample`` of a trained ParaFlow model (teacher and student) with
``caloflows.flows.lean_sampling(True / False)`` alternating call by call, at several batch
sizes, conditions cycled from a held-out Geant4 file; median ms per shower of each path::

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/bench_paraflow_lean.py MODEL_DIR HELD_OUT.h5 \\
        --out benchmarks/results/paraflow_lean_vs_zuko.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("held_out", help="Geant4 ParaFlow file whose (E_inc, d, b) are cycled")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 100, 1000, 10000])
    p.add_argument("--variants", nargs="+", default=["teacher", "student"])
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    if a.out.exists():
        raise SystemExit(f"bench_paraflow_lean: {a.out} exists")
    import torch

    from caloflows import flows as F
    from caloflows.conditions import Conditions
    from caloflows.io import read_showers
    from caloflows.models import load_model

    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    m = load_model(a.model)
    ref = read_showers(a.held_out)
    cond = Conditions(ref.incident_energies, ref.conditions, ref.condition_names)
    res: dict = {"model": a.model, "threads": 1, "load_before": os.getloadavg(), "ms_per_shower": {}}
    for v in a.variants:
        for bs in a.batches:
            c = cond[np.arange(bs) % len(cond)]
            reps = 5 if bs <= 100 else (3 if bs <= 1000 else 2)
            ts: dict[bool, list[float]] = {True: [], False: []}
            for r in range(reps):
                for lean in (False, True):
                    with F.lean_sampling(lean):
                        t = time.perf_counter()
                        m.sample(c, batch_size=bs, seed=r, variant=v)
                        ts[lean].append(time.perf_counter() - t)
            z, le = (1e3 * float(np.median(ts[k])) / bs for k in (False, True))
            res["ms_per_shower"][f"{v}_batch{bs}"] = {"zuko": z, "lean": le, "repeats": reps}
            print(f"{v} batch {bs}: zuko {z:.3f} lean {le:.3f} ms/shower ({z / le:.2f}x)", flush=True)
    res["load_after"] = os.getloadavg()
    a.out.write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
