"""Generation speed on this machine (issues 4, 13): zuko vs lean vs ONNX Runtime, FLOP floor, Geant4.

For the CaloFlow ``quick`` and ``full`` students on ``ds2-coarse`` (648 voxels, 9 layers) and the
iCaloFlow student (``icaloflow``: preset ``--icaloflow-preset``, default ``full``, on
``--icaloflow-geometry``, default ``ds2-coarse``) it reports, in one run:

* generation time per shower (whole chain: energy flow, voxel flows, post-processing,
  threshold) at batch sizes 1, 100, 1000 and 10000, for the student on three paths side by
  side -- ``zuko`` (the sampling path before issue 13, :func:`caloflows.flows.lean_sampling`
  off), ``lean`` (:mod:`caloflows.lean`, the default) and ``onnxruntime`` (the graph of
  :func:`caloflows.export.export_onnx` run by :class:`caloflows.export.OnnxSampler`) -- for each
  thread count of ``--threads``, and for the CaloFlow MAF teacher (zuko and lean;
  ``--teacher-batches``);
* the CaloFlow student's float32 accuracy: max relative voxel difference against the same chain
  with the student in float64 on a fixed latent (voxels above the threshold);
* the student's FLOP floor: ``2 x`` the multiply-adds of one shower (CaloFlow: flow-I + student
  parameters; iCaloFlow: flow-1 + flow-2 student + (L - 1) x flow-3 student parameters) divided
  by the matmul rate measured here with a torch matmul of the shape of the student's MADE output
  layer, and the measured / floor ratio per path and batch; also the floor of the weights no MADE
  mask fixes to zero (``nonzero``), which the lean path's block-triangular output layer approaches;
* the speed-up against Geant4 at 10 and 100 GeV, timed in the same run with
  ``benchmarks/bench_geant4.py`` (``--g4-n``), or taken from an earlier results JSON
  (``--geant4-json``), and a summary table (``summary`` in the JSON, printed as markdown).

Generation speed does not depend on model quality: the quick CaloFlow model is trained for one
epoch on synthetic showers (:mod:`caloflows.toy_showers`; ``--untrained`` skips that), the full
CaloFlow and the iCaloFlow models keep their initial weights (CaloFlow student warm-started from
the teacher) after fitting the preprocessing constants.

    OMP_NUM_THREADS=1 python benchmarks/bench_caloflow.py                   # everything
    python benchmarks/bench_caloflow.py --geant4-json benchmarks/results/caloflow_quiet_2026-11-27.json
    python benchmarks/bench_caloflow.py --smoke --geant4-json benchmarks/results/caloflow_quiet_2026-11-27.json  # smallest setting
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
from caloflows.export import CaloFlowSampler, OnnxSampler, export_onnx
from caloflows.geometry import load_geometry
from caloflows.io import ShowerData, atomic_output
from caloflows.models.caloflow import CaloFlow, CaloFlowConfig
from caloflows.models.icaloflow import ICaloFlow, ICaloFlowConfig
from caloflows.toy_showers import toy_showers


def build_model(preset: str, workdir: str, train: bool):
    """``quick`` / ``full`` CaloFlow on ds2-coarse, or ``icaloflow`` (see :func:`build_icaloflow`)."""
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
        model.fit(data, workdir, stage="distill", progress=False)
    else:
        model.fit_constants(data)
        F.init_student_from_teacher(model.student, model.teacher)
        model.trained = {"flow1": True, "teacher": True, "student": True}
    return model


def build_icaloflow(preset: str, geometry: str) -> ICaloFlow:
    """An untrained iCaloFlow (constants from toy showers; timing does not depend on the weights)."""
    g = load_geometry(geometry)
    model = ICaloFlow(g, ICaloFlowConfig.preset(preset, g))
    inc, sh = toy_showers(g, 2000, seed=0)
    model.fit_constants(ShowerData(inc, sh))
    model.trained = {k: True for k in model.trained}
    return model


def chain_flops(model, params: dict[str, int]) -> float:
    """``2 x`` the multiply-adds of one shower of the student chain, from per-network ``params``
    (CaloFlow: flow-I + student; iCaloFlow: flow-1 + flow-2 student + (L - 1) x flow-3 student)."""
    if isinstance(model, ICaloFlow):
        L = model.geometry.n_layers
        return 2.0 * (params["energy"] + params["student2"] + (L - 1) * params["student3"])
    return 2.0 * (params["flow1"] + params["student"])


def effective_flops(model) -> float:
    """:func:`chain_flops` counting only weights that no MADE mask fixes to zero (the lean path's
    block-triangular output layer skips most of the masked ones)."""
    return chain_flops(model, {k: F.count_effective_parameters(m) for k, m in model.networks().items()})


def flops_and_shape(model) -> tuple[float, tuple[int, int]]:
    """(FLOPs per shower of the student chain, (hidden, output) of its widest MADE output layer)."""
    flops = chain_flops(model, model.parameter_counts())
    if isinstance(model, ICaloFlow):
        return flops, (int(model.cfg.student_hidden[-1]), model.n * (3 * model.cfg.bins - 1))
    return flops, (int(model.cfg.student_hidden), model.geometry.n_voxels * (3 * model.cfg.bins - 1))


def time_generation(model, batch: int, student: bool, min_seconds: float, max_reps: int,
                    path: str = "lean", ort: OnnxSampler | None = None) -> dict:
    """Median time per shower of ``model.sample`` (``path`` zuko / lean) or of the ONNX sampler."""
    e = np.full(batch, 2.0**14)  # 16 GeV; CaloFlow's cost does not depend on E_inc

    def run(energies, seed):
        if path == "onnxruntime":
            ort.sample(energies, seed=seed, batch_size=batch)
        else:
            model.with_generation_settings([f"student_weights={'int8' if path == 'lean-int8' else 'float32'}"])
            with F.lean_sampling(path != "zuko"):
                model.sample(energies, batch_size=batch, seed=seed, variant="student" if student else "teacher")

    run(e[: min(batch, 10)], 0)  # warm-up
    times = []
    t_start = time.perf_counter()
    while len(times) < max_reps and (not times or time.perf_counter() - t_start < min_seconds):
        t0 = time.perf_counter()
        run(e, len(times) + 1)
        times.append(time.perf_counter() - t0)
    per = np.array(times) / batch * 1e3
    return {"ms_per_shower": float(np.median(per)), "min_ms_per_shower": float(per.min()), "repetitions": len(times),
            "load": os.getloadavg()[0]}


def int8_accuracy(model, n: int = 1000, seed: int = 0) -> dict:
    """The student with ``student_weights=int8`` against float32, same seed: relative difference of
    the voxels non-zero in both (median, 99 %, max) and the fraction of voxels non-zero in one only."""
    e = np.geomspace(1e3, 1e6, n)
    out = {}
    for w in ("float32", "int8"):
        model.with_generation_settings([f"student_weights={w}"])
        out[w] = model.sample(e, batch_size=n, seed=seed, variant="student").showers.astype(np.float64)
    model.with_generation_settings(["student_weights=float32"])
    a, b = out["float32"], out["int8"]
    both = (a > 0) & (b > 0)
    rel = np.abs(a - b)[both] / a[both]
    return {"median_rel": float(np.median(rel)), "q99_rel": float(np.quantile(rel, 0.99)), "max_rel": float(rel.max()),
            "nonzero_in_one_only": float(((a > 0) != (b > 0)).sum() / max(1, (a > 0).sum()))}


@torch.no_grad()
def float32_accuracy(model: CaloFlow, n: int = 1000, seed: int = 0) -> dict:
    """Max relative voxel difference, student in float32 vs float64, same latent (voxels >= threshold)."""
    gen = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, model.geometry.n_layers, dtype=torch.float64, generator=gen)
    z2 = torch.randn(n, model.geometry.n_voxels, dtype=torch.float64, generator=gen)
    einc = torch.as_tensor(np.geomspace(1e3, 1e6, n))
    v32 = CaloFlowSampler(model)(z1, z2.float(), einc).double()
    v64 = CaloFlowSampler(model, threshold=False).student_in(torch.float64)(z1, z2, einc)
    v64 = torch.where(v64 < model.geometry.threshold_mev, torch.zeros_like(v64), v64)
    sel = v64 >= model.geometry.threshold_mev
    rel = ((v32 - v64).abs()[sel] / v64[sel])
    flipped = int(((v32 > 0) != sel).sum())
    return {"showers": n, "max_rel_voxel_diff": float(rel.max()), "median_rel_voxel_diff": float(rel.median()),
            "voxels_crossing_threshold": flipped, "voxels_compared": int(sel.sum()),
            "max_rel_energy_diff": float(((v32.sum(1) - v64.sum(1)).abs() / v64.sum(1).clamp_min(1e-30)).max())}


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


def markdown_summary(res: dict) -> str:
    """One table: model x path x threads -> ms/shower per batch, measured / FLOP floor and Geant4 speed-up."""
    rows = []
    g4 = res.get("geant4_seconds_per_shower") or {}
    e_hi = max(g4, key=float) if g4 else None
    for name, r in res["presets"].items():
        batches = None
        for key, per in r["student"].items():
            batches = list(per)
            path, th = key.rsplit("_threads", 1)
            fl = r["flop_floor"].get(f"threads{th}", {})
            floor = fl.get("floor_ms_per_shower")
            nz = fl.get("nonzero_floor_ms_per_shower")
            cells = [f"{per[b]['ms_per_shower']:.3g}" for b in batches]
            bmax = batches[-1]
            ratio = f"{per[bmax]['ms_per_shower'] / floor:.2f}" if floor else "-"
            ratio_nz = f"{per[bmax]['ms_per_shower'] / nz:.2f}" if nz else "-"
            sp = f"{g4[e_hi] / (per[bmax]['ms_per_shower'] / 1e3):.0f}x" if e_hi else "-"
            rows.append(f"| {name} | {path} | {th} | " + " | ".join(cells) + f" | {ratio} | {ratio_nz} | {sp} |")
    if not rows:
        return ""
    head = ("| model | path | threads | " + " | ".join(f"batch {b}" for b in batches) +
            f" | / FLOP floor (batch {batches[-1]}) | / non-zero-weight floor | vs Geant4 {e_hi or '-'} GeV |")
    return "\n".join([head, "|" + "---|" * (head.count("|") - 1), *rows])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=None, choices=["quick", "full", "icaloflow"],
                   help="models: CaloFlow quick / full students, the iCaloFlow student (default: all; --smoke: quick, icaloflow)")
    p.add_argument("--icaloflow-preset", default="full", choices=["quick", "full"])
    p.add_argument("--icaloflow-geometry", default="ds2-coarse", help="geometry with equal layers (ds2-coarse, ds2)")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 100, 1000, 10000])
    p.add_argument("--paths", nargs="+", default=["zuko", "lean", "onnxruntime"], choices=["zuko", "lean", "lean-int8", "onnxruntime"],
                   help="lean-int8: the lean path with student_weights=int8 (int8 MADE output layers)")
    p.add_argument("--teacher-batches", nargs="*", type=int, default=None,
                   help="CaloFlow teacher; default: same as --batches; give the flag without values to skip the teacher")
    p.add_argument("--min-seconds", type=float, default=3.0, help="repeat each timing at least this long")
    p.add_argument("--max-reps", type=int, default=20)
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2],
                   help="thread counts (torch and ONNX Runtime intra-op); 1 is one core, like the Geant4 timing")
    p.add_argument("--untrained", action="store_true", help="do not train the quick CaloFlow for one epoch")
    p.add_argument("--no-geant4", action="store_true")
    p.add_argument("--geant4-json", help="take the Geant4 seconds/shower from this earlier results JSON "
                                         "(key geant4_seconds_per_shower) instead of simulating")
    p.add_argument("--g4-n", nargs=2, type=int, default=[10, 3], help="Geant4 showers at 10 and 100 GeV")
    p.add_argument("--smoke", action="store_true",
                   help="smallest setting that exercises every part: batches 1 and 10, 1 thread (unless --threads "
                        "differs from the default), one repetition, untrained quick CaloFlow and quick iCaloFlow (add "
                        "--presets full for the full one), no teacher, float32 check on 100 showers, Geant4 from "
                        "--geant4-json or 1 shower at 10 GeV")
    p.add_argument("--out", default="bench_caloflow.json")
    p.add_argument("--workdir", default=None)
    args = p.parse_args(argv)
    if args.smoke:
        args.batches, args.min_seconds, args.max_reps, args.untrained = [1, 10], 0.0, 1, True
        args.threads = [1] if args.threads == [1, 2] else args.threads
        args.teacher_batches = [] if args.teacher_batches is None else args.teacher_batches
        args.icaloflow_preset = "quick"
        args.g4_n = [1, 0]
        args.presets = args.presets or ["quick", "icaloflow"]
    args.presets = args.presets or ["quick", "full", "icaloflow"]
    import tempfile

    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_caloflow_")
    res: dict = {"threads": args.threads, "torch": torch.__version__, "load_start": os.getloadavg(), "presets": {},
                 "notes": {"full": "untrained (initial weights; timing does not depend on them)",
                           "icaloflow": f"untrained {args.icaloflow_preset} preset on {args.icaloflow_geometry}",
                           "quick": "untrained" if args.untrained else "1 epoch on toy showers"}}
    for preset in args.presets:
        t0 = time.time()
        if preset == "icaloflow":
            model = build_icaloflow(args.icaloflow_preset, args.icaloflow_geometry)
        else:
            model = build_model(preset, os.path.join(workdir, preset), train=(preset == "quick" and not args.untrained))
        model.to("cpu")
        params = model.parameter_counts()
        r: dict = {"parameters": params, "setup_seconds": time.time() - t0, "student": {}, "teacher": {},
                   "flop_floor": {}}
        onnx_path = None
        if "onnxruntime" in args.paths:
            t1 = time.time()
            onnx_path = export_onnx(model, os.path.join(workdir, f"{preset}.onnx"), force=True)
            r["onnx_export_seconds"] = time.time() - t1
            r["onnx_megabytes"] = os.path.getsize(onnx_path) / 2**20
        if isinstance(model, CaloFlow):
            r["float32_accuracy"] = float32_accuracy(model, n=100 if args.smoke else 1000)
            print(f"[{preset}] student float32 vs float64: {r['float32_accuracy']}", flush=True)
        if "lean-int8" in args.paths:
            r["int8_accuracy"] = int8_accuracy(model, n=100 if args.smoke else 1000)
            print(f"[{preset}] student int8 vs float32 output layers: {r['int8_accuracy']}", flush=True)
        bmax = max(args.batches)
        flops, (hidden, out_cols) = flops_and_shape(model)
        for th in args.threads:
            torch.set_num_threads(th)
            ort = OnnxSampler(onnx_path, threads=th) if onnx_path else None
            for path in args.paths:
                key = f"{path}_threads{th}"
                r["student"][key] = {}
                for b in args.batches:
                    r["student"][key][b] = time_generation(model, b, True, args.min_seconds, args.max_reps, path, ort)
                    print(f"[{preset}] student {key:>22} batch {b:>6}: {r['student'][key][b]['ms_per_shower']:.4f} "
                          f"ms/shower (load {os.getloadavg()[0]:.1f})", flush=True)
            teacher_batches = args.batches if args.teacher_batches is None else args.teacher_batches
            for path in [q for q in args.paths if q in ("zuko", "lean")] if isinstance(model, CaloFlow) else []:
                if not teacher_batches:
                    break
                key = f"{path}_threads{th}"
                r["teacher"][key] = {}
                for b in teacher_batches:
                    r["teacher"][key][b] = time_generation(model, b, False, args.min_seconds,
                                                           max(1, args.max_reps // 10), path)
                    print(f"[{preset}] teacher {key:>22} batch {b:>6}: {r['teacher'][key][b]['ms_per_shower']:.4f} "
                          f"ms/shower", flush=True)
            # FLOP floor of the student at the largest batch, matmul rate with the same threads
            rate = matmul_rate(bmax, hidden, out_cols)
            floor_ms = flops / rate * 1e3
            eff = effective_flops(model)
            eff_ms = eff / rate * 1e3
            fl = {"flops_per_shower": flops, "matmul_gflops": rate / 1e9, "floor_ms_per_shower": floor_ms, "batch": bmax,
                  "measured_over_floor": {}, "nonzero_flops_per_shower": eff, "nonzero_floor_ms_per_shower": eff_ms,
                  "measured_over_nonzero_floor": {}}
            for path in args.paths:
                per = r["student"][f"{path}_threads{th}"]
                fl["measured_over_floor"][path] = {b: per[b]["ms_per_shower"] / floor_ms for b in per}
                fl["measured_over_nonzero_floor"][path] = {b: per[b]["ms_per_shower"] / eff_ms for b in per}
            r["flop_floor"][f"threads{th}"] = fl
            print(f"[{preset}] {th} thread(s): student FLOP floor {floor_ms:.4f} ms/shower at {rate / 1e9:.1f} GFLOP/s; "
                  f"measured / floor = {fl['measured_over_floor']}", flush=True)
        res["presets"][preset] = r
    # Geant4 in the same run, or from an earlier results file
    g4 = None
    if args.geant4_json:
        with open(args.geant4_json) as f:
            g4 = {float(k): float(v) for k, v in json.load(f)["geant4_seconds_per_shower"].items()}
        res["geant4_source"] = f"reused from {args.geant4_json}"
    elif not args.no_geant4:
        try:
            sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
            from bench_geant4 import geant4_seconds_per_shower

            g4 = {}
            for e, n in zip((10.0, 100.0), args.g4_n):
                if n > 0:
                    g4[e] = geant4_seconds_per_shower(e, n=n)
                    print(f"Geant4 {e:g} GeV: {g4[e] * 1e3:.1f} ms/shower", flush=True)
            res["geant4_source"] = f"simulated in this run ({dict(zip((10, 100), args.g4_n))} showers)"
        except Exception as exc:  # noqa: BLE001 - optional part
            res["geant4_skipped"] = f"{type(exc).__name__}: {exc}"
            print(f"Geant4 part skipped: {res['geant4_skipped']}", flush=True)
    if g4:
        res["geant4_seconds_per_shower"] = g4
        for r in res["presets"].values():
            r["speedup_vs_geant4"] = {
                f"{who}_{key}_batch{b}_{e:g}GeV": g4[e] / (r[who][key][b]["ms_per_shower"] / 1e3)
                for who in ("student", "teacher") for key in r[who] for b in r[who][key] for e in g4
            }
    res["summary"] = markdown_summary(res)
    with atomic_output(args.out) as tmp, open(tmp, "w") as f:
        res["load_end"] = os.getloadavg()
        json.dump(res, f, indent=1)
    print(json.dumps(res, indent=1))
    print(res["summary"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
