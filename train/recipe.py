"""The recipe of the embedded default model, and the figures that describe it.

``python -m kdmsi_train.recipe`` generates scenes (fixed seed), trains the narrow
``resnet18n`` teacher/student pair on their tiles, calibrates the threshold from image
labels, evaluates teacher CAM, student single-scale and student MSI on the held-back test
scenes, and writes the student to ``kdmsi_core/models/default.safetensors``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from kdmsi_core.checkpoint import default_model_path, load_checkpoint, save_checkpoint
from kdmsi_core.progress import BarProgress
from kdmsi_train.datasets import TileFolder
from kdmsi_train.evaluate import evaluate
from kdmsi_train.fit import fit_tile_folder
from kdmsi_train.synth import write_tile_dataset
from kdmsi_train.trainer import TrainConfig

DATA = {"seed": 2026, "scenes": 90, "scene_size": 512, "tile_size": 64}
CONFIG = TrainConfig(backbone="resnet18n", teacher="abs", student="cat", epochs=70,
                     batch_size=16, optimizer="adamw", lr=3e-3, seed=0)
TEST_DATA = {"seed": 9090, "scenes": 24, "scene_size": 512, "tile_size": 64}
MIN_CHANGED_FRACTION = 0.01


def drop_slivers(tiles: Path, splits: tuple[str, ...] = ("train", "val"),
                 min_fraction: float = MIN_CHANGED_FRACTION) -> int:
    """Leave out of ``splits`` the tiles that only a sliver of a change reaches into.

    Cutting scenes into tiles labels a tile changed when a few pixels of a neighbouring
    change reach into it; no one labelling images by eye would. Those labels are noise, so
    the recipe drops them from training and validation (never from the test split).
    Returns how many tiles were dropped.
    """
    dropped = 0
    for split in splits:
        folder = TileFolder.open(tiles, split)
        keep = []
        for i, name in enumerate(folder.names):
            fraction = float(folder.mask(i).mean()) if folder.labels[i] else 0.0
            if folder.labels[i] and fraction < min_fraction:
                dropped += 1
                continue
            keep.append(f"{name},{int(folder.labels[i])}")
        (tiles / "list" / f"{split}_label.txt").write_text("\n".join(keep) + "\n")
        (tiles / "list" / f"{split}.txt").write_text(
            "\n".join(k.split(",")[0] for k in keep) + "\n")
    return dropped


def run(output: Path, work: Path, data: dict, config: TrainConfig, test_data: dict) -> dict:
    """Generate, train, evaluate; returns the figures (also for ``bench/accuracy.py``)."""
    started = time.perf_counter()
    tiles = write_tile_dataset(work / "train", **data)
    dropped = drop_slivers(tiles)
    generated = time.perf_counter() - started
    full = work / "model_with_teacher.safetensors"
    card = fit_tile_folder(tiles, full, config, keep_teacher=True, progress=BarProgress()).card
    trained = time.perf_counter() - started - generated
    figures = {"data": data, "dropped_sliver_tiles": dropped,
               "generate_seconds": round(generated, 1),
               "train_seconds": round(trained, 1), "threshold": card.threshold,
               "best_epoch": card.training["best_epoch"],
               "seconds_per_epoch": round(sum(h["seconds"] for h in card.training["history"])
                                          / len(card.training["history"]), 1)}
    figures["held_back_test"] = evaluate(tiles, full, "test", teacher=True)["methods"]
    fresh = write_tile_dataset(work / "fresh", **test_data)
    figures["fresh_scenes"] = evaluate(fresh, full, "test", teacher=True)["methods"]
    loaded = load_checkpoint(full)
    save_checkpoint(output, loaded.model, loaded.card)
    figures["total_seconds"] = round(time.perf_counter() - started, 1)
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=default_model_path())
    parser.add_argument("--epochs", type=int, default=CONFIG.epochs)
    parser.add_argument("--scenes", type=int, default=DATA["scenes"])
    args = parser.parse_args(argv)
    config = TrainConfig(**{**CONFIG.__dict__, "epochs": args.epochs})
    with tempfile.TemporaryDirectory(prefix="kdmsi-recipe-") as work:
        figures = run(args.output, Path(work), {**DATA, "scenes": args.scenes}, config,
                      TEST_DATA)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
