"""Test inputs for the QGIS tests, made in the core's Python, never in QGIS's.

Run as ``python tests/qgis/data.py pair OUT_DIR --size N [--bands 4] [--dates D1,D2]``
(prints the paths as JSON), ``python tests/qgis/data.py model OUT.safetensors`` (a
checkpoint with random weights, for runs that check plumbing, not detection) or
``python tests/qgis/data.py labels MASK.tif`` (label areas as a user would draw them:
boxes around the changes and unchanged squares, as WKT in the mask's CRS). The QGIS tests
call it in a subprocess so that neither torch nor the core is ever imported into the QGIS
test process.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EPSG = 32633
PIXEL_SIZE = 0.5


def write_pair(out_dir: Path, size: int, seed: int, bands: int = 3,
               dates: tuple[str, str] | None = None,
               pixel_size: float = PIXEL_SIZE) -> dict[str, str]:
    """A synthetic scene pair (kdmsi_train.synth) as GeoTIFFs in UTM 33N, with its change mask.

    ``bands`` 4 adds a near-infrared-like fourth band; ``dates`` are written where GDAL keeps
    acquisition dates (IMAGERY domain, ACQUISITIONDATETIME).
    """
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    from kdmsi_train.synth import make_scene_pair

    pair = make_scene_pair(seed, size, pixel_size)
    profile = dict(driver="GTiff", width=size, height=size, dtype="uint8", crs=f"EPSG:{EPSG}",
                   transform=from_origin(500000.0, 5500000.0, pixel_size, pixel_size))
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    images = [pair.t1, pair.t2]
    if bands == 4:  # a fourth band GDAL would otherwise take for alpha
        images = [np.concatenate([x, 255 - x[1:2]]) for x in images]
        profile["photometric"] = "MINISBLACK"
    for i, (name, array) in enumerate((("t1", images[0]), ("t2", images[1]),
                                       ("mask", pair.mask[None]))):
        paths[name] = str(out_dir / f"{name}.tif")
        with rasterio.open(paths[name], "w", count=array.shape[0], **profile) as dst:
            dst.write(array)
            if dates and i < 2:
                dst.update_tags(ns="IMAGERY", ACQUISITIONDATETIME=dates[i])
    return paths


def label_areas(mask_path: Path, pad: int = 4, square: int = 96) -> list[tuple[str, int]]:
    """Areas as a user draws them on the two dates: a box around each change (1) and squares
    with no change in them (0), as (WKT in the mask's CRS, changed)."""
    import numpy as np
    import rasterio
    import shapely
    from rasterio.features import shapes

    with rasterio.open(mask_path) as src:
        mask, transform = src.read(1), src.transform
    areas = []
    for geometry, value in shapes(mask, mask=mask == 1, transform=transform):
        if value == 1:
            box = shapely.box(*shapely.geometry.shape(geometry).bounds)
            areas.append((box.buffer(pad * transform.a, join_style="mitre").wkt, 1))
    height, width = mask.shape
    for row in range(0, height - square + 1, square):
        for col in range(0, width - square + 1, square):
            if not np.any(mask[row:row + square, col:col + square]):
                x0, y0 = transform * (col, row + square)
                x1, y1 = transform * (col + square, row)
                areas.append((shapely.box(x0, y0, x1, y1).wkt, 0))
    return areas


def write_random_model(path: Path) -> str:
    """A valid checkpoint with untrained weights: enough to exercise the plugin's plumbing."""
    from kdmsi_core.checkpoint import ModelCard, save_checkpoint
    from kdmsi_core.model import NetworkConfig, SiameseCAM
    from kdmsi_core.normalize import Normalization

    network = NetworkConfig()
    card = ModelCard(network=network, normalization=Normalization.for_dtype("uint8", 3),
                     tile_size=128, threshold=0.5)
    save_checkpoint(path, SiameseCAM(network), card)
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    pair = sub.add_parser("pair")
    pair.add_argument("out_dir", type=Path)
    pair.add_argument("--size", type=int, default=256)
    pair.add_argument("--seed", type=int, default=3)
    pair.add_argument("--bands", type=int, choices=(3, 4), default=3)
    pair.add_argument("--dates", help="acquisition dates of t1 and t2, e.g. 2021-06-01,2019-06-01")
    pair.add_argument("--pixel-size", type=float, default=PIXEL_SIZE)
    model = sub.add_parser("model")
    model.add_argument("path", type=Path)
    labels = sub.add_parser("labels")
    labels.add_argument("mask", type=Path)
    args = parser.parse_args()
    if args.what == "pair":
        dates = tuple(args.dates.split(",")) if args.dates else None
        print(json.dumps(write_pair(args.out_dir, args.size, args.seed, args.bands, dates,
                                    args.pixel_size)))
    elif args.what == "labels":
        print(json.dumps({"areas": label_areas(args.mask)}))
    else:
        print(json.dumps({"model": write_random_model(args.path)}))


if __name__ == "__main__":
    main()
