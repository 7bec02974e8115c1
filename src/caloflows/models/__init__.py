"""Generators and their registry.

``MODELS`` maps a model kind (the name used by ``caloflows train KIND`` and stored in a model
directory's ``config.json``) to the module implementing it.  A module listed here provides

* a :class:`~caloflows.models.base.Generator` subclass named by ``GENERATOR`` (attribute string),
* ``PRESETS`` -- dict of preset names (``quick``, ``full``),
* ``train_from_args(args)`` -- run ``caloflows train KIND`` with the common options
  (``data, geometry, out, preset, epochs, device, resume, seed, set``); returns a summary dict,
* optionally ``distill_from_args(args)`` -- run ``caloflows distill`` (``model_dir, data, epochs,
  device, resume``).

Modules are imported only when used, so the CLI starts fast.

To add a model, add one line to ``MODELS``.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from .base import Generator

__all__ = ["MODELS", "Generator", "model_module", "generator_class", "load_model"]

MODELS: dict[str, str] = {
    "caloflow": "caloflows.models.caloflow",
    "l2lflows": "caloflows.models.l2lflows",
    "icaloflow": "caloflows.models.icaloflow",
}

#: one-line help per model kind for ``caloflows train --help``
MODEL_HELP: dict[str, str] = {
    "caloflow": "CaloFlow: flow-I (layer energies) + flow-II MAF teacher (voxels); distill an IAF student afterwards",
    "l2lflows": "L2LFlows: energy flow + one causal flow per layer (train layer subsets with --layers, torchrun for DDP)",
    "icaloflow": "iCaloFlow: energy flow + first-layer flow + one shared layer flow; distill IAF students afterwards",
}

#: model kind -> "module:function" adding model-specific options to ``caloflows train KIND``
TRAIN_OPTIONS: dict[str, str] = {
    "l2lflows": "caloflows.cli.layer_options:add_l2lflows_options",
}


def model_module(kind: str) -> ModuleType:
    if kind not in MODELS:
        raise ValueError(f"unknown model kind {kind!r}; known: {', '.join(sorted(MODELS))}")
    return importlib.import_module(MODELS[kind])


def generator_class(kind: str) -> type[Generator]:
    m = model_module(kind)
    return getattr(m, m.GENERATOR)


def load_model(directory: str | os.PathLike, device: str = "cpu") -> Generator:
    """Load any model directory, dispatching on the ``kind`` in its ``config.json``."""
    from ..training.checkpoint import ModelDirError, read_model_config

    cfg = read_model_config(directory)
    kind = cfg.get("kind")
    if kind not in MODELS:
        raise ModelDirError(f"{directory}: unknown model kind {kind!r} (known: {', '.join(sorted(MODELS))})")
    return generator_class(kind).load(directory, device=device)
