"""Does the second stage pay? Stage 1 against stage 2 on several generated tile sets.

For each set (seed and pixel size): generate scenes cut into tiles, run the whole two-stage
pipeline (``kdmsi-geo train --stages 2``: stage 1 as the training defaults make it, pseudo
labels, the segmenter) and evaluate the stage-1 model, the stage-2 model and the embedded
model on the set's test split: change F1 / IoU, boundary F1 (2 px) and object counts.
Prints one JSON line per set, then the mean and standard deviation over sets of each
figure and of the stage-2 minus stage-1 difference. Intermediate results stay in
``--work``, so an interrupted run resumes.

    python bench/stage2.py [--sets 101:0.5,202:0.4,303:0.6,404:0.5,505:0.4,606:0.6]
                           [--scenes 12] [--steps N] [--stage2-epochs N]
                           [--work /tmp/kdmsi-bench-stage2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from kdmsi_core.progress import BarProgress
from kdmsi_train import stages
from kdmsi_train.evaluate import evaluate
from kdmsi_train.synth import write_tile_dataset
from kdmsi_train.trainer import TrainConfig

FIGURES = ("f1", "iou", "precision", "recall", "boundary_f1", "objects_hit",
           "objects_missed", "objects_false")


def run_set(work: Path, seed: int, pixel: float, scenes: int, tile: int, steps: int | None,
            stage2_epochs: int | None) -> dict:
    root = work / f"set_{seed}_{pixel}"
    tiles = root / "data" / "tiles"
    started = time.perf_counter()
    if not (tiles / "list" / "test.txt").is_file():
        write_tile_dataset(root / "data", seed=seed, scenes=scenes, scene_size=512,
                           tile_size=tile, pixel_size=pixel, overwrite=True)
    generated = time.perf_counter() - started
    output = root / "stage2.safetensors"
    config = TrainConfig(steps=steps, device="cpu", seed=0)
    if not output.is_file():
        stages.fit_tile_folder(tiles, output, config, progress=BarProgress(),
                               stage2_epochs=stage2_epochs)
    trained = time.perf_counter() - started - generated
    models = {"embedded": None, "stage1": stages.work_dir(output) / "stage1.safetensors",
              "stage2": output}
    result = {"seed": seed, "pixel_size": pixel, "generate_s": round(generated, 1),
              "train_s": round(trained, 1)}
    for name, model in models.items():
        msi = evaluate(tiles, model, "test", device="cpu")["methods"]["msi"]
        result[name] = {k: msi[k] for k in ("threshold", *FIGURES)}
    pseudo = json.loads((stages.work_dir(output) / "pseudo" / "pseudo.json").read_text())
    result["pseudo"] = {k: pseudo[k] for k in ("t_high", "t_low", "changed_pairs",
                                               "changed_pairs_all_ignored", "fractions")}
    result["test_tiles"] = len((tiles / "list" / "test.txt").read_text().split())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="101:0.5,202:0.4,303:0.6,404:0.5,505:0.4,606:0.6",
                        help="seed:pixel_size pairs, comma-separated")
    parser.add_argument("--scenes", type=int, default=12)
    parser.add_argument("--tile-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=None,
                        help="stage-1 optimiser steps [default: the trainer's]")
    parser.add_argument("--stage2-epochs", type=int, default=None,
                        help="segmenter passes [default: the trainer's]")
    parser.add_argument("--work", type=Path, default=Path("/tmp/kdmsi-bench-stage2"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results = []
    for item in args.sets.split(","):
        seed, pixel = item.split(":")
        r = run_set(args.work, int(seed), float(pixel), args.scenes, args.tile_size,
                    args.steps, args.stage2_epochs)
        print(json.dumps(r), flush=True)
        results.append(r)
    summary = {}
    for model in ("embedded", "stage1", "stage2"):
        for k in FIGURES:
            v = np.array([r[model][k] for r in results], float)
            summary[f"{model}.{k}"] = (round(float(v.mean()), 4), round(float(v.std()), 4))
    for k in ("f1", "iou", "boundary_f1"):
        d = np.array([r["stage2"][k] - r["stage1"][k] for r in results])
        summary[f"stage2-stage1.{k}"] = (round(float(d.mean()), 4), round(float(d.std()), 4))
    print(json.dumps({"mean_std_over_sets": summary}, indent=1))


if __name__ == "__main__":
    main()
