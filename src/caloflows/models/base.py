"""The interface every caloflows generator follows (CaloFlow, L2LFlows, iCaloFlow, ...).

A generator learns ``p(showers | E_inc)`` for one :class:`~caloflows.geometry.Geometry` and
lives in a model directory (:mod:`caloflows.training.checkpoint`).  The CLI (``caloflows train /
distill / generate``) only talks to this interface, through the registry in
:mod:`caloflows.models`.
"""

from __future__ import annotations

import abc
import os
from typing import ClassVar

import numpy as np

from ..geometry import Geometry
from ..io import ShowerData

__all__ = ["Generator"]


class Generator(abc.ABC):
    """Abstract shower generator.

    Attributes:
        kind: model name used in ``config.json`` and on the command line (``caloflow``).
        geometry: the voxel geometry the model was built for.
        config: JSON-serialisable hyper-parameters.
    """

    kind: ClassVar[str] = ""
    geometry: Geometry
    config: dict

    @abc.abstractmethod
    def fit(self, data: ShowerData, out_dir: str | os.PathLike, *, resume: bool = False,
            device: str = "cpu", progress: bool = True) -> dict:
        """Train on ``data`` (MeV), writing checkpoints and the final model to ``out_dir``.

        Returns a summary dict (losses, epochs, seconds).  With ``resume=True`` an interrupted
        run in ``out_dir`` continues from its last completed epoch.
        """

    @abc.abstractmethod
    def sample(self, n_or_energies: "int | np.ndarray", batch_size: int = 10_000, *,
               seed: int | None = None, device: str = "cpu", progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Generate showers.

        ``n_or_energies`` is a number of showers (incident energies drawn from the training
        distribution) or an array of incident energies (MeV).  Returns ``(E_inc (N,), showers (N, V))``.
        """

    @abc.abstractmethod
    def log_prob(self, showers: np.ndarray, incident_energies: np.ndarray, batch_size: int = 1000) -> np.ndarray:
        """log p(showers | E_inc) per shower, as far as the model defines it (see the model docs)."""

    @abc.abstractmethod
    def save(self, directory: str | os.PathLike) -> None:
        """Write config, preprocessing constants and weights to ``directory``."""

    @classmethod
    @abc.abstractmethod
    def load(cls, directory: str | os.PathLike, device: str = "cpu") -> "Generator":
        """Load a model directory written by :meth:`save` (refuses other kinds / versions)."""
