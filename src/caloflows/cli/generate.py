"""``caloflows generate MODEL_DIR --n N | --energies FILE.h5 --out GEN.h5``: sample showers.

``--energies REF.h5`` takes the incident energies of a reference file (same number and
distribution; with ``--n`` too, N energies are drawn from the reference's).  ``--n`` alone
draws from the training distribution stored in the model.  The output is a CaloChallenge
file written chunk by chunk and renamed into place only when complete.
"""

from __future__ import annotations

import math
import time

import numpy as np

from . import UserError


def register(sub) -> None:
    p = sub.add_parser("generate", help="generate showers with a trained model")
    p.add_argument("model_dir", metavar="MODEL_DIR", help="model directory")
    p.add_argument("--n", type=int, help="number of showers")
    p.add_argument("--energies", metavar="FILE.h5", help="take incident energies from this shower file")
    p.add_argument("--out", required=True, help="output HDF5 file")
    p.add_argument("--batch-size", type=int, default=10_000, help="showers per network batch (default 10000)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--student", dest="variant", action="store_const", const="student", help="use the IAF student (default if distilled)")
    g.add_argument("--teacher", dest="variant", action="store_const", const="teacher", help="use the MAF teacher (slow)")
    p.add_argument("--seed", type=int, default=None, help="random seed")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--force", action="store_true", help="replace --out if it exists (never an input)")
    p.set_defaults(func=run, variant=None)


def incident_energies_for(args) -> "np.ndarray | int":
    from ..io import read_showers

    if args.energies:
        from ..io import ShowerFileError

        ref = read_showers(args.energies, validate=False, stop=None)
        e = ref.incident_energies
        if not np.all(np.isfinite(e)) or np.any(e <= 0):
            raise ShowerFileError(f"{args.energies}: incident energies must be positive and finite")
        if args.n is not None:
            rng = np.random.default_rng(None if args.seed is None else args.seed + 1)
            e = rng.choice(e, size=args.n, replace=True)
        return e
    if args.n is None:
        raise UserError("give --n N or --energies FILE.h5")
    return int(args.n)


def generate_to_file(
    model_dir: str,
    out: str,
    *,
    n: int | None = None,
    energies: "np.ndarray | None" = None,
    batch_size: int = 10_000,
    variant: str | None = None,
    seed: int | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> dict:
    """Generate showers with any model directory into a CaloChallenge file (atomic).

    ``energies`` (MeV) gives one shower per entry; else ``n`` showers with incident energies
    from the model's training distribution.  ``variant`` is ``"student"``, ``"teacher"`` or None
    (the model's default).  Returns ``{"n", "seconds", "ms_per_shower", "out"}``.
    """
    from ..io import ShowerWriter
    from ..models import load_model

    model = load_model(model_dir, device=device)
    if energies is None and n is None:
        raise ValueError("give n or energies")
    total = len(energies) if energies is not None else int(n)
    kw = {} if variant is None else {"student": variant == "student"}
    chunk = batch_size * max(1, math.ceil(10_000 / batch_size))
    attrs = {"generator": model.kind, "model_dir": str(model_dir), "geometry": model.geometry.name,
             "variant": variant or "default", "seed": "None" if seed is None else seed}
    t0 = time.time()
    with ShowerWriter(out, model.geometry.n_voxels, attrs=attrs) as w:
        for k, a in enumerate(range(0, total, chunk)):
            m = min(chunk, total - a)
            what = energies[a:a + m] if energies is not None else m
            s = None if seed is None else seed * 100_003 + k
            e, sh = model.sample(what, batch_size, seed=s, device=device, progress=progress, **kw)
            w.append(e, sh)
    dt = time.time() - t0
    return {"n": total, "seconds": dt, "ms_per_shower": 1e3 * dt / total, "out": str(out)}


def run(args) -> int:
    from ..training.checkpoint import ModelDirError

    if args.n is not None and args.n < 1:
        raise UserError("--n must be at least 1")
    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    from ..outputs import check_output_file

    check_output_file(args.out, [args.model_dir, args.energies], force=getattr(args, "force", False))
    try:
        spec = incident_energies_for(args)
        r = generate_to_file(args.model_dir, args.out, n=None if isinstance(spec, np.ndarray) else spec,
                             energies=spec if isinstance(spec, np.ndarray) else None, batch_size=args.batch_size,
                             variant=args.variant, seed=args.seed, device=args.device)
    except (ModelDirError, ValueError) as exc:
        if type(exc).__name__ in ("ShowerFileError", "GeometryError"):
            raise
        raise UserError(str(exc)) from None
    except TypeError as exc:
        raise UserError(f"{args.model_dir}: this model does not support --student/--teacher ({exc})") from None
    print(f"generated {r['n']} showers in {r['seconds']:.1f} s ({r['ms_per_shower']:.3f} ms/shower) -> {args.out}")
    return 0
