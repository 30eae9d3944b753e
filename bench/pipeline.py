"""End-to-end ``detect`` time over the pure batched-forward time of the same tiles.

A generated scene pair (UTM, 0.5 m, 3-band uint8) is written as GeoTIFFs; ``detect`` runs on
it with the embedded model; then the same tiles, read beforehand into memory, go through the
same prepared network in the same batches and scales, and only that is timed (once before
and once after ``detect``, averaged, as the machine's pace drifts). The ratio is
what reading, warping, blending, writing, polygonising and the COG copies cost on top of the
network. ``detect``'s own phase timings are printed to show where the rest goes.

    python bench/pipeline.py [--size 2048] [--batch-size N] [--device cpu] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

for _var in ("PROJ_DATA", "PROJ_LIB"):
    os.environ.pop(_var, None)

import torch  # noqa: E402

from kdmsi_core.pipeline import (  # noqa: E402
    _batches,
    default_batch_size,
    detect,
    infer_batch,
    load_model,
)
from kdmsi_core.raster import RasterPair  # noqa: E402
from kdmsi_core.tiling import DEFAULT_OVERLAP, DEFAULT_TILE_SIZE, Tile, plan_tiles  # noqa: E402
from kdmsi_train.synth import make_scene_pair, write_scene_pair  # noqa: E402


def pure_forward(t1: Path, t2: Path, device: torch.device, batch_size: int,
                 tile_size: int, overlap: int) -> tuple[float, int]:
    """Seconds of the network alone over detect's batches (read beforehand), and tiles."""
    loaded = load_model(None, device)
    with RasterPair(t1, t2, None, loaded.card.network.in_channels) as pair:
        norms = pair.normalizations(loaded.card.normalization)
        tiles = [t for row in plan_tiles(pair.window, tile_size, overlap) for t in row]
        batches = [b for b in _batches(pair, tiles, norms, batch_size) if b.tiles]
    infer_batch(loaded.model, device, batches[0].t1, batches[0].t2, loaded.card.scales)
    sync(device)
    start = time.perf_counter()
    for b in batches:
        infer_batch(loaded.model, device, b.t1, b.t2, loaded.card.scales)
    sync(device)
    return time.perf_counter() - start, sum(len(b.tiles) for b in batches)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--tile-size", type=int, default=DEFAULT_TILE_SIZE)
    p.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP)
    p.add_argument("--device", default="cpu")
    p.add_argument("--keep", type=Path, default=None, help="folder for data and outputs")
    args = p.parse_args()
    device = torch.device(args.device)
    tile = Tile(0, 0, args.tile_size, args.tile_size)
    batch_size = args.batch_size or default_batch_size(device, tile)
    with tempfile.TemporaryDirectory(prefix="kdmsi-bench-") as tmp:
        folder = args.keep or Path(tmp)
        started = time.perf_counter()
        paths = write_scene_pair(make_scene_pair(args.seed, args.size), folder, "bench")
        print(f"{args.size}^2 pair generated in {time.perf_counter() - started:.0f} s")
        before, tiles = pure_forward(paths["t1"], paths["t2"], device, batch_size,
                                     args.tile_size, args.overlap)
        s = detect(paths["t1"], paths["t2"], folder / "changes.gpkg", device=args.device,
                   batch_size=batch_size, tile_size=args.tile_size, overlap=args.overlap,
                   overwrite=True)
        after, _ = pure_forward(paths["t1"], paths["t2"], device, batch_size,
                                args.tile_size, args.overlap)
    forward = (before + after) / 2
    print(f"device {device}, threads {torch.get_num_threads()}, {args.size}^2 px, {tiles} "
          f"tiles of {args.tile_size} px (overlap {args.overlap}), batch {batch_size}, "
          f"scales {list(s.scales)}, {s.polygons} polygons")
    print("detect phases (s): " + ", ".join(f"{k} {v:.2f}" for k, v in s.timings.items()))
    print(f"detect end to end:   {s.seconds:8.2f} s")
    print(f"pure batched forward:{forward:8.2f} s (mean of {before:.2f} before and "
          f"{after:.2f} after detect)")
    print(f"ratio: {s.seconds / forward:.3f} (target <= 1.11)")


if __name__ == "__main__":
    main()
