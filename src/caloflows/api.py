"""The typed Python API under the ``caloflows`` command line (one function per step).

Every CLI subcommand parses its arguments, calls one function here and prints; these
functions are what a Python user calls for the same work (as ``pyhf.infer`` sits under
``pyhf.cli``).  Errors a user can fix raise :class:`~caloflows.errors.CaloflowsError`.

The whole loop, from Python::

    import caloflows.api as cf

    cf.simulate("ds2-coarse", "e-", "pow2:1:16", 3000, "train.h5", seed=1)     # Geant4 reference
    cf.simulate("ds2-coarse", "e-", "pow2:1:16", 2000, "held_out.h5", seed=2)
    cf.train("caloflow", "train.h5", "model", geometry="ds2-coarse", preset="quick", seed=3)
    cf.distill("model", "train.h5")                                          # IAF student
    cf.generate("model", "generated.h5", energies_from="held_out.h5", seed=4)
    cf.evaluate("generated.h5", "held_out.h5", "ds2-coarse", out="report")
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .conditions import Conditions, draw_conditions, parse_condition_args
from .errors import ConditionsError, ShowerFileError, UsageError
from .geometry import load_geometry

__all__ = ["simulate", "train", "training_data", "distill", "generate", "evaluate", "generation_conditions"]


def simulate(geometry: str | Sequence[str] | None, particle: str | None, energy: str | None, n: int, out: str, *,
             seed: int = 1, shard: str | None = None, jobs: int | None = None, progress: bool | None = None,
             force: bool = False, detector: str = "par04", conditions: Sequence[str] | None = None,
             store: str = "window") -> list[str]:
    """Simulate ``n`` Geant4 showers into ``out``; an existing ``out`` is refused unless ``force``.

    ``detector="par04"`` (default): the CaloChallenge W/Si calorimeter voxelised into ``geometry``
    (default ``ds2``; :func:`caloflows.simulation.simulate`).  ``detector="paraflow"``: 24 x 24
    PbWO4 crystals behind an iron plate of thickness ``d`` at distance ``b`` (``conditions``,
    e.g. ``["d=0.5:1.5", "b=50:90"]``), written as the 8 x 16 window
    (:func:`caloflows.simulation.paraflow.simulate_paraflow`, ``paraflow.txt`` sec. 2).

    Example:
        >>> simulate("ds2-coarse", "e-", "pow2:1:16", 100, "train.h5", seed=1)   # doctest: +SKIP
        ['train.h5']
        >>> simulate(None, None, None, 100, "pf.h5", detector="paraflow", conditions=["d=1", "b=70"])  # doctest: +SKIP
    """
    if jobs is not None and jobs < 1:
        raise UsageError(f"--jobs must be at least 1, got {jobs}")
    if detector == "paraflow":
        from .simulation.paraflow import simulate_paraflow

        if geometry is not None:
            raise UsageError("--geometry: the paraflow detector always writes geometry paraflow-8x16")
        return simulate_paraflow(energy or "U:20:100", n, out, conditions=conditions, particle=particle or "gamma",
                                 store=store, seed=seed, shard=shard, jobs=jobs, progress=progress, force=force)
    if detector != "par04":
        raise UsageError(f"--detector {detector!r}: use par04 or paraflow")
    if conditions or store != "window":
        raise UsageError("--condition and --store apply to --detector paraflow only")
    from .simulation import simulate as _simulate

    return list(_simulate(geometry or "ds2", particle or "e-", energy or "1:100", n, out, seed=seed, shard=shard,
                          jobs=jobs, progress=progress, force=force))


def training_data(data: str | os.PathLike[str], bands: Sequence[Any], geometry: Any = None,
                  chunk_size: int = 10_000) -> tuple["str | os.PathLike[str] | Any", int, int]:
    """The training showers of ``data`` without those inside any of ``bands``
    (:class:`caloflows.conditions.Band`): ``(data, n_kept, n_file)``.

    Without bands ``data`` (the path) is returned as it is (families stream big files); with
    bands the kept showers are read in chunks into one in-memory :class:`~caloflows.io.ShowerData`.
    A band on a condition the file lacks, or bands that remove every shower, raise
    :class:`~caloflows.errors.ConditionsError` before any showers are read.

    Example:
        >>> from caloflows.conditions import parse_bands
        >>> data, kept, total = training_data("pf.h5", parse_bands(["d=0.9:1.1"]))   # doctest: +SKIP
    """
    from .conditions import in_bands
    from .io import ShowerData, iter_showers, read_conditions

    names, vals = read_conditions(data)
    if not bands:
        return data, len(vals), len(vals)
    drop = in_bands(names, vals, bands, where=str(data))
    text = " ".join(f"--exclude {b.text}" for b in bands)
    if drop.all():
        raise ConditionsError(f"{text}: removes all {len(vals)} showers of {data}; nothing left to train on")
    parts = []
    for a, blk in zip(range(0, len(vals), chunk_size), iter_showers(data, chunk_size, geometry)):
        keep = ~drop[a:a + len(blk)]
        if keep.any():
            parts.append(blk.subset(np.flatnonzero(keep)))
    first = parts[0]
    kept = ShowerData(np.concatenate([p.incident_energies for p in parts]), np.concatenate([p.showers for p in parts]),
                      np.concatenate([p.conditions for p in parts]) if first.conditions is not None else None,
                      first.condition_names, {**first.attrs, "excluded": "; ".join(b.text for b in bands)},
                      first.condition_units, {k: np.concatenate([p.labels[k] for p in parts]) for k in first.labels})
    return kept, len(kept), len(vals)


def train(kind: str, data: str | os.PathLike[str], out: str | os.PathLike[str], *, geometry: str,
          preset: str = "quick", epochs: int | None = None, seed: int | None = None,
          overrides: Sequence[str] | None = None, device: str = "cpu", resume: bool = False,
          force: bool = False, progress: bool = True, options: Mapping[str, Any] | None = None,
          exclude: Sequence[str] | None = None, compile: bool = False) -> dict:
    """Train a generator of family ``kind`` (one of :data:`caloflows.models.FAMILIES`: ``caloflow``,
    ``l2lflows``, ``icaloflow``, ``supercalo``, ``paraflow``) on ``data``.

    The settings (preset, ``epochs`` for every network, ``seed`` for initialisation, split,
    shuffling and noise, ``overrides`` as ``KEY=VALUE``) are validated before any work; the
    model is conditioned on E_inc and on every named parameter in the file's ``conditions``.
    An existing model directory ``out`` is refused unless ``resume`` (continue it) or ``force``
    (replace only the files a model writes; :func:`caloflows.outputs.check_model_dir`).
    Under ``torchrun`` every process takes a share of each batch (DDP).  Returns a summary.

    ``exclude`` (``["d=0.9:1.1"]``, any named condition of the file, closed intervals, a row is
    dropped if it lies in any band) holds showers out of training: the interpolation test.  The
    bands are recorded in ``config.json`` (``conditions.excluded``), applied again on ``resume``
    and by :func:`distill`; the kept showers are read into memory.

    ``compile`` runs every network's forward through ``torch.compile`` (``TrainConfig.compile``,
    set in every ``*_train`` setting, so a later :func:`distill` compiles too; also on ``resume``).

    Example:
        >>> train("caloflow", "train.h5", "model", geometry="ds2-coarse", seed=3)   # doctest: +SKIP
        >>> train("paraflow", "pf.h5", "pf_model", geometry="paraflow-8x16", exclude=["d=0.9:1.1"])  # doctest: +SKIP
    """
    from dataclasses import replace

    from .conditions import ConditionSpec, parse_bands
    from .io import read_conditions, require_energy
    from .models import family
    from .outputs import check_model_dir, clear_model_dir
    from .training.distributed import init_from_env

    fam = family(kind)
    G = fam.generator()
    g = load_geometry(geometry)
    if epochs is not None and epochs < 1:
        raise UsageError("--epochs must be at least 1")
    opts = dict(options or {})
    bands = parse_bands(exclude)
    if bands and opts.get("gather"):
        raise UsageError("--exclude applies to training, not to --gather")
    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 checks and clears --out
    if main_rank:
        check_model_dir(out, [data, *(opts.get("gather") or [])], resume=resume, force=force)
    if not opts.get("gather"):
        require_energy(data)
    if main_rank and force and not resume:
        clear_model_dir(out)
    if opts.get("gather"):
        from .models.l2lflows import L2LFlows, format_layers, gather

        res = gather(opts["gather"], out)
        L2LFlows.load(out, geometry=g, require_complete=False)
        if res["missing"]:
            res["note"] = f"layers {format_layers(res['missing'])} still missing"
        return res
    out = Path(out)
    existing = (out / "config.json").exists()
    if existing and (resume or kind == "l2lflows"):
        model = G.load(out, geometry=g, **({"require_complete": False} if kind == "l2lflows" else {}))  # type: ignore[arg-type]
        cfg = model.cfg
        spec = model.condition_spec
        if exclude is not None and bands != spec.excluded:
            had = " ".join(b.text for b in spec.excluded) or "none"
            raise ConditionsError(f"--exclude {' '.join(b.text for b in bands) or '(none)'}: {out} was trained with "
                                  f"excluded bands {had}; resume with the same bands (or leave --exclude out)")
        bands = spec.excluded
        train_data, n_kept, n_file = training_data(data, bands, g)
    else:
        cfg = G.Config.preset(preset, g)
        train_data, n_kept, n_file = training_data(data, bands, g)
        names, vals = read_conditions(train_data)
        spec = ConditionSpec.fit(Conditions(np.ones(len(vals)), vals, names), G.condition_scaling) \
            if names else ConditionSpec()
        spec = replace(spec, excluded=bands)
    if not (existing and resume):
        d: dict[str, Any] = {}
        if epochs is not None:
            d["epochs"] = int(epochs)
        if seed is not None:
            d["seed"] = int(seed)
        cfg = cfg.replace_train(**d) if d else cfg
        if seed is not None and hasattr(cfg, "seed"):
            cfg = cfg.override([f"seed={int(seed)}"])
        for o in fam.options:
            if o.target == "config" and opts.get(o.dest) is not None:
                cfg = cfg.override([f"{o.dest}={opts[o.dest]}"])
        cfg = cfg.override(overrides)
        model = G(g, cfg, spec)
    if compile:
        model.cfg = model.cfg.replace_train(compile=True)
    fit_kw = {o.dest: opts[o.dest] for o in fam.options if o.target == "fit" and opts.get(o.dest) is not None}
    if opts.get("no_energy_flow"):
        fit_kw["energy"] = False
    ctx = init_from_env()
    t0 = time.time()
    try:
        summary = model.fit(train_data, out, stage="train", resume=resume, device=device, progress=progress, ctx=ctx,
                            **fit_kw)
    finally:
        ctx.shutdown()
    summary["seconds_total"] = time.time() - t0
    if bands:
        summary["excluded"] = {"bands": [b.text for b in bands], "showers_used": n_kept, "showers_in_file": n_file}
    return summary


def distill(model_dir: str | os.PathLike[str], data: str | os.PathLike[str], *, epochs: int | None = None,
            device: str = "cpu", resume: bool = False, force: bool = False, progress: bool = True,
            compile: bool = False) -> dict:
    """Distill the fast IAF student(s) of a trained teacher model (CaloFlow II, arXiv:2110.11377).

    An existing student is refused unless ``resume`` or ``force`` (replace it).  Condition bands
    the teacher was trained without (``train(exclude=...)``) are left out of ``data`` here too.
    ``compile``: as for :func:`train`.

    Example:
        >>> distill("model", "train.h5", epochs=8)   # doctest: +SKIP
    """
    from .models import load_model
    from .outputs import check_student_free
    from .training.distributed import init_from_env

    if epochs is not None and epochs < 1:
        raise UsageError("--epochs must be at least 1")
    check_student_free(model_dir, resume=resume, force=force)
    model = load_model(model_dir)
    if "distill" not in model.stages:
        raise UsageError(f"{model_dir}: a {model.kind!r} model has no student to distill")
    if compile:
        model.cfg = model.cfg.replace_train(compile=True)
    # the bands the teacher was trained without (config.json) are held out of distillation too
    train_data, _, _ = training_data(data, model.condition_spec.excluded, model.geometry)
    ctx = init_from_env()
    try:
        return model.fit(train_data, model_dir, stage="distill", resume=resume, device=device, progress=progress,
                         ctx=ctx, epochs=epochs)
    finally:
        ctx.shutdown()


def generation_conditions(model: Any, *, n: int | None = None, energies_from: str | None = None,
                          condition: Sequence[str] | None = None, seed: int | None = None) -> "int | Conditions":
    """What to generate for: ``n`` draws from the training law, or the conditions of a file
    (``energies_from``, E_inc and its named parameters; with ``n``: ``n`` rows drawn from it),
    with parameters set or overridden by ``condition`` items (``d=1.0``, ``b=50:90`` uniform)."""
    from .io import read_conditions, read_showers

    ranges = parse_condition_args(condition)
    rng = np.random.default_rng(None if seed is None else seed + 1)
    if energies_from:
        ref = read_showers(energies_from, validate=False)
        e = np.asarray(ref.incident_energies, dtype=np.float64)
        if not np.all(np.isfinite(e)) or np.any(e <= 0):
            raise ShowerFileError(f"{energies_from}: incident energies must be positive and finite")
        names, vals = read_conditions(ref)
        idx = rng.choice(len(e), size=n, replace=True) if n is not None else np.arange(len(e))
        cond = Conditions(e[idx], vals[idx], names)
        if ranges:
            extra = draw_conditions(cond.incident_energies, ranges, rng)
            keep = [k for k, nm in enumerate(cond.names) if nm not in ranges]
            cond = Conditions(cond.incident_energies, np.column_stack([cond.values[:, keep], extra.values]),
                              tuple(cond.names[k] for k in keep) + extra.names)
        if not cond.names and not ranges and not model.n_params:
            return cond
        return model.condition_spec.check(cond, energies_from)
    if n is None:
        raise UsageError("give --n N or --energies FILE.h5")
    if n < 1:
        raise UsageError("--n must be at least 1")
    if not ranges and not model.n_params:
        return int(n)
    if model.n_params == 0:
        raise ConditionsError(f"--condition: unknown condition(s) {sorted(ranges)}; the model was trained with "
                              "E_inc only")
    from .models.base import einc_draw

    e = einc_draw(model.einc_law(), int(n), rng)
    return model.condition_spec.check(draw_conditions(e, ranges, rng), "--condition")


def generate(model_dir: str | os.PathLike[str], out: str | os.PathLike[str], *, n: int | None = None,
             energies_from: str | None = None, condition: Sequence[str] | None = None, batch_size: int = 10_000,
             variant: str | None = None, seed: int | None = None, device: str = "cpu",
             force: bool = False, progress: bool = True, shard: str | None = None,
             backend: str = "torch", chunk_size: int = 10_000, coarse: str | None = None,
             resample: int | None = None, settings: Sequence[str] | None = None) -> dict:
    """Generate showers with a model directory into a CaloChallenge file, written chunk by chunk
    and renamed into place only when complete.

    SuperCalo models only: ``coarse`` upsamples the coarse showers of that file (coarse or fine
    geometry; E_inc and parameters from it) instead of generating from conditions (paper table
    III); ``resample`` = N draws ceil(n / N) coarse showers and upsamples each N times (tables
    V/VI; with ``coarse``: N upsamplings of every coarse shower).

    Conditions: ``n`` showers with E_inc from the training law, or those of ``energies_from``
    (E_inc and named parameters), with parameters from ``condition`` (``NAME=VALUE`` or
    ``NAME=LOW:HIGH`` uniform).  ``variant``: ``teacher`` / ``student`` (default: student if
    distilled).  An existing ``out`` is refused unless ``force``; an input never.

    Generation streams to ``out`` in chunks of ``chunk_size`` showers (bounded memory) with a progress bar in
    showers/s.  Chunk ``k`` is generated from ``(seed, k)`` alone, so ``shard="i/N"`` (needs ``seed``)
    writes chunks ``[i K / N, (i + 1) K / N)`` of the ``K`` chunks and ``caloflows merge`` of the N
    shards equals the unsharded file bit for bit (same options, same machine).
    ``backend="onnxruntime"``: ``model_dir`` is a ``.onnx`` file from ``caloflows export``
    (:class:`caloflows.export.OnnxGenerator`).  ``settings``: ``KEY=VALUE`` generation-time settings
    of the family (CaloFlow: ``voxel_cut_mev``, ``max_ratio``), recorded in the output's attributes.
    Returns ``{"n", "seconds", "ms_per_shower", "out"}``.

    Example:
        >>> generate("model", "gen.h5", energies_from="held_out.h5", seed=4)   # doctest: +SKIP
    """
    from .io import ShowerWriter
    from .models import load_model
    from .outputs import check_output_file

    if batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if n is not None and n < 1:
        raise UsageError("--n must be at least 1")
    if chunk_size < 1:
        raise UsageError("--chunk-size must be at least 1")
    if resample is not None and resample < 1:
        raise UsageError(f"--resample must be at least 1, got {resample}")
    if coarse is not None and (n is not None or energies_from is not None or condition):
        raise UsageError("--coarse takes E_inc and parameters from the coarse file; drop --n/--energies/--condition")
    from .simulation.runner import parse_shard, shard_range

    si, sn = parse_shard(shard)
    if sn > 1 and seed is None:
        raise UsageError("--shard needs --seed: the shards of one run are defined by its seed")
    check_output_file(out, [model_dir, energies_from, coarse], force=force)
    if backend == "onnxruntime":
        if settings:
            raise UsageError("--set does not apply to --backend onnxruntime: the exported graph fixes its settings "
                             "(export the model after changing them)")
        import torch

        from .export import OnnxGenerator

        model: Any = OnnxGenerator(model_dir, threads=torch.get_num_threads())
    elif backend == "torch":
        model = load_model(model_dir, device=device).with_generation_settings(settings)
    else:
        raise UsageError(f"--backend {backend!r}: use torch or onnxruntime")
    if (coarse is not None or resample is not None) and not hasattr(model, "upsample"):
        flag = "--coarse" if coarse is not None else "--resample"
        raise UsageError(f"{flag} applies to supercalo models only; {model_dir} is a {model.kind} model")
    if coarse is not None:
        return _upsample_file(model, model_dir, coarse, out, resample or 1, batch_size, seed)
    what = generation_conditions(model, n=n, energies_from=energies_from, condition=condition, seed=seed)
    if resample is not None and resample > 1 and isinstance(what, Conditions):
        _check_resample_energies(what, resample, energies_from)
    total = len(what) if isinstance(what, Conditions) else int(what)
    chunk = batch_size * max(1, math.ceil(chunk_size / batch_size))
    if resample is not None:
        chunk = max(resample, chunk - chunk % resample)  # a coarse shower's N upsamplings stay in one chunk
    starts = list(range(0, total, chunk))
    k0, k1 = shard_range(len(starts), (si, sn))
    if k1 <= k0:
        raise UsageError(f"--shard {si}/{sn}: the run has only {len(starts)} chunk(s) of {chunk} showers; "
                         "use fewer shards or a smaller --chunk-size")
    attrs = {"generator": model.kind, "model_dir": str(model_dir), "geometry": model.geometry.name,
             "variant": variant or "default", "seed": "None" if seed is None else seed, "backend": backend,
             "shard": f"{si}/{sn}", "n_showers_run": total, "generation_settings": ",".join(settings or [])}
    names = model.condition_spec.names or None
    n_here = sum(min(chunk, total - starts[k]) for k in range(k0, k1))
    t0 = time.time()
    from tqdm.auto import tqdm

    with ShowerWriter(out, model.geometry.n_voxels, attrs=attrs, condition_names=names) as w, \
            tqdm(total=n_here, unit="shower", desc=f"generate ({model.kind})", disable=None if progress else True) as bar:
        for k in range(k0, k1):
            a = starts[k]
            m = min(chunk, total - a)
            part = what[a:a + m] if isinstance(what, Conditions) else m
            s = None if seed is None else seed * 100_003 + k
            if resample is not None:
                d = model.sample_resampled(part, resample, batch_size, seed=s, device=device, progress=False,
                                           variant=variant)
            else:
                d = model.sample(part, batch_size, seed=s, device=device, progress=False, variant=variant)
            w.append(d.incident_energies, d.showers, d.conditions)
            bar.update(m)
    dt = time.time() - t0
    return {"n": n_here, "seconds": dt, "ms_per_shower": 1e3 * dt / max(n_here, 1), "out": str(out)}


def _check_resample_energies(what: Conditions, resample: int, source: Any) -> None:
    """``--resample N`` generates every group of N showers at the E_inc (and parameters) of the
    group's first row.  Warn when those rows are not a fair sample of all rows: a file that cycles
    through its energies (1, 2, 4, 8, 16 GeV, ...) would give one energy only with N = 5 or 10."""
    import warnings

    from scipy.stats import ks_2samp

    from .conditions import ConditionsWarning

    e = np.asarray(what.incident_energies, dtype=np.float64)
    lead = e[::resample]
    if len(lead) < 2 or np.ptp(e) == 0:
        return
    p = float(ks_2samp(lead, e).pvalue)
    if p < 1e-3:
        warnings.warn(f"{source or 'energies'}: --resample {resample} generates each group of {resample} showers at "
                      f"the E_inc of its first row, and those {len(lead)} energies are not distributed as all "
                      f"{len(e)} (Kolmogorov-Smirnov p = {p:.1g}; mean {lead.mean():g} against {e.mean():g} MeV): "
                      "shuffle the file's rows first", ConditionsWarning, stacklevel=3)


def _upsample_file(model: Any, model_dir: Any, coarse: str, out: Any, resample: int, batch_size: int,
                   seed: int | None) -> dict:
    """``generate --coarse``: upsample every coarse shower of ``coarse`` ``resample`` times into ``out``."""
    from .io import ShowerWriter
    from .models.supercalo import load_coarse_file

    c, layers, cond = load_coarse_file(coarse, model)
    names = model.condition_spec.names or None
    attrs = {"generator": model.kind, "model_dir": str(model_dir), "geometry": model.geometry.name,
             "variant": "upsample", "coarse": str(coarse), "resample": int(resample),
             "seed": "None" if seed is None else seed}
    per = max(1, 10_000 // resample)
    t0 = time.time()
    with ShowerWriter(out, model.geometry.n_voxels, attrs=attrs, condition_names=names) as w:
        for k, a in enumerate(range(0, len(c), per)):
            sl = slice(a, a + per)
            d = model.upsample(c[sl], cond.incident_energies[sl], resample, None if seed is None else seed * 100_003 + k,
                               layer_energies=None if layers is None else layers[sl], conditions=cond[sl],
                               batch_size=batch_size)
            w.append(d.incident_energies, d.showers, d.conditions)
    dt = time.time() - t0
    total = len(c) * resample
    return {"n": total, "seconds": dt, "ms_per_shower": 1e3 * dt / total, "out": str(out)}


def evaluate(generated: str, reference: str, geometry: str, **kw: Any) -> dict:
    """Compare generated showers with a Geant4 reference (CaloChallenge metrics, review sec. 8);
    see :func:`caloflows.evaluation.evaluate` for the options.

    Example:
        >>> evaluate("generated.h5", "held_out.h5", "ds2-coarse", out="report")   # doctest: +SKIP
    """
    from .evaluation.api import evaluate as _evaluate

    return _evaluate(generated, reference, geometry, **kw)
