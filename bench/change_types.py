"""Which kinds of change a model finds, on generated scenes (not a test).

The generator knows what each changed pixel is: a new building, a demolition or new
pavement, and whether the scene's dates run backwards (a new building then shows as a
building gone, a demolition as a building rising on a cleared site). Each scene is written
as a GeoTIFF pair and run through ``kdmsi-geo detect`` as a user runs it; the masks are read
for this report only. Per kind and direction it prints the changed objects (connected
pixels of one kind) that the map touches, and the share of their pixels it flags; then each
model's precision and change F1 over all scenes.

    python bench/change_types.py [--models default,B.safetensors] [--scenes 24] \
        [--size 512] [--pixel-size 0.5] [--seed 7000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import rasterio

from kdmsi_core import detect
from kdmsi_train.metrics import Confusion
from kdmsi_train.shape_metrics import components
from kdmsi_train.synth import make_scene_pair, write_scene_pair
from kdmsi_train.synth.changes import KINDS


def kind_names() -> tuple[str, ...]:
    """Row names: each kind forwards, then backwards."""
    return KINDS + tuple(f"{k}, backwards" for k in KINDS)


def tally(flagged: np.ndarray, kinds: np.ndarray, backward: bool, counts: dict) -> None:
    """Add one scene's objects hit, objects (8-connected pixels of one kind), pixels
    flagged and pixels of each kind to ``counts``."""
    for code, name in enumerate(KINDS, 1):
        row = counts.setdefault(f"{name}, backwards" if backward else name, np.zeros(4, int))
        mine = kinds == code
        objects = components(mine)
        row += (len(np.unique(objects[mine & flagged])), len(np.unique(objects[mine])),
                int((mine & flagged).sum()), int(mine.sum()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="default",
                        help="comma-separated checkpoints or ONNX files; default: the embedded")
    parser.add_argument("--scenes", type=int, default=24)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--pixel-size", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=7000, help="seed of the first scene")
    parser.add_argument("--keep", type=Path, help="write the scenes and maps here")
    args = parser.parse_args()
    models = args.models.split(",")
    with tempfile.TemporaryDirectory(prefix="kdmsi-kinds-") as tmp:
        folder = args.keep or Path(tmp)
        counts: dict[str, dict] = {m: {} for m in models}
        totals = {m: Confusion() for m in models}
        for i in range(args.scenes):
            pair = make_scene_pair(args.seed + i, args.size, args.pixel_size)
            paths = write_scene_pair(pair, folder, f"scene_{i:03d}", pixel_size=args.pixel_size)
            for j, model in enumerate(models):
                out = folder / f"scene_{i:03d}_model{j}.gpkg"
                flags = out.with_suffix(".tif")
                detect(paths["t1"], paths["t2"], out, mask=flags,
                       model=None if model == "default" else model, overwrite=True)
                with rasterio.open(flags) as ds:
                    flagged = ds.read(1) > 0
                tally(flagged, pair.kinds, pair.backward, counts[model])
                totals[model].update(flagged, pair.mask)
    print(f"{args.scenes} scenes of {args.size} px at {args.pixel_size} m, seeds "
          f"{args.seed}-{args.seed + args.scenes - 1}")
    print("| kind | objects | " + " | ".join(f"{m}: objects hit | pixel recall"
                                               for m in models) + " |")
    print("|---|---|" + "---|---|" * len(models))
    for name in kind_names():
        rows = [counts[m].get(name, np.zeros(4, int)) for m in models]
        if rows[0][1] == 0:
            continue
        cells = " | ".join(f"{r[0]} ({r[0] / r[1]:.0%}) | {r[2] / max(r[3], 1):.3f}"
                           for r in rows)
        print(f"| {name} | {rows[0][1]} | {cells} |")
    for m in models:
        f = totals[m].metrics()
        print(f"{m}: precision {f['precision']:.3f}, recall {f['recall']:.3f}, "
              f"change F1 {f['f1']:.3f}")


if __name__ == "__main__":
    main()
