"""Coarse-graining choices as data, and the index maps SuperCalo needs (``supercalo.txt``).

SuperCalo (Pang, Raine, Shih, arXiv:2308.11700, sec. III A) groups neighbouring fine voxels
of a regular geometry into coarse voxels and upsamples every coarse voxel on its own,
conditioned on its neighbours.  A grouping is plain data, :class:`CoarseGraining`
``(f_r, f_alpha, f_z)``:

* choice **A** = 1 r x 2 alpha x 5 z: ds2 -> 9 coarse layers x 8 alpha x 9 r = 648 coarse
  voxels (our ``ds2-coarse``), 10 fine voxels per coarse voxel;
* choice **B** = 3 r x 4 alpha x 1 z: ds2 -> 45 x 4 x 3 = 540 coarse voxels, 12 fine voxels each;

and any other grouping whose factors divide the geometry's bins (ds3 too).
:meth:`CoarseGraining.bind` checks it against a :class:`~caloflows.geometry.Geometry` and
returns a :class:`CoarseMap` with every index the data preparation needs.

Flat orders are the CaloChallenge one (radius fastest, then angle, then layer) for both the
fine and the coarse geometry (``Geometry.coarsen``).  Inside one coarse voxel the fine voxels
are listed in increasing fine flat index, i.e. layer slowest, then angle, then radius.

The neighbour map has six slots per coarse voxel, in this order (paper sec. III A: "maximum
of 6 neighbouring coarse voxels ... padded with zeros")::

    0: alpha - 1   1: alpha + 1   (wrap around: alpha is periodic)
    2: r - 1       3: r + 1       (inner / outer; absent at the first / last radial bin)
    4: z - 1       5: z + 1       (previous / next coarse layer; absent at the ends)

A missing neighbour has index 0 and ``neighbour_mask`` False.  With a single coarse angular
bin a voxel has no alpha neighbour (it would be itself); with two, ``alpha - 1`` and
``alpha + 1`` are the same voxel, which is then listed once (slot 1 only).

>>> from caloflows.geometry import load_geometry
>>> m = CoarseGraining.choice("A").bind(load_geometry("ds2"))
>>> m.n_coarse, m.group_size, m.coarse.n_layers
(648, 10, 9)
>>> CoarseGraining.choice("B").bind(load_geometry("ds2")).n_coarse
540
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .errors import GeometryError
from .geometry import Geometry, coarse_grain, load_geometry

__all__ = ["CoarseGraining", "CoarseMap", "CHOICES", "NEIGHBOUR_SLOTS"]

#: names of the six neighbour slots, in order
NEIGHBOUR_SLOTS = ("alpha-1", "alpha+1", "r-1", "r+1", "z-1", "z+1")


@dataclass(frozen=True)
class CoarseGraining:
    """Group ``f_r`` radial x ``f_alpha`` angular bins x ``f_z`` layers into one coarse voxel.

    >>> CoarseGraining.parse("3x4x1") == CoarseGraining.choice("B")
    True
    """

    f_r: int
    f_alpha: int
    f_z: int
    name: str = ""

    def __post_init__(self) -> None:
        for what, f in (("f_r", self.f_r), ("f_alpha", self.f_alpha), ("f_z", self.f_z)):
            if not isinstance(f, (int, np.integer)) or isinstance(f, bool) or f < 1:
                raise GeometryError(f"coarse-graining factor {what} must be a positive integer, got {f!r}")

    # ----------------------------------------------------------- construction
    @classmethod
    def choice(cls, name: str) -> "CoarseGraining":
        """The paper's choices: ``"A"`` = (1, 2, 5), ``"B"`` = (3, 4, 1) (sec. III A)."""
        key = str(name).upper()
        if key not in CHOICES:
            raise GeometryError(f"unknown coarse-graining choice {name!r}; use one of {', '.join(CHOICES)} "
                                "or factors like 1x2x5 (r x alpha x z)")
        return CHOICES[key]

    @classmethod
    def parse(cls, spec: "str | Sequence[int] | CoarseGraining") -> "CoarseGraining":
        """``"A"``, ``"B"``, ``"1x2x5"`` / ``"1,2,5"`` (r x alpha x z) or a 3-sequence."""
        if isinstance(spec, CoarseGraining):
            return spec
        parts: list[str] | list[int]
        if isinstance(spec, str):
            s = spec.strip()
            if s.upper() in CHOICES:
                return CHOICES[s.upper()]
            parts = s.replace(",", "x").lower().split("x")
        else:
            parts = list(spec)
        try:
            f = [int(p) for p in parts]
        except (TypeError, ValueError):
            f = []
        if len(f) != 3:
            raise GeometryError(f"bad coarse-graining {spec!r}; use A, B or three factors r x alpha x z like 1x2x5")
        for c in CHOICES.values():
            if c.factors == tuple(f):
                return c
        return cls(f[0], f[1], f[2])

    @property
    def factors(self) -> tuple[int, int, int]:
        return (int(self.f_r), int(self.f_alpha), int(self.f_z))

    @property
    def group_size(self) -> int:
        """Fine voxels per coarse voxel (10 for A, 12 for B)."""
        return self.f_r * self.f_alpha * self.f_z

    @property
    def label(self) -> str:
        return self.name or f"{self.f_r}x{self.f_alpha}x{self.f_z}"

    def check(self, geometry: Geometry) -> None:
        """GeometryError unless the geometry is regular and every factor divides its bins."""
        geometry._check_factors(*self.factors)

    def bind(self, geometry: "Geometry | str") -> "CoarseMap":
        """Validate against ``geometry`` and build the :class:`CoarseMap`."""
        g = load_geometry(geometry)
        self.check(g)
        return CoarseMap(self, g)

    def to_dict(self) -> dict:
        return {"f_r": self.f_r, "f_alpha": self.f_alpha, "f_z": self.f_z, "name": self.name}

    @classmethod
    def from_dict(cls, d: dict) -> "CoarseGraining":
        return cls(int(d["f_r"]), int(d["f_alpha"]), int(d["f_z"]), str(d.get("name", "")))


#: the two coarse-grainings of the paper (sec. III A)
CHOICES: dict[str, CoarseGraining] = {
    "A": CoarseGraining(1, 2, 5, "A"),
    "B": CoarseGraining(3, 4, 1, "B"),
}


class CoarseMap:
    """A :class:`CoarseGraining` bound to a fine geometry: all index maps, as numpy arrays.

    Attributes:
        grouping: the coarse-graining.
        fine: the fine geometry; ``coarse``: the coarse one (``fine.coarsen(...)``).
        n_coarse: number of coarse voxels; ``group_size``: fine voxels per coarse voxel.
    """

    def __init__(self, grouping: CoarseGraining, fine: Geometry) -> None:
        grouping.check(fine)
        self.grouping = grouping
        self.fine = fine
        self.coarse = fine.coarsen(*grouping.factors)
        l0 = fine.layers[0]
        self.n_r, self.n_alpha, self.n_z = l0.n_r, l0.n_alpha, fine.n_layers  # fine bins
        f_r, f_a, f_z = grouping.factors
        self.nc_r, self.nc_alpha, self.nc_z = self.n_r // f_r, self.n_alpha // f_a, self.n_z // f_z
        self.n_coarse = self.nc_r * self.nc_alpha * self.nc_z
        self.group_size = grouping.group_size

    def __repr__(self) -> str:
        return (f"CoarseMap({self.grouping.label} on {self.fine.name!r}: {self.fine.n_voxels} -> "
                f"{self.n_coarse} voxels, {self.group_size} fine per coarse)")

    # ------------------------------------------------------------ coordinates
    @cached_property
    def coarse_layer(self) -> np.ndarray:
        """Coarse layer (z bin) of every coarse voxel, shape (n_coarse,)."""
        return np.arange(self.n_coarse) // (self.nc_alpha * self.nc_r)

    @cached_property
    def coarse_alpha(self) -> np.ndarray:
        """Coarse angular bin of every coarse voxel."""
        return (np.arange(self.n_coarse) // self.nc_r) % self.nc_alpha

    @cached_property
    def coarse_rbin(self) -> np.ndarray:
        """Coarse radial bin of every coarse voxel."""
        return np.arange(self.n_coarse) % self.nc_r

    def coarse_index(self, z, alpha, r) -> np.ndarray:
        """Flat coarse index of coarse bins ``(z, alpha, r)``."""
        return (np.asarray(z) * self.nc_alpha + np.asarray(alpha)) * self.nc_r + np.asarray(r)

    # ------------------------------------------------------------ fine <-> coarse
    @cached_property
    def fine_to_coarse(self) -> np.ndarray:
        """Coarse voxel of every fine voxel, shape (n_fine,)."""
        v = np.arange(self.fine.n_voxels)
        r = v % self.n_r
        a = (v // self.n_r) % self.n_alpha
        z = v // (self.n_r * self.n_alpha)
        f_r, f_a, f_z = self.grouping.factors
        return self.coarse_index(z // f_z, a // f_a, r // f_r).astype(np.int64)

    @cached_property
    def members(self) -> np.ndarray:
        """Fine voxels of every coarse voxel, (n_coarse, group_size), increasing fine index."""
        order = np.argsort(self.fine_to_coarse, kind="stable")
        return order.reshape(self.n_coarse, self.group_size).astype(np.int64)

    @cached_property
    def fine_layers(self) -> np.ndarray:
        """Fine layers spanned by every coarse voxel, (n_coarse, f_z)."""
        f_z = self.grouping.f_z
        return (self.coarse_layer[:, None] * f_z + np.arange(f_z)[None, :]).astype(np.int64)

    # ------------------------------------------------------------ neighbours
    @cached_property
    def _neighbours(self) -> tuple[np.ndarray, np.ndarray]:
        z, a, r = self.coarse_layer, self.coarse_alpha, self.coarse_rbin
        na = self.nc_alpha
        cand = [
            (z, (a - 1) % na, r, np.full(self.n_coarse, na > 2)),
            (z, (a + 1) % na, r, np.full(self.n_coarse, na > 1)),
            (z, a, r - 1, r > 0),
            (z, a, r + 1, r < self.nc_r - 1),
            (z - 1, a, r, z > 0),
            (z + 1, a, r, z < self.nc_z - 1),
        ]
        idx = np.zeros((self.n_coarse, 6), dtype=np.int64)
        mask = np.zeros((self.n_coarse, 6), dtype=bool)
        for k, (zz, aa, rr, ok) in enumerate(cand):
            mask[:, k] = ok
            idx[ok, k] = self.coarse_index(zz[ok], aa[ok], rr[ok])
        return idx, mask

    @property
    def neighbours(self) -> np.ndarray:
        """Neighbour coarse indices (n_coarse, 6) in :data:`NEIGHBOUR_SLOTS` order, 0 where absent."""
        return self._neighbours[0]

    @property
    def neighbour_mask(self) -> np.ndarray:
        """True where the neighbour slot exists, (n_coarse, 6)."""
        return self._neighbours[1]

    # ------------------------------------------------------------ array helpers
    def coarse_grain(self, showers: np.ndarray) -> np.ndarray:
        """Fine showers (N, n_fine) -> coarse showers (N, n_coarse); :func:`geometry.coarse_grain`."""
        return coarse_grain(showers, self.fine, self.grouping.factors)

    def gather(self, showers):
        """Fine showers (N, n_fine) -> (N, n_coarse, group_size), :attr:`members` order.

        numpy arrays or torch tensors.
        """
        _check_width(showers, self.fine.n_voxels, "fine showers")
        return showers[:, self.members]

    def scatter(self, grouped):
        """Inverse of :meth:`gather`: (N, n_coarse, group_size) -> (N, n_fine)."""
        n = grouped.shape[0]
        if tuple(grouped.shape[1:]) != (self.n_coarse, self.group_size):
            raise GeometryError(f"expected (N, {self.n_coarse}, {self.group_size}) grouped fine voxels, "
                                f"got {tuple(grouped.shape)}")
        flat = grouped.reshape(n, -1)
        inv = np.argsort(self.members.reshape(-1))
        return flat[:, inv]

    def neighbour_energies(self, coarse):
        """Coarse showers (N, n_coarse) -> neighbour energies (N, n_coarse, 6), 0 where absent."""
        _check_width(coarse, self.n_coarse, "coarse showers")
        e = coarse[:, self.neighbours]
        m = self.neighbour_mask[None]
        if isinstance(e, np.ndarray):
            return np.where(m, e, 0.0).astype(e.dtype, copy=False)
        import torch

        return torch.where(torch.as_tensor(m, device=e.device), e, torch.zeros((), dtype=e.dtype, device=e.device))

    def to_dict(self) -> dict:
        return {"grouping": self.grouping.to_dict(), "fine": self.fine.to_dict()}


def _check_width(x, n: int, what: str) -> None:
    if len(x.shape) != 2 or x.shape[1] != n:
        raise GeometryError(f"{what}: expected shape (N, {n}), got {tuple(x.shape)}")
