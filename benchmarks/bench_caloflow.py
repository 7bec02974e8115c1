"""CaloFlow generation speed on this machine (issue 4): teacher vs student, FLOP floor, Geant4.

For the ``quick`` and ``full`` presets on ``ds2-coarse`` (648 voxels, 9 layers) it reports, in
one run:

* generation time per shower (whole chain: flow-I, flow-II, renormalisation, threshold) at
  batch sizes 1, 100 and 10000, for the MAF teacher and the IAF student;
* the student's FLOP floor: ``2 x (flow-I + student parameters)`` multiply-adds per shower
  divided by the matmul rate measured here with a torch matmul of the shape of the student's
  MADE output layer (batch x hidden @ hidden x 23 D), and the measured / floor ratio;
* the speed-up against Geant4 at 10 and 100 GeV, timed in the same run with
  ``benchmarks/bench_geant4.py`` (skipped with a note if it cannot run).

Generation speed does not depend on model quality: the quick model is trained for one epoch
on synthetic showers (:mod:`caloflows.toy_showers`), the full model keeps its initial weights
(student warm-started from the teacher) after fitting the preprocessing constants.

    OMP_NUM_THREADS=1 python benchmarks/bench_caloflow.py                   # everything (one core)
    python benchmarks/bench_caloflow.py --presets quick --no-geant4 --teacher-batches 1 100
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

from caloflows import flows as F
from caloflows.geometry import load_geometry
from caloflows.io import ShowerData, atomic_output
from caloflows.models.caloflow import CaloFlow, CaloFlowConfig
from caloflows.toy_showers import toy_showers


def build_model(preset: str, workdir: str, train: bool) -> CaloFlow:
    g = load_geometry("ds2-coarse")
    cfg = CaloFlowConfig.preset(preset, g)
    inc, sh = toy_showers(g, 3000, seed=0)
    data = ShowerData(inc, sh)
    model = CaloFlow(g, cfg)
    if train:
        one = {"epochs": 1}
        cfg.flow1_train = {**cfg.flow1_train, **one}
        cfg.flow2_train = {**cfg.flow2_train, **one}
        cfg.student_train = {**cfg.student_train, **one}
        model.fit(data, workdir, progress=False)
        model.distill(data, workdir, progress=False)
    else:
        model.fit_constants(data)
        F.init_student_from_teacher(model.student, model.teacher)
        model.trained = {"flow1": True, "teacher": True, "student": True}
    return model


def time_generation(model: CaloFlow, batch: int, student: bool, min_seconds: float, max_reps: int) -> dict:
    e = np.full(batch, 2.0**14)  # 16 GeV; CaloFlow's cost does not depend on E_inc
    model.sample(e[: min(batch, 10)], batch_size=batch, seed=0, student=student)  # warm-up
    times = []
    t_start = time.perf_counter()
    while len(times) < max_reps and (not times or time.perf_counter() - t_start < min_seconds):
        t0 = time.perf_counter()
        model.sample(e, batch_size=batch, seed=len(times) + 1, student=student)
        times.append(time.perf_counter() - t0)
    per = np.array(times) / batch * 1e3
    return {"ms_per_shower": float(np.median(per)), "min_ms_per_shower": float(per.min()), "repetitions": len(times)}


def matmul_rate(batch: int, hidden: int, out: int, reps: int = 3) -> float:
    """FLOP/s of a float32 (batch x hidden) @ (hidden x out) matmul, best of ``reps``."""
    a = torch.randn(batch, hidden)
    b = torch.randn(hidden, out)
    torch.matmul(a, b)
    best = np.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * batch * hidden * out / best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["quick", "full"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 100, 10000])
    p.add_argument("--teacher-batches", nargs="*", type=int, default=None,
                   help="default: same as --batches; give the flag without values to skip the teacher")
    p.add_argument("--min-seconds", type=float, default=3.0, help="repeat each timing at least this long")
    p.add_argument("--max-reps", type=int, default=20)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: one core, like the Geant4 timing)")
    p.add_argument("--no-geant4", action="store_true")
    p.add_argument("--g4-n", nargs=2, type=int, default=[10, 3], help="Geant4 showers at 10 and 100 GeV")
    p.add_argument("--out", default="bench_caloflow.json")
    p.add_argument("--workdir", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import tempfile

    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_caloflow_")
    res: dict = {"threads": args.threads, "torch": torch.__version__, "presets": {}}
    for preset in args.presets:
        t0 = time.time()
        model = build_model(preset, os.path.join(workdir, preset), train=(preset == "quick"))
        model.to("cpu")
        params = model.parameter_counts()
        r: dict = {"parameters": params, "setup_seconds": time.time() - t0, "student": {}, "teacher": {}}
        for b in args.batches:
            r["student"][b] = time_generation(model, b, True, args.min_seconds, args.max_reps)
            print(f"[{preset}] student batch {b:>6}: {r['student'][b]['ms_per_shower']:.4f} ms/shower", flush=True)
        for b in (args.batches if args.teacher_batches is None else args.teacher_batches):
            r["teacher"][b] = time_generation(model, b, False, args.min_seconds, max(1, args.max_reps // 10))
            print(f"[{preset}] teacher batch {b:>6}: {r['teacher'][b]['ms_per_shower']:.4f} ms/shower", flush=True)
        # FLOP floor of the student at the largest batch
        bmax = max(args.batches)
        D = model.geometry.n_voxels
        rate = matmul_rate(bmax, model.cfg.student_hidden, D * (3 * model.cfg.bins - 1))
        flops = 2.0 * (params["flow1"] + params["student"])
        floor_ms = flops / rate * 1e3
        meas = r["student"][bmax]["ms_per_shower"]
        r["flop_floor"] = {"flops_per_shower": flops, "matmul_gflops": rate / 1e9, "floor_ms_per_shower": floor_ms,
                           "measured_ms_per_shower": meas, "measured_over_floor": meas / floor_ms, "batch": bmax}
        print(f"[{preset}] student FLOP floor {floor_ms:.4f} ms/shower at {rate / 1e9:.1f} GFLOP/s; "
              f"measured / floor = {meas / floor_ms:.2f}", flush=True)
        res["presets"][preset] = r
    # Geant4 in the same run
    if not args.no_geant4:
        try:
            sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
            from bench_geant4 import geant4_seconds_per_shower

            g4 = {}
            for e, n in zip((10.0, 100.0), args.g4_n):
                g4[e] = geant4_seconds_per_shower(e, n=n)
                print(f"Geant4 {e:g} GeV: {g4[e] * 1e3:.1f} ms/shower", flush=True)
            res["geant4_seconds_per_shower"] = g4
            for preset, r in res["presets"].items():
                r["speedup_vs_geant4"] = {
                    f"{who}_batch{b}_{e:g}GeV": g4[e] / (r[who][b]["ms_per_shower"] / 1e3)
                    for who in ("student", "teacher") for b in r[who] for e in g4
                }
        except Exception as exc:  # noqa: BLE001 - optional part
            res["geant4_skipped"] = f"{type(exc).__name__}: {exc}"
            print(f"Geant4 part skipped: {res['geant4_skipped']}", flush=True)
    with atomic_output(args.out) as tmp:
        with open(tmp, "w") as f:
            json.dump(res, f, indent=1)
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
