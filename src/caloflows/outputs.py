"""Output policy: no caloflows command destroys data it did not create.

Every command that writes checks its outputs here *before* any expensive work:

* an output **file** (:func:`check_output_file`) that exists is refused unless ``force``; one
  that is the same file as an input (same inode or same resolved path), a special file
  (device, FIFO, socket), a directory, a path inside an input model directory, or one whose
  parent directory is missing or not writable is refused even with ``force``;
* a **report directory** (:func:`check_report_dir`, ``evaluate --out``) must be new or empty;
  with ``force`` only a directory carrying :data:`REPORT_MARKER` and nothing but the files a
  report writes is replaced; a directory holding an input is never replaced;
* a **model directory** (:func:`check_model_dir`, ``train --out``) that already holds a model
  is refused unless ``resume`` or ``force``; with ``force`` :func:`clear_model_dir` removes
  only the files a model writes (:func:`model_files`), never foreign files.

Files are written through temporaries next to the target and renamed into place
(:func:`caloflows.io.atomic_output`); their names carry the writer's host tag and process id
(:func:`temp_tag`), so a later run into the same directory recognises the leftovers of a
killed run (:func:`clean_orphans`): the writer is dead (same host) -> removed, otherwise
reported.  Refusals raise :class:`caloflows.errors.OutputError` with a one-line message.

This follows what h5py (mode ``'w'`` required to clobber), git (untracked files are never
overwritten) and pip (nothing outside its records is removed) do.

Example:
    >>> from caloflows.outputs import check_output_file
    >>> check_output_file("gen.h5", inputs=["train.h5"])      # doctest: +SKIP
    PosixPath('gen.h5')
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import socket
import stat
import sys
from collections.abc import Callable, Iterable, Sequence
from fnmatch import fnmatch
from pathlib import Path

from .errors import OutputError

__all__ = [
    "REPORT_MARKER",
    "REPORT_PATTERNS",
    "MODEL_PATTERNS",
    "temp_tag",
    "temp_prefix",
    "check_output_file",
    "check_output_files",
    "check_report_dir",
    "check_model_dir",
    "check_student_free",
    "model_files",
    "clear_model_dir",
    "clean_orphans",
    "replace_dir",
]

#: marker file every report directory written by ``caloflows evaluate`` carries
REPORT_MARKER = ".caloflows-report"
#: the only entries a report directory holds (``--force`` replaces nothing else)
REPORT_PATTERNS = (REPORT_MARKER, "metrics.json", "paraflow_metrics.json", "report.html", "*.png")
#: files a model directory's training writes (``train --force`` removes only these)
MODEL_PATTERNS = ("config.json", "constants.json", "*.safetensors", "*.safetensors.sha256", "history_*.json",
                  "loss_*.png", "checkpoints/*.pt", "checkpoints/*.json")

_HOST_TAG = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]
#: ``cf<host tag>-<pid>-`` inside a temporary's name
_TAG_RE = re.compile(r"cf([0-9a-f]{6})-(\d+)-")


def _say(msg: str) -> None:
    print(f"caloflows: {msg}", file=sys.stderr)


def temp_tag() -> str:
    """``cf<host>-<pid>-``: put into every temporary name, so :func:`clean_orphans` can tell a
    killed writer's leftovers (dead process on this host) from a live run's."""
    return f"cf{_HOST_TAG}-{os.getpid()}-"


def temp_prefix(name: str) -> str:
    """Prefix of a temporary file/dir next to the output ``name``: ``.<name>.cf<host>-<pid>-``."""
    return f".{name}.{temp_tag()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_orphans(directory: "str | os.PathLike", names: Iterable[str] | None = None,
                  notify: Callable[[str], None] = _say) -> list[str]:
    """Remove the temporaries of killed caloflows runs in ``directory``; return what was removed.

    A temporary is ours when its name starts with ``.`` and carries :func:`temp_tag`
    (``.<name>.cf<host>-<pid>-XXXX.tmp`` from :func:`caloflows.io.atomic_output`,
    ``.caloflows-sim-cf<host>-<pid>-XXXX`` from ``simulate``).  It is removed when its process
    is dead on this host; one written on another host, or by a live process, is left alone and
    reported; legacy ``.caloflows-sim-XXXX`` directories (no tag) are reported.  ``names``
    restricts the search to temporaries of these output names (``None``: all of ours).
    """
    d = Path(directory)
    if not d.is_dir():
        return []
    removed: list[str] = []
    wanted = None if names is None else {str(n) for n in names}
    try:
        entries = list(os.scandir(d))
    except OSError:
        return []
    for e in entries:
        n = e.name
        if not n.startswith("."):
            continue
        sim = n.startswith(".caloflows-sim-")
        if not sim and wanted is not None and not any(n.startswith(f".{w}.cf") for w in wanted):
            continue
        m = _TAG_RE.search(n)
        if m is None:
            if sim:
                notify(f"warning: {e.path}: temporary directory of an interrupted caloflows simulate run "
                       f"(older version, owner unknown); remove it if no simulation is running")
            continue
        host, pid = m.group(1), int(m.group(2))
        if host != _HOST_TAG:
            notify(f"warning: {e.path}: temporary of a caloflows run on another host (pid {pid}); "
                   f"remove it if that run is over")
            continue
        if pid == os.getpid() or _pid_alive(pid):
            continue  # a live run's temporary
        try:
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(e.path)
            else:
                os.unlink(e.path)
        except OSError as exc:
            notify(f"warning: {e.path}: cannot remove temporary of an interrupted run ({exc.strerror})")
            continue
        removed.append(e.path)
        notify(f"removed {e.path} (left by an interrupted caloflows run, pid {pid})")
    return removed


# ------------------------------------------------------------------ inputs
def _real(p: "str | os.PathLike") -> str:
    return os.path.realpath(os.fspath(p))


def _same(a: "str | os.PathLike", b: "str | os.PathLike") -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return _real(a) == _real(b)


def _inside(path: "str | os.PathLike", directory: "str | os.PathLike") -> bool:
    p, d = _real(path), _real(directory)
    return p == d or p.startswith(d.rstrip(os.sep) + os.sep)


def _check_parent(path: Path, what: str) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise OutputError(f"{path}: {what} directory {parent} does not exist")
    if not parent.is_dir():
        raise OutputError(f"{path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: directory {parent} is not writable")


def _special(st: os.stat_result) -> str | None:
    m = st.st_mode
    for test, name in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(m):
            return name
    return None


def check_output_file(path: "str | os.PathLike", inputs: Sequence["str | os.PathLike | None"] = (), *,
                      force: bool = False, what: str = "output") -> Path:
    """Check that ``path`` may be written as a new (or, with ``force``, replaced) regular file.

    Raises :class:`OutputError` when ``path`` exists and ``force`` is false; and always when it
    is an input (same inode or resolved path), lies inside an input directory, is a directory,
    a special file (device, FIFO, socket), or its parent directory is missing or not writable.
    Removes orphaned temporaries of ``path`` left by killed runs.  Returns ``Path(path)``.
    """
    p = Path(path)
    if str(path) == "" or str(path).endswith(os.sep):
        raise OutputError(f"{path!r}: {what} must be a file name, not a directory")
    for inp in inputs:
        if inp is None:
            continue
        if os.path.isdir(inp):
            if _inside(p, inp):
                raise OutputError(f"{p}: {what} lies inside the input directory {inp}; refused")
        elif os.path.lexists(p) and os.path.exists(inp) and _same(p, inp) or _real(p) == _real(inp):
            raise OutputError(f"{p}: {what} is the input file {inp}; refused (even with --force)")
    try:
        st = os.stat(p)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise OutputError(f"{p}: cannot check {what} ({exc.strerror})") from None
    if st is not None:
        kind = _special(st)
        if kind:
            raise OutputError(f"{p}: {what} is {kind}; never replaced")
        if stat.S_ISDIR(st.st_mode):
            raise OutputError(f"{p}: {what} is a directory, a file is expected")
        if not force:
            raise OutputError(f"{p}: {what} exists; pass --force to replace it")
    _check_parent(p, what)
    clean_orphans(p.parent if str(p.parent) else ".", names=[p.name])
    return p


def check_output_files(paths: Iterable["str | os.PathLike"], inputs: Sequence["str | os.PathLike | None"] = (), *,
                       force: bool = False, what: str = "output") -> list[Path]:
    """:func:`check_output_file` for several outputs (which must also differ from each other)."""
    out = [check_output_file(p, inputs, force=force, what=what) for p in paths]
    if len({_real(p) for p in out}) != len(out):
        raise OutputError(f"{', '.join(map(str, out))}: two outputs are the same file")
    return out


# ------------------------------------------------------------------ report directories
def _is_report_entry(name: str) -> bool:
    return any(fnmatch(name, pat) for pat in REPORT_PATTERNS)


def check_report_dir(out: "str | os.PathLike", inputs: Sequence["str | os.PathLike | None"] = (), *,
                     force: bool = False) -> Path:
    """Check the report directory ``out`` of ``caloflows evaluate`` before any work.

    Allowed: a new path (parent writable) or an existing empty directory.  With ``force``: a
    directory carrying :data:`REPORT_MARKER` whose entries all match :data:`REPORT_PATTERNS`.
    Refused always: a file, a special file, ``out`` containing (or being) an input, a
    directory that is not a report or holds foreign files.
    """
    p = Path(out)
    for inp in inputs:
        if inp is not None and (_inside(inp, p) or _inside(p, inp) and os.path.isdir(inp)):
            raise OutputError(f"{p}: report directory contains the input {inp}; refused (even with --force)")
    if not os.path.lexists(p):
        _check_parent(Path(os.path.abspath(p)), "report")
        return p
    st = os.stat(p)
    kind = _special(st)
    if kind:
        raise OutputError(f"{p}: report directory is {kind}; never replaced")
    if not stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{p}: is a file, a report directory is expected")
    clean_orphans(Path(os.path.abspath(p)).parent, names=[Path(os.path.abspath(p)).name])
    entries = sorted(os.listdir(p))
    if not entries:
        _check_parent(Path(os.path.abspath(p)), "report")
        return p
    if REPORT_MARKER not in entries:
        raise OutputError(f"{p}: exists and is not a caloflows report directory (no {REPORT_MARKER}); "
                          f"choose a new --out")
    if not force:
        raise OutputError(f"{p}: report directory exists; pass --force to replace it")
    foreign = [e for e in entries if not _is_report_entry(e) or os.path.isdir(p / e)]
    if foreign:
        raise OutputError(f"{p}: holds files the report did not write ({', '.join(foreign[:5])}); "
                          f"refused even with --force")
    _check_parent(Path(os.path.abspath(p)), "report")
    return p


def replace_dir(tmp: "str | os.PathLike", out: "str | os.PathLike", *, force: bool = False) -> None:
    """Rename the finished directory ``tmp`` to ``out``; an existing ``out`` must pass
    :func:`check_report_dir` (checked again now) and is removed only after the rename."""
    out = Path(out)
    if os.path.lexists(out):
        check_report_dir(out, force=force)
        if os.listdir(out):
            old = out.parent / f"{temp_prefix(out.name)}{os.urandom(4).hex()}.old"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
            return
    os.replace(tmp, out)


# ------------------------------------------------------------------ model directories
def model_files(directory: "str | os.PathLike") -> list[Path]:
    """The files in ``directory`` that caloflows training writes (:data:`MODEL_PATTERNS`), also those
    of nested sub-model directories (a sub-directory with its own ``config.json``: SuperCalo's ``coarse/``)."""
    d = Path(directory)
    found: list[Path] = []
    for pat in MODEL_PATTERNS:
        found.extend(x for x in d.glob(pat) if x.is_file() and not x.is_symlink())
    if (d / "config.json").is_file():
        for sub in sorted(d.iterdir()):
            if sub.is_dir() and not sub.is_symlink() and sub.name != "checkpoints" and (sub / "config.json").is_file():
                found.extend(model_files(sub))
    return sorted(set(found))


def check_model_dir(directory: "str | os.PathLike", inputs: Sequence["str | os.PathLike | None"] = (), *,
                    resume: bool = False, force: bool = False) -> Path:
    """Check the model directory of ``caloflows train --out`` before any work.

    A new path or an empty directory is fine.  A directory that already holds model files
    (:func:`model_files`) is refused unless ``resume`` (continue it) or ``force`` (its model
    files are removed by :func:`clear_model_dir`; foreign files are kept).  A file where a
    directory is expected, or an input file among the model files, is always refused.
    """
    p = Path(directory)
    if os.path.lexists(p):
        st = os.stat(p)
        if not stat.S_ISDIR(st.st_mode):
            kind = _special(st) or "a file"
            raise OutputError(f"{p}: is {kind}, a model directory is expected")
        ours = model_files(p)
        for inp in inputs:
            if inp is not None and any(_same(f, inp) for f in ours):
                raise OutputError(f"{p}: the input {inp} is a file of this model directory; refused")
        if ours and not (resume or force):
            raise OutputError(f"{p}: already holds a model ({ours[0].name}, ...); pass --resume to continue "
                              f"it or --force to replace its model files")
        if not os.access(p, os.W_OK | os.X_OK):
            raise OutputError(f"{p}: model directory is not writable")
        clean_orphans(p)
        if (p / "checkpoints").is_dir():
            clean_orphans(p / "checkpoints")
    else:
        _check_parent(Path(os.path.abspath(p)), "model")
    return p


def clear_model_dir(directory: "str | os.PathLike") -> list[Path]:
    """Remove the files training wrote into ``directory`` (``train --force``); keep all others.
    Returns the removed paths."""
    removed = model_files(directory)
    for f in removed:
        try:
            f.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise OutputError(f"{f}: cannot remove ({exc.strerror})") from None
    ck = Path(directory) / "checkpoints"
    try:
        ck.rmdir()  # only if empty
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
            raise
    return removed


def check_student_free(model_dir: "str | os.PathLike", *, resume: bool = False, force: bool = False) -> None:
    """``caloflows distill``: refuse to replace an existing student (``*student*.safetensors``)
    unless ``resume`` or ``force``."""
    d = Path(model_dir)
    if not d.is_dir():
        return  # the model loader reports it
    found = sorted(d.glob("*student*.safetensors"))
    if (d / "config.json").is_file():  # nested sub-models (SuperCalo's coarse/) of a model directory
        found += sorted(x for x in d.glob("*/*student*.safetensors") if (x.parent / "config.json").is_file())
    if found and not (resume or force):
        raise OutputError(f"{d}: already holds a distilled student ({found[0].name}); pass --force to "
                          f"replace it or --resume to continue an interrupted distillation")
    if not os.access(d, os.W_OK | os.X_OK):
        raise OutputError(f"{d}: model directory is not writable")
