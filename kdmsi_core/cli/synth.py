"""``kdmsi-geo synth``: write a synthetic data set (GeoTIFF scene pairs and a tile set)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from kdmsi_core.cli.options import overwrite_opt, progress_opt
from kdmsi_core.progress import make_progress, report_done


@click.command("synth")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", type=int, default=0, show_default=True,
              help="Random seed; the same seed always writes the same data.")
@click.option("--scenes", type=int, default=12, show_default=True,
              help="Number of scene pairs.")
@click.option("--scene-size", type=int, default=512, show_default=True,
              help="Side of each scene in pixels.")
@click.option("--tile-size", type=int, default=128, show_default=True,
              help="Side of the non-overlapping tiles in pixels.")
@click.option("--pixel-size", type=float, default=0.5, show_default=True,
              help="Ground size of a pixel in metres (0.1 to 2).")
@click.option("--epsg", type=int, default=32633, show_default=True,
              help="Projected CRS (metres) of the GeoTIFFs.")
@click.option("--dtype", type=click.Choice(["uint8", "uint16"]), default="uint8",
              show_default=True, help="uint16 writes a 12-bit-like range (value*15+100).")
@click.option("--bands", type=click.Choice(["3", "4"]), default="3", show_default=True,
              help="3: RGB; 4: RGB plus a near-infrared band.")
@click.option("--change-rate", type=float, default=1.0, show_default=True,
              help="Multiplies how many changes happen per area.")
@click.option("--label-min-fraction", type=float, default=0.0, show_default=True,
              help="A tile is labelled changed when more than this fraction of its pixels "
                   "changed (0: any changed pixel).")
@click.option("--workers", type=int, default=None,
              help="Processes generating scenes [default: CPU count, at most 4]; the data "
                   "do not depend on it.")
@overwrite_opt
@progress_opt
def command(
    out_dir: Path, seed: int, scenes: int, scene_size: int, tile_size: int, pixel_size: float,
    epsg: int, dtype: str, bands: str, change_rate: float, label_min_fraction: float,
    workers: int | None, overwrite: bool, progress_kind: str,
) -> None:
    """Write synthetic aerial scene pairs with change masks to OUT_DIR.

    OUT_DIR/scenes holds georeferenced GeoTIFFs (scene_NNN_t1/t2/mask.tif); OUT_DIR/tiles
    the same scenes as a tile data set (A/, B/, label/, list/ with train/val/test lists
    and image-level labels), split by scene.
    """
    from kdmsi_train.datasets import SYNTH_RECORD
    from kdmsi_train.synth import write_tile_dataset

    progress = make_progress(progress_kind)
    try:
        tiles = write_tile_dataset(
            out_dir, seed=seed, scenes=scenes, scene_size=scene_size, tile_size=tile_size,
            pixel_size=pixel_size, epsg=epsg, dtype=dtype, bands=int(bands),
            change_rate=change_rate, label_min_fraction=label_min_fraction, overwrite=overwrite,
            workers=workers, progress=progress,
        )
    finally:
        close = getattr(progress, "close", None)
        if close is not None:
            close()
    summary = json.loads((out_dir / SYNTH_RECORD).read_text())
    summary.update(scenes_dir=str(out_dir / "scenes"), tiles_dir=str(tiles))
    counts = summary["splits"].values()
    total, changed = sum(c["tiles"] for c in counts), sum(c["changed"] for c in counts)
    message = (f"Wrote {scenes} scene pairs to {out_dir / 'scenes'} and {total} tiles "
               f"({changed} changed) to {tiles}.")
    report_done(progress, message, summary)
