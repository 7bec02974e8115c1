"""The ``caloflows`` command line.

Each subcommand lives in its own module of this package with a ``register(subparsers)``
function that adds its parser and sets ``func``; :data:`COMMANDS` lists them.  Errors a
user can fix (bad files, bad arguments) are printed as one line ``caloflows: error: ...``
with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__
from ..errors import CaloflowsError, UsageError

#: the error CLI modules raise for bad arguments (printed as one line)
UserError = UsageError

#: subcommand modules, in the order they appear in ``caloflows --help``
COMMANDS = [
    "demo",
    "info",
    "simulate",
    "merge",
    "evaluate",
    "train",
    "distill",
    "generate",
    "export",
]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="caloflows",
        description="Fast calorimeter shower simulation with normalizing flows.",
    )
    p.add_argument("--version", action="version", version=f"caloflows {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from ..termination import EXIT_SIGTERM, Terminated, sigterm_raises

    try:
        with sigterm_raises():  # SIGTERM (timeout, batch systems) cleans up like Ctrl-C
            rc = args.func(args)
            sys.stdout.flush()
    except CaloflowsError as exc:
        print(f"caloflows: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("caloflows: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("caloflows: terminated (SIGTERM); temporary files removed", file=sys.stderr)
        return int(EXIT_SIGTERM)
    except BrokenPipeError:  # `caloflows info f.h5 | head`: the reader went away, not an error of ours
        _silence_stdout()
        return 141  # 128 + SIGPIPE, as `yes | head` reports
    return int(rc or 0)


def _silence_stdout() -> None:
    """After a broken pipe, point stdout at /dev/null so the interpreter's final flush is quiet."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
