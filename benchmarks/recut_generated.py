"""Re-apply the threshold-aware generation cut at a higher threshold to a generated file (issue 15).

The cut of ``caloflows generate MODEL --set voxel_cut_mev=C`` (L2LFlows eqs. B.8-B.9: per layer, drop
the dimmest voxels until the renormalised survivors are all at or above ``C``; each layer keeps its
energy, or is emptied when it holds less than ``C``) composes: applying it at ``C2`` to showers
already cut at ``C1 <= C2`` gives the showers generated with ``C2`` from the same flow samples.  A
cut scan therefore needs one generation, not one per cut (checked on L2LFlows ds2: float32
round-off, identical zero pattern).

    python benchmarks/recut_generated.py generated_cut05.h5 2 generated_cut2.h5 --geometry ds2
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from caloflows.errors import CaloflowsError
from caloflows.geometry import load_geometry
from caloflows.io import read_showers, write_showers
from caloflows.postprocess import threshold_renormalise_layers


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("generated", help="generated showers (HDF5)")
    ap.add_argument("cut_mev", type=float, help="the new cut (MeV), at least the file's own")
    ap.add_argument("out", help="output file (refused if it exists)")
    ap.add_argument("--geometry", default="ds2")
    a = ap.parse_args()
    if os.path.exists(a.out) or os.path.abspath(a.out) == os.path.abspath(a.generated):
        sys.exit(f"{a.out}: exists (or is the input); choose a new file")
    if not a.cut_mev > 0:
        sys.exit(f"cut_mev must be positive, got {a.cut_mev:g}")
    try:
        g = load_geometry(a.geometry)
        d = read_showers(a.generated)
        x = np.asarray(g.check_showers(d.showers, a.generated), dtype=np.float64)
        E = g.layer_energies(x)
        y = threshold_renormalise_layers(x, E, g.layer_offsets, a.cut_mev)
        write_showers(a.out, d.incident_energies, y.astype(np.float32), geometry=g.name)  # atomic
    except CaloflowsError as exc:
        sys.exit(str(exc))
    print(f"{a.out}: non-zero voxels {(y > 0).mean():.4f} (before {(x > 0).mean():.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
