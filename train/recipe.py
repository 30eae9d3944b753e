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
from kdmsi_train.evaluate import evaluate
from kdmsi_train.fit import fit_tile_folder
from kdmsi_train.synth import write_tile_dataset
from kdmsi_train.trainer import TrainConfig

# A tile counts as changed when more than 1 % of its pixels changed: the generator's image
# labelling rule, as someone labelling tiles by eye would not call a tile changed for a
# sliver of a neighbouring change. No mask is read by training, selection or calibration.
DATA = {"seed": 2026, "scenes": 90, "scene_size": 512, "tile_size": 64,
        "label_min_fraction": 0.01}
# A fixed schedule of 70 epochs, the best validation check kept: from scratch, the student's
# validation AUC climbs slowly and unevenly, and stopping it early (after 4 checks without a
# better one) stopped a 20-epoch run at epoch 10 with a model that found nothing.
CONFIG = TrainConfig(backbone="resnet18n", teacher="abs", student="cat", init="scratch",
                     epochs=70, batch_size=16, optimizer="adamw", lr=3e-3, early_stop=False,
                     seed=0)
TEST_DATA = {"seed": 9090, "scenes": 24, "scene_size": 512, "tile_size": 64}


def run(output: Path, work: Path, data: dict, config: TrainConfig, test_data: dict) -> dict:
    """Generate, train, evaluate; returns the figures (also for ``bench/accuracy.py``)."""
    started = time.perf_counter()
    tiles = write_tile_dataset(work / "train", **data)
    generated = time.perf_counter() - started
    full = work / "model_with_teacher.safetensors"
    card = fit_tile_folder(tiles, full, config, keep_teacher=True, progress=BarProgress()).card
    trained = time.perf_counter() - started - generated
    figures = {"data": data,
               "generate_seconds": round(generated, 1),
               "train_seconds": round(trained, 1), "threshold": card.threshold,
               "best_epoch": card.training["best_epoch"],
               "steps": card.training["history"][-1]["step"],
               "stopped": card.training["stopped"]}
    figures["held_back_test"] = evaluate(tiles, full, "test", teacher=True)["methods"]
    fresh = write_tile_dataset(work / "fresh", **test_data)
    figures["fresh_scenes"] = evaluate(fresh, full, "test", teacher=True)["methods"]
    loaded = load_checkpoint(full)
    # The teacher is kept: fine-tuning from the embedded model (`train --init default`)
    # starts both networks from it.
    save_checkpoint(output, loaded.model, loaded.card,
                    load_checkpoint(full, teacher=True).model)
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
