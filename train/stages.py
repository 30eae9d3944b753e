"""The whole two-stage pipeline: KD-MSI training, pseudo labels, segmenter training, and
further rounds of pseudo labels and segmenter (:data:`ROUNDS`).

Intermediate results stay in ``<output stem>.stages/`` beside the output: ``stage1.safetensors``
(with its teacher), ``pseudo/`` (the pseudo labels, viewable in any GIS), for each round but
the last ``segmenter<N>.safetensors`` and the next round's ``pseudo<N+1>/`` and ``tiles/``:
for the GIS form the tiles sampled in the label areas, for a tile folder finer than the
start model's data its tiles at the start's resolution (:mod:`kdmsi_train.reduce`), which
every later step reads instead. Each appears complete or not at
all, so a run started again with the same settings resumes after the last finished step;
``stages.json`` records those settings and a run with other ones is refused.

The output carries the first stage (student and teacher) it came from, as the embedded
model does: ``evaluate`` shows that stage beside it once the work folder is gone, and the
output can start further training (``--init model.safetensors``) like the embedded model.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from kdmsi_core.checkpoint import has_first_stage
from kdmsi_core.errors import OutputError
from kdmsi_core.progress import NullProgress, Progress
from kdmsi_core.refine import Refinement, for_run
from kdmsi_core.resolution import reduced_scales
from kdmsi_train import fit
from kdmsi_train.datasets import (
    PairStore,
    TileFolder,
    folder_pixel_size,
    raster_pixel_size,
    written_whole,
)
from kdmsi_train.pseudo import SUMMARY, write_pseudo_labels
from kdmsi_train.reduce import training_reduction, write_reduced_tiles, write_tile
from kdmsi_train.stage2 import RefineView, SegmenterFit, Stage2Config, fit_segmenter
from kdmsi_train.trainer import TrainConfig

SETTINGS = "stages.json"
ROUNDS = 2
"""Segmenters trained one after another by default, each on the pseudo labels of the one
before (the first on the first stage's). The segmenter's maps miss fewer changes and follow
their outlines more closely than the first stage's, so the second round learns from better
labels: on the robustness sets (six sets, two seeds, the embedded segmenter as start both
times) change F1 rose by 1.8 ± 1.7 points, in 10 of 12 runs, the other two within 0.3
(test masks read for that report only, docs/measurements.md). A third round from the
four-round embedded model did not help (six sets, seed 0: -0.3 points on average, up on
one), so two it is; the recipe runs four whose segmenters start from the first stage's encoder
(:data:`kdmsi_train.recipe.RECIPE_ROUNDS`), then these two
(:data:`kdmsi_train.recipe.FINETUNE_ROUNDS`), then a long one
(:data:`kdmsi_train.recipe.FINAL_EPOCHS`)."""
VAL_SHARE = 15  # percent of the GIS-form tiles that validate, as in the first stage alone


def work_dir(output: Path) -> Path:
    """Where the intermediate results of ``output`` live."""
    return output.with_name(f"{output.stem}.stages")


def stage2_config(config: TrainConfig, epochs: int | None = None) -> Stage2Config:
    """The segmenter's settings that follow the first stage's (encoder, batches, optimiser,
    and where it starts: see :func:`segmenter_start`)."""
    return Stage2Config(backbone=config.backbone, strides=config.strides,
                        epochs=epochs, batch_size=config.batch_size,
                        optimizer=config.optimizer, lr=config.lr,
                        weight_decay=config.weight_decay, augment=config.augment,
                        seed=config.seed, device=config.device, pretrained=config.pretrained,
                        start=segmenter_start(config))


def segmenter_start(config: TrainConfig) -> str | None:
    """The segmenter the second stage starts from: the ``--init`` model when it is a
    segmenter carrying its first stage (``"default"``, the embedded model, for ``--init
    default``: the card then names no path of the machine that trained it), so that
    fine-tuning refines that segmenter instead of training a new one from the first stage's
    encoder alone; None for scratch and ImageNet starts. Where its architecture does not fit
    the segmenter asked for, a new one is trained (:func:`~kdmsi_train.stage2.build_segmenter`)."""
    if config.init == "scratch" or config.pretrained:
        return None
    if config.init == "default":
        return "default"
    return config.init if has_first_stage(Path(config.init)) else None


TILES, STAGE1, PSEUDO = "tiles", "stage1.safetensors", "pseudo"
NATIVE = "native"
"""The sub-folder of the GIS form's ``tiles/`` with its val windows at the rasters' own
pixels, where the tiles are reduced (:func:`write_area_tiles`)."""
STEPS = (TILES, STAGE1, PSEUDO)
"""What the first finished steps leave in the work folder (each written whole or not at
all; the later rounds' files come only after them)."""


def round_files(work: Path, index: int, output: Path, rounds: int) -> tuple[Path, Path]:
    """(pseudo-label folder, segmenter file) of round ``index`` (1-based): the first stage's
    ``pseudo/`` and, after it, ``pseudo<N>/``; the last round writes ``output``."""
    pseudo = work / (PSEUDO if index == 1 else f"{PSEUDO}{index}")
    return pseudo, output if index == rounds else work / f"segmenter{index}.safetensors"


class _Round:
    """The progress of a later round: its stages named ``round N: <stage>``, so that a bar
    or the QGIS plugin tells the rounds apart."""

    def __init__(self, progress: Progress, index: int) -> None:
        self.progress, self.prefix = progress, f"round {index}: "

    def update(self, stage: str, done: int, total: int, message: str = "") -> None:
        self.progress.update(self.prefix + stage, done, total, message)

    def is_cancelled(self) -> bool:
        return self.progress.is_cancelled()


@contextmanager
def _work(output: Path, settings: dict, overwrite: bool) -> Iterator[Path]:
    """The work folder of ``output``, ready for a new run or for resuming one; removed again
    if the run fails before any step finished, so a refused input leaves nothing behind.

    A run with the same settings whose output was never written (interrupted) resumes.
    With ``overwrite``, a finished run (its output exists) or one with other settings is
    discarded and training starts afresh, as an overwritten output would; without it, other
    settings are refused so that nothing is lost unasked."""
    work = work_dir(output)
    path = work / SETTINGS
    settings = json.loads(json.dumps(settings))
    if path.is_file():
        same = json.loads(path.read_text()) == settings
        if overwrite and (output.exists() or not same):
            shutil.rmtree(work)
        elif not same:
            raise OutputError(f"{work} holds the intermediate results of a run with other "
                              "settings; delete that folder, choose another output name or "
                              "pass --overwrite to start afresh.")
    work.mkdir(exist_ok=True)
    if not path.is_file():
        path.write_text(json.dumps(settings, indent=2) + "\n")
    try:
        yield work
    except BaseException:
        if not any((work / step).exists() for step in STEPS):
            shutil.rmtree(work, ignore_errors=True)
        raise


def native_view(folder: Path, stage2: Stage2Config, factor: float, pixel: float
                ) -> RefineView:
    """The val pairs of ``folder``, at the data's own pixels where training reduces them by
    ``factor``, read and refined as ``detect`` reads and refines such imagery (scales
    reduced, windows widened): where the refined maps' threshold is matched."""
    return RefineView(PairStore(TileFolder.open(folder, "val")),
                      reduced_scales(stage2.scales, factor), pixel,
                      for_run(Refinement(), None, factor))


def _run(data_dir: Path, output: Path, config: TrainConfig, stage2: Stage2Config,
         rounds: int, work: Path, progress: Progress, summary: dict,
         refine_view: RefineView | None = None) -> SegmenterFit:
    stage1 = work / STAGE1
    if stage1.is_file():
        progress.update("stage 1", 1, 1, f"reusing {stage1}")
    else:  # the tiles are already at the resolution training runs at
        fit.fit_tile_folder(data_dir, stage1, config, overwrite=True, keep_teacher=True,
                            progress=progress, native_resolution=True,
                            pixel_size=summary.get("pixel_size"))
    val = None
    if (data_dir / "list" / "val_label.txt").is_file():
        val = PairStore(TileFolder.open(data_dir, "val"))
    stage2 = replace(stage2, init=str(stage1))
    labeller = stage1
    for index in range(1, rounds + 1):
        pseudo, segmenter = round_files(work, index, output, rounds)
        shown = progress if index == 1 else _Round(progress, index)
        if (pseudo / SUMMARY).is_file():
            shown.update("pseudo labels", 1, 1, f"reusing {pseudo}")
        else:
            write_pseudo_labels(data_dir, labeller, pseudo, "train",
                                batch_size=config.batch_size, device=config.device,
                                overwrite=True, progress=shown)
        if index < rounds and segmenter.is_file():
            shown.update("stage 2", 1, 1, f"reusing {segmenter}")
        else:
            fitted = fit_segmenter(pseudo, val, segmenter, stage2, shown,
                                   {**summary, "stage1_model": str(stage1), "round": index,
                                    "rounds": rounds},
                                   first_stage=stage1 if index == rounds else None,
                                   refine_view=refine_view)
        labeller = segmenter
    return fitted


def fit_tile_folder(data_dir: str | Path, output: str | Path, config: TrainConfig,
                    overwrite: bool = False, keep_teacher: bool = False,
                    progress: Progress | None = None,
                    stage2_epochs: int | None = None, rounds: int = ROUNDS,
                    native_resolution: bool = False) -> SegmenterFit:
    """Both stages on a tile folder; writes the last round's segmenter to ``output``.
    ``keep_teacher`` has no effect here: the first stage's checkpoint always keeps its
    teacher. Tiles finer than the start model's training data are reduced to its
    resolution first, into ``tiles/`` (:mod:`kdmsi_train.reduce`), unless
    ``native_resolution``."""
    output, data_dir = Path(output), Path(data_dir)
    fit.check_output(output, overwrite)
    progress = progress or NullProgress()
    stage2 = stage2_config(config, stage2_epochs)
    pixel = folder_pixel_size(data_dir)
    factor = training_reduction(pixel, config, native_resolution)
    settings = {"data": str(data_dir.resolve()), "stage1": _config_dict(config),
                "rounds": rounds, "resolution_factor": factor}
    with _work(output, settings, overwrite) as work:
        tiles, view = data_dir, None
        if factor < 1:
            tiles = work / TILES
            if not (tiles / "list" / "train_label.txt").is_file():
                progress.update("reduce tiles", 0, 1)
                write_reduced_tiles(data_dir, tiles, factor)
                progress.update("reduce tiles", 1, 1, f"to {factor:g} of their size")
            if (data_dir / "list" / "val_label.txt").is_file():
                view = native_view(data_dir, stage2, factor, pixel)
        return _run(tiles, output, config, stage2, rounds, work, progress,
                    fit.data_summary({"data": str(data_dir)}, pixel, factor), view)


def fit_areas(t1: str | Path, t2: str | Path, labels: str | Path, output: str | Path,
              config: TrainConfig, tile_size: int = 128, samples: int = 2000,
              overwrite: bool = False, keep_teacher: bool = False,
              progress: Progress | None = None,
              stage2_epochs: int | None = None, rounds: int = ROUNDS,
              native_resolution: bool = False) -> SegmenterFit:
    """Both stages on tiles sampled inside drawn label areas (kept in ``tiles/``); on
    rasters finer than the start model's training data each tile covers the ground of
    ``tile_size`` pixels at its resolution, unless ``native_resolution``, and the refined
    maps' threshold is matched on the val windows at the rasters' own pixels."""
    output = Path(output)
    fit.check_output(output, overwrite)
    progress = progress or NullProgress()
    stage2 = stage2_config(config, stage2_epochs)
    pixel = raster_pixel_size(t1)
    factor = training_reduction(pixel, config, native_resolution)
    settings = {"t1": str(Path(t1).resolve()), "t2": str(Path(t2).resolve()),
                "labels": str(Path(labels).resolve()), "tile_size": tile_size,
                "samples": samples, "stage1": _config_dict(config), "rounds": rounds,
                "resolution_factor": factor}
    with _work(output, settings, overwrite) as work:
        tiles = work / TILES
        if not (tiles / "list" / "train_label.txt").is_file():
            progress.update("sample tiles", 0, 1)
            write_area_tiles(t1, t2, labels, tiles, tile_size, samples, config.seed,
                             fit.area_window(tile_size, factor))
            progress.update("sample tiles", 1, 1)
        view = None
        if (tiles / NATIVE / "list" / "val_label.txt").is_file():
            view = native_view(tiles / NATIVE, stage2, factor, pixel)
        return _run(tiles, output, config, stage2, rounds, work, progress,
                    fit.data_summary({"t1": str(t1), "t2": str(t2), "labels": str(labels)},
                                     pixel, factor), view)


def _config_dict(config: TrainConfig) -> dict:
    return {k: v for k, v in asdict(config).items() if k != "device"}


def write_area_tiles(t1: str | Path, t2: str | Path, labels: str | Path, root: Path,
                     tile_size: int, samples: int, seed: int,
                     window: int | None = None) -> Path:
    """The tiles the GIS form samples (windows of ``window`` t1 pixels, by default
    ``tile_size``, reduced to ``tile_size``), as a tile folder (GeoTIFF tiles without a
    grid): train, and val (15 %, when that leaves both labels in it). Where the windows are
    reduced, the val windows also at the rasters' own pixels, in ``native/``: the refined
    maps' threshold is matched on pixels like those ``detect`` refines (:class:`RefineView`).
    Written all at once."""
    from kdmsi_train.areas import AreaStore

    store = AreaStore(Path(t1), Path(t2), Path(labels), tile_size, samples, seed,
                      window=window)
    order = np.random.default_rng(seed).permutation(len(store))
    n_val = len(store) * VAL_SHARE // 100
    splits = {"train": np.sort(order[n_val:]), "val": np.sort(order[:n_val])}
    if n_val < 4 or store.labels[splits["val"]].min() == store.labels[splits["val"]].max():
        splits = {"train": np.arange(len(store))}
    with written_whole(root) as tmp:
        for sub in ("A", "B", "list"):
            (tmp / sub).mkdir()
        a, b = store.batch(np.arange(len(store)))
        for i in range(len(store)):
            for sub, x in (("A", a[i]), ("B", b[i])):
                write_tile(tmp / sub / f"tile_{i:05d}.tif", x)
        for split, idx in splits.items():
            (tmp / "list" / f"{split}_label.txt").write_text(
                "".join(f"tile_{i:05d}.tif,{int(store.labels[i])}\n" for i in idx))
        if window is not None and window != tile_size and "val" in splits:
            native = tmp / NATIVE
            for sub in ("A", "B", "list"):
                (native / sub).mkdir(parents=True)
            for i, a, b in store.read_at(splits["val"], window):
                for sub, x in (("A", a), ("B", b)):
                    write_tile(native / sub / f"tile_{i:05d}.tif", x)
            shutil.copy(tmp / "list" / "val_label.txt", native / "list" / "val_label.txt")
    return root

