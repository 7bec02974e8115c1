"""Reading, validating and writing CaloChallenge HDF5 shower files.

Format (review sec. 2): ``incident_energies`` with shape (N, 1) and ``showers`` with
shape (N, n_voxels), energies in MeV, written with h5py and gzip compression.
caloflows adds, optionally:

* ``conditions`` (N, K) with attribute ``names`` (and optionally ``units``): extra
  per-shower conditions, e.g. the detector parameters ParaFlow conditions on
  (``paraflow.txt``);
* further per-shower datasets (first dimension N), e.g. ParaFlow's full 24 x 24 image
  ``showers_full``: written by :class:`ShowerWriter` (``extra=``) and carried over by
  :func:`merge_files`;
* file attributes (``attrs``) recording provenance: geometry, generator, physics list,
  Geant4 data tables used, seeds.

Every error names the file and the problem (:class:`ShowerFileError`).  Writes go to a
temporary file in the target directory and are renamed into place only when complete,
so an interrupted write never leaves a file that looks valid.

>>> import tempfile, os, numpy as np
>>> d = tempfile.mkdtemp()
>>> p = os.path.join(d, "x.h5")
>>> write_showers(p, np.array([1000.0, 2000.0]), np.ones((2, 648), np.float32), geometry="ds2-coarse")
>>> read_showers(p, geometry="ds2-coarse").showers.shape
(2, 648)
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from .errors import ShowerFileError, UsageError
from .geometry import Geometry, load_geometry

__all__ = [
    "ShowerData",
    "ShowerFileError",
    "read_showers",
    "iter_showers",
    "write_showers",
    "validate_file",
    "merge_files",
    "atomic_output",
    "file_summary",
    "read_conditions",
    "read_labels",
    "CONVERTED",
    "LABELS",
    "check_values",
    "check_layout",
    "open_file",
    "require_energy",
]

INCIDENT = "incident_energies"
SHOWERS = "showers"
CONDITIONS = "conditions"
#: per-shower truth labels a simulation may store next to the showers, read into
#: :attr:`ShowerData.labels` when present: ``converted`` (``caloflows simulate --detector
#: paraflow``: 1 if the primary photon converted to e+e- in the upstream plate)
CONVERTED = "converted"
LABELS = (CONVERTED,)




@dataclass
class ShowerData:
    """Showers read from (or to be written to) a CaloChallenge file.

    Attributes:
        incident_energies: (N,) incident energies in MeV.
        showers: (N, n_voxels) voxel energies in MeV.
        conditions: optional (N, K) extra conditions, named by ``condition_names``.
        attrs: file attributes (provenance).
        labels: per-shower truth labels of the simulation found in the file (:data:`LABELS`),
            name -> (N,) array.
    """

    incident_energies: np.ndarray
    showers: np.ndarray
    conditions: np.ndarray | None = None
    condition_names: tuple[str, ...] = ()
    attrs: dict = field(default_factory=dict)
    condition_units: tuple[str, ...] = ()
    labels: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.incident_energies)

    def subset(self, idx) -> "ShowerData":
        return ShowerData(
            self.incident_energies[idx],
            self.showers[idx],
            None if self.conditions is None else self.conditions[idx],
            self.condition_names,
            dict(self.attrs),
            self.condition_units,
            {k: v[idx] for k, v in self.labels.items()},
        )


# ---------------------------------------------------------------- helpers
def _geometry(geometry) -> Geometry | None:
    return None if geometry is None else load_geometry(geometry)


def _open(path) -> h5py.File:
    path = str(path)
    if not os.path.exists(path):
        raise ShowerFileError(f"{path}: file not found")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise ShowerFileError(f"{path}: not a readable HDF5 file ({exc})") from None


def _decode(v):
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, str) and v[:1] in "[{":
        try:  # lists and dicts are stored as JSON text (see _attr_value)
            return json.loads(v)
        except ValueError:
            return v
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


def _check_layout(path: str, f: h5py.File, geometry: Geometry | None) -> tuple[int, int]:
    for name in (INCIDENT, SHOWERS):
        if name not in f:
            raise ShowerFileError(f"{path}: missing dataset '{name}' (found: {', '.join(f.keys()) or 'nothing'})")
    inc, sh = f[INCIDENT], f[SHOWERS]
    if sh.ndim != 2:
        raise ShowerFileError(f"{path}: 'showers' must be 2-dimensional (N, voxels), got shape {sh.shape}")
    if inc.ndim not in (1, 2) or (inc.ndim == 2 and inc.shape[1] != 1):
        raise ShowerFileError(f"{path}: 'incident_energies' must have shape (N, 1), got {inc.shape}")
    if inc.shape[0] != sh.shape[0]:
        raise ShowerFileError(
            f"{path}: {inc.shape[0]} incident energies but {sh.shape[0]} showers (N must match)"
        )
    if geometry is not None and sh.shape[1] != geometry.n_voxels:
        raise ShowerFileError(
            f"{path}: showers have {sh.shape[1]} voxels but geometry {geometry.name!r} has {geometry.n_voxels}"
        )
    if CONDITIONS in f and f[CONDITIONS].shape[0] != sh.shape[0]:
        raise ShowerFileError(f"{path}: 'conditions' has {f[CONDITIONS].shape[0]} rows, showers {sh.shape[0]}")
    return int(sh.shape[0]), int(sh.shape[1])


def _check_values(path: str, inc: np.ndarray, showers: np.ndarray, offset: int = 0) -> None:
    bad = ~np.isfinite(inc)
    if bad.any():
        raise ShowerFileError(f"{path}: incident energy of shower {offset + int(np.argmax(bad))} is NaN or inf")
    bad = inc <= 0
    if bad.any():
        i = int(np.argmax(bad))
        raise ShowerFileError(f"{path}: incident energy of shower {offset + i} is not positive ({inc[i]} MeV)")
    finite = np.isfinite(showers)
    if not finite.all():
        i, j = np.argwhere(~finite)[0]
        raise ShowerFileError(f"{path}: shower {offset + int(i)}, voxel {int(j)} is NaN or inf")
    neg = showers < 0
    if neg.any():
        i, j = np.argwhere(neg)[0]
        raise ShowerFileError(
            f"{path}: shower {offset + int(i)}, voxel {int(j)} has negative energy ({showers[i, j]} MeV)"
        )


#: public names of the checks (used by the training data layer)
check_values = _check_values
check_layout = _check_layout
open_file = _open


def _read_block(path, f, start, stop, validate) -> ShowerData:
    inc = np.asarray(f[INCIDENT][start:stop], dtype=np.float64).reshape(-1)
    showers = np.asarray(f[SHOWERS][start:stop])
    if showers.dtype != np.float32 and showers.dtype != np.float64:
        showers = showers.astype(np.float32)
    cond, names, units = None, (), ()
    if CONDITIONS in f:
        cond = np.asarray(f[CONDITIONS][start:stop], dtype=np.float64)
        names = tuple(_decode(n) for n in f[CONDITIONS].attrs.get("names", []))
        units = tuple(_decode(n) for n in f[CONDITIONS].attrs.get("units", []))
    if validate:
        _check_values(path, inc, showers, offset=start)
    attrs = {k: _decode(v) for k, v in f.attrs.items()}
    return ShowerData(inc, showers, cond, names, attrs, units, _labels(f, start, stop))


def _labels(f: h5py.File, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
    """The :data:`LABELS` datasets of an open file (one row per shower), rows [start:stop]."""
    return {k: np.asarray(f[k][start:stop]) for k in LABELS
            if k in f and isinstance(f[k], h5py.Dataset) and f[k].shape[:1] == f[SHOWERS].shape[:1]}


# ------------------------------------------------------------------ reading
def read_showers(
    path: str | os.PathLike,
    geometry=None,
    *,
    start: int = 0,
    stop: int | None = None,
    validate: bool = True,
) -> ShowerData:
    """Read showers [start:stop] of a CaloChallenge file, checking it against ``geometry``."""
    path = str(path)
    g = _geometry(geometry)
    with _open(path) as f:
        n, _ = _check_layout(path, f, g)
        if n == 0:
            raise ShowerFileError(f"{path}: file holds no showers")
        return _read_block(path, f, start, stop, validate)


def iter_showers(
    path: str | os.PathLike,
    chunk_size: int = 10_000,
    geometry=None,
    *,
    validate: bool = True,
    start: int = 0,
    stop: int | None = None,
) -> Iterator[ShowerData]:
    """Iterate over a file in chunks of ``chunk_size`` showers (bounded memory for ds3-size files)."""
    path = str(path)
    g = _geometry(geometry)
    if chunk_size < 1:
        raise UsageError("chunk_size must be positive")
    with _open(path) as f:
        n, _ = _check_layout(path, f, g)
        stop = n if stop is None else min(stop, n)
        for a in range(start, stop, chunk_size):
            yield _read_block(path, f, a, min(a + chunk_size, stop), validate)


def read_conditions(source: "ShowerData | str | os.PathLike") -> tuple[tuple[str, ...], np.ndarray]:
    """The condition parameter names and values ``(N, K)`` of a file or ShowerData, without the showers."""
    if isinstance(source, ShowerData):
        vals = source.conditions if source.conditions is not None else np.zeros((len(source), 0))
        return tuple(source.condition_names), np.asarray(vals, dtype=np.float64)
    path = str(source)
    with _open(path) as f:
        n, _ = _check_layout(path, f, None)
        if CONDITIONS not in f:
            return (), np.zeros((n, 0))
        names = tuple(_decode(x) for x in f[CONDITIONS].attrs.get("names", []))
        vals = np.asarray(f[CONDITIONS][:], dtype=np.float64)
    if vals.ndim != 2 or vals.shape[1] != len(names):
        raise ShowerFileError(f"{path}: 'conditions' has shape {vals.shape} but {len(names)} names")
    if not np.all(np.isfinite(vals)):
        raise ShowerFileError(f"{path}: 'conditions' holds NaN or inf")
    return names, vals


def read_labels(source: "ShowerData | str | os.PathLike") -> dict[str, np.ndarray]:
    """The per-shower truth labels (:data:`LABELS`) of a file or ShowerData, without the showers."""
    if isinstance(source, ShowerData):
        return dict(source.labels)
    path = str(source)
    with _open(path) as f:
        _check_layout(path, f, None)
        return _labels(f)


def require_energy(path: str | os.PathLike, chunk_size: int = 10_000) -> None:
    """Raise :class:`ShowerFileError` if every shower of ``path`` is zero (nothing to train on).

    Stops at the first chunk holding a non-zero voxel, so a normal file costs one chunk read.
    Example: ``require_energy("train.h5")`` before ``caloflows train``.
    """
    n = 0
    for c in iter_showers(path, chunk_size, validate=False):
        if np.any(c.showers):
            return
        n += len(c)
    raise ShowerFileError(f"{path}: all {n} showers are zero (no energy in any voxel); nothing to train on")


def validate_file(path: str | os.PathLike, geometry=None, chunk_size: int = 10_000) -> dict:
    """Check a whole file (layout and values, chunk by chunk); return :func:`file_summary`."""
    for _ in iter_showers(path, chunk_size, geometry):
        pass
    return file_summary(path, geometry, validate=False)


def file_summary(path: str | os.PathLike, geometry=None, chunk_size: int = 10_000, validate: bool = True) -> dict:
    """Statistics for ``caloflows info``: counts, energy range, zero fraction, attributes."""
    path = str(path)
    g = _geometry(geometry)
    e_inc, e_tot = [], []
    zeros = 0
    n_vox = None
    attrs: dict = {}
    cond_names: tuple = ()
    for chunk in iter_showers(path, chunk_size, g, validate=validate):
        e_inc.append(chunk.incident_energies)
        e_tot.append(chunk.showers.sum(axis=1, dtype=np.float64))
        zeros += int(np.count_nonzero(chunk.showers == 0))
        n_vox = chunk.showers.shape[1]
        attrs, cond_names = chunk.attrs, chunk.condition_names
    if n_vox is None:
        raise ShowerFileError(f"{path}: file holds no showers")
    e_inc_all = np.concatenate(e_inc)
    e_tot_all = np.concatenate(e_tot)
    return {
        "path": path,
        "n_showers": int(len(e_inc_all)),
        "n_voxels": int(n_vox),
        "incident_energies": e_inc_all,
        "total_energy": e_tot_all,
        "zero_fraction": zeros / (len(e_inc_all) * n_vox),
        "attrs": attrs,
        "condition_names": cond_names,
    }


# ------------------------------------------------------------------ writing
@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, suffix: str = ".tmp"):
    """Yield a temporary path next to ``path``; rename it to ``path`` only if the block succeeds.

    The temporary is ``.<name>.cf<host>-<pid>-XXXX<suffix>`` (:func:`caloflows.outputs.temp_prefix`):
    if the process is killed (SIGKILL) before the rename, the next checked write of ``path``
    removes it (:func:`caloflows.outputs.clean_orphans`).  The final file gets mode 0666 & ~umask.
    """
    from .outputs import temp_prefix

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the name carries host and pid: the next run recognises a killed writer's leftovers
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=suffix, dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield tmp
        # mkstemp makes 0600 and some writers (safetensors) create the file anew: give the
        # final file the usual permissions (0666 under the umask) just before the rename
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _attr_value(v):
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v)
    if v is None:
        return "None"
    return v


def write_showers(
    path: str | os.PathLike,
    incident_energies: np.ndarray,
    showers: np.ndarray,
    *,
    conditions: np.ndarray | None = None,
    condition_names: Sequence[str] | None = None,
    attrs: Mapping | None = None,
    geometry=None,
    compression: str | None = "gzip",
    validate: bool = True,
) -> None:
    """Write a CaloChallenge file atomically (incident energies (N,1), showers (N,V), MeV)."""
    path = str(path)
    inc = np.asarray(incident_energies, dtype=np.float64).reshape(-1)
    showers = np.asarray(showers)
    if showers.dtype not in (np.float32, np.float64):
        showers = showers.astype(np.float32)
    if showers.ndim != 2 or len(showers) != len(inc):
        raise ShowerFileError(
            f"{path}: refusing to write {len(inc)} incident energies with showers of shape {showers.shape}"
        )
    g = _geometry(geometry)
    if g is not None and showers.shape[1] != g.n_voxels:
        raise ShowerFileError(
            f"{path}: refusing to write showers with {showers.shape[1]} voxels for geometry "
            f"{g.name!r} ({g.n_voxels} voxels)"
        )
    if validate:
        _check_values(path, inc, showers)
    if conditions is not None:
        conditions = np.asarray(conditions, dtype=np.float64)
        if conditions.ndim == 1:
            conditions = conditions[:, None]
        if len(conditions) != len(inc):
            raise ShowerFileError(f"{path}: {len(conditions)} condition rows for {len(inc)} showers")
        names = list(condition_names or [f"c{i}" for i in range(conditions.shape[1])])
        if len(names) != conditions.shape[1]:
            raise ShowerFileError(f"{path}: {len(names)} condition names for {conditions.shape[1]} columns")
    with atomic_output(path) as tmp, h5py.File(tmp, "w") as f:
        kw = {"compression": compression} if compression else {}
        chunk_rows = max(1, min(len(inc), 2**20 // max(1, showers.shape[1] * showers.itemsize)))
        f.create_dataset(INCIDENT, data=inc.reshape(-1, 1), **kw)
        f.create_dataset(
            SHOWERS, data=showers, chunks=(chunk_rows, showers.shape[1]) if len(inc) else None, **kw
        )
        if conditions is not None:
            d = f.create_dataset(CONDITIONS, data=conditions, **kw)
            d.attrs["names"] = np.array(names, dtype=h5py.string_dtype())
        all_attrs = dict(attrs or {})
        if g is not None:
            all_attrs.setdefault("geometry", g.name)
        all_attrs.setdefault("caloflows_version", _version())
        for k, v in all_attrs.items():
            f.attrs[k] = _attr_value(v)


class ShowerWriter:
    """Append showers chunk by chunk to a new file, renamed into place on ``close()``.

    Used where the full sample does not fit in memory (generation of large ds3 samples,
    merging shards).  If the ``with`` block raises, no file is left behind.
    """

    def __init__(self, path, n_voxels: int, *, condition_names: Sequence[str] | None = None,
                 attrs: Mapping | None = None, compression: str | None = "gzip", dtype=np.float32,
                 condition_units: Sequence[str] | None = None):
        self.path = str(path)
        self._kw = {"compression": compression} if compression else {}
        self._extra: dict = {}
        self._ctx = atomic_output(self.path)
        self._tmp = self._ctx.__enter__()
        self._f = h5py.File(self._tmp, "w")
        kw = {"compression": compression} if compression else {}
        chunk_rows = max(1, 2**20 // (n_voxels * np.dtype(dtype).itemsize))
        self._inc = self._f.create_dataset(INCIDENT, shape=(0, 1), maxshape=(None, 1), dtype=np.float64,
                                           chunks=(max(chunk_rows, 1024), 1), **kw)
        self._sh = self._f.create_dataset(SHOWERS, shape=(0, n_voxels), maxshape=(None, n_voxels), dtype=dtype,
                                          chunks=(chunk_rows, n_voxels), **kw)
        self._cond = None
        if condition_names:
            self._cond = self._f.create_dataset(CONDITIONS, shape=(0, len(condition_names)),
                                                maxshape=(None, len(condition_names)), dtype=np.float64, **kw)
            self._cond.attrs["names"] = np.array(list(condition_names), dtype=h5py.string_dtype())
            if condition_units:
                if len(condition_units) != len(condition_names):
                    raise ShowerFileError(f"{self.path}: {len(condition_units)} units for {len(condition_names)} conditions")
                self._cond.attrs["units"] = np.array(list(condition_units), dtype=h5py.string_dtype())
        a = dict(attrs or {})
        a.setdefault("caloflows_version", _version())
        for k, v in a.items():
            self._f.attrs[k] = _attr_value(v)
        self.n = 0

    def append(self, incident_energies, showers, conditions=None, extra: Mapping | None = None) -> None:
        """Append a chunk; ``extra`` maps further per-shower dataset names to arrays (k, ...)
        (the same names in every chunk)."""
        inc = np.asarray(incident_energies, dtype=np.float64).reshape(-1, 1)
        showers = np.asarray(showers)
        _check_values(self.path, inc.ravel(), showers, offset=self.n)
        k = len(inc)
        extra = dict(extra or {})
        if self.n and set(extra) != set(self._extra):
            raise ShowerFileError(f"{self.path}: extra datasets {sorted(extra)} differ from the first chunk's {sorted(self._extra)}")
        for name, arr in extra.items():
            arr = np.asarray(arr)
            if name in (INCIDENT, SHOWERS, CONDITIONS) or len(arr) != k:
                raise ShowerFileError(f"{self.path}: extra dataset {name!r} needs a new name and {k} rows")
            if name not in self._extra:
                self._extra[name] = self._f.create_dataset(name, shape=(0, *arr.shape[1:]), maxshape=(None, *arr.shape[1:]),
                                                           dtype=arr.dtype, **self._kw)
            d = self._extra[name]
            d.resize(self.n + k, axis=0)
            d[self.n:] = arr
        self._inc.resize(self.n + k, axis=0)
        self._inc[self.n:] = inc
        self._sh.resize(self.n + k, axis=0)
        self._sh[self.n:] = showers
        if self._cond is not None:
            if conditions is None:
                raise ShowerFileError(f"{self.path}: conditions required for every chunk")
            self._cond.resize(self.n + k, axis=0)
            self._cond[self.n:] = np.asarray(conditions, dtype=np.float64).reshape(k, -1)
        self.n += k

    def set_attr(self, key, value) -> None:
        self._f.attrs[key] = _attr_value(value)

    def close(self) -> None:
        self._f.close()
        self._ctx.__exit__(None, None, None)

    def abort(self, exc_info=(None, None, None)) -> None:
        try:
            self._f.close()
        finally:
            with contextlib.suppress(BaseException):  # the original error is what matters
                self._ctx.__exit__(*(exc_info if exc_info[0] else (RuntimeError, RuntimeError("aborted"), None)))

    def __enter__(self):
        return self

    def __exit__(self, et, ev, tb):
        if et is None:
            self.close()
        else:
            self.abort((et, ev, tb))
        return False


def merge_files(paths: Sequence[str | os.PathLike], out: str | os.PathLike, geometry=None,
                chunk_size: int = 10_000, attrs: Mapping | None = None) -> int:
    """Concatenate shower files (e.g. simulation shards) in the given order into ``out``.

    All inputs must have the same voxel count and the same condition names.  Attributes of
    the first file are kept (plus ``merged_from``) unless overridden by ``attrs``; condition
    units and further per-shower datasets (first dimension N, e.g. ``showers_full``) present
    in every input are carried over.  Returns the number of showers written.
    """
    files = [str(p) for p in paths]
    if not files:
        raise ShowerFileError(f"{out}: nothing to merge")
    g = _geometry(geometry)
    first = None
    extras: dict = {}
    for p in files:
        with _open(p) as f:
            n, v = _check_layout(p, f, g)
            names = tuple(_decode(x) for x in f[CONDITIONS].attrs.get("names", [])) if CONDITIONS in f else ()
            units = tuple(_decode(x) for x in f[CONDITIONS].attrs.get("units", [])) if CONDITIONS in f else ()
            a = {k: _decode(x) for k, x in f.attrs.items()}
            ex = {k: f[k].shape[1:] for k in f
                  if k not in (INCIDENT, SHOWERS, CONDITIONS) and isinstance(f[k], h5py.Dataset) and f[k].ndim >= 1
                  and f[k].shape[0] == n}
        extras = ex if first is None else {k: s for k, s in extras.items() if ex.get(k) == s}
        if first is None:
            first = (v, names, a, units)
        elif (v, names) != first[:2]:
            raise ShowerFileError(f"{p}: {v} voxels / conditions {names} differ from {files[0]} ({first[0]} / {first[1]})")
    if first is None:  # unreachable: ``files`` is non-empty
        raise ShowerFileError(f"{out}: nothing to merge")
    v, names, a0, units = first
    merged_attrs = {**a0, "merged_from": [os.path.basename(p) for p in files], **(attrs or {})}
    with ShowerWriter(out, v, condition_names=names or None, attrs=merged_attrs, condition_units=units or None) as w:
        for p in files:
            with _open(p) as f:
                pos = 0
                for c in iter_showers(p, chunk_size, g):
                    k = len(c)
                    w.append(c.incident_energies, c.showers, c.conditions,
                             extra={e: f[e][pos:pos + k] for e in extras})
                    pos += k
        return w.n


def _version() -> str:
    from . import __version__

    return __version__
