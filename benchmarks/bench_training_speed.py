"""Training speed of the MAF teachers on CPU (issue 15, "training efficiency"): eager zuko
``log_prob`` against the same step through ``torch.compile`` (``TrainConfig.compile``, which
traces :func:`caloflows.flows.maf_log_prob` as one graph), for 1 and 2 torch threads and
several batch sizes, side by side in one process.

Networks (the shapes of the presets; timing does not depend on the weights):

* ``caloflow-flow2``: CaloFlow flow-II teacher of the ``quick`` / ``medium`` presets on
  ds2-coarse: 648 voxels, 6 MADE blocks of one hidden layer of 128, 8 bins, context 10
  (E_inc and 9 layer energies);
* ``paraflow``: ParaFlow ``quick`` teacher: 128 crystals, 4 MADE blocks of 2 x 64, 8 bins,
  context 3 (E_inc, d, b).

For each network, threads and batch size: the compile time (first compiled step), then
``--rounds`` rounds that time ``--steps`` Adam steps of each mode in turn (eager, compiled), the
median seconds per step, showers per second, epochs per hour (the training rows per epoch of
:data:`NETWORKS`), and the compiled / eager speed-up.  A loss check trains both modes ``--steps`` steps from
the same weights on the same batches: the losses must agree to float32 round-off.

Run on an otherwise idle machine, pinned (the README numbers)::

    OMP_NUM_THREADS=2 taskset -c 0,1 python benchmarks/bench_training_speed.py \\
        --out benchmarks/results/training_speed_$(date +%F).json

Smoke run (seconds, numbers meaningless)::

    python benchmarks/bench_training_speed.py --out /tmp/ts.json --networks paraflow --threads 1 \\
        --batches 64 --steps 2 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from caloflows.flows import LogProb, build_maf, mark_plain_mafs
from caloflows.io import atomic_output

NETWORKS = {
    # name: (features, context, transforms, hidden, bins, training rows per epoch of the README runs:
    # CaloFlow 10000 ds2-coarse showers, 70 % for training; ParaFlow the 20k benchmark's 16000
    # showers outside the band, 85 % for training)
    "caloflow-flow2": (648, 10, 6, (128,), 8, 7000),
    "paraflow": (128, 3, 4, (64, 64), 8, 13600),
}


def _step_fn(module: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, c: torch.Tensor):
    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = -module(x, c).mean()
        loss.backward()
        opt.step()
        return float(loss.detach())
    return step


def _setup(name: str, batch: int, compiled: bool, seed: int = 0):
    D, C, T, H, K, _ = NETWORKS[name]
    torch.manual_seed(seed)
    flow = build_maf(D, C, transforms=T, hidden_features=H, bins=K)
    module: torch.nn.Module = LogProb(flow)
    mark_plain_mafs(module)  # as fit_flow does with TrainConfig.compile
    run = torch.compile(module, dynamic=False) if compiled else module
    opt = torch.optim.Adam(flow.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(seed + 1)
    x, c = torch.randn(batch, D, generator=g), torch.rand(batch, C, generator=g)
    return _step_fn(run, opt, x, c)


def measure(name: str, threads: int, batch: int, steps: int, rounds: int) -> dict:
    torch.set_num_threads(threads)
    torch.compiler.reset()
    fns = {"eager": _setup(name, batch, False)}
    t0 = time.perf_counter()
    comp = _setup(name, batch, True)
    comp()
    compile_s = time.perf_counter() - t0
    fns["compiled"] = comp
    for f in fns.values():  # warm-up
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t = time.perf_counter()
            for _ in range(steps):
                f()
            times[k].append((time.perf_counter() - t) / steps)
    n_epoch = NETWORKS[name][5]
    out: dict = {"network": name, "threads": threads, "batch": batch, "compile_seconds": compile_s,
                 "seconds_per_step_all": times}
    for k, v in times.items():
        med = statistics.median(v)
        steps_per_epoch = max(1, n_epoch // batch)
        out[k] = {"seconds_per_step": med, "showers_per_second": batch / med,
                  "epochs_per_hour": 3600 / (med * steps_per_epoch)}
    out["speedup_compiled_over_eager"] = out["eager"]["seconds_per_step"] / out["compiled"]["seconds_per_step"]
    return out


def loss_check(name: str, batch: int, steps: int) -> dict:
    torch.compiler.reset()
    losses = {}
    for mode in ("eager", "compiled"):
        f = _setup(name, batch, mode == "compiled", seed=7)
        losses[mode] = [f() for _ in range(steps)]
    rel = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(losses["eager"], losses["compiled"]))
    return {"network": name, "batch": batch, "losses": losses, "max_relative_difference": rel}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="results JSON (refused if it exists, unless --force)")
    p.add_argument("--networks", default=",".join(NETWORKS), help=f"comma list of {', '.join(NETWORKS)}")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--batches", default="256,1024")
    p.add_argument("--steps", type=int, default=5, help="steps per timed block")
    p.add_argument("--rounds", type=int, default=5, help="timed blocks per mode (median)")
    p.add_argument("--force", action="store_true")
    a = p.parse_args(argv)
    out = Path(a.out)
    if out.exists() and not a.force:
        sys.exit(f"--out {out}: exists (use --force to replace it)")
    nets = [n.strip() for n in a.networks.split(",") if n.strip()]
    bad = [n for n in nets if n not in NETWORKS]
    if bad:
        sys.exit(f"--networks: unknown {bad[0]!r}; use {', '.join(NETWORKS)}")
    try:
        threads = [int(t) for t in a.threads.split(",")]
        batches = [int(b) for b in a.batches.split(",")]
    except ValueError:
        sys.exit("--threads / --batches: comma-separated integers, e.g. 1,2")
    if min(threads + batches + [a.steps, a.rounds]) < 1:
        sys.exit("--threads, --batches, --steps and --rounds must be at least 1")
    res: dict = {"benchmark": "bench_training_speed", "torch": torch.__version__, "cpu_count": os.cpu_count(),
                 "load_average_at_start": os.getloadavg(), "args": vars(a), "runs": [], "loss_checks": []}
    for n in nets:
        res["loss_checks"].append(loss_check(n, batches[0], a.steps))
        print(f"{n}: loss check max rel. diff {res['loss_checks'][-1]['max_relative_difference']:.2e}", flush=True)
        for t in threads:
            for b in batches:
                r = measure(n, t, b, a.steps, a.rounds)
                res["runs"].append(r)
                print(f"{n} threads {t} batch {b}: eager {r['eager']['seconds_per_step'] * 1e3:.1f} ms/step, "
                      f"compiled {r['compiled']['seconds_per_step'] * 1e3:.1f} ms/step "
                      f"(x{r['speedup_compiled_over_eager']:.2f}; compile {r['compile_seconds']:.0f} s)", flush=True)
    res["load_average_at_end"] = os.getloadavg()
    with atomic_output(out) as tmp:
        Path(tmp).write_text(json.dumps(res, indent=1))
    print(f"results: {out}")
    return res


if __name__ == "__main__":
    main()
