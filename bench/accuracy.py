"""Accuracy of KD-MSI on generated data: the paper's ablation and the default model's figures.

Runs the default-model recipe into a temporary file (the embedded model is left alone) and
prints change-class F1 / IoU of the teacher CAM (max-normalised), the student's sigmoid at a
single scale and the student with MSI, on the held-back test scenes of the training data set
and on freshly generated scenes, for the run the recipe keeps; then one line per training
seed (validation AUC, which chooses, and MSI F1), so the spread between runs shows; then the
second stage's rounds (the segmenter trained on the kept student's pseudo labels, then each
on the previous one's, the last ones fine-tuning the segmenter before them) beside the first
stage, with boundary F1 and object counts.

    python bench/accuracy.py [--epochs N] [--scenes N] [--seeds 0,1]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

from kdmsi_train.recipe import CONFIG, DATA, SEEDS, TEST_DATA, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=CONFIG.epochs)
    parser.add_argument("--scenes", type=int, default=DATA["scenes"])
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    args = parser.parse_args()
    config = replace(CONFIG, epochs=args.epochs)
    seeds = tuple(int(v) for v in args.seeds.split(","))
    with tempfile.TemporaryDirectory(prefix="kdmsi-bench-") as work:
        figures = run(Path(work) / "model.safetensors", Path(work),
                      {**DATA, "scenes": args.scenes}, config, TEST_DATA, seeds)
    print(f"{'split':<16}{'method':<13}{'F1':>8}{'IoU':>8}{'P':>8}{'R':>8}")
    for split in ("held_back_test", "fresh_scenes"):
        for method, m in figures[split].items():
            print(f"{split:<16}{method:<13}{m['f1']:>8.4f}{m['iou']:>8.4f}"
                  f"{m['precision']:>8.4f}{m['recall']:>8.4f}")
    print(f"\n{'split':<16}{'model':<13}{'F1':>8}{'bndF1':>8}{'hit':>6}{'missed':>8}"
          f"{'false':>7}")
    for split in ("held_back_test", "fresh_scenes"):
        rows = [("stage 1", figures["stage2"][0][split]["stage1_msi"])]
        rows += [(f"stage 2, r{r['round']}", r[split]["msi"]) for r in figures["stage2"]]
        for name, m in rows:
            print(f"{split:<16}{name:<13}{m['f1']:>8.4f}{m['boundary_f1']:>8.4f}"
                  f"{m['objects_hit']:>6}{m['objects_missed']:>8}{m['objects_false']:>7}")
    for r in figures["stage2"]:
        print(f"stage 2, round {r['round']}: {r['seconds']} s, threshold {r['threshold']:.3f}")
    print(f"kept seed {figures['kept_seed']}: steps {figures['steps']} "
          f"({figures['stopped']}), training {figures['train_seconds']} s, "
          f"threshold {figures['threshold']:.3f}")
    for r in figures["runs"]:
        print(f"seed {r['seed']}: validation AUC {r['val_auc']:.3f}, MSI F1 held-back "
              f"{r['held_back_test']['msi']['f1']:.3f}, fresh {r['fresh_scenes']['msi']['f1']:.3f}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
