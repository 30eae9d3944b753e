"""``kdmsi-geo evaluate``: change-class metrics of a checkpoint on a split with masks."""

from __future__ import annotations

import json
from pathlib import Path

import click

from kdmsi_core.cli.options import device_opt, engine_opt, model_opt, refine_radius_opt, scales_opt
from kdmsi_core.progress import make_progress

COLUMNS = ("precision", "recall", "f1", "iou", "overall_accuracy", "kappa", "boundary_f1")
OBJECTS = ("objects_hit", "objects_missed", "objects_false")


def format_table(results: dict) -> str:
    """A fixed-width table, one row per inference method."""
    factor = results.get("resolution_factor", 1.0)
    reduced = (f"; {results['pixel_size_m']:g}-m tiles read at the model's resolution "
               f"(scales {', '.join(f'{s:g}' for s in results['scales'])})" if factor < 1
               else "")
    lines = [f"{results['tiles']} tiles of split '{results['split']}' in {results['data']}; "
             "change-class metrics, boundary F1 within 2 px, objects hit / missed / false "
             f"(see README, 'Metrics'){reduced}",
             f"{'method':<12}{'thr':>6}{'low':>6}" + "".join(f"{c[:9]:>10}" for c in COLUMNS)
             + "".join(f"{c[8:]:>8}" for c in OBJECTS)]
    for method, m in results["methods"].items():
        lines.append(f"{method:<12}{m['threshold']:>6.3f}{m['low_threshold']:>6.3f}"
                     + "".join(f"{m[c]:>10.4f}" for c in COLUMNS)
                     + "".join(f"{m[c]:>8d}" for c in OBJECTS))
    return "\n".join(lines)


@click.command("evaluate")
@click.argument("data_dir", type=click.Path(path_type=Path))
@model_opt
@click.option("--split", default="test", show_default=True)
@click.option("--threshold", type=click.FloatRange(0, 1),
              help="Override the checkpoint's calibrated threshold.")
@click.option("--low-threshold", type=click.FloatRange(0, 1),
              help="As in detect: pixels above it join a change they touch "
                   "[default: the threshold, plain thresholding].")
@scales_opt
@refine_radius_opt
@click.option("--teacher", is_flag=True,
              help="Also evaluate the teacher CAM (if stored; needs torch).")
@click.option("--pixel-size", type=click.FloatRange(0, min_open=True), default=None,
              help="Ground size of the tiles' pixels in metres, where the folder does not "
                   "record it; tiles finer than the model's are read at its resolution, as "
                   "detect reads them.")
@click.option("--native-resolution", is_flag=True,
              help="Run the model on the tiles' pixels as they are (as detect's option).")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1))
@device_opt
@engine_opt
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def command(data_dir, model, split, threshold, low_threshold, scales, refine_radius, teacher,
            pixel_size, native_resolution, batch_size, device, engine, as_json) -> None:
    """Precision, recall, F1, IoU (change class), overall accuracy and kappa on DATA_DIR."""
    from kdmsi_train.evaluate import evaluate

    progress = make_progress("none" if as_json else "bar")
    results = evaluate(data_dir, model, split, batch_size, device, threshold, scales, teacher,
                       progress, engine=engine, low_threshold=low_threshold,
                       refine_radius=refine_radius, pixel_size=pixel_size,
                       match_resolution=not native_resolution)
    if hasattr(progress, "close"):
        progress.close()
    click.echo(json.dumps(results, indent=2) if as_json else format_table(results))
