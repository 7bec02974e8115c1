"""Peak memory of one epoch of SuperCalo (shower, coarse voxel) rows: streamed from HDF5
(:class:`caloflows.layerdata.CoarseVoxelRows`) against all rows built in memory
(:func:`caloflows.superres.build_rows`), each in a fresh process (max RSS).

    python benchmarks/bench_supercalo_rows_memory.py FILE_SMALL.h5 FILE_LARGE.h5 --choice A

The streamed peak should not grow with the file; the in-memory one grows with the number of rows.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _child(path: str, choice: str, mode: str, chunk: int, batch: int) -> None:
    import numpy as np

    from caloflows.coarsegraining import CoarseGraining
    from caloflows.io import read_showers
    from caloflows.layerdata import CoarseVoxelRows
    from caloflows.superres import SuperCaloPreprocessing, build_rows

    cmap = CoarseGraining.parse(choice).bind("ds2")
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    prep = SuperCaloPreprocessing.fit_from_file(path, cmap)
    n_rows = 0
    if mode == "stream":
        src = CoarseVoxelRows(path, cmap, prep, chunk_showers=chunk)
        for t, c in src.batches(batch, seed=0, epoch=1):
            n_rows += len(t)
    else:
        d = read_showers(path, "ds2")
        r = build_rows(d.incident_energies, d.showers, cmap, prep, np.random.default_rng(0))
        n_rows = len(r)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"file": path, "mode": mode, "rows": n_rows, "seconds": time.perf_counter() - t0,
                      "max_rss_mb": peak / 1024, "rss_after_imports_mb": base / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+")
    ap.add_argument("--choice", default="A")
    ap.add_argument("--chunk-showers", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=10_000)
    ap.add_argument("--child", nargs=2, metavar=("FILE", "MODE"))
    a = ap.parse_args()
    if a.child:
        _child(a.child[0], a.choice, a.child[1], a.chunk_showers, a.batch_size)
        return
    for f in a.files:
        for mode in ("stream", "memory"):
            subprocess.run([sys.executable, __file__, "x", "--child", f, mode, "--choice", a.choice,
                            "--chunk-showers", str(a.chunk_showers), "--batch-size", str(a.batch_size)], check=True)


if __name__ == "__main__":
    main()
