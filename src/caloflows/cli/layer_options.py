"""Extra options of ``caloflows train l2lflows`` (kept free of torch imports so the CLI starts fast)."""

from __future__ import annotations


def add_l2lflows_options(p) -> None:
    p.add_argument("--layers", help="causal flows to train, e.g. 10-19 or 0,3,5-7 (default: all); "
                                    "run several jobs with disjoint ranges and --gather them")
    p.add_argument("--no-energy-flow", action="store_true",
                   help="do not train the energy distribution flow in this run (another job trains it)")
    p.add_argument("--gather", nargs="+", metavar="DIR",
                   help="instead of training: copy the flows of these model directories into --out "
                        "(checks they were trained on the same data and settings)")
    p.add_argument("--cache-mb", type=float,
                   help="keep a layer's training columns in memory up to this many MB, else stream them "
                        "chunk by chunk from the HDF5 file (default 1024)")
