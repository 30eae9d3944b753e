"""Does `kdmsi-geo train` with its defaults learn on data sets it was never tuned to?

Generates eight tile sets that differ in tile size (64/128/256), training tiles (about 150
to 4000), share of changed pixels and tiles, bands (3 or 4), bit depth (8 or 16), pixel size
and change rate, with seeds the embedded model's recipe never used. The last two were added
after the defaults were chosen on the first six, to check them on sets they were not read
off. Each is trained with plain ``kdmsi-geo train DATA -o m.safetensors [--seed S]`` (plus
``--train-args`` to try a lever), and the test split's MSI change F1 is printed beside the
embedded model used as it is (zero-shot, on the RGB bands of 4-band sets) and beside
"everything changed".

Targets: on every set trained F1 >= zero-shot F1 and >= 3x the all-changed F1; mean >= 0.60.

With the default two stages the trained model is the second-stage segmenter, and each row
also shows its first stage (``stage 1 F1``, from ``<model stem>.stages/``) and the boundary
F1 (2 px) of both, so that the two stages compare on the same sets; ``--train-args
"--stages 1"`` trains the first stage alone.

    python bench/robustness.py                        # all sets, seed 0
    python bench/robustness.py --sets many-64,nir16-128 --seeds 0,1,2
    python bench/robustness.py --train-args "--stages 1" --tag stage1
    python bench/robustness.py --train-args=--no-balanced --tag unbalanced   # one flag: use =

Data sets are cached in --work (generated once); models are trained anew each run.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdmsi_train.datasets import TileFolder
from kdmsi_train.evaluate import evaluate
from kdmsi_train.synth import write_tile_dataset


@dataclass(frozen=True)
class Set:
    name: str
    tile_size: int
    scenes: int
    seed: int
    scene_size: int = 512
    pixel_size: float = 0.5
    dtype: str = "uint8"
    bands: int = 3
    change_rate: float = 1.0
    label_min_fraction: float = 0.0


SETS = (
    Set("suburb-256", 256, 150, seed=101, change_rate=0.5),
    Set("many-64", 64, 90, seed=202),
    Set("nir16-128", 128, 60, seed=303, dtype="uint16", bands=4),
    Set("coarse-1m-128", 128, 40, seed=404, pixel_size=1.0, change_rate=0.4),
    Set("rare-128", 128, 50, seed=505, pixel_size=0.3, dtype="uint16", change_rate=0.8,
        label_min_fraction=0.005),
    Set("small-256-nir", 256, 55, seed=606, bands=4, change_rate=0.4),
    # Made after the segmenter's fine-tuning budget was chosen on the six above, to test it.
    Set("wide-128", 128, 150, seed=707, pixel_size=0.4, change_rate=0.6),
    Set("dense-256", 256, 220, seed=808, dtype="uint16", bands=4, change_rate=0.7),
)


def generate(s: Set, work: Path) -> Path:
    root = work / s.name
    if not (root / "tiles" / "list" / "test.txt").is_file():
        write_tile_dataset(root, seed=s.seed, scenes=s.scenes, scene_size=s.scene_size,
                           tile_size=s.tile_size, pixel_size=s.pixel_size, dtype=s.dtype,
                           bands=s.bands, change_rate=s.change_rate,
                           label_min_fraction=s.label_min_fraction, geotiffs=False,
                           workers=None, overwrite=True)
    return root / "tiles"


def describe(tiles: Path) -> dict:
    """Tile counts and how much changed (the test masks are read for reporting only)."""
    out = {}
    for split in ("train", "val"):
        labels = TileFolder.open(tiles, split).labels
        out[f"{split}_tiles"], out[f"{split}_changed"] = len(labels), int(labels.sum())
    test = TileFolder.open(tiles, "test", need_labels=False, need_masks=True)
    changed = sum(int(test.mask(i).sum()) for i in range(len(test)))
    pixels = len(test) * int(np.prod(test.mask(0).shape))
    out["test_changed_pixels"] = changed / pixels
    p = out["test_changed_pixels"]
    out["all_changed_f1"] = 2 * p / (1 + p)  # precision p, recall 1
    return out


def train(tiles: Path, model: Path, seed: int, extra: str) -> tuple[float, dict]:
    started = time.perf_counter()
    cmd = ["kdmsi-geo", "train", str(tiles), "-o", str(model), "--seed", str(seed),
           "--overwrite", "--progress", "none", *shlex.split(extra)]
    subprocess.run(cmd, check=True)
    from kdmsi_core.checkpoint import read_card

    return time.perf_counter() - started, read_card(model).training


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/kdmsi-robustness"))
    parser.add_argument("--sets", default=",".join(s.name for s in SETS))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--train-args", default="", help="Extra options for kdmsi-geo train.")
    parser.add_argument("--tag", default="defaults", help="Name of this configuration.")
    parser.add_argument("--json", type=Path, help="Append each result as a JSON line here.")
    args = parser.parse_args()
    by_name = {s.name: s for s in SETS}
    unknown = [n for n in args.sets.split(",") if n not in by_name]
    if unknown:
        parser.error(f"unknown set {unknown[0]}; choose from {', '.join(by_name)}")
    chosen = [by_name[n] for n in args.sets.split(",")]
    seeds = [int(v) for v in args.seeds.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"configuration: {args.tag} (train {args.train_args or 'defaults'})")
    print("| set | tiles train/val (changed) | test px changed | all-changed F1 | zero-shot F1 "
          "| stage 1 F1 | trained F1 | boundary F1 (stage 1 / trained) | threshold "
          "| best epoch | train s | stopped |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    summary: dict[str, list[float]] = {}
    gains: list[float] = []
    for s in chosen:
        tiles = generate(s, args.work)
        info = describe(tiles)
        rgb = (1, 2, 3) if s.bands == 4 else None
        zero = evaluate(tiles, None, "test", bands=rgb)["methods"]["msi"]
        for seed in seeds:
            model = args.work / f"{s.name}-{args.tag}-{seed}.safetensors"
            seconds, training = train(tiles, model, seed, args.train_args)
            methods = evaluate(tiles, model, "test")["methods"]
            trained, first = methods["msi"], methods.get("stage1_msi")
            summary.setdefault(s.name, []).append(trained["f1"])
            if first is not None:
                gains.append(trained["f1"] - first["f1"])
            stage1 = f"{first['f1']:.3f}" if first else "-"
            outline = (f"{first['boundary_f1']:.3f} / " if first else "") + \
                f"{trained['boundary_f1']:.3f}"
            row = {"set": s.name, "seed": seed, "tag": args.tag, **info,
                   "zero_shot_f1": zero["f1"], "trained_f1": trained["f1"],
                   "trained_iou": trained["iou"], "threshold": trained["threshold"],
                   "trained_boundary_f1": trained["boundary_f1"],
                   "stage1_f1": first["f1"] if first else None,
                   "stage1_boundary_f1": first["boundary_f1"] if first else None,
                   "best_epoch": training.get("best_epoch"), "seconds": round(seconds, 1),
                   "stopped": training.get("stopped"), "start": training.get("start")}
            print(f"| {s.name} (seed {seed}) | {info['train_tiles']}/{info['val_tiles']} "
                  f"({info['train_changed']}/{info['val_changed']}) | "
                  f"{info['test_changed_pixels']:.3f} | {info['all_changed_f1']:.3f} | "
                  f"{zero['f1']:.3f} | {stage1} | **{trained['f1']:.3f}** | {outline} | "
                  f"{trained['threshold']:.3f} | "
                  f"{row['best_epoch']} | {seconds:.0f} | {row['stopped'] or '-'} |", flush=True)
            if args.json:
                with args.json.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    means = [float(np.mean(v)) for v in summary.values()]
    for name, values in summary.items():
        if len(values) > 1:
            print(f"{name}: trained F1 {np.mean(values):.3f} ± {np.std(values, ddof=1):.3f} "
                  f"over {len(values)} seeds (min {min(values):.3f}, max {max(values):.3f})")
    if means:
        print(f"mean trained F1 over {len(means)} sets: {np.mean(means):.3f}")
    if gains:
        print(f"stage 2 - stage 1 F1: {np.mean(gains):+.3f} ± {np.std(gains):.3f} over "
              f"{len(gains)} runs; >= +0.05 on {sum(g >= 0.05 for g in gains)}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
