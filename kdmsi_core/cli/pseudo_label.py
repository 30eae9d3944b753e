"""``kdmsi-geo pseudo-label``: a model's maps of a training split as pseudo-label masks."""

from __future__ import annotations

from pathlib import Path

import click

from kdmsi_core.cli.options import device_opt, model_opt, overwrite_opt, progress_opt, scales_opt
from kdmsi_core.progress import make_progress, report_done


@click.command("pseudo-label")
@click.argument("data_dir", type=click.Path(path_type=Path))
@model_opt
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="New folder for the pseudo labels (A/, B/, pseudo/, list/, pseudo.json).")
@click.option("--split", default="train", show_default=True,
              help="Split of DATA_DIR to label; it needs image-level labels.")
@scales_opt
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1))
@device_opt
@overwrite_opt
@progress_opt
def command(data_dir, model, output, split, scales, batch_size, device, overwrite,
            progress_kind) -> None:
    """Write pseudo labels of DATA_DIR (A/, B/, list/) from a model's change probabilities.

    Pairs labelled unchanged are background (0); in changed pairs, change (1) where the
    probability exceeds both t_high and half the pair's peak, background below t_low,
    ignore (255) in between. Both thresholds come from image-level labels; pixel masks
    (label/) are never read. The masks are palette PNGs in OUTPUT/pseudo/;
    OUTPUT/pseudo.json records thresholds and rule.
    """
    from kdmsi_train.pseudo import write_pseudo_labels

    progress = make_progress(progress_kind)
    summary = write_pseudo_labels(data_dir, model, output, split, scales, batch_size, device,
                                  overwrite, progress)
    f = summary["fractions"]
    message = (f"Wrote pseudo labels of {summary['tiles']} tiles to {output} (t_high "
               f"{summary['t_high']:.3f}, t_low {summary['t_low']:.3f}; change "
               f"{f['change']:.1%}, ignore {f['ignore']:.1%} of the pixels).")
    report_done(progress, message, summary)
