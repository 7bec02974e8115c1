"""Voxel geometry of the CaloChallenge calorimeters.

A CaloChallenge geometry (review, sec. 2 and table 2) is a stack of layers along the
particle direction z; layer *i* is divided into ``n_r`` radial bins (edges in mm) and
``n_alpha`` angular bins.  The flat voxel index of the HDF5 ``showers`` dataset runs
layer by layer, inside a layer angular bin by angular bin, and inside an angular bin
over the radial bins (radius fastest): "the first entries correspond to the radial
bins of the first angular slice in the first layer" (review sec. 2).

Voxel centres follow the official evaluation (review sec. 8.1 and
``shared/calochallenge/CONVENTIONS.md``): the radial centre is the midpoint of the
bin edges, angular bin ``j`` of ``n_alpha`` has centre ``-pi + (j + 1/2) 2 pi / n_alpha``,
and ``eta = r cos(alpha)``, ``phi = r sin(alpha)``.

Layers listed in a binning XML with a single radial edge (``r_edges="0"``) hold no
voxels (dataset 1 numbers its layers after ATLAS and skips some); they are dropped,
so ``Geometry.layers`` holds only the layers that have voxels.

>>> g = load_geometry("ds2")
>>> g.n_voxels, g.n_layers
(6480, 45)
>>> load_geometry("1-photons").n_voxels
368
>>> g.coarsen(1, 2, 5).n_voxels
648
"""

from __future__ import annotations

import json
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources

import numpy as np

from .errors import GeometryError

__all__ = [
    "Layer",
    "Geometry",
    "GeometryError",
    "load_geometry",
    "available_geometries",
    "coarse_grain",
]

#: Readout threshold of datasets 2 and 3: 0.5 keV in silicon scaled by 1/0.033 (review sec. 2.2).
PAR04_THRESHOLD_MEV = 0.5e-3 / 0.033
#: Geometry kinds: CaloChallenge cylinders (r, alpha bins) or a rectangular crystal grid.
GEOMETRY_KINDS = ("cylindrical", "grid")
#: Voxel threshold applied to dataset 1 in the CaloChallenge evaluation (review sec. 2.1).
DS1_THRESHOLD_MEV = 1.0




@dataclass(frozen=True)
class Layer:
    """One calorimeter layer: radial bin edges (mm) and number of angular bins.

    In a ``grid`` geometry (:attr:`Geometry.kind`) the same two fields describe a
    rectangular crystal matrix: ``r_edges`` are the column edges along x and ``n_alpha``
    is the number of rows along y, both in crystal widths with the window centre at 0, so
    the flat index is ``row * n_columns + column`` (an image ``(n_rows, n_columns)``).
    """

    id: int
    r_edges: tuple[float, ...]
    n_alpha: int

    @property
    def n_r(self) -> int:
        return len(self.r_edges) - 1

    @property
    def n_voxels(self) -> int:
        return self.n_r * self.n_alpha

    @property
    def r_centers(self) -> np.ndarray:
        e = np.asarray(self.r_edges, dtype=np.float64)
        return 0.5 * (e[1:] + e[:-1])

    @property
    def alpha_centers(self) -> np.ndarray:
        j = np.arange(self.n_alpha, dtype=np.float64)
        return -math.pi + (j + 0.5) * 2.0 * math.pi / self.n_alpha


@dataclass(frozen=True, eq=False)
class Geometry:
    """A CaloChallenge voxel geometry, or a rectangular crystal grid (``kind="grid"``).

    Attributes:
        name: catalogue name (``ds2``) or the XML path it was read from.
        layers: the layers that hold voxels, in file order.
        threshold_mev: per-voxel readout threshold applied before any feature.
        particle: particle name from the binning file, if given.
        layer_thickness_mm: depth of one readout layer (Par04 geometries), else None.
        kind: ``"cylindrical"`` (CaloChallenge) or ``"grid"`` (ParaFlow crystal matrix,
            ``paraflow.txt`` sec. 3: e.g. ``paraflow-8x16``, 8 columns along x by 16 rows
            along y; positions in crystal widths).
        cell_mm: crystal width in mm (grid geometries).
    """

    name: str
    layers: tuple[Layer, ...]
    threshold_mev: float = PAR04_THRESHOLD_MEV
    particle: str | None = None
    layer_thickness_mm: float | None = None
    source: str = ""
    aliases: tuple[str, ...] = field(default=())
    kind: str = "cylindrical"
    cell_mm: float | None = None

    def __post_init__(self) -> None:
        if not self.layers:
            raise GeometryError(f"geometry {self.name!r} has no layer with voxels")
        if self.kind not in GEOMETRY_KINDS:
            raise GeometryError(f"geometry {self.name!r}: kind {self.kind!r} is not one of {', '.join(GEOMETRY_KINDS)}")

    @property
    def is_grid(self) -> bool:
        """True for a rectangular crystal grid (ParaFlow), False for CaloChallenge cylinders."""
        return self.kind == "grid"

    @property
    def image_shape(self) -> tuple[int, int]:
        """(rows along y, columns along x) of a one-layer grid geometry."""
        if not self.is_grid or self.n_layers != 1:
            raise GeometryError(f"geometry {self.name!r} is not a one-layer crystal grid")
        return self.layers[0].n_alpha, self.layers[0].n_r

    @cached_property
    def x_centers(self) -> np.ndarray:
        """Grid geometries: column centre of every flat voxel (crystal widths, window centre 0)."""
        self._need_grid()
        return np.concatenate([np.tile(l.r_centers, l.n_alpha) for l in self.layers])

    @cached_property
    def y_centers(self) -> np.ndarray:
        """Grid geometries: row centre of every flat voxel (crystal widths, window centre 0)."""
        self._need_grid()
        return np.concatenate([np.repeat(np.arange(l.n_alpha) + 0.5 - 0.5 * l.n_alpha, l.n_r) for l in self.layers])

    def _need_grid(self) -> None:
        if not self.is_grid:
            raise GeometryError(f"geometry {self.name!r} is cylindrical: it has no x/y crystal centres")

    # ------------------------------------------------------------------ sizes
    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @cached_property
    def layer_sizes(self) -> tuple[int, ...]:
        return tuple(l.n_voxels for l in self.layers)

    @cached_property
    def n_voxels(self) -> int:
        return int(sum(self.layer_sizes))

    @cached_property
    def layer_offsets(self) -> np.ndarray:
        """Start index of every layer in the flat voxel vector, plus the total at the end."""
        return np.concatenate([[0], np.cumsum(self.layer_sizes)]).astype(np.int64)

    def layer_slice(self, i: int) -> slice:
        o = self.layer_offsets
        return slice(int(o[i]), int(o[i + 1]))

    @property
    def is_regular(self) -> bool:
        """True when every layer has the same radial edges and angular bins (ds2, ds3)."""
        first = self.layers[0]
        return all(l.r_edges == first.r_edges and l.n_alpha == first.n_alpha for l in self.layers)

    # ---------------------------------------------------------------- centres
    @cached_property
    def layer_index(self) -> np.ndarray:
        """Layer position (0..n_layers-1) of every flat voxel."""
        return np.repeat(np.arange(self.n_layers), self.layer_sizes)

    @cached_property
    def r_centers(self) -> np.ndarray:
        """Radial centre (mm) of every flat voxel (grid: distance of the crystal centre from
        the window centre, crystal widths)."""
        if self.is_grid:
            return np.hypot(self.x_centers, self.y_centers)
        return np.concatenate([np.tile(l.r_centers, l.n_alpha) for l in self.layers])

    @cached_property
    def alpha_centers(self) -> np.ndarray:
        """Angular centre (rad, in [-pi, pi]) of every flat voxel (grid: atan2(y, x))."""
        if self.is_grid:
            return np.arctan2(self.y_centers, self.x_centers)
        return np.concatenate([np.repeat(l.alpha_centers, l.n_r) for l in self.layers])

    @cached_property
    def eta_centers(self) -> np.ndarray:
        """eta = r cos(alpha) of every flat voxel (review sec. 8.1); grid: x."""
        if self.is_grid:
            return self.x_centers.copy()
        return self.r_centers * np.cos(self.alpha_centers)

    @cached_property
    def phi_centers(self) -> np.ndarray:
        """phi = r sin(alpha) of every flat voxel (review sec. 8.1); grid: y."""
        if self.is_grid:
            return self.y_centers.copy()
        return self.r_centers * np.sin(self.alpha_centers)

    @property
    def r_max(self) -> float:
        return max(l.r_edges[-1] for l in self.layers)

    # --------------------------------------------------------------- reshaping
    def check_showers(self, showers: np.ndarray, what: str = "showers") -> np.ndarray:
        showers = np.asarray(showers)
        if showers.ndim != 2 or showers.shape[1] != self.n_voxels:
            raise GeometryError(
                f"{what}: expected (N, {self.n_voxels}) voxels for geometry {self.name!r}, "
                f"got shape {tuple(showers.shape)}"
            )
        return showers

    def split_layers(self, showers: np.ndarray) -> list[np.ndarray]:
        """Flat showers (N, V) -> list of per-layer arrays (N, n_alpha, n_r)."""
        showers = self.check_showers(showers)
        return [
            showers[:, self.layer_slice(i)].reshape(len(showers), l.n_alpha, l.n_r)
            for i, l in enumerate(self.layers)
        ]

    def to_grid(self, showers: np.ndarray) -> np.ndarray:
        """Flat showers (N, V) -> (N, n_layers, n_alpha, n_r); regular geometries only."""
        if not self.is_regular:
            raise GeometryError(f"geometry {self.name!r} has layers of different binning; use split_layers")
        showers = self.check_showers(showers)
        l = self.layers[0]
        return showers.reshape(len(showers), self.n_layers, l.n_alpha, l.n_r)

    def from_grid(self, grid: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_grid`."""
        grid = np.asarray(grid)
        return grid.reshape(len(grid), -1)

    def layer_energies(self, showers: np.ndarray) -> np.ndarray:
        """Energy per layer E_i = sum of the layer's voxels, shape (N, n_layers)."""
        showers = self.check_showers(showers)
        return np.add.reduceat(showers, self.layer_offsets[:-1], axis=1)

    def apply_threshold(self, showers: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """Zero voxels strictly below the threshold (CONVENTIONS: threshold first)."""
        t = self.threshold_mev if threshold is None else threshold
        showers = np.asarray(showers)
        return np.where(showers < t, 0.0, showers).astype(showers.dtype, copy=False)

    # ----------------------------------------------------------- coarse-graining
    def coarsen(self, f_r: int, f_alpha: int, f_z: int, name: str | None = None) -> "Geometry":
        """Geometry whose voxels group f_r radial x f_alpha angular x f_z layers of this one."""
        self._check_factors(f_r, f_alpha, f_z)
        l0 = self.layers[0]
        r_edges = tuple(l0.r_edges[:: f_r])
        layers = tuple(
            Layer(id=i, r_edges=r_edges, n_alpha=l0.n_alpha // f_alpha) for i in range(self.n_layers // f_z)
        )
        thick = None if self.layer_thickness_mm is None else self.layer_thickness_mm * f_z
        return Geometry(
            name=name or f"{self.name}/coarse{f_r}x{f_alpha}x{f_z}",
            layers=layers,
            threshold_mev=self.threshold_mev,
            particle=self.particle,
            layer_thickness_mm=thick,
            source=f"{self.name} grouped {f_r} r x {f_alpha} alpha x {f_z} layers",
        )

    def _check_factors(self, f_r: int, f_alpha: int, f_z: int) -> None:
        if not self.is_regular:
            raise GeometryError(f"coarse-graining needs a regular geometry; {self.name!r} is not")
        l0 = self.layers[0]
        for f, n, what in ((f_r, l0.n_r, "radial"), (f_alpha, l0.n_alpha, "angular"), (f_z, self.n_layers, "layer")):
            if f < 1 or n % f:
                raise GeometryError(f"{what} grouping factor {f} does not divide {n} bins of {self.name!r}")

    # --------------------------------------------------------------- serialise
    def to_dict(self) -> dict:
        extra = {"kind": self.kind, "cell_mm": self.cell_mm} if self.is_grid else {}
        return {
            **extra,
            "name": self.name,
            "threshold_mev": self.threshold_mev,
            "particle": self.particle,
            "layer_thickness_mm": self.layer_thickness_mm,
            "source": self.source,
            "layers": [{"id": l.id, "r_edges": list(l.r_edges), "n_alpha": l.n_alpha} for l in self.layers],
        }

    def same_layout(self, other: "Geometry") -> bool:
        """True if both geometries have identical voxel layouts (names may differ)."""
        return self.kind == other.kind and (
            [(l.r_edges, l.n_alpha) for l in self.layers] == [(l.r_edges, l.n_alpha) for l in other.layers]
        )

    def __repr__(self) -> str:
        return f"Geometry({self.name!r}, layers={self.n_layers}, voxels={self.n_voxels})"


def coarse_grain(showers: np.ndarray, geometry: Geometry, factors: Sequence[int]) -> np.ndarray:
    """Sum groups of neighbouring voxels: factors = (f_r, f_alpha, f_z).

    SuperCalo (``supercalo.txt``, sec. 2) uses 1 r x 2 alpha x 5 z on dataset 2, which
    turns 6480 voxels into the 648 of ``ds2-coarse``.  Energy is conserved exactly.

    >>> g = load_geometry("ds2")
    >>> x = np.ones((3, g.n_voxels), dtype=np.float32)
    >>> c = coarse_grain(x, g, (1, 2, 5))
    >>> c.shape, float(c.sum()) == float(x.sum())
    ((3, 648), True)
    """
    f_r, f_a, f_z = (int(f) for f in factors)
    geometry._check_factors(f_r, f_a, f_z)
    grid = geometry.to_grid(showers)
    n, nz, na, nr = grid.shape
    g = grid.reshape(n, nz // f_z, f_z, na // f_a, f_a, nr // f_r, f_r).sum(axis=(2, 4, 6))
    return g.reshape(n, -1)


# ----------------------------------------------------------------- catalogue
def _catalogue_dir():
    return resources.files("caloflows") / "data" / "geometries"


def _grid_layer(l: dict) -> dict:
    """``{"id", "n_x", "n_y"}`` of a grid geometry -> the Layer fields (see :class:`Layer`)."""
    n_x, n_y = int(l["n_x"]), int(l["n_y"])
    if n_x < 1 or n_y < 1:
        raise GeometryError(f"grid layer {l}: n_x and n_y must be positive")
    return {"id": int(l.get("id", 0)), "r_edges": [i - 0.5 * n_x for i in range(n_x + 1)], "n_alpha": n_y}


def _from_dict(d: dict, name: str | None = None) -> Geometry:
    kind = d.get("kind", "cylindrical")
    if kind == "grid":
        d = {**d, "layers": [_grid_layer(l) if "n_x" in l else l for l in d["layers"]]}
    layers = tuple(
        Layer(id=int(l["id"]), r_edges=tuple(float(x) for x in l["r_edges"]), n_alpha=int(l["n_alpha"]))
        for l in d["layers"]
        if len(l["r_edges"]) > 1
    )
    return Geometry(
        name=name or d["name"],
        layers=layers,
        threshold_mev=float(d.get("threshold_mev", PAR04_THRESHOLD_MEV)),
        particle=d.get("particle"),
        layer_thickness_mm=d.get("layer_thickness_mm"),
        source=d.get("source", ""),
        aliases=tuple(d.get("aliases", ())),
        kind=kind,
        cell_mm=None if d.get("cell_mm") is None else float(d["cell_mm"]),
    )


def _load_catalogue() -> dict[str, Geometry]:
    out = {}
    for f in sorted(_catalogue_dir().iterdir(), key=lambda p: p.name):
        if f.name.endswith(".json"):
            g = _from_dict(json.loads(f.read_text()))
            out[g.name] = g
    return out


_CATALOGUE: dict[str, Geometry] | None = None


def available_geometries() -> dict[str, Geometry]:
    """The named geometries shipped with caloflows, by canonical name."""
    global _CATALOGUE
    if _CATALOGUE is None:
        _CATALOGUE = _load_catalogue()
    return dict(_CATALOGUE)


def _threshold_for(pid: int | None, xml_path: str) -> float:
    # dataset 1 (ATLAS) files carry pid 22 / 211, Par04 files electrons
    if pid in (22, 211) or "dataset_1" in os.path.basename(xml_path):
        return DS1_THRESHOLD_MEV
    return PAR04_THRESHOLD_MEV


def parse_binning_xml(path: str | os.PathLike) -> Geometry:
    """Read a CaloChallenge ``binning_*.xml`` file (``<Bin><Layer r_edges=.. n_bin_alpha=..>``)."""
    path = str(path)
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise GeometryError(f"{path}: cannot read binning XML ({exc})") from None
    bins = root.findall("Bin") if root.tag != "Bin" else [root]
    if not bins:
        raise GeometryError(f"{path}: no <Bin> element")
    b = bins[0]
    layers = []
    for el in b.findall("Layer"):
        try:
            edges = [float(x) for x in el.attrib["r_edges"].split(",") if x.strip()]
            layers.append({"id": int(el.attrib["id"]), "r_edges": edges, "n_alpha": int(el.attrib["n_bin_alpha"])})
        except (KeyError, ValueError) as exc:
            raise GeometryError(f"{path}: malformed <Layer> element {el.attrib} ({exc})") from None
    pid = int(b.attrib["pid"]) if "pid" in b.attrib else None
    d = {
        "name": path,
        "layers": layers,
        "particle": b.attrib.get("name"),
        "threshold_mev": _threshold_for(pid, path),
    }
    # Par04 geometries (regular, 45 layers) have a known readout-layer depth
    g = _from_dict(d)
    if g.is_regular and g.n_layers == 45:
        g = _from_dict({**d, "layer_thickness_mm": 3.4})
    return g


def load_geometry(spec: "str | os.PathLike | Geometry") -> Geometry:
    """A catalogue name (``ds1-photons``, ``ds1-pions``, ``ds2``, ``ds3``, ``ds2-coarse``, ``paraflow-8x16``),
    a CaloChallenge alias (``1-photons``, ``1-pions``, ``2``, ``3``) or a binning XML path."""
    if isinstance(spec, Geometry):
        return spec
    s = str(spec)
    cat = available_geometries()
    if s in cat:
        return cat[s]
    for g in cat.values():
        if s in g.aliases:
            return g
    if s.endswith(".xml") or os.path.sep in s:
        if not os.path.exists(s):
            raise GeometryError(f"{s}: binning XML file not found")
        return parse_binning_xml(s)
    names = sorted(cat) + sorted(a for g in cat.values() for a in g.aliases)
    raise GeometryError(f"unknown geometry {s!r}; use one of {', '.join(names)} or a binning XML path")


def geometry_from_dict(d: dict) -> Geometry:
    """Rebuild a geometry stored with :meth:`Geometry.to_dict` (model directories, file attributes)."""
    return _from_dict(d)


def guess_geometry(n_voxels: int) -> Geometry | None:
    """The catalogue geometry with this voxel count, if exactly one."""
    hits = [g for g in available_geometries().values() if g.n_voxels == n_voxels]
    return hits[0] if len(hits) == 1 else None
