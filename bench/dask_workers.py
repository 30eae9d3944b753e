"""Speed of ``detect`` on a local Dask cluster of 1 and 2 workers, and in one process.

Same generated pair (UTM, 0.5 m, 3-band uint8), model, tiles and scales in each run; the
cluster's start-up is included, as a user pays it. Prints seconds and speed-ups, and checks
that the probability rasters agree.

    python bench/dask_workers.py [--size 2048] [--workers 1,2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

for _var in ("PROJ_DATA", "PROJ_LIB"):
    os.environ.pop(_var, None)

import numpy as np  # noqa: E402
import rasterio  # noqa: E402

from kdmsi_core import detect  # noqa: E402
from kdmsi_train.synth import make_scene_pair, write_scene_pair  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--workers", default="1,2")
    p.add_argument("--keep", type=Path, default=None, help="folder for data and outputs")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="kdmsi-bench-") as tmp:
        folder = args.keep or Path(tmp)
        paths = write_scene_pair(make_scene_pair(args.seed, args.size), folder, "bench")
        runs: dict[str, float] = {}
        probs: dict[str, np.ndarray] = {}
        for workers in [None, *(int(w) for w in args.workers.split(","))]:
            name = "one process" if workers is None else f"{workers} Dask worker(s)"
            out = folder / f"changes_{workers or 0}.gpkg"
            started = time.perf_counter()
            s = detect(paths["t1"], paths["t2"], out, workers=workers, overwrite=True)
            runs[name] = time.perf_counter() - started
            with rasterio.open(s.probability) as ds:
                probs[name] = ds.read(1)
            print(f"{name:22s} {runs[name]:7.2f} s  ({s.polygons} polygons)", flush=True)
    base = runs["one process"]
    print(f"{os.cpu_count()} CPU cores, {args.size}^2 px, batch {s.batch_size}, "
          f"scales {list(s.scales)}")
    first = next(k for k in runs if k != "one process")
    for name, sec in runs.items():
        print(f"{name:22s} speed-up over one process {base / sec:5.2f}x, over {first} "
              f"{runs[first] / sec:5.2f}x, max |prob difference| "
              f"{np.abs(probs[name] - probs['one process']).max():.1e}")


if __name__ == "__main__":
    main()
