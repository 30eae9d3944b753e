"""Test inputs for the QGIS tests, made in the core's Python, never in QGIS's.

Run as ``python tests/qgis/data.py pair OUT_DIR --size N`` (prints the paths as JSON) or
``python tests/qgis/data.py model OUT.safetensors`` (a checkpoint with random weights, for
runs that check plumbing, not detection). The QGIS tests call it in a subprocess so that
neither torch nor the core is ever imported into the QGIS test process.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EPSG = 32633
PIXEL_SIZE = 0.5


def write_pair(out_dir: Path, size: int, seed: int) -> dict[str, str]:
    """A synthetic scene pair (kdmsi_train.synth) as GeoTIFFs in UTM 33N, with its change mask."""
    import rasterio
    from rasterio.transform import from_origin

    from kdmsi_train.synth import make_scene_pair

    pair = make_scene_pair(seed, size, PIXEL_SIZE)
    profile = dict(driver="GTiff", width=size, height=size, dtype="uint8", crs=f"EPSG:{EPSG}",
                   transform=from_origin(500000.0, 5500000.0, PIXEL_SIZE, PIXEL_SIZE))
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, array in (("t1", pair.t1), ("t2", pair.t2), ("mask", pair.mask[None])):
        paths[name] = str(out_dir / f"{name}.tif")
        with rasterio.open(paths[name], "w", count=array.shape[0], **profile) as dst:
            dst.write(array)
    return paths


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
    model = sub.add_parser("model")
    model.add_argument("path", type=Path)
    args = parser.parse_args()
    if args.what == "pair":
        print(json.dumps(write_pair(args.out_dir, args.size, args.seed)))
    else:
        print(json.dumps({"model": write_random_model(args.path)}))


if __name__ == "__main__":
    main()
