"""Peak memory of `caloflows generate` as the number of showers grows (chunked streaming to disk).

Builds a quick-preset CaloFlow on ds2-coarse with preprocessing constants from toy showers and
untrained (randomly initialised) networks -- the memory and time of generation do not depend on
the weights -- then runs `caloflows generate --n N` in a child process for each N and reports the
child's peak resident memory (VmHWM) and showers/s.

    python benchmarks/bench_generate_memory.py --n 20000 60000 --chunk-size 10000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, nargs="+", default=[20_000, 60_000])
    ap.add_argument("--chunk-size", type=int, default=10_000)
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    a = ap.parse_args()
    from caloflows.io import ShowerData
    from caloflows.models.caloflow import CaloFlow, CaloFlowConfig
    from caloflows.toy_showers import toy_showers
    from caloflows.geometry import load_geometry

    work = Path(tempfile.mkdtemp(prefix="bench_generate_"))
    g = load_geometry("ds2-coarse")
    model = CaloFlow(g, CaloFlowConfig.preset("quick", g))
    einc, sh = toy_showers(g, 2000, seed=0)
    model.fit_constants(ShowerData(einc, sh))
    model.trained = {k: True for k in model.trained}
    model.save(work / "model")
    rows = []
    for n in a.n:
        code = (
            "import resource, sys, time\n"
            "from caloflows.api import generate\n"
            f"t = time.time(); r = generate({str(work / 'model')!r}, {str(work / f'gen_{n}.h5')!r}, n={n}, seed=1, "
            f"batch_size={a.batch_size}, chunk_size={a.chunk_size}, progress=False)\n"
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
            "print(int(hwm) / 1024, r['seconds'])\n"
        )
        t0 = time.time()
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
        rows.append({"n": n, "peak_rss_mb": float(out[0]), "seconds": float(out[1]),
                     "showers_per_s": n / float(out[1]), "wall_s": time.time() - t0})
        print(json.dumps(rows[-1]))
    if a.out:
        Path(a.out).write_text(json.dumps({"chunk_size": a.chunk_size, "batch_size": a.batch_size, "runs": rows},
                                          indent=1))


if __name__ == "__main__":
    main()
