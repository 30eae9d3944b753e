"""``kdmsi-geo train``: a KD-MSI model from image-level labels."""

from __future__ import annotations

from pathlib import Path

import click

from kdmsi_core.cli.options import device_opt, overwrite_opt, progress_opt
from kdmsi_core.errors import ParameterError
from kdmsi_core.progress import make_progress, report_done


def _strides(value: str) -> tuple[int, int, int, int]:
    try:
        parts = tuple(int(v) for v in value.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 4 or any(p not in (1, 2) for p in parts):
        raise ParameterError(f"--strides {value!r} must be four values of 1 or 2, e.g. 2,2,2,1.")
    return parts  # type: ignore[return-value]


@click.command("train")
@click.argument("data_dir", required=False, type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Checkpoint to write (.safetensors).")
@click.option("--t1", type=click.Path(path_type=Path), help="GIS form: the earlier GeoTIFF.")
@click.option("--t2", type=click.Path(path_type=Path), help="GIS form: the later GeoTIFF.")
@click.option("--labels", type=click.Path(path_type=Path),
              help="GIS form: polygons with an integer field 'changed' (1 changed, 0 not).")
@click.option("--tile-size", default=128, show_default=True,
              help="GIS form: training tile size in pixels.")
@click.option("--samples", default=2000, show_default=True,
              help="GIS form: number of training tiles sampled inside the label areas.")
@click.option("--backbone", default="resnet18n", show_default=True,
              type=click.Choice(["resnet18n", "resnet18", "resnet34", "resnet50"]))
@click.option("--teacher", default="abs", show_default=True,
              type=click.Choice(["cat", "minus", "abs"]), help="Teacher fusion.")
@click.option("--student", default="cat", show_default=True,
              type=click.Choice(["cat", "minus", "abs"]), help="Student fusion.")
@click.option("--strides", default="2,2,2,1", show_default=True,
              help="Strides of conv1, layer2, layer3, layer4 (2,2,2,1: output stride 16).")
@click.option("--pretrained", type=click.Path(path_type=Path),
              help="Local torchvision ResNet state dict (.pth) to start the backbones from.")
@click.option("--init", "init", default="default", show_default=True,
              help="Where training starts: 'default' (the embedded model when its backbone, "
                   "student fusion and strides fit; its first layer adapts to other band "
                   "counts), 'scratch', or a .safetensors checkpoint to fine-tune. A "
                   "segmenter that carries its first stage, as the embedded model does, "
                   "starts both stages.")
@click.option("--steps", type=click.IntRange(1),
              help="Optimiser steps [default: 600 at 128-px tiles, 150 at 256, 2000 at 64 "
                   "(the same pixels), or --epochs passes over the data].")
@click.option("--epochs", type=click.IntRange(1),
              help="Passes over the training tiles, instead of --steps.")
@click.option("--time-budget", type=click.FloatRange(min=0, min_open=True), metavar="MINUTES",
              help="Stop after this many minutes and keep the best model so far.")
@click.option("--pooling", default="gap", show_default=True,
              type=click.Choice(["gap", "topk"]),
              help="Teacher's image logit: mean of the CAM (gap) or mean of its top 10 %%.")
@click.option("--balanced/--no-balanced", default=True, show_default=True,
              help="Half changed, half unchanged pairs in every batch.")
@click.option("--early-stop/--no-early-stop", default=True, show_default=True,
              help="Stop when validation AUC has not improved for 4 checks.")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1))
@click.option("--optimizer", default="adamw", show_default=True,
              type=click.Choice(["adamw", "sgd"]),
              help="adamw trains from scratch reliably; sgd is the paper's recipe (momentum "
                   "0.9, Nesterov) for pretrained backbones.")
@click.option("--lr", type=float, help="Base learning rate (default 1e-3).")
@click.option("--weight-decay", default=1e-4, show_default=True)
@click.option("--augment/--no-augment", default=True, show_default=True,
              help="Random flips, rot90 and date swap (same for both dates) and a per-date "
                   "gain and offset per band.")
@click.option("--seed", default=0, show_default=True)
@click.option("--stages", default=2, show_default=True, type=click.IntRange(1, 2),
              help="2: the KD-MSI student, then pseudo labels from it and a segmentation "
                   "network trained on them, which outlines changes at full resolution; "
                   "intermediate results stay in <output stem>.stages/ and the same command "
                   "run again resumes there (--overwrite starts afresh). 1: the student "
                   "alone, much faster, with coarser maps.")
@click.option("--stage2-epochs", type=click.IntRange(1),
              help="With --stages 2: passes of the segmentation network over the tiles "
                   "[default: as many as see the first stage's default pixel budget, a third "
                   "of it when the segmenter starts trained (--init default or a segmenter), "
                   "at most 5; longer, it learns the pseudo labels' blobs].")
@click.option("--rounds", default=2, show_default=True, type=click.IntRange(1, 5),
              help="With --stages 2: segmentation networks trained one after another, each "
                   "on pseudo labels from the maps of the one before (the first on the first "
                   "stage's); each round takes about as long as the first one's.")
@click.option("--native-resolution", is_flag=True,
              help="Train on the pixels as they are. By default data finer than the starting "
                   "model's training data (e.g. 0.2-m tiles for the embedded model, trained "
                   "at 0.5 m) are reduced to its resolution first, as detect reads them; the "
                   "model then records that pixel size.")
@device_opt
@click.option("--keep-teacher", is_flag=True, help="Store the teacher too (for evaluation).")
@overwrite_opt
@progress_opt
def command(data_dir, output, t1, t2, labels, tile_size, samples, backbone, teacher, student,
            strides, pretrained, init, steps, epochs, time_budget, pooling, balanced,
            early_stop, batch_size, optimizer, lr, weight_decay, augment,
            seed, stages, stage2_epochs, rounds, native_resolution, device, keep_teacher,
            overwrite, progress_kind) -> None:
    """Train a change model on DATA_DIR (A/, B/, list/) or on --t1/--t2/--labels.

    Only image-level labels are used. Stage 1 trains teacher and student jointly; the student
    is checked on the validation split 12 times over the run (the starting model too) and the
    check whose peak probability best separates changed from unchanged validation pairs (AUC)
    is kept. Stage 2 (the default) labels the training pairs from the student's maps and
    trains a segmentation network on those pseudo labels, then labels them again from that
    network's sharper maps and trains another (--rounds). Each stage's change threshold is
    calibrated from image labels alone.
    """
    from kdmsi_core.engine import require_torch

    require_torch("Training")
    from kdmsi_train.fit import fit_areas, fit_tile_folder
    from kdmsi_train.trainer import TrainConfig

    if stages == 2:
        from functools import partial

        from kdmsi_train import stages as two_stages

        fit_areas = partial(two_stages.fit_areas, stage2_epochs=stage2_epochs, rounds=rounds)
        fit_tile_folder = partial(two_stages.fit_tile_folder, stage2_epochs=stage2_epochs,
                                  rounds=rounds)
    config = TrainConfig(backbone=backbone, teacher=teacher, student=student,
                         strides=_strides(strides), init=str(init), steps=steps,
                         epochs=epochs, time_budget=time_budget, pooling=pooling,
                         balanced=balanced, early_stop=early_stop, batch_size=batch_size,
                         optimizer=optimizer, lr=lr, weight_decay=weight_decay, augment=augment,
                         seed=seed, device=device,
                         pretrained=str(pretrained) if pretrained else None)
    gis = [t1, t2, labels]
    progress = make_progress(progress_kind)
    if any(v is not None for v in gis):
        if data_dir is not None or any(v is None for v in gis):
            raise ParameterError("Give either DATA_DIR or all of --t1, --t2 and --labels.")
        fitted = fit_areas(t1, t2, labels, output, config, tile_size=tile_size,
                           samples=samples, overwrite=overwrite, keep_teacher=keep_teacher,
                           progress=progress, native_resolution=native_resolution)
    elif data_dir is None:
        raise ParameterError("Give a data folder (A/, B/, list/) or --t1, --t2 and --labels.")
    else:
        fitted = fit_tile_folder(data_dir, output, config, overwrite=overwrite,
                                 keep_teacher=keep_teacher, progress=progress,
                                 native_resolution=native_resolution)
    card = fitted.card
    refined = card.refine.threshold if card.refine is not None else None
    message = (f"Wrote {fitted.path} (threshold {card.threshold:.3f}"
               + ("" if refined is None else f", on refined maps {refined:.3f}")
               + f", best epoch {card.training['best_epoch']}).")
    report_done(progress, message, {"model": str(fitted.path), "threshold": card.threshold,
                                    "best_epoch": card.training["best_epoch"],
                                    "seconds": card.training["seconds"]})
