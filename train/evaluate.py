"""Evaluating a checkpoint on a split with pixel masks: MSI against single-scale inference."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from kdmsi_core.checkpoint import load_checkpoint
from kdmsi_core.device import resolve_device
from kdmsi_core.errors import DataError
from kdmsi_core.model import for_inference
from kdmsi_core.progress import NullProgress, Progress, check_cancelled
from kdmsi_train.datasets import PairStore, TileFolder
from kdmsi_train.metrics import Confusion
from kdmsi_train.predict import change_maps, iter_batches
from kdmsi_train.shape_metrics import BoundaryScore, ObjectCounts


def evaluate(data_dir: str | Path, model: str | Path | None = None, split: str = "test",
             batch_size: int = 16, device: str = "auto", threshold: float | None = None,
             scales: Sequence[float] | None = None, teacher: bool = False,
             progress: Progress | None = None) -> dict:
    """Change-class metrics of each inference method on ``split`` (see :mod:`metrics`).

    Methods: ``msi`` (the product's inference), ``single`` (student sigmoid at scale 1, no
    flip) and, with ``teacher`` and a checkpoint that holds it, ``teacher_cam`` thresholded
    at the teacher threshold calibrated during training.
    """
    progress = progress or NullProgress()
    folder = TileFolder.open(data_dir, split, need_labels=False, need_masks=True)
    store = PairStore(folder)
    dev = resolve_device(device)
    student = load_checkpoint(model, dev)
    for_inference(student.model, dev)
    card = student.card
    if store.shape[0] != card.network.in_channels:
        raise DataError(f"The tiles of {data_dir} have {store.shape[0]} band(s) but the model "
                        f"{student.path.name} expects {card.network.in_channels}; evaluate a "
                        f"model trained on {store.shape[0]}-band tiles.")
    t = card.threshold if threshold is None else threshold
    runs = [("msi", student.model, t), ("single", student.model, t)]
    if teacher:
        teacher_model = for_inference(load_checkpoint(model, dev, teacher=True).model, dev)
        runs.append(("teacher_cam", teacher_model, card.training.get("teacher_threshold", 0.5)))
    used_scales = tuple(scales) if scales else card.scales
    results: dict = {"data": str(data_dir), "split": split, "tiles": len(store),
                     "model": str(student.path), "scales": list(used_scales), "methods": {}}
    confusions = {method: Confusion() for method, _, _ in runs}
    shapes = {method: (BoundaryScore(), ObjectCounts()) for method, _, _ in runs}
    with torch.inference_mode():
        for idx, t1, t2 in iter_batches(store, card.normalization, dev, batch_size):
            check_cancelled(progress)
            masks = [folder.mask(int(i)) for i in idx]
            for method, network, thr in runs:
                maps = change_maps(network, t1, t2, method, used_scales).float().cpu().numpy()
                for m, truth in zip(maps, masks, strict=True):
                    confusions[method].update(m > thr, truth)
                    for score in shapes[method]:
                        score.update(m > thr, truth)
            progress.update("evaluate", int(idx[-1]) + 1, len(store))
    for method, _, thr in runs:
        outline, objects = shapes[method]
        results["methods"][method] = {"threshold": thr, **confusions[method].as_dict(),
                                      **outline.metrics(), **objects.as_dict()}
    return results
