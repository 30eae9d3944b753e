"""Pseudo labels for the second stage: a trained model's maps, cut by image labels only.

Rule, per pair of the labelled split (no pixel mask is read):

- a pair labelled unchanged is background (0) everywhere: its image label says so;
- in a changed pair, change (1) where P > max(t_high, CORE x the pair's peak P), background
  (0) where P < t_low, and ignore (255) in between, where the map is not sure;
- a changed pair whose map nowhere exceeds t_high is ignored as a whole: its label says
  something changed, the map cannot say where, and calling it background would contradict
  the label.

Why the core: the first stage's map has output stride 16, so upsampled it is a blob whose
skirt is wider than the change (at 1 m, a changed house becomes a 16-m disc). Cut at t_high
alone, the skirts become "change", and the segmenter learns blobs. Each blob's core, where
P is above half its pair's peak, is much more often truly change; the skirt is left to
the segmenter ("not sure", which its loss weighs lightly as background), which draws the
edge from the images. On the robustness benchmark's sets this raised the change pixels'
precision from 0.21-0.47 to 0.30-0.51 (masks read for that report only) and the segmenter's
F1 on five of six sets (docs/measurements.md).

Thresholds, from the split's probabilities and image labels only (1000-bin histograms as in
:mod:`kdmsi_train.threshold`): ``t_high`` is the calibration rule of the checkpoints (from
the pairs' peak probabilities: at most one unchanged pair in ten exceeds it);
``t_low = min(0.95 quantile of unchanged pairs, t_high)``: below it lie 95 % of the pixels
known to be unchanged, so a pixel of a changed pair below it looks like no change at all.

The masks are palette PNGs (0 black, 1 white, 255 grey) in the tile-folder layout, so any
viewer or GIS shows them: ``DIR/A``, ``DIR/B`` (links to, or copies of, the tiles),
``DIR/pseudo/<tile stem>.png``, ``DIR/list/{split}.txt`` and ``{split}_label.txt``, and
``DIR/pseudo.json`` with the thresholds, the rule and the label fractions.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning

from kdmsi_core.checkpoint import load_checkpoint
from kdmsi_core.device import resolve_device
from kdmsi_core.errors import DataError, OutputError
from kdmsi_core.model import for_inference
from kdmsi_core.normalize import for_data
from kdmsi_core.progress import NullProgress, Progress, check_cancelled
from kdmsi_core.resolution import run_scales
from kdmsi_train import threshold
from kdmsi_train.datasets import (
    PairStore,
    TileFolder,
    folder_pixel_size,
    read_tile,
    sample_values,
    written_whole,
)
from kdmsi_train.predict import iter_maps

BACKGROUND, CHANGE, IGNORE = 0, 1, 255
MASKS = "pseudo"
SUMMARY = "pseudo.json"
LOW_QUANTILE = 0.95
CORE = 0.5
RULE = ("unchanged pairs: all background; changed pairs: change where P > max(t_high, "
        f"{CORE:g} x the pair's peak P), "
        "background where P < t_low, ignore (255) in between, all ignore if P never exceeds "
        f"t_high; t_high = {threshold.RULE}; t_low = min({LOW_QUANTILE} quantile of the "
        "unchanged pairs' pixels, t_high)")
PALETTE = {BACKGROUND: (0, 0, 0, 255), CHANGE: (255, 255, 255, 255),
           IGNORE: (128, 128, 128, 255)}


def thresholds(hist: threshold.Histograms) -> tuple[float, float]:
    """(t_high, t_low) by the rule in the module docstring."""
    high = threshold.calibrate(hist)
    low = threshold.quantile(hist.unchanged, LOW_QUANTILE) if hist.unchanged.sum() else 0.0
    return high, min(low, high)


def pseudo_mask(prob: np.ndarray, label: float, high: float, low: float) -> np.ndarray:
    """The uint8 pseudo label (0, 1, 255) of one pair's probability map."""
    if label <= 0.5:
        return np.full(prob.shape, BACKGROUND, np.uint8)
    mask = np.full(prob.shape, IGNORE, np.uint8)
    peak = float(prob.max())
    if peak <= high:
        return mask
    mask[prob > max(high, CORE * peak)] = CHANGE
    mask[prob < low] = BACKGROUND
    return mask


def mask_name(tile: str) -> str:
    """The mask file of a tile: its stem with ``.png``."""
    return f"{Path(tile).stem}.png"


def write_mask(path: Path, mask: np.ndarray) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver="PNG", width=mask.shape[1], height=mask.shape[0],
                           count=1, dtype="uint8") as ds:
            ds.write(mask[None])
            ds.write_colormap(1, PALETTE)


def read_mask(root: Path, tile: str) -> np.ndarray:
    """A pseudo label written by :func:`write_pseudo_labels`, (H, W) uint8."""
    return read_tile(root / MASKS / mask_name(tile))[0]


def _link(src: Path, dst: Path) -> None:
    """A hard link where the file system allows it (no space used), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def write_pseudo_labels(data_dir: str | Path, model: str | Path, output: str | Path,
                        split: str = "train", scales: Sequence[float] | None = None,
                        batch_size: int = 16, device: str = "auto", overwrite: bool = False,
                        progress: Progress | None = None) -> dict:
    """Write the pseudo labels of ``data_dir``'s ``split`` to ``output``; returns the summary
    also written to ``output/pseudo.json``. The folder appears complete or not at all."""
    progress = progress or NullProgress()
    output = Path(output)
    if output.exists() and not overwrite:
        raise OutputError(f"{output} already exists; choose another folder or pass --overwrite.")
    if not output.parent.is_dir():
        raise OutputError(f"The folder {output.parent} does not exist; create it first.")
    if output.resolve() == Path(data_dir).resolve():
        raise OutputError(f"{output} is the data folder itself; write the pseudo labels to a "
                          "new folder.")
    folder = TileFolder.open(data_dir, split, need_labels=True)
    store = PairStore(folder)
    dev = resolve_device(device)
    loaded = load_checkpoint(model, dev)
    for_inference(loaded.model, dev)
    card = loaded.card
    # finer tiles than the model learnt from are read at its resolution, as detect reads them
    scales, factor = run_scales(card.scales, card.pixel_size,
                                None if scales is not None else folder_pixel_size(data_dir),
                                scales)
    labels = store.labels
    _, height, width = store.shape
    with written_whole(output, ".kdmsi-pseudo-") as tmp:
        maps = np.lib.format.open_memmap(tmp / "maps.npy", "w+", np.float16,
                                         (len(store), height, width))
        hist = threshold.Histograms()
        # an 8-bit model meets 16-bit tiles as detect would show it them
        norm = for_data(card.normalization, sample_values(store))
        for idx, batch in iter_maps(loaded.model, store, norm, dev, "msi", scales, batch_size):
            check_cancelled(progress)
            maps[idx] = batch
            hist.update(batch, labels[idx])
            progress.update("pseudo labels: maps", int(idx[-1]) + 1, len(store))
        high, low = thresholds(hist)
        for sub in ("A", "B", MASKS, "list"):
            (tmp / sub).mkdir()
        counts = np.zeros(3, np.int64)
        unplaced = 0
        for i, name in enumerate(folder.names):
            check_cancelled(progress)
            mask = pseudo_mask(np.asarray(maps[i], np.float32), labels[i], high, low)
            unplaced += int(labels[i] > 0.5 and not (mask == CHANGE).any())
            counts += [np.count_nonzero(mask == v) for v in (BACKGROUND, CHANGE, IGNORE)]
            write_mask(tmp / MASKS / mask_name(name), mask)
            for sub in ("A", "B"):
                _link(folder.root / sub / name, tmp / sub / name)
            progress.update("pseudo labels: masks", i + 1, len(store))
        del maps
        (tmp / "maps.npy").unlink()
        (tmp / "list" / f"{split}.txt").write_text("".join(f"{n}\n" for n in folder.names))
        (tmp / "list" / f"{split}_label.txt").write_text(
            "".join(f"{n},{int(y)}\n" for n, y in zip(folder.names, labels, strict=True)))
        total = max(1, int(counts.sum()))
        summary = {
            "data": str(data_dir), "split": split, "model": str(loaded.path),
            "model_kind": card.kind, "model_threshold": card.threshold,
            "scales": list(scales), "resolution_factor": factor,
            "t_high": high, "t_low": low, "rule": RULE,
            "tiles": len(store), "changed_pairs": int(labels.sum()),
            "changed_pairs_all_ignored": unplaced,
            "fractions": {k: float(c) / total
                          for k, c in zip(("background", "change", "ignore"), counts,
                                          strict=True)},
            "values": {"background": BACKGROUND, "change": CHANGE, "ignore": IGNORE},
        }
        (tmp / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def open_pseudo(root: str | Path, split: str = "train") -> tuple[TileFolder, dict]:
    """The labelled split of a pseudo-label folder and its summary; refuses a folder that
    :func:`write_pseudo_labels` did not complete."""
    root = Path(root)
    if not (root / SUMMARY).is_file() or not (root / MASKS).is_dir():
        raise DataError(f"{root} is not a pseudo-label folder (no {SUMMARY} and {MASKS}/); "
                        "write one with `kdmsi-geo pseudo-label`.")
    summary = json.loads((root / SUMMARY).read_text())
    return TileFolder.open(root, split, need_labels=True), summary
