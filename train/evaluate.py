"""Evaluating a checkpoint on a split with pixel masks: MSI against single-scale inference."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from kdmsi_core.checkpoint import default_model_path, has_first_stage
from kdmsi_core.engine import ONNX_SUFFIX, Engine, has_module, load_engine, require_torch
from kdmsi_core.errors import DataError, ParameterError
from kdmsi_core.hysteresis import change_mask, lower_threshold
from kdmsi_core.inference import infer_batch
from kdmsi_core.normalize import for_data
from kdmsi_core.progress import NullProgress, Progress, check_cancelled
from kdmsi_core.refine import change_threshold, for_run, refine
from kdmsi_core.resolution import run_scales
from kdmsi_train.datasets import PairStore, TileFolder, folder_pixel_size, sample_values
from kdmsi_train.metrics import Confusion
from kdmsi_train.shape_metrics import BoundaryScore, ObjectCounts

Maps = Callable[[np.ndarray, np.ndarray], np.ndarray]


def evaluate(data_dir: str | Path, model: str | Path | None = None, split: str = "test",
             batch_size: int = 16, device: str = "auto", threshold: float | None = None,
             scales: Sequence[float] | None = None, teacher: bool = False,
             progress: Progress | None = None, bands: Sequence[int] | None = None,
             engine: str = "auto", low_threshold: float | None = None,
             refine_radius: int | None = None, pixel_size: float | None = None,
             match_resolution: bool = True) -> dict:
    """Change-class metrics of each inference method on ``split`` (see :mod:`metrics`).

    Methods: ``msi`` (the product's inference), ``single`` (student sigmoid at scale 1, no
    flip) and, with ``teacher`` and a checkpoint that holds it, ``teacher_cam`` thresholded
    at the teacher threshold calibrated during training. ``bands`` (1-based) picks the
    tile bands the model reads, e.g. the RGB of 4-band tiles for a 3-band model. The
    student's methods run on ``engine`` (auto, torch, onnxruntime) as ``detect`` runs it;
    ``model`` may be an ``.onnx`` export then (no teacher). Only the teacher needs torch:
    the rest runs where only ``kdmsi-geo[onnx]`` is installed. A segmenter is shown beside
    its first-stage model (``stage1_msi``): the one its checkpoint carries (the embedded
    model does), else the one ``train --stages 2`` left, while that file is still there;
    either needs torch. ``low_threshold`` grows the student's masks as ``detect`` does
    (:mod:`~kdmsi_core.hysteresis`); the first stage and the teacher stay plain.
    ``msi`` is refined along the images' edges as the model's card says, or with
    ``refine_radius`` (0: not at all; :mod:`~kdmsi_core.refine`) and cut at the refined
    maps' threshold where the card has one; when it is refined, ``msi_raw`` shows the same
    maps unrefined, at the card's threshold. Tiles finer than the model's training data are
    read at its resolution as ``detect`` reads them (``match_resolution``, unless ``scales``
    are given), and so is the first stage beside it; their pixel size is ``pixel_size``
    (metres) or what the folder records (:func:`~kdmsi_train.datasets.folder_pixel_size`).
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
    pixel = pixel_size if pixel_size is not None else folder_pixel_size(data_dir)
    used_scales, factor = run_scales(card.scales, card.pixel_size, pixel, scales or None,
                                     match_resolution)
    refinement = for_run(card.refine, refine_radius, factor)
    runs = {"msi": (used_scales, True), "single": ((1.0,), False)}  # scales, flip
    thresholds = dict.fromkeys([*runs, *(["msi_raw"] if refinement else [])], t)
    if threshold is None:  # refined maps are cut where the card says, as detect cuts them
        thresholds["msi"] = change_threshold(t, refinement)
    lows = {method: lower_threshold(thr, low_threshold) for method, thr in thresholds.items()}
    if teacher:
        teacher_maps, thresholds["teacher_cam"] = _teacher(model, device)
        lows["teacher_cam"] = thresholds["teacher_cam"]
    # The scaling rule detect applies to a raster, applied to a sample of the split.
    norm = for_data(card.normalization, sample_values(store))
    first = _first_stage(model, card.training.get("stage1_model"), engine, device)
    results: dict = {"data": str(data_dir), "split": split, "tiles": len(store),
                     "model": str(student.path), "scales": list(used_scales),
                     "pixel_size_m": pixel, "resolution_factor": factor,
                     "refine_radius": refinement.radius if refinement else 0, "methods": {}}
    if first is not None:
        first_norm = for_data(first.card.normalization, sample_values(store))
        thresholds["stage1_msi"] = first.card.threshold
        lows["stage1_msi"] = first.card.threshold
        # at the resolution the segmenter runs at, so that both stages see the same ground
        # (a first stage carried inside a segmenter learnt from the segmenter's data)
        first_scales, _ = run_scales(first.card.scales,
                                     first.card.pixel_size or card.pixel_size, pixel, None,
                                     match_resolution and not scales)
        results["stage1_scales"] = list(first_scales)
    confusions = {method: Confusion() for method in thresholds}
    shapes = {method: (BoundaryScore(), ObjectCounts()) for method in thresholds}
    for start in range(0, len(store), batch_size):
        check_cancelled(progress)
        idx = np.arange(start, min(start + batch_size, len(store)))
        a, b = store.batch(idx)
        t1, t2 = norm.apply(a), norm.apply(b)
        maps = {method: infer_batch(student, t1, t2, s, flip)
                for method, (s, flip) in runs.items()}
        if refinement is not None:  # the same maps, refined as detect refines them
            maps["msi_raw"] = maps["msi"]
            maps["msi"] = refine(maps["msi"][:, None], t1, t2, refinement)[:, 0]
        if first is not None:
            maps["stage1_msi"] = infer_batch(first, first_norm.apply(a), first_norm.apply(b),
                                             first_scales, True)
        if teacher:
            maps["teacher_cam"] = teacher_maps(t1, t2)
        masks = [folder.mask(int(i)) for i in idx]
        for method, thr in thresholds.items():
            for m, truth in zip(maps[method], masks, strict=True):
                change = change_mask(m, thr, lows[method])
                confusions[method].update(change, truth)
                for score in shapes[method]:
                    score.update(change, truth)
        progress.update("evaluate", int(idx[-1]) + 1, len(store))
    for method, thr in thresholds.items():
        outline, objects = shapes[method]
        results["methods"][method] = {"threshold": thr, "low_threshold": lows[method],
                                      **confusions[method].as_dict(),
                                      **outline.metrics(), **objects.as_dict()}
    return results


def _teacher(model: str | Path | None, device: str) -> tuple[Maps, float]:
    """The teacher CAM of a checkpoint (or of the first stage a segmenter carries) as a
    function of normalised batches, and its threshold. The teacher is not exported to ONNX,
    so this is the one part of evaluation that needs torch."""
    if model is not None and Path(model).suffix.lower() == ONNX_SUFFIX:
        raise ParameterError(f"--teacher needs the .safetensors checkpoint: its ONNX export "
                             f"{Path(model).name} holds no teacher.")
    require_torch("Evaluating the teacher CAM (--teacher)")
    import torch

    from kdmsi_core.checkpoint import load_checkpoint
    from kdmsi_core.device import resolve_device
    from kdmsi_core.model import for_inference
    from kdmsi_train.predict import change_maps

    dev = resolve_device(device)
    source = default_model_path() if model is None else model
    loaded = load_checkpoint(source, dev, teacher=True, first_stage=has_first_stage(source))
    network = for_inference(loaded.model, dev)

    def maps(t1: np.ndarray, t2: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x1, x2 = (torch.from_numpy(x).to(dev) for x in (t1, t2))
            return change_maps(network, x1, x2, "teacher_cam", (1.0,)).float().cpu().numpy()

    return maps, loaded.card.training.get("teacher_threshold", 0.5)


def _first_stage(model: str | Path | None, path: str | None, engine: str,
                 device: str) -> Engine | None:
    """The first stage the segmenter ``model`` carries (the ONNX twin of the embedded model
    stands for the embedded checkpoint), else the one its card names if it is still on
    disk; None where this install cannot run it (a checkpoint needs torch, which a
    detect-only install lacks)."""
    source = default_model_path() if model is None else Path(model)
    if source.suffix.lower() != ONNX_SUFFIX and has_module("torch") and has_first_stage(source):
        return load_engine(source, engine, device, first_stage=True)
    if not path or not Path(path).is_file():
        return None
    if Path(path).suffix.lower() != ONNX_SUFFIX and not has_module("torch"):
        return None
    return load_engine(path, engine, device)
