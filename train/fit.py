"""From a data folder to a saved checkpoint: train, select, calibrate, save."""

from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from kdmsi_core.checkpoint import ModelCard, save_checkpoint
from kdmsi_core.device import resolve_device
from kdmsi_core.errors import OutputError
from kdmsi_core.model import for_inference
from kdmsi_core.msi import DEFAULT_SCALES
from kdmsi_core.progress import NullProgress, Progress
from kdmsi_train import threshold
from kdmsi_train.datasets import (
    PairStore,
    TileFolder,
    folder_pixel_size,
    raster_pixel_size,
    with_pixel_size,
)
from kdmsi_train.predict import iter_maps
from kdmsi_train.reduce import training_reduction, write_reduced_tiles
from kdmsi_train.trainer import TrainConfig, TrainResult, train


@dataclass
class Fitted:
    """What a training run produced: the checkpoint on disk and the networks in memory."""

    path: Path
    card: ModelCard
    result: TrainResult


def check_output(path: Path, overwrite: bool) -> None:
    """Refuse an existing output or a missing folder before any work is done."""
    if path.exists() and not overwrite:
        raise OutputError(f"{path} already exists; choose another name or pass --overwrite.")
    if not path.parent.is_dir():
        raise OutputError(f"The folder {path.parent} does not exist; create it first.")
    if path.suffix != ".safetensors":
        raise OutputError(f"The model path {path} must end in .safetensors.")


def calibrate_threshold(result: TrainResult, store: PairStore, device, batch_size: int,
                        scales=DEFAULT_SCALES, method: str = "msi") -> float:
    """The image-label-only threshold rule of :mod:`kdmsi_train.threshold` on ``store``."""
    # A copy prepared as detect runs it (BatchNorm folded): same maps, less time.
    network = for_inference(copy.deepcopy(result.teacher if method == "teacher_cam"
                                          else result.student), device)
    hist = threshold.Histograms()
    for idx, maps in iter_maps(network, store, result.normalization, device, method, scales,
                               batch_size):
        hist.update(maps, store.labels[idx])
    return threshold.calibrate(hist)


def data_summary(summary: dict, pixel_size: float | None, factor: float) -> dict:
    """A card's data summary: the pixel size training saw (the data's, divided by
    ``factor`` where training reduced them, which it then records too)."""
    if factor < 1:
        summary = {**summary, "resolution_factor": factor}
    return with_pixel_size(summary, pixel_size / factor if pixel_size else None)


def fit_tile_folder(data_dir: str | Path, output: str | Path, config: TrainConfig,
                    overwrite: bool = False, keep_teacher: bool = False,
                    progress: Progress | None = None, native_resolution: bool = False,
                    pixel_size: float | None = None) -> Fitted:
    """Train on ``data_dir``'s train split, select and calibrate on val (train if absent).
    Tiles finer than the start model's training data are reduced to its resolution first
    (:mod:`kdmsi_train.reduce`; in a temporary folder beside ``output``) unless
    ``native_resolution``; ``pixel_size`` stands for the folder's record of it."""
    output = Path(output)
    check_output(output, overwrite)
    progress = progress or NullProgress()
    pixel = pixel_size if pixel_size is not None else folder_pixel_size(data_dir)
    factor = training_reduction(pixel, config, native_resolution)
    summary = data_summary({"data": str(data_dir)}, pixel, factor)
    if factor == 1:
        return _fit_folder(Path(data_dir), output, config, keep_teacher, progress, summary)
    with tempfile.TemporaryDirectory(prefix=".kdmsi-tiles-", dir=output.parent) as tmp:
        progress.update("reduce tiles", 0, 1)
        tiles = write_reduced_tiles(data_dir, Path(tmp) / "tiles", factor)
        progress.update("reduce tiles", 1, 1, f"to {factor:g} of their size")
        return _fit_folder(tiles, output, config, keep_teacher, progress, summary)


def _fit_folder(data_dir: Path, output: Path, config: TrainConfig, keep_teacher: bool,
                progress: Progress, summary: dict) -> Fitted:
    train_store = PairStore(TileFolder.open(data_dir, "train"))
    val_store = None
    if (data_dir / "list" / "val_label.txt").is_file():
        val_store = PairStore(TileFolder.open(data_dir, "val"))
    return fit(train_store, val_store, output, config, keep_teacher, progress, summary)


def fit(train_store: PairStore, val_store: PairStore | None, output: Path, config: TrainConfig,
        keep_teacher: bool, progress: Progress, data_summary: dict) -> Fitted:
    started = time.perf_counter()
    result = train(train_store, config, val_store, progress)
    device = resolve_device(config.device)
    calib = val_store if val_store is not None else train_store
    progress.update("calibrate threshold", 0, 1)
    kept = result.best_step == 0 and result.start_threshold is not None
    # When no check beat the starting model, it is returned as it came, threshold included:
    # a threshold recalibrated on a few validation pairs (whose image labels may miss a
    # sliver of change) is no better evidence than the one it was shipped with.
    t = result.start_threshold if kept else calibrate_threshold(result, calib, device,
                                                                config.batch_size)
    teacher_t = calibrate_threshold(result, calib, device, config.batch_size,
                                    method="teacher_cam")
    progress.update("calibrate threshold", 1, 1, f"threshold {t:.3f}")
    labels = train_store.labels
    card = ModelCard(
        network=result.student.config,
        normalization=result.normalization,
        tile_size=result.tile_size,
        threshold=t,
        scales=DEFAULT_SCALES,
        band_names=tuple(f"band{i + 1}" for i in range(result.student.config.in_channels)),
        threshold_rule=("kept from the starting model, which no training check beat"
                        if kept else threshold.RULE + f" (calibrated on the {calib.split} split)"),
        teacher_combination=result.teacher.config.combination,
        training={
            **data_summary,
            "config": {k: v for k, v in asdict(config).items() if k != "device"},
            "train_tiles": int(len(train_store)),
            "train_changed": int(np.sum(labels)),
            "val_tiles": int(len(val_store)) if val_store is not None else 0,
            "model_selection": "highest validation AUC of the student's peak probability "
            "(image labels only), the starting model included and replaced only by a gain "
            "above its AUC's standard error" if val_store
            else "last step",
            "teacher_threshold": teacher_t,
            "seconds": round(time.perf_counter() - started, 1),
            **result.summary(),
        },
    )
    save_checkpoint(output, result.student, card, result.teacher if keep_teacher else None)
    return Fitted(output, card, result)


def area_window(tile_size: int, factor: float) -> int:
    """The side in t1 pixels of the windows the GIS form samples for tiles of
    ``tile_size`` at the resolution ``factor`` reduces them to."""
    return max(tile_size, round(tile_size / factor))


def fit_areas(t1: str | Path, t2: str | Path, labels: str | Path, output: str | Path,
              config: TrainConfig, tile_size: int = 128, samples: int = 2000,
              overwrite: bool = False, keep_teacher: bool = False,
              progress: Progress | None = None, native_resolution: bool = False) -> Fitted:
    """Train on tiles sampled inside drawn label areas; 15 % of them validate. Where the
    rasters are finer than the start model's training data, each tile covers the ground
    of ``tile_size`` pixels at its resolution (:mod:`kdmsi_train.reduce`) unless
    ``native_resolution``."""
    from kdmsi_train.areas import AreaStore

    output = Path(output)
    check_output(output, overwrite)
    progress = progress or NullProgress()
    pixel = raster_pixel_size(t1)
    factor = training_reduction(pixel, config, native_resolution)
    store = AreaStore(Path(t1), Path(t2), Path(labels), tile_size, samples, config.seed,
                      window=area_window(tile_size, factor))
    order = np.random.default_rng(config.seed).permutation(len(store))
    n_val = len(store) * 15 // 100
    val = store.take(np.sort(order[:n_val]), "val") if n_val >= 4 else None
    train_part = store.take(np.sort(order[n_val:]), "train") if val is not None else store
    if val is not None and val.labels.min() == val.labels.max():
        val = None
        train_part = store
    return fit(train_part, val, output, config, keep_teacher, progress,
               data_summary({"t1": str(t1), "t2": str(t2), "labels": str(labels)}, pixel,
                            factor))
