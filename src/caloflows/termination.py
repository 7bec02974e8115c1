"""Clean termination: SIGTERM is handled like SIGINT.

``timeout``, batch schedulers (Slurm, HTCondor) and ``kill`` send SIGTERM.  Python's default
for it is to die at once, skipping ``finally`` blocks, so worker processes would run on and
temporary files stay behind.  :func:`sigterm_raises` turns SIGTERM into the exception
:class:`Terminated` (a :class:`BaseException`, like :class:`KeyboardInterrupt`), so the same
clean-up code runs; the command line then exits with status 143 (128 + SIGTERM).

Example:
    >>> from caloflows.termination import sigterm_raises
    >>> with sigterm_raises():
    ...     pass          # a SIGTERM in here raises Terminated
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = ["Terminated", "sigterm_raises", "EXIT_SIGTERM"]

#: exit status of a command ended by SIGTERM (128 + 15), as a shell reports it
EXIT_SIGTERM = 128 + signal.SIGTERM


class Terminated(BaseException):
    """Raised in the main thread when the process receives SIGTERM inside :func:`sigterm_raises`."""


def _raise(signum, frame):  # noqa: ARG001 - signal handler signature
    raise Terminated(f"terminated by signal {signum}")


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (main thread only; elsewhere a no-op).
    The previous handler is restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
