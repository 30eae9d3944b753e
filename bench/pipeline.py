"""End-to-end ``detect`` time over the pure batched-forward time of the same tiles, for the
torch and the ONNX Runtime engine side by side.

A generated scene pair (UTM, 0.5 m, 3-band uint8) is written as GeoTIFFs; ``detect`` runs on
it with the embedded model on each engine; then the same tiles, read beforehand into memory,
go through the same engine in the same batches and scales, and only that is timed (once
before and once after ``detect``, averaged, as the machine's pace drifts). The ratio is what
reading, warping, blending, writing, polygonising and the COG copies cost on top of the
network. ``detect``'s own phase timings show where the rest goes. For a model whose card
asks for the outline refinement (:mod:`kdmsi_core.refine`) the forward time includes it,
as ``detect``'s does, and the column ``refine s`` gives what it adds (the same batches once
more without it, timed in turn with them). With ``--repeat N`` the
engines take turns N times and the fastest run of each counts (the machine may be shared).
Last, the ONNX Runtime run's time over the torch run's, and the largest difference of their
probability rasters. ``--models`` compares models (``default`` is the embedded one, or
checkpoint paths: a second-stage segmenter against the first stage's MSI) in seconds per
megapixel.

    python bench/pipeline.py [--size 2048] [--batch-size N] [--device cpu] [--repeat 1]
                             [--engines torch,onnxruntime] [--models default,PATH]
                             [--keep DIR]
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

from kdmsi_core.engine import load_engine  # noqa: E402
from kdmsi_core.inference import batches, default_batch_size, infer_batch  # noqa: E402
from kdmsi_core.pipeline import DetectSummary, detect  # noqa: E402
from kdmsi_core.raster import RasterPair  # noqa: E402
from kdmsi_core.tiling import DEFAULT_OVERLAP, DEFAULT_TILE_SIZE, Tile, plan_tiles  # noqa: E402
from kdmsi_train.synth import make_scene_pair, write_scene_pair  # noqa: E402


def pure_forward(t1: Path, t2: Path, device: object, batch_size: int, tile_size: int,
                 overlap: int, engine: str = "torch", model: str | None = None
                 ) -> tuple[float, float, int]:
    """Seconds of the network (and the card's refinement) alone over detect's batches (read
    beforehand), seconds of the same without the refinement, and the number of tiles."""
    runner = load_engine(model, engine, str(device))
    with RasterPair(t1, t2, None, runner.card.network.in_channels) as pair:
        norms = pair.normalizations(runner.card.normalization)
        tiles = [t for row in plan_tiles(pair.window, tile_size, overlap) for t in row]
        ready = [b for b in batches(pair, tiles, norms, batch_size) if b.tiles]
    scales, refinement = runner.card.scales, runner.card.refine
    infer_batch(runner, ready[0].t1, ready[0].t2, scales, refinement=refinement)  # warm-up
    seconds = {refinement: 0.0, None: 0.0}
    for b in ready:
        for used in seconds:
            start = time.perf_counter()
            infer_batch(runner, b.t1, b.t2, scales, refinement=used)
            seconds[used] += time.perf_counter() - start
    return seconds[refinement], seconds[None], sum(len(b.tiles) for b in ready)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--tile-size", type=int, default=DEFAULT_TILE_SIZE)
    p.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP)
    p.add_argument("--device", default="cpu")
    p.add_argument("--engines", default="torch,onnxruntime")
    p.add_argument("--models", default="default",
                   help="comma-separated checkpoints; 'default' is the embedded model")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--keep", type=Path, default=None, help="folder for data and outputs")
    args = p.parse_args()
    engines = args.engines.split(",")
    models = [None if m == "default" else m for m in args.models.split(",")]
    tile = Tile(0, 0, args.tile_size, args.tile_size)
    batch_size = args.batch_size or default_batch_size(args.device, tile)
    best: dict[tuple[str, str], tuple[DetectSummary, float, float, float]] = {}
    probabilities: dict[tuple[str, str], np.ndarray] = {}
    with tempfile.TemporaryDirectory(prefix="kdmsi-bench-") as tmp:
        folder = args.keep or Path(tmp)
        started = time.perf_counter()
        paths = write_scene_pair(make_scene_pair(args.seed, args.size), folder, "bench")
        print(f"{args.size}^2 pair generated in {time.perf_counter() - started:.0f} s; "
              f"{os.cpu_count()} CPU cores, batch {batch_size}, tiles of {args.tile_size} px "
              f"(overlap {args.overlap})")
        common = (paths["t1"], paths["t2"], args.device, batch_size, args.tile_size,
                  args.overlap)
        for _ in range(args.repeat):
            for i, model in enumerate(models):
                for engine in engines:
                    key = (Path(model).stem if model else "default", engine)
                    before, raw_before, tiles = pure_forward(*common, engine, model)
                    s = detect(paths["t1"], paths["t2"], folder / f"{i}-{engine}.gpkg",
                               model=model, device=args.device, engine=engine,
                               batch_size=batch_size, tile_size=args.tile_size,
                               overlap=args.overlap, overwrite=True)
                    after, raw_after, _ = pure_forward(*common, engine, model)
                    if key not in best or s.seconds < best[key][0].seconds:
                        best[key] = (s, before, after, before + after - raw_before - raw_after)
                    with rasterio.open(s.probability) as src:
                        probabilities[key] = src.read(1, masked=True).filled(0)
    megapixels = args.size ** 2 / 1e6
    print(f"{tiles} tiles ({megapixels:.1f} MP); fastest of {args.repeat} run(s) each")
    print(f"{'model':20s} {'engine':12s} {'scales':>16s} {'detect s':>9s} {'s/MP':>6s} "
          f"{'forward s':>10s} {'ratio':>6s} {'refine s':>8s} {'polygons':>8s}  phases (s)")
    for (model, engine), (s, before, after, refining) in best.items():
        forward = (before + after) / 2
        phases = ", ".join(f"{k} {v:.2f}" for k, v in s.timings.items())
        scales = ",".join(f"{x:g}" for x in s.scales)
        print(f"{model:20s} {engine:12s} {scales:>16s} {s.seconds:9.2f} "
              f"{s.seconds / megapixels:6.2f} {forward:10.2f} {s.seconds / forward:6.3f} "
              f"{refining / 2:8.2f} {s.polygons:8d}  "
              f"{phases}  (forward {before:.2f} before, {after:.2f} after)")
    for model in dict.fromkeys(m for m, _ in best):
        if (model, "torch") in best and (model, "onnxruntime") in best:
            ratio = best[model, "onnxruntime"][0].seconds / best[model, "torch"][0].seconds
            diff = np.abs(probabilities[model, "onnxruntime"]
                          - probabilities[model, "torch"]).max()
            print(f"{model}: onnxruntime / torch, detect end to end: {ratio:.3f} (target <= "
                  f"0.75); max |probability difference| {diff:.1e}")


if __name__ == "__main__":
    main()
