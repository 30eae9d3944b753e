"""How far are weak labels from full ones? The segmenter on pseudo labels against the same
segmenter trained on the true masks, and where each one's false alarms lie.

For each set and seed of a ``bench/robustness.py`` run (its ``<set>-<tag>-<seed>.stages``
folder holds the first-stage model and the pseudo labels), train the second stage again
from the same first-stage encoder, with the same passes and seed, on the true masks of the
training split instead of the pseudo labels. That model is an upper bound for this network
and budget, never a product path: masks are read here for the report only. Both models are
scored on the test split at their calibrated threshold and at the best threshold in
hindsight, and the false-positive pixels are split into those in predicted regions that
touch a true change (outlines drawn too wide) and those in regions that do not (false
objects).

    python bench/bound.py [--work /tmp/kdmsi-robustness] [--tag defaults]
                          [--sets suburb-256,...] [--seeds 0]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from kdmsi_core.engine import load_engine
from kdmsi_core.inference import infer_batch
from kdmsi_core.normalize import for_data
from kdmsi_train import stages
from kdmsi_train.datasets import PairStore, TileFolder, sample_values
from kdmsi_train.pseudo import MASKS, SUMMARY, mask_name, write_mask
from kdmsi_train.stage2 import fit_segmenter
from kdmsi_train.trainer import TrainConfig

BINS = 1000


def truth_labels(tiles: Path, pseudo: Path, output: Path) -> Path:
    """A copy of the pseudo-label folder whose masks are the true ones (links, no copies)."""
    if (output / SUMMARY).is_file():
        return output
    shutil.rmtree(output, ignore_errors=True)
    shutil.copytree(pseudo, output, copy_function=os.link, ignore=shutil.ignore_patterns(MASKS))
    (output / MASKS).mkdir()
    folder = TileFolder.open(tiles, "train", need_labels=True, need_masks=True)
    changed = 0
    for i, name in enumerate(folder.names):
        mask = folder.mask(i).astype(np.uint8)
        changed += int(mask.sum())
        write_mask(output / MASKS / mask_name(name), mask)
    summary = json.loads((pseudo / SUMMARY).read_text())
    share = changed / (len(folder) * mask.size)
    summary.update(rule="the true masks (upper bound, not a product path)",
                   fractions={"background": 1 - share, "change": share, "ignore": 0.0})
    (output / SUMMARY).unlink()
    (output / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    return output


def score(tiles: Path, model: Path) -> dict:
    """F1 at the model's threshold and at the best one in hindsight, and where its false
    positives lie at its threshold."""
    folder = TileFolder.open(tiles, "test", need_labels=False, need_masks=True)
    store = PairStore(folder)
    engine = load_engine(model, "torch", "cpu")
    norm = for_data(engine.card.normalization, sample_values(store))
    t = engine.card.threshold
    changed, unchanged = np.zeros(BINS), np.zeros(BINS)
    false_alarms = np.zeros(2)  # in regions touching a true change, in others
    for start in range(0, len(store), 16):
        idx = np.arange(start, min(start + 16, len(store)))
        a, b = store.batch(idx)
        maps = infer_batch(engine, norm.apply(a), norm.apply(b), engine.card.scales, True)
        for prob, i in zip(maps, idx, strict=True):
            truth = folder.mask(int(i)).astype(bool)
            q = np.clip((prob * BINS).astype(int), 0, BINS - 1)
            changed += np.bincount(q[truth], minlength=BINS)
            unchanged += np.bincount(q[~truth], minlength=BINS)
            regions, _ = ndimage.label(prob > t)
            touching = np.isin(regions, np.unique(regions[truth & (regions > 0)])) & (regions > 0)
            false_alarms += [np.sum(touching & ~truth), np.sum((regions > 0) & ~touching)]
    tp = changed[::-1].cumsum()[::-1]
    fp = unchanged[::-1].cumsum()[::-1]
    f1 = 2 * tp / np.maximum(2 * tp + fp + changed.sum() - tp, 1)
    best = int(f1.argmax())
    return {"threshold": round(t, 3), "f1": round(float(f1[min(int(t * BINS), BINS - 1)]), 3),
            "best_threshold": best / BINS, "best_f1": round(float(f1[best]), 3),
            "false_alarms_touching_change": round(false_alarms[0] / max(false_alarms.sum(), 1), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/kdmsi-robustness"))
    parser.add_argument("--tag", default="defaults", help="The robustness run's tag.")
    parser.add_argument("--sets", default="suburb-256,many-64,nir16-128,coarse-1m-128,"
                                          "rare-128,small-256-nir")
    parser.add_argument("--seeds", default="0")
    args = parser.parse_args()
    for name in args.sets.split(","):
        tiles = args.work / name / "tiles"
        for seed in (int(s) for s in args.seeds.split(",")):
            stem = f"{name}-{args.tag}-{seed}"
            work = args.work / f"{stem}.stages"
            if not (work / "stage1.safetensors").is_file():
                raise SystemExit(f"{work} holds no first-stage model; run bench/robustness.py "
                                 f"--sets {name} --seeds {seed} --tag {args.tag} first.")
            truth = truth_labels(tiles, work / "pseudo", work / "truth")
            bound = args.work / f"{stem}-truth.safetensors"
            if not bound.is_file():
                config = replace(stages.stage2_config(TrainConfig(seed=seed)),
                                 init=str(work / "stage1.safetensors"))
                fit_segmenter(truth, PairStore(TileFolder.open(tiles, "val")), bound, config)
            print(json.dumps({"set": name, "seed": seed,
                              "pseudo_labels": score(tiles, args.work / f"{stem}.safetensors"),
                              "true_masks": score(tiles, bound)}), flush=True)


if __name__ == "__main__":
    main()
