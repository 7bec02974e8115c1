"""Model directories and checkpoints that never unpickle arbitrary objects.

A model directory holds::

    config.json          format name and version, model kind, geometry (Geometry.to_dict()),
                         hyper-parameters, caloflows version
    constants.json       preprocessing constants (caloflows.preprocessing.to_json)
    *.safetensors        final weights, one file per network
    *.safetensors.sha256 SHA-256 of each weight file (``sha256sum -c`` format), checked on load;
                         a weight file without one (older models) loads unchecked
    checkpoints/*.pt     training state (weights, optimizer, scheduler, RNG, history) written
                         every epoch with torch.save of plain tensors / dicts and read back with
                         ``torch.load(weights_only=True)``
    loss_*.png, history_*.json

Every file is written through :func:`caloflows.io.atomic_output`.  Reading a directory of
another model kind, geometry or (newer) format version raises :class:`ModelDirError` with a
one-line message; so does a missing or corrupt weight file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelDirError
from ..geometry import Geometry, geometry_from_dict
from ..io import atomic_output

__all__ = [
    "MODEL_FORMAT",
    "MODEL_FORMAT_VERSION",
    "ModelDirError",
    "write_json",
    "read_json",
    "write_model_config",
    "read_model_config",
    "save_weights",
    "load_weights",
    "verify_checksum",
    "save_checkpoint",
    "load_checkpoint",
]

MODEL_FORMAT = "caloflows-model"
#: bump when the layout of model directories changes incompatibly
MODEL_FORMAT_VERSION = 1
CONFIG_FILE = "config.json"




def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically."""
    with atomic_output(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=False)
        f.write("\n")


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    path = str(path)
    if not os.path.exists(path):
        raise ModelDirError(f"{path}: {what} not found")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise ModelDirError(f"{path}: unreadable {what} ({exc})") from None


def _version() -> str:
    from .. import __version__

    return __version__


def write_model_config(directory: str | os.PathLike, kind: str, geometry: Geometry, config: Mapping) -> dict:
    """Create ``directory`` (if needed) and write its ``config.json``; returns the dict written."""
    d = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "caloflows_version": _version(),
        "kind": kind,
        "geometry": geometry.to_dict(),
        "config": dict(config),
    }
    Path(directory).mkdir(parents=True, exist_ok=True)
    write_json(Path(directory) / CONFIG_FILE, d)
    return d


def read_model_config(
    directory: str | os.PathLike, kind: str | None = None, geometry: Geometry | None = None
) -> dict:
    """Read and check ``config.json`` of a model directory.

    Raises :class:`ModelDirError` if the directory or its config is missing or unreadable, was
    written by a newer format version, holds another model ``kind`` or another ``geometry``
    (voxel layout).  The returned dict has ``geometry`` rebuilt as a :class:`Geometry`.
    """
    directory = str(directory)
    if not os.path.isdir(directory):
        raise ModelDirError(f"{directory}: model directory not found")
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.exists(path):
        raise ModelDirError(f"{directory}: not a caloflows model directory (no {CONFIG_FILE})")
    d = read_json(path, "model config")
    if not isinstance(d, dict) or d.get("format") != MODEL_FORMAT:
        raise ModelDirError(f"{path}: not a caloflows model config (format {d.get('format') if isinstance(d, dict) else d!r})")
    v = d.get("format_version")
    if not isinstance(v, int) or v > MODEL_FORMAT_VERSION or v < 1:
        raise ModelDirError(
            f"{directory}: model format version {v} is not supported by caloflows {_version()} "
            f"(supports version {MODEL_FORMAT_VERSION}); retrain or upgrade caloflows"
        )
    if kind is not None and d.get("kind") != kind:
        raise ModelDirError(f"{directory}: holds a {d.get('kind')!r} model, not a {kind!r} model")
    try:
        g = geometry_from_dict(d["geometry"])
    except Exception as exc:  # noqa: BLE001 - any malformed geometry entry
        raise ModelDirError(f"{path}: malformed geometry entry ({exc})") from None
    if geometry is not None and not g.same_layout(geometry):
        raise ModelDirError(
            f"{directory}: model was trained for geometry {g.name!r} ({g.n_voxels} voxels), "
            f"not {geometry.name!r} ({geometry.n_voxels} voxels)"
        )
    return {**d, "geometry": g}


CHECKSUM_SUFFIX = ".sha256"


def _sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_weights(path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> None:
    """Write a state dict as safetensors, atomically, with its SHA-256 in ``<path>.sha256``.

    The old checksum file is removed first and the new one written after the rename, so a run
    killed in between leaves a weight file without checksum (loaded unchecked), never a
    mismatching pair.
    """
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    side = str(path) + CHECKSUM_SUFFIX
    if os.path.exists(side):
        os.unlink(side)
    with atomic_output(path) as tmp:
        save_file(tensors, tmp, metadata={k: str(v) for k, v in (metadata or {}).items()})
        digest = _sha256(tmp)
    with atomic_output(side) as tmp:
        Path(tmp).write_text(f"{digest}  {os.path.basename(str(path))}\n")


def verify_checksum(path: str | os.PathLike) -> bool | None:
    """Check ``path`` against ``<path>.sha256``: True if equal, None if there is no checksum
    file (models written before checksums existed); a mismatch raises :class:`ModelDirError`."""
    side = str(path) + CHECKSUM_SUFFIX
    if not os.path.exists(side):
        return None
    try:
        want = Path(side).read_text().split()[0].lower()
    except (OSError, IndexError) as exc:
        raise ModelDirError(f"{side}: unreadable checksum file ({exc})") from None
    got = _sha256(path)
    if got != want:
        raise ModelDirError(f"{path}: corrupt weight file (SHA-256 {got[:12]}... differs from the "
                            f"{want[:12]}... recorded in {os.path.basename(side)} when it was written)")
    return True


def load_weights(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors weight file; missing or corrupt files raise :class:`ModelDirError`."""
    from safetensors.torch import load_file

    path = str(path)
    if not os.path.exists(path):
        raise ModelDirError(f"{path}: weight file not found (model not trained yet?)")
    if not os.access(path, os.R_OK):
        raise ModelDirError(f"{path}: weight file not readable (permission denied)")
    verify_checksum(path)
    try:
        return load_file(path, device=str(device))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types
        raise ModelDirError(f"{path}: corrupt or unreadable weight file ({type(exc).__name__}: {exc})") from None


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> None:
    """``torch.save`` a dict of tensors / numbers / strings / lists atomically."""
    with atomic_output(path) as tmp:
        torch.save(dict(state), tmp)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with a clear error for bad files."""
    path = str(path)
    if not os.path.exists(path):
        raise ModelDirError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise ModelDirError(f"{path}: corrupt or unreadable checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
