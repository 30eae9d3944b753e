"""Evaluating a checkpoint on a split with pixel masks: MSI against single-scale inference."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from kdmsi_core.checkpoint import load_checkpoint
from kdmsi_core.device import resolve_device
from kdmsi_core.progress import NullProgress, Progress, check_cancelled
from kdmsi_train.datasets import PairStore, TileFolder
from kdmsi_train.metrics import Confusion
from kdmsi_train.predict import iter_maps


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
    card = student.card
    t = card.threshold if threshold is None else threshold
    runs = [("msi", student.model, t), ("single", student.model, t)]
    if teacher:
        teacher_model = load_checkpoint(model, dev, teacher=True).model
        runs.append(("teacher_cam", teacher_model, card.training.get("teacher_threshold", 0.5)))
    used_scales = tuple(scales) if scales else card.scales
    results: dict = {"data": str(data_dir), "split": split, "tiles": len(store),
                     "model": str(student.path), "scales": list(used_scales), "methods": {}}
    for method, network, thr in runs:
        confusion = Confusion()
        for idx, maps in iter_maps(network, store, card.normalization, dev, method,
                                   used_scales, batch_size):
            check_cancelled(progress)
            for i, m in zip(idx, maps, strict=True):
                confusion.update(m > thr, folder.mask(int(i)))
            progress.update(f"evaluate {method}", int(idx[-1]) + 1, len(store))
        results["methods"][method] = {"threshold": thr, **confusion.as_dict()}
    return results
