"""ParaFlow model on Geant4 showers (issue 12): train, distill, generate at the held-out showers'
(E_inc, d, b) and compare with :func:`caloflows.evaluation.paraflow.paraflow_report`.

Steps (results written to ``OUT_DIR/bench_paraflow_model.json`` after each step):

1. split ``--data`` (a ``caloflows simulate --detector paraflow`` file) into training rows and
   ``--test-fraction`` held-out rows (fixed seed), or take ``--test`` as the held-out file;
2. train the MAF teacher (``caloflows.api.train``, ``--preset``, ``--epochs``, ``--set``) and
   distill the IAF student (``--student-epochs``; 0 skips it);
3. generate one shower per held-out row at its (E_inc, d, b) with the teacher and the student,
   and write the ParaFlow report (separation powers inclusive and per d / b bin, the fig. 9
   (d, b) mean maps and their largest relative difference) for each;
4. sampling time in ms per shower at batch sizes ``--timing-batches`` (median of
   ``--repeats``, one thread unless ``--threads``).

    python benchmarks/bench_paraflow_model.py --data pf.h5 --out-dir /tmp/pf_model --preset quick

Numbers are only comparable with a Geant4-vs-Geant4 floor of the same size
(``benchmarks/bench_paraflow_g4.py`` reports it for two halves of its sample).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time
from pathlib import Path

import numpy as np


def _save(res: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1, default=float))
    os.replace(tmp, path)


def _summary(report: dict) -> dict:
    """The headline numbers of a paraflow_report result (separation powers, means, fig. 9 maxima)."""
    out = {"separation_power": report.get("separation_power"), "means": report.get("means")}
    if "mean_maps" in report:
        out["max_abs_relative_difference_mean_maps"] = {
            k: v.get("max_abs_relative_difference") for k, v in report["mean_maps"].items() if isinstance(v, dict)}
    return out


def sampling_timing(model, cond, variants: list[str], batches: list[int], repeats: int) -> dict:
    """ms per shower of ``model.sample`` for each variant and batch size: one call of ``bs``
    showers (conditions cycled from ``cond``) per repeat, median of ``repeats`` calls."""
    timing: dict = {}
    for v in variants:
        for bs in batches:
            c = cond[np.arange(bs) % len(cond)]
            ts = []
            for r in range(repeats):
                t0 = time.perf_counter()
                model.sample(c, batch_size=bs, seed=r, variant=v)
                ts.append(time.perf_counter() - t0)
            timing[f"{v}_batch{bs}_ms_per_shower"] = 1e3 * float(np.median(ts)) / bs
    return timing


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="Geant4 ParaFlow shower file (geometry paraflow-8x16, d and b)")
    ap.add_argument("--test", help="held-out Geant4 file (default: --test-fraction of --data)")
    ap.add_argument("--test-fraction", type=float, default=0.25)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--student-epochs", type=int, default=None, help="0: no student")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--timing-batches", default="1,100,1000")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    import torch

    from caloflows import api
    from caloflows.conditions import Conditions
    from caloflows.evaluation.paraflow import paraflow_report
    from caloflows.io import read_showers, write_showers
    from caloflows.models import load_model

    torch.set_num_threads(args.threads)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res_path = out / "bench_paraflow_model.json"
    res: dict = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 "args": vars(args), "load_average": os.getloadavg()}

    data = read_showers(args.data)
    if args.test:
        train, test = data, read_showers(args.test)
    else:
        perm = np.random.default_rng(args.seed).permutation(len(data))
        k = int(round(len(data) * args.test_fraction))
        test, train = data.subset(np.sort(perm[:k])), data.subset(np.sort(perm[k:]))
    train_file, test_file = out / "train.h5", out / "test.h5"
    for f, d in ((train_file, train), (test_file, test)):
        write_showers(f, d.incident_energies, d.showers, conditions=d.conditions,
                      condition_names=d.condition_names or None)
    res["n_train"], res["n_test"] = len(train), len(test)

    model_dir = out / "model"
    t0 = time.time()
    res["train"] = api.train("paraflow", train_file, model_dir, geometry="paraflow-8x16", preset=args.preset,
                             epochs=args.epochs, seed=args.seed, overrides=args.set, device=args.device,
                             force=True, progress=False)
    res["train_seconds"] = time.time() - t0
    _save(res, res_path)
    variants = ["teacher"]
    if args.student_epochs != 0:
        t0 = time.time()
        res["distill"] = api.distill(model_dir, train_file, epochs=args.student_epochs, device=args.device,
                                     force=True, progress=False)
        res["distill_seconds"] = time.time() - t0
        variants.append("student")
        _save(res, res_path)

    model = load_model(model_dir, device=args.device)
    cond = Conditions.from_data(test)
    for v in variants:
        t0 = time.time()
        gen = model.sample(cond, batch_size=1000, seed=args.seed + 1, variant=v)
        res[f"generate_{v}_seconds"] = time.time() - t0
        gen_file = out / f"gen_{v}.h5"
        write_showers(gen_file, gen.incident_energies, gen.showers, conditions=gen.conditions,
                      condition_names=gen.condition_names or None)
        rep = paraflow_report(gen_file, test_file, out / f"report_{v}", gen_label=f"ParaFlow {v}")
        res[f"report_{v}"] = _summary(rep)
        _save(res, res_path)

    res["timing"] = sampling_timing(model, cond, variants, [int(x) for x in args.timing_batches.split(",")],
                                    args.repeats)
    res["load_average_end"] = os.getloadavg()
    _save(res, res_path)
    print(json.dumps({k: res[k] for k in res if k.startswith(("report", "timing", "train_seconds", "n_"))},
                     indent=1, default=float))
    return res


if __name__ == "__main__":
    main()
