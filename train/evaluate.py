"""Evaluating a checkpoint on a split with pixel masks: MSI against single-scale inference."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from kdmsi_core.checkpoint import load_checkpoint
from kdmsi_core.device import resolve_device
from kdmsi_core.engine import Engine, load_engine
from kdmsi_core.errors import DataError
from kdmsi_core.inference import infer_batch
from kdmsi_core.model import for_inference
from kdmsi_core.normalize import for_data
from kdmsi_core.progress import NullProgress, Progress, check_cancelled
from kdmsi_train.datasets import PairStore, TileFolder, sample_values
from kdmsi_train.metrics import Confusion
from kdmsi_train.predict import change_maps
from kdmsi_train.shape_metrics import BoundaryScore, ObjectCounts


def evaluate(data_dir: str | Path, model: str | Path | None = None, split: str = "test",
             batch_size: int = 16, device: str = "auto", threshold: float | None = None,
             scales: Sequence[float] | None = None, teacher: bool = False,
             progress: Progress | None = None, bands: Sequence[int] | None = None,
             engine: str = "auto") -> dict:
    """Change-class metrics of each inference method on ``split`` (see :mod:`metrics`).

    Methods: ``msi`` (the product's inference), ``single`` (student sigmoid at scale 1, no
    flip) and, with ``teacher`` and a checkpoint that holds it, ``teacher_cam`` thresholded
    at the teacher threshold calibrated during training. ``bands`` (1-based) picks the
    tile bands the model reads, e.g. the RGB of 4-band tiles for a 3-band model. The
    student's methods run on ``engine`` (auto, torch, onnxruntime) as ``detect`` runs it;
    ``model`` may be an ``.onnx`` export then (no teacher). A segmenter trained by
    ``train --stages 2`` is shown beside its first-stage model (``stage1_msi``) while that
    file is still where training left it.
    """
    progress = progress or NullProgress()
    folder = TileFolder.open(data_dir, split, need_labels=False, need_masks=True)
    store = PairStore(folder, tuple(bands) if bands else None)
    student = load_engine(model, engine, device)
    card = student.card
    if store.shape[0] != card.network.in_channels:
        raise DataError(f"The tiles of {data_dir} have {store.shape[0]} band(s) but the model "
                        f"{student.path.name} expects {card.network.in_channels}; evaluate a "
                        f"model trained on {store.shape[0]}-band tiles.")
    t = card.threshold if threshold is None else threshold
    used_scales = tuple(scales) if scales else card.scales
    runs = {"msi": (used_scales, True), "single": ((1.0,), False)}  # scales, flip
    thresholds = {"msi": t, "single": t}
    if teacher:
        dev = resolve_device(device)
        teacher_model = for_inference(load_checkpoint(model, dev, teacher=True).model, dev)
        thresholds["teacher_cam"] = card.training.get("teacher_threshold", 0.5)
    # The scaling rule detect applies to a raster, applied to a sample of the split.
    norm = for_data(card.normalization, sample_values(store))
    first = _first_stage(card.training.get("stage1_model"), engine, device)
    if first is not None:
        first_norm = for_data(first.card.normalization, sample_values(store))
        thresholds["stage1_msi"] = first.card.threshold
    results: dict = {"data": str(data_dir), "split": split, "tiles": len(store),
                     "model": str(student.path), "scales": list(used_scales), "methods": {}}
    confusions = {method: Confusion() for method in thresholds}
    shapes = {method: (BoundaryScore(), ObjectCounts()) for method in thresholds}
    for start in range(0, len(store), batch_size):
        check_cancelled(progress)
        idx = np.arange(start, min(start + batch_size, len(store)))
        a, b = store.batch(idx)
        t1, t2 = norm.apply(a), norm.apply(b)
        maps = {method: infer_batch(student, t1, t2, s, flip)
                for method, (s, flip) in runs.items()}
        if first is not None:
            maps["stage1_msi"] = infer_batch(first, first_norm.apply(a), first_norm.apply(b),
                                             first.card.scales, True)
        if teacher:
            with torch.inference_mode():
                x1, x2 = (torch.from_numpy(x).to(dev) for x in (t1, t2))
                maps["teacher_cam"] = change_maps(teacher_model, x1, x2, "teacher_cam",
                                                  used_scales).float().cpu().numpy()
        masks = [folder.mask(int(i)) for i in idx]
        for method, thr in thresholds.items():
            for m, truth in zip(maps[method], masks, strict=True):
                confusions[method].update(m > thr, truth)
                for score in shapes[method]:
                    score.update(m > thr, truth)
        progress.update("evaluate", int(idx[-1]) + 1, len(store))
    for method, thr in thresholds.items():
        outline, objects = shapes[method]
        results["methods"][method] = {"threshold": thr, **confusions[method].as_dict(),
                                      **outline.metrics(), **objects.as_dict()}
    return results


def _first_stage(path: str | None, engine: str, device: str) -> Engine | None:
    """The first-stage model a segmenter's card names, if it is still on disk."""
    if not path or not Path(path).is_file():
        return None
    return load_engine(path, engine, device)
