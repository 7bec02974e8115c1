"""Run Par04 Geant4 simulations in worker processes and write CaloChallenge files.

``simulate`` splits the showers of a run (or of one shard ``i/N`` of it) into ``jobs``
contiguous pieces, simulates each in its own spawned process (Geant4 allows one run
manager per process and keeps global state), writes one file per piece and geometry,
and merges them in order with :func:`caloflows.io.merge_files`.  Because shower ``k``
depends only on ``(seed, k)`` (:mod:`.energies`), merging the shards ``0/N .. N-1/N`` of a
run gives exactly the showers of the unsharded run.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_mod
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SimulationError, UsageError
from ..geometry import Geometry, geometry_from_dict, load_geometry
from ..io import merge_files
from ..outputs import check_output_files, clean_orphans, temp_tag
from ..termination import sigterm_raises
from .energies import EnergySpec, parse_energy, shower_energies_mev, shower_seeds

__all__ = [
    "simulate",
    "simulate_deposits",
    "RawShowers",
    "SimulationError",
    "output_paths",
    "parse_shard",
    "PARTICLES",
    "shard_range",
]

#: particles the Par04 gun can shoot
PARTICLES = ("e-", "e+", "gamma")


def parse_shard(text: str | None) -> tuple[int, int]:
    """``'i/N'`` -> (i, N) with 0 <= i < N; None -> (0, 1)."""
    if text is None:
        return 0, 1
    try:
        i, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise UsageError(f"shard {text!r}: expected i/N, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise UsageError(f"shard {text!r}: need 0 <= i < N")
    return i, n


def shard_range(n: int, shard: tuple[int, int]) -> tuple[int, int]:
    """Global shower indices [start, stop) of shard i of N (contiguous, sizes differ by <= 1)."""
    i, k = shard
    return (i * n) // k, ((i + 1) * n) // k


def output_paths(out: str | os.PathLike, geometries: Sequence[Geometry]) -> list[str]:
    """One path per geometry: ``out`` itself for one geometry; otherwise ``{geometry}`` in
    ``out`` is replaced by the name, or the name is appended before the suffix."""
    out = str(out)
    if len(geometries) == 1 and "{geometry}" not in out:
        return [out]
    paths = []
    for g in geometries:
        name = Path(str(g.name)).stem if os.path.sep in str(g.name) else str(g.name)
        if "{geometry}" in out:
            paths.append(out.replace("{geometry}", name))
        else:
            p = Path(out)
            paths.append(str(p.with_name(f"{p.stem}_{name}{p.suffix or '.h5'}")))
    if len(set(paths)) != len(paths):
        raise ValueError(f"output pattern {out!r} gives the same file for two geometries")
    return paths


@dataclass
class _Task:
    worker: int
    particle: str
    geometries: list[dict]
    indices: np.ndarray
    energies_mev: np.ndarray
    seeds: np.ndarray
    paths: list[str]
    attrs: dict
    env: dict
    chunk: int = 64
    parent_pid: int = 0


PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    """End this worker when the parent dies, even by SIGKILL (nothing could clean up then).

    Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` makes the kernel kill the worker when its
    parent thread exits.  Fallback (other systems, or a parent that died before the prctl): a
    daemon thread that checks once a second that the parent pid is unchanged.
    """
    import signal
    import threading

    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass
    if parent_pid and os.getppid() != parent_pid:  # the parent died before the prctl took effect
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if parent_pid and os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="caloflows-parent-watch", daemon=True).start()


def _quiet_stdout() -> None:
    """Geant4 prints its banner and run summaries on stdout; keep the parent's stdout clean."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)


def _worker_main(task: _Task, progress) -> None:  # runs in a spawned process
    _die_with_parent(task.parent_pid)
    _quiet_stdout()
    os.environ.update(task.env)
    from ..io import ShowerWriter
    from .par04 import Par04Simulation, voxelise

    geoms = [geometry_from_dict(d) for d in task.geometries]
    sim = Par04Simulation(task.particle)
    writers = [ShowerWriter(p, g.n_voxels, attrs=task.attrs) for p, g in zip(task.paths, geoms)]
    try:
        bufs: list[list[np.ndarray]] = [[] for _ in geoms]
        inc: list[float] = []
        for j, (e, s) in enumerate(zip(task.energies_mev, task.seeds)):
            x, y, layer, dep = sim.shower(float(e), int(s))
            for b, g in zip(bufs, geoms):
                b.append(g.apply_threshold(voxelise(x, y, layer, dep, g)).astype(np.float32))
            inc.append(float(e))
            if len(inc) >= task.chunk or j == len(task.seeds) - 1:
                for w, b in zip(writers, bufs):
                    w.append(np.asarray(inc), np.stack(b))
                    b.clear()
                inc.clear()
            progress.put((task.worker, 1))
        for w in writers:
            w.close()
    except BaseException as exc:
        for w in writers:
            w.abort((type(exc), exc, exc.__traceback__))
        raise


def simulate(
    geometry: str | Geometry | Sequence[str | Geometry],
    particle: str,
    energy: str | EnergySpec,
    n: int,
    out: str | os.PathLike,
    *,
    seed: int = 0,
    shard: tuple[int, int] | str | None = None,
    jobs: int | None = None,
    progress: bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    force: bool = False,
) -> list[str]:
    """Simulate Par04 showers and write one CaloChallenge file per geometry.

    Args:
        geometry: one geometry or several (same showers voxelised into each), e.g.
            ``["ds2", "ds2-coarse"]`` or ``"ds2,ds3"``; each must group the 45 readout layers.
        particle: ``e-``, ``e+`` or ``gamma``.
        energy: energy specification (see :mod:`.energies`), e.g. ``"1:100"`` or ``"pow2:1:64"``.
        n: number of showers of the full run (all shards together).
        out: output path (or pattern with ``{geometry}`` for several geometries).
        seed: run seed; shower k depends only on (seed, k).
        shard: ``(i, N)`` or ``"i/N"``: simulate only the i-th of N contiguous parts.
        jobs: local worker processes (default: all cores).
        progress: tqdm progress bar (default: only on a terminal).
        cache_dir: where approximate Geant4 tables are generated if official data are missing.
        force: replace existing output files (an existing output is refused otherwise, before any
            simulation; :func:`caloflows.outputs.check_output_file`).

    Clean termination: SIGINT and SIGTERM end the workers and remove the temporary directory
    (``.caloflows-sim-cf<host>-<pid>-XXXX`` next to the outputs); workers die with the parent even
    if it is SIGKILLed, and the next run into the same directory removes such a leftover
    directory (:func:`caloflows.outputs.clean_orphans`).

    Returns the paths written.  Workers are started with the ``spawn`` method, so a script
    calling this must guard its entry point with ``if __name__ == "__main__":``.
    """
    from .g4data import configure_geant4_data
    from .par04 import N_READOUT_LAYERS, PHYSICS_LIST, SAMPLING_FRACTION

    if isinstance(geometry, (str, Geometry)):
        geometry = [g for g in str(geometry).split(",")] if isinstance(geometry, str) else [geometry]
    geoms = [load_geometry(g) for g in geometry]
    for g in geoms:
        if not g.is_regular or N_READOUT_LAYERS % g.n_layers:
            raise ValueError(
                f"geometry {g.name!r} cannot be simulated with Par04: it needs regular layers grouping the "
                f"45 readout layers (ds2, ds3, ds2-coarse), it has {g.n_layers}"
            )
    if particle not in PARTICLES:
        raise ValueError(f"particle {particle!r}: use one of {', '.join(PARTICLES)}")
    spec = parse_energy(energy) if not isinstance(energy, EnergySpec) else energy
    if int(n) < 1:
        raise ValueError(f"number of showers must be at least 1, got {n}")
    shard = parse_shard(shard) if not isinstance(shard, tuple) else shard
    start, stop = shard_range(int(n), shard)
    if stop <= start:
        raise ValueError(f"shard {shard[0]}/{shard[1]} of {n} showers is empty")
    paths = output_paths(out, geoms)
    check_output_files(paths, force=force)
    data = configure_geant4_data(cache_dir)

    idx = np.arange(start, stop, dtype=np.int64)
    energies = shower_energies_mev(spec, seed, idx)
    seeds = shower_seeds(seed, idx)
    pieces = job_pieces(len(idx), jobs)
    base_attrs = {
        "generator": "Geant4 (caloflows simulate)",
        "detector": "Par04 W/Si sampling calorimeter, 90 x (1.4 mm W + 0.3 mm Si), 45 readout layers; "
                    "planar slabs approximating the cylinders",
        "physics_list": PHYSICS_LIST,
        **data.attrs(),
        "geant4_pybind_version": geant4_pybind_version(),
        "particle": particle,
        "energy_spec": spec.text or spec.describe(),
        "energy_distribution": spec.describe(),
        "seed": int(seed),
        "n_showers_run": int(n),
        "shard": f"{shard[0]}/{shard[1]}",
        "first_shower_index": int(start),
        "sampling_fraction": SAMPLING_FRACTION,
    }

    def tasks(tmpdir: str) -> list[tuple[_Task, list[str]]]:
        out = []
        for w, piece in enumerate(pieces):
            wpaths = [os.path.join(tmpdir, f"w{w:03d}_{gi}.h5") for gi in range(len(geoms))]
            out.append((_Task(w, particle, [g.to_dict() for g in geoms], idx[piece], energies[piece], seeds[piece],
                              wpaths, dict(base_attrs), dict(data.env), parent_pid=os.getpid()), wpaths))
        return out

    def merge(files: list[list[str]]) -> None:
        for gi, (g, path) in enumerate(zip(geoms, paths)):
            parts = [f[gi] for f in files]
            final = {**base_attrs, "geometry": str(g.name), "threshold_mev": g.threshold_mev,
                     "merged_from": f"{len(parts)} local worker file(s)"}
            merge_files(parts, path, geometry=g, attrs=final)

    run_workers(_worker_main, tasks, len(idx), os.path.dirname(os.path.abspath(paths[0])), merge, progress)
    return paths


def run_workers(target: Callable[[Any, Any], None], tasks: Callable[[str], list[tuple[Any, list[str]]]],
                total: int, outdir: str, merge: Callable[[list[list[str]]], None], progress: bool | None) -> None:
    """Run Geant4 jobs, one spawned process each, and merge what they write (every detector uses this).

    ``tasks(tmpdir)`` returns ``(task, files)`` per worker; ``target(task, queue)`` runs in the worker
    (it must call :func:`_die_with_parent` first and put ``(worker, showers_done)`` on the queue);
    ``merge(files)`` joins the workers' files into the outputs.  The temporary directory
    (``.caloflows-sim-<tag>`` in ``outdir``) goes in every case; SIGINT and SIGTERM end the workers,
    and orphans of a SIGKILLed earlier run in ``outdir`` are removed first.
    """
    clean_orphans(outdir)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs: list = []
    with sigterm_raises():
        tmpdir = tempfile.mkdtemp(prefix=f".caloflows-sim-{temp_tag()}", dir=outdir)
        _run_workers(ctx, q, procs, tmpdir, target, tasks, total, merge, progress)


def _run_workers(ctx, q, procs, tmpdir, target, tasks, total, merge, progress) -> None:
    """Start the workers, wait, merge; on any exception (SimulationError, KeyboardInterrupt,
    Terminated) end the workers; remove ``tmpdir`` in every case."""
    try:
        files = []
        for w, (task, wfiles) in enumerate(tasks(tmpdir)):
            files.append(wfiles)
            p = ctx.Process(target=target, args=(task, q), name=f"caloflows-sim-{w}", daemon=True)
            p.start()
            procs.append(p)
        _wait(procs, q, total, progress)
        merge(files)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():  # pragma: no cover - a worker stuck in Geant4 ignoring SIGTERM
                p.kill()
                p.join(timeout=5)
        shutil.rmtree(tmpdir, ignore_errors=True)


def geant4_pybind_version() -> str:
    """The installed geant4-pybind version (recorded in every simulated file)."""
    try:
        from importlib.metadata import version

        return version("geant4_pybind")
    except Exception:  # pragma: no cover
        return "unknown"


def job_pieces(n: int, jobs: int | None) -> list[np.ndarray]:
    """Split ``n`` showers into contiguous pieces, one per worker (default: all cores)."""
    return np.array_split(np.arange(n), max(1, min(int(jobs or _available_cores()), n)))


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _wait(procs, q, total: int, progress: bool | None) -> None:
    from tqdm import tqdm

    done = 0
    with tqdm(total=total, unit="shower", desc="Geant4", disable=(None if progress is None else not progress),
              smoothing=0.1) as bar:
        while done < total:
            try:
                _, k = q.get(timeout=0.5)
                done += k
                bar.update(k)
                continue
            except queue_mod.Empty:
                pass
            for p in procs:
                if p.exitcode not in (None, 0):
                    raise SimulationError(
                        f"Geant4 worker {p.name} failed with exit status {p.exitcode} (see its messages above)"
                    )
            if all(p.exitcode == 0 for p in procs):
                while True:  # drain late messages
                    try:
                        _, k = q.get_nowait()
                        done += k
                        bar.update(k)
                    except queue_mod.Empty:
                        break
                break
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise SimulationError(f"Geant4 worker {p.name} failed with exit status {p.exitcode}")


@dataclass
class RawShowers:
    """Silicon deposits of showers simulated by :func:`simulate_deposits`.

    ``deposits[i]`` = (x mm, y mm, readout layer 0..44, E/0.033 MeV) per step of shower i;
    ``seconds[i]`` its Geant4 CPU wall time; ``init_seconds`` the start-up (geometry, tables).
    """

    energies_mev: np.ndarray
    deposits: list
    seconds: np.ndarray
    init_seconds: float
    tables: str


def _raw_worker(particle: str, energies_mev, seeds, env: dict, keep: bool):
    _quiet_stdout()
    os.environ.update(env)
    from .par04 import Par04Simulation

    t0 = time.perf_counter()
    sim = Par04Simulation(particle)
    init = time.perf_counter() - t0
    deps, secs = [], []
    for e, s in zip(energies_mev, seeds):
        t = time.perf_counter()
        d = sim.shower(float(e), int(s))
        secs.append(time.perf_counter() - t)
        if keep:
            deps.append(d)
    return deps, secs, init


def simulate_deposits(particle: str, energies_mev: Sequence[float], seeds: Sequence[int] | None = None, *,
                      keep_deposits: bool = True, cache_dir: str | os.PathLike | None = None) -> RawShowers:
    """Simulate showers in one spawned worker and return their raw silicon deposits and timings
    (used by the physics tests and the Geant4 speed benchmark)."""
    from concurrent.futures import ProcessPoolExecutor

    from .g4data import configure_geant4_data

    if particle not in PARTICLES:
        raise ValueError(f"particle {particle!r}: use one of {', '.join(PARTICLES)}")
    energies = np.asarray(energies_mev, dtype=np.float64)
    seed_arr = shower_seeds(0, np.arange(len(energies))) if seeds is None else np.asarray(seeds, dtype=np.int64)
    data = configure_geant4_data(cache_dir)
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as ex:
        try:
            deps, secs, init = ex.submit(_raw_worker, particle, energies, seed_arr, dict(data.env), keep_deposits).result()
        except Exception as exc:  # BrokenProcessPool when Geant4 aborts
            raise SimulationError(f"Geant4 worker failed: {exc}") from None
    return RawShowers(energies, deps, np.asarray(secs), float(init), data.tables)
