"""Peak memory and speed of ``kdmsi-geo detect`` at growing raster sizes (not a test).

Each size runs in its own child process so that its peak RSS is its own. The pair is
generated strip by strip (3-band uint8, UTM, 0.5 m unless ``--pixel-size`` says otherwise, a
change every 1024 px), so generating it needs no more memory than running on it. Without
``--model`` the embedded model is used; finer pixels than its 0.5 m are read at its
resolution, with larger tiles.

    python bench/memory.py --sizes 4096,8192,16384 [--pixel-size 0.1] [--scales 0.5,1,1.25,2]
        [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

for _var in ("PROJ_DATA", "PROJ_LIB"):
    os.environ.pop(_var, None)

STRIP = 512


def write_pair(folder: Path, size: int, pixel: float = 0.5) -> tuple[Path, Path]:
    """A size x size pair, written in strips: blurred-noise landscape, bright squares in t2."""
    import rasterio
    from rasterio.transform import from_origin

    profile = {"driver": "GTiff", "width": size, "height": size, "count": 3, "dtype": "uint8",
               "crs": "EPSG:32633", "transform": from_origin(500000, 5000000, pixel, pixel),
               "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate",
               "bigtiff": "IF_SAFER"}
    paths = folder / f"t1_{size}.tif", folder / f"t2_{size}.tif"
    rng = np.random.default_rng(size)
    with rasterio.open(paths[0], "w", **profile) as d1, \
            rasterio.open(paths[1], "w", **profile) as d2:
        for row in range(0, size, STRIP):
            coarse = rng.random((3, STRIP // 8, size // 8))
            t1 = (60 + 130 * np.kron(coarse, np.ones((8, 8)))).astype(np.uint8)
            t2 = t1.copy()
            if row % 1024 == 0:
                for c in range(200, size - 200, 1024):
                    t2[:, 100:260, c:c + 160] = 250
            window = rasterio.windows.Window(0, row, size, STRIP)
            d1.write(t1, window=window)
            d2.write(t2, window=window)
    return paths


def run_one(args: argparse.Namespace) -> None:
    """Child: one detect run; prints its figures as JSON."""
    from kdmsi_core import detect

    started = time.perf_counter()
    s = detect(args.t1, args.t2, args.output, model=args.model, scales=args.scales,
               tile_size=args.tile_size, overlap=args.overlap, batch_size=args.batch_size,
               overwrite=True)
    seconds = time.perf_counter() - started
    megapixels = s.width * s.height / 1e6
    print(json.dumps({"size": s.width, "megapixels": round(megapixels, 1),
                      "seconds": round(seconds, 1),
                      "seconds_per_mp": round(seconds / megapixels, 3),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                           / 1024), "polygons": s.polygons,
                      "scales": list(s.scales), "tile_size": s.tile_size,
                      "pixel_size_m": s.pixel_size_m,
                      "batch_size": s.batch_size, "device": s.device}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="4096,8192,16384")
    p.add_argument("--pixel-size", type=float, default=0.5, help="metres (default 0.5)")
    p.add_argument("--model", default=None)
    p.add_argument("--scales", default=None, help="e.g. 1 (default: the checkpoint's)")
    p.add_argument("--tile-size", type=int, default=None)
    p.add_argument("--overlap", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--keep", type=Path, default=None, help="folder for data and outputs")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--t1"), p.add_argument("--t2"), p.add_argument("--output")
    args = p.parse_args()
    args.scales = [float(s) for s in args.scales.split(",")] if args.scales else None
    if args.one:
        run_one(args)
        return
    with tempfile.TemporaryDirectory(prefix="kdmsi-bench-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        from kdmsi_core.checkpoint import default_model_path

        model = args.model or str(default_model_path())
        print(f"model: {model}", file=sys.stderr)
        for size in (int(s) for s in args.sizes.split(",")):
            t0 = time.perf_counter()
            t1, t2 = write_pair(folder, size, args.pixel_size)
            print(f"{size}^2 pair generated in {time.perf_counter() - t0:.0f} s",
                  file=sys.stderr)
            child = [sys.executable, __file__, "--one", "--t1", str(t1), "--t2", str(t2),
                     "--output", str(folder / f"changes_{size}.gpkg"), "--model", model]
            for flag in ("scales", "tile_size", "overlap", "batch_size"):
                value = getattr(args, flag)
                if value is not None:
                    text = ",".join(map(str, value)) if flag == "scales" else str(value)
                    child += [f"--{flag.replace('_', '-')}", text]
            out = subprocess.run(child, check=True, capture_output=True, text=True).stdout
            print(out.strip().splitlines()[-1], flush=True)
            if args.keep is None:
                for path in (t1, t2):
                    path.unlink()


if __name__ == "__main__":
    main()
