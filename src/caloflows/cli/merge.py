"""``caloflows merge OUT IN...``: concatenate shower files (e.g. ``simulate --shard`` outputs)."""

from __future__ import annotations

from ..io import merge_files


def register(sub) -> None:
    p = sub.add_parser("merge", help="concatenate shower files (simulation shards) in the order given")
    p.add_argument("out", help="merged output file (written atomically)")
    p.add_argument("inputs", nargs="+", help="input files, in order (shards 0/N, 1/N, ...)")
    p.add_argument("--geometry", default=None, help="geometry to validate against (default: none)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists (never an input)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..outputs import check_output_file

    check_output_file(args.out, args.inputs, force=args.force)
    n = merge_files(args.inputs, args.out, geometry=args.geometry)
    print(f"wrote {args.out}: {n} showers from {len(args.inputs)} file(s)")
    return 0
