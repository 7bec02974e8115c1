"""``caloflows generate MODEL_DIR --n N | --energies FILE.h5 --out GEN.h5``: sample showers.

``--energies REF.h5`` takes the incident energies (and named detector parameters) of a
reference file (with ``--n`` too, N rows are drawn from it); ``--n`` alone draws E_inc from the
training distribution stored in the model; ``--condition NAME=VALUE`` or ``NAME=LOW:HIGH``
sets a detector parameter (fixed or uniform).  The work is :func:`caloflows.api.generate`.
"""

from __future__ import annotations

from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("generate", help="generate showers with a trained model")
    p.add_argument("model_dir", metavar="MODEL_DIR", help="model directory")
    p.add_argument("--n", type=int, help="number of showers")
    p.add_argument("--energies", metavar="FILE.h5", help="take incident energies (and conditions) from this shower file")
    p.add_argument("--condition", action="append", metavar="NAME=VALUE|LOW:HIGH", default=[],
                   help="a detector parameter of the model, fixed or uniform in a range (repeatable)")
    p.add_argument("--coarse", metavar="FILE.h5", help="supercalo: upsample the coarse showers of this file "
                   "(coarse or fine geometry) instead of generating them")
    p.add_argument("--resample", type=int, metavar="N", help="supercalo: upsample each coarse shower N times "
                   "(ceil(n/N) coarse showers)")
    p.add_argument("--out", required=True, help="output HDF5 file")
    p.add_argument("--batch-size", type=int, default=10_000, help="showers per network batch (default 10000)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--student", dest="variant", action="store_const", const="student", help="use the IAF student (default if distilled)")
    g.add_argument("--teacher", dest="variant", action="store_const", const="teacher", help="use the MAF teacher (slow)")
    p.add_argument("--seed", type=int, default=None, help="random seed")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--force", action="store_true", help="replace --out if it exists (never an input)")
    p.add_argument("--shard", metavar="i/N", help="write only part i of N of the run (needs --seed); "
                                                  "'caloflows merge' of the N parts equals the unsharded file")
    p.add_argument("--chunk-size", type=int, default=10_000,
                   help="showers generated and written per chunk (bounded memory; the unit of --shard; default 10000)")
    p.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch",
                   help="onnxruntime: MODEL_DIR is a .onnx file written by 'caloflows export'")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="generation-time setting of the model, e.g. voxel_cut_mev=2 (CaloFlow, L2LFlows, "
                        "iCaloFlow: threshold-aware cut at 2 MeV, L2LFlows B.9); student_weights=int8 (families "
                        "with a student: its MADE output layers as int8, faster at batch 1, showers within "
                        "the quantisation error)")
    p.set_defaults(func=run, variant=None)


def run(args: Any) -> int:
    from ..api import generate

    r = generate(args.model_dir, args.out, n=args.n, energies_from=args.energies, condition=args.condition,
                 batch_size=args.batch_size, variant=args.variant, seed=args.seed, device=args.device,
                 force=args.force, shard=args.shard, backend=args.backend, chunk_size=args.chunk_size,
                 coarse=args.coarse, resample=args.resample, settings=args.settings)
    print(f"generated {r['n']} showers in {r['seconds']:.1f} s ({r['ms_per_shower']:.3f} ms/shower) -> {args.out}")
    return 0
