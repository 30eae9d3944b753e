"""The recipe of the embedded default model, and the figures that describe it.

``python -m kdmsi_train.recipe`` generates scenes (fixed seed), trains the narrow
``resnet18n`` teacher/student pair on their tiles with each of :data:`SEEDS`, keeps the run
whose student best separates changed from unchanged validation pairs (AUC, image labels
only), calibrates its threshold from image labels, evaluates teacher CAM, student single
scale and student MSI of every run on the held-back test scenes and on freshly generated
ones (for the report; masks are read there only), and writes the kept student with its
teacher to ``kdmsi_core/models/default.safetensors``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
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
# A fixed schedule, the best validation check kept: from scratch, the student's validation
# AUC climbs slowly and unevenly, and stopping early (after 4 checks without a better one)
# stopped a 20-epoch run at epoch 10 with a model that found nothing. Batches follow the
# data's own mix of changed and unchanged tiles (23 % changed): with balanced batches the
# student's maps turned grey (threshold 0.34, held-back F1 0.13 after 70 epochs).
CONFIG = TrainConfig(backbone="resnet18n", teacher="abs", student="cat", init="scratch",
                     epochs=40, batch_size=16, optimizer="adamw", lr=3e-3, balanced=False,
                     early_stop=False, seed=0)
# Runs from scratch differ wildly with the seed (held-back F1 0.44 and 0.07 for seeds 0 and
# 1); the validation AUC tells them apart (0.89 and 0.82), so the recipe trains several.
SEEDS = (0, 1)
TEST_DATA = {"seed": 9090, "scenes": 24, "scene_size": 512, "tile_size": 64}


def best_auc(card_training: dict) -> float:
    """The highest validation AUC over a run's checks: what the recipe ranks runs by."""
    return max(h["val_auc"] for h in card_training["history"] if h["val_auc"] is not None)


def run(output: Path, work: Path, data: dict, config: TrainConfig, test_data: dict,
        seeds: tuple[int, ...] = SEEDS) -> dict:
    """Generate, train each seed, keep the best by validation AUC, evaluate; returns the
    figures (also for ``bench/accuracy.py``)."""
    started = time.perf_counter()
    tiles = write_tile_dataset(work / "train", **data)
    fresh = write_tile_dataset(work / "fresh", **test_data)
    generated = time.perf_counter() - started
    runs = []
    for seed in seeds:
        began = time.perf_counter()
        path = work / f"seed{seed}.safetensors"
        card = fit_tile_folder(tiles, path, replace(config, seed=seed), keep_teacher=True,
                               progress=BarProgress()).card
        runs.append({"seed": seed, "path": path, "val_auc": best_auc(card.training),
                     "threshold": card.threshold, "best_epoch": card.training["best_epoch"],
                     "steps": card.training["history"][-1]["step"],
                     "stopped": card.training["stopped"],
                     "train_seconds": round(time.perf_counter() - began, 1),
                     "held_back_test": evaluate(tiles, path, "test", teacher=True)["methods"],
                     "fresh_scenes": evaluate(fresh, path, "test", teacher=True)["methods"]})
    kept = max(runs, key=lambda r: r["val_auc"])
    # The teacher is kept: fine-tuning from the embedded model (`train --init default`)
    # starts both networks from it.
    loaded = load_checkpoint(kept["path"])
    save_checkpoint(output, loaded.model, loaded.card,
                    load_checkpoint(kept["path"], teacher=True).model)
    figures = {"data": data, "generate_seconds": round(generated, 1), "kept_seed": kept["seed"],
               **{k: v for k, v in kept.items() if k != "path"},
               "runs": [{k: v for k, v in r.items() if k != "path"} for r in runs],
               "total_seconds": round(time.perf_counter() - started, 1)}
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=default_model_path())
    parser.add_argument("--epochs", type=int, default=CONFIG.epochs)
    parser.add_argument("--scenes", type=int, default=DATA["scenes"])
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)),
                        help="training seeds, comma-separated (the scenes stay the same)")
    args = parser.parse_args(argv)
    config = replace(CONFIG, epochs=args.epochs)
    seeds = tuple(int(v) for v in args.seeds.split(","))
    with tempfile.TemporaryDirectory(prefix="kdmsi-recipe-") as work:
        figures = run(args.output, Path(work), {**DATA, "scenes": args.scenes}, config,
                      TEST_DATA, seeds)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
