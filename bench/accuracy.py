"""Accuracy of KD-MSI on generated data: the paper's ablation and the default model's figures.

Runs the default-model recipe into a temporary file (the embedded model is left alone) and
prints change-class F1 / IoU of the teacher CAM (max-normalised), the student's sigmoid at a
single scale and the student with MSI, on the held-back test scenes of the training data set
and on freshly generated scenes, plus training steps and seconds.

    python bench/accuracy.py [--epochs N] [--scenes N]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from kdmsi_train.recipe import CONFIG, DATA, TEST_DATA, run
from kdmsi_train.trainer import TrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=CONFIG.epochs)
    parser.add_argument("--scenes", type=int, default=DATA["scenes"])
    args = parser.parse_args()
    config = TrainConfig(**{**CONFIG.__dict__, "epochs": args.epochs})
    with tempfile.TemporaryDirectory(prefix="kdmsi-bench-") as work:
        figures = run(Path(work) / "model.safetensors", Path(work),
                      {**DATA, "scenes": args.scenes}, config, TEST_DATA)
    print(f"{'split':<16}{'method':<13}{'F1':>8}{'IoU':>8}{'P':>8}{'R':>8}")
    for split in ("held_back_test", "fresh_scenes"):
        for method, m in figures[split].items():
            print(f"{split:<16}{method:<13}{m['f1']:>8.4f}{m['iou']:>8.4f}"
                  f"{m['precision']:>8.4f}{m['recall']:>8.4f}")
    print(f"steps: {figures['steps']} ({figures['stopped']}), training: "
          f"{figures['train_seconds']} s, threshold {figures['threshold']:.3f}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
