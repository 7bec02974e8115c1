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


# ------------------------------------------------------------ incident energies
def einc_summary(einc: np.ndarray) -> dict:
    """The incident-energy law of the training data (discrete values or 1001 quantiles)."""
    u, c = np.unique(einc, return_counts=True)
    if len(u) <= 64:
        return {"kind": "discrete", "values": u.tolist(), "weights": (c / c.sum()).tolist()}
    return {"kind": "quantiles", "quantiles": np.quantile(einc, np.linspace(0, 1, 1001)).tolist()}


def einc_draw(summary: dict, n: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``n`` incident energies from a law made by :func:`einc_summary`."""
    if summary["kind"] == "discrete":
        return rng.choice(np.asarray(summary["values"]), size=n, p=np.asarray(summary["weights"]))
    q = np.asarray(summary["quantiles"])
    return np.interp(rng.random(n), np.linspace(0, 1, len(q)), q)


def incident_energies(n_or_energies, summary: dict, rng: np.random.Generator) -> np.ndarray:
    """The E_inc (MeV) a ``sample()`` call generates: ``n`` draws from the training law, or the
    given array, checked to be non-empty, finite and positive."""
    if np.ndim(n_or_energies) == 0:
        n = int(n_or_energies)
        if n < 1:
            raise ValueError("number of showers must be positive")
        return einc_draw(summary, n, rng)
    einc = np.asarray(n_or_energies, dtype=np.float64).reshape(-1)
    if len(einc) == 0 or not np.all(np.isfinite(einc)) or np.any(einc <= 0):
        raise ValueError("incident energies must be a non-empty array of positive, finite values")
    return einc
