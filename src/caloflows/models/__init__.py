"""Generator families and their registry.

:data:`FAMILIES` has one :class:`Family` entry per model kind (the name used by ``caloflows
train KIND`` and stored in a model directory's ``config.json``): where its
:class:`~caloflows.models.base.Generator` lives, a one-line help, and its extra training
options as data (the CLI turns them into flags; the API passes them to ``fit``).  Modules are
imported only when used, so the CLI starts fast.  To add a family, add one entry.

Example:
    >>> from caloflows.models import FAMILIES, generator_class
    >>> sorted(FAMILIES)
    ['caloflow', 'icaloflow', 'l2lflows', 'paraflow', 'supercalo']
    >>> generator_class("caloflow").stages["distill"]
    'the flow-II IAF student (distillation)'
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any

from ..errors import ModelDirError, UsageError
from .base import Generator

__all__ = ["FAMILIES", "Family", "Option", "Generator", "generator_class", "load_model"]


@dataclass(frozen=True)
class Option:
    """An extra training option of one family: ``--flag`` on the command line, ``dest`` in the API.

    ``kind`` is ``str``, ``float``, ``flag`` (store true) or ``list`` (one or more strings);
    ``target`` is ``fit`` (passed to ``Generator.fit``), ``config`` (a setting of the same name),
    or ``api`` (handled by :func:`caloflows.api.train`).
    """

    flag: str
    dest: str
    kind: str
    help: str
    target: str = "fit"


@dataclass(frozen=True)
class Family:
    """One registered generator family."""

    kind: str
    path: str  # "module:Class"
    help: str
    options: tuple[Option, ...] = ()

    def generator(self) -> type[Generator]:
        mod, cls = self.path.split(":")
        return getattr(importlib.import_module(mod), cls)


FAMILIES: dict[str, Family] = {
    "caloflow": Family(
        "caloflow", "caloflows.models.caloflow:CaloFlow",
        "CaloFlow: flow-I (layer energies) + flow-II MAF teacher (voxels); distill an IAF student afterwards"),
    "l2lflows": Family(
        "l2lflows", "caloflows.models.l2lflows:L2LFlows",
        "L2LFlows: energy flow + one causal flow per layer (train layer subsets with --layers, torchrun for DDP)",
        (Option("--layers", "layers", "str", "causal flows to train, e.g. 10-19 or 0,3,5-7 (default: all); "
                                               "run several jobs with disjoint ranges and --gather them"),
         Option("--no-energy-flow", "no_energy_flow", "flag",
                "do not train the energy distribution flow in this run (another job trains it)", "api"),
         Option("--gather", "gather", "list", "instead of training: copy the flows of these model directories "
                                               "into --out (checks they were trained on the same data and settings)",
                "api"),
         Option("--cache-mb", "cache_mb", "float", "keep a layer's training columns in memory up to this many MB, "
                                                   "else stream them chunk by chunk from the HDF5 file (default 1024)",
                "config"))),
    "icaloflow": Family(
        "icaloflow", "caloflows.models.icaloflow:ICaloFlow",
        "iCaloFlow: energy flow + first-layer flow + one shared layer flow; distill IAF students afterwards"),
    "supercalo": Family(
        "supercalo", "caloflows.models.supercalo:SuperCalo",
        "SuperCalo: coarse CaloFlow (FLOW-1, FLOW-2) + SUPERCALO flow upsampling every coarse voxel; "
        "distill the coarse IAF student afterwards"),
    "paraflow": Family(
        "paraflow", "caloflows.models.paraflow:ParaFlow",
        "ParaFlow: one MAF over all crystals conditioned on E_inc and detector parameters (eq. 1 log scaling); "
        "distill an IAF student afterwards"),
}

def family(kind: str) -> Family:
    """The registry entry of ``kind`` (UsageError naming the known kinds otherwise)."""
    if kind not in FAMILIES:
        raise UsageError(f"unknown model kind {kind!r}; known: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[kind]


def generator_class(kind: str) -> type[Generator]:
    """The :class:`Generator` subclass of ``kind``."""
    return family(kind).generator()


def load_model(directory: str | os.PathLike[str], device: str = "cpu", **kw: Any) -> Generator:
    """Load any model directory, dispatching on the ``kind`` in its ``config.json``."""
    from ..training.checkpoint import read_model_config

    cfg = read_model_config(directory)
    kind = cfg.get("kind")
    if kind not in FAMILIES:
        raise ModelDirError(f"{directory}: unknown model kind {kind!r} (known: {', '.join(sorted(FAMILIES))})")
    return generator_class(kind).load(directory, device=device, **kw)
