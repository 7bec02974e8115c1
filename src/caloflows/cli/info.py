"""``caloflows info FILE``: what a shower file holds."""

from __future__ import annotations

import sys

import numpy as np

from ..geometry import guess_geometry, load_geometry
from ..io import file_summary

#: marker in the text of a file whose voxel count differs from its (given or recorded) geometry
MISMATCH = "DOES NOT MATCH"


def register(sub) -> None:
    p = sub.add_parser("info", help="summarise a CaloChallenge HDF5 shower file")
    p.add_argument("file", help="HDF5 file with incident_energies and showers")
    p.add_argument("--geometry", help="geometry name or binning XML to check against (default: from the file)")
    p.set_defaults(func=run)


def _text_histogram(values: np.ndarray, bins: int = 10, width: int = 40, log: bool = True) -> list[str]:
    v = np.asarray(values, dtype=np.float64)
    lo, hi = float(v.min()), float(v.max())
    uniq = np.unique(v)
    if len(uniq) <= 16:  # discrete energies (dataset-1 style): one row per value
        rows = [(u, int(np.count_nonzero(v == u))) for u in uniq]
        labels = [f"{u / 1e3:10.3f} GeV" for u, _ in rows]
        counts = [c for _, c in rows]
    else:
        edges = np.geomspace(lo, hi, bins + 1) if log and lo > 0 else np.linspace(lo, hi, bins + 1)
        counts = np.histogram(v, edges)[0].tolist()
        labels = [f"{a / 1e3:9.3f}-{b / 1e3:<9.3f} GeV" for a, b in zip(edges[:-1], edges[1:])]
    m = max(counts) or 1
    return [f"  {lab} | {'#' * int(round(width * c / m)):<{width}} {c}" for lab, c in zip(labels, counts)]


def describe(path: str, geometry: str | None = None) -> str:
    """The text ``caloflows info`` prints."""
    s = file_summary(path, None)
    g = load_geometry(geometry) if geometry else None
    attrs = s["attrs"]
    if g is None and "geometry" in attrs:
        try:
            g = load_geometry(attrs["geometry"])
        except Exception:
            g = None
    if g is None:
        g = guess_geometry(s["n_voxels"])
    lines = [f"file:               {path}", f"showers:            {s['n_showers']}", f"voxels per shower:  {s['n_voxels']}"]
    if g is None:
        lines.append("geometry:           unknown (no catalogue geometry has this voxel count)")
    elif g.n_voxels == s["n_voxels"]:
        lines.append(f"geometry:           {g.name} ({g.n_layers} layers) -- matches")
    else:
        lines.append(f"geometry:           {g.name} expects {g.n_voxels} voxels -- {MISMATCH}")
    e = s["incident_energies"]
    lines.append(f"incident energy:    {e.min() / 1e3:.4g} .. {e.max() / 1e3:.4g} GeV (median {np.median(e) / 1e3:.4g} GeV)")
    lines.extend(_text_histogram(e))
    r = s["total_energy"] / e
    lines.append(f"zero voxels:        {100 * s['zero_fraction']:.2f} %")
    lines.append(
        f"total energy:       mean {s['total_energy'].mean() / 1e3:.4g} GeV, E_dep/E_inc mean {r.mean():.4f}, "
        f"std {r.std():.4f}, min {r.min():.4f}, max {r.max():.4f}"
    )
    if s["condition_names"]:
        lines.append(f"extra conditions:   {', '.join(s['condition_names'])}")
    keys = [k for k in sorted(attrs) if k != "caloflows_version"]
    width = max((len(k) for k in keys), default=0) + 2
    for k in keys:
        lines.append(f"attr {k + ':':<{width}}{attrs[k]}")
    return "\n".join(lines)


def run(args) -> int:
    text = describe(args.file, args.geometry)
    print(text)
    if MISMATCH in text:  # a mismatch is a failed check: scripts see it in the exit status
        print(f"caloflows: error: {args.file}: voxel count does not match the geometry", file=sys.stderr)
        return 1
    return 0
