"""Options shared by several ``kdmsi-geo`` commands, and parsers for list-valued options.

Parse errors raise :class:`~kdmsi_core.errors.ParameterError`, so that the group prints them
as one ``Error:`` sentence like every other user error.
"""

from __future__ import annotations

import click

from kdmsi_core.errors import ParameterError
from kdmsi_core.limits import SCALES_RULE, valid_scales


def _split(value: str | None, option: str, kind: type, example: str) -> tuple | None:
    """Every comma-separated item as ``kind``; an empty item (``1,,2``) is refused, not
    skipped, since it usually hides a typing mistake."""
    if value is None:
        return None
    try:
        return tuple(kind(v) for v in value.split(","))
    except ValueError:
        raise ParameterError(f"{option} {value!r} is not a comma-separated list of numbers, "
                             f"for example {example}.") from None


def parse_bands(_ctx: click.Context, _param: click.Parameter,
                value: str | None) -> tuple[int, ...] | None:
    """``1,2,3`` -> (1, 2, 3); range checks happen against the rasters."""
    return _split(value, "--bands", int, "1,2,3")


def parse_scales(_ctx: click.Context, _param: click.Parameter,
                 value: str | None) -> tuple[float, ...] | None:
    """``0.5,1,2`` -> (0.5, 1.0, 2.0), each finite and in the range the library accepts,
    checked here so that every command refuses an absurd scale before any work."""
    scales = _split(value, "--scales", float, "0.5,1,1.25,2")
    if scales is not None and not valid_scales(scales):
        raise ParameterError(f"--scales must list {SCALES_RULE}, for example 0.5,1,1.25,2.")
    return scales


model_opt = click.option(
    "--model", type=click.Path(readable=False), default=None,
    help="kdmsi model: a checkpoint (.safetensors) or its ONNX export (.onnx); default: the "
         "model embedded in the package.")
device_opt = click.option(
    "--device", default="auto", show_default=True,
    help="Device: auto (a CUDA GPU if present), cpu or cuda[:N].")
engine_opt = click.option(
    "--engine", type=click.Choice(["auto", "torch", "onnxruntime"]), default="auto",
    show_default=True,
    help="What runs the network: auto (ONNX Runtime on the CPU when installed, torch on a "
         "GPU), torch or onnxruntime (an .onnx model needs no torch).")
batch_size_opt = click.option(
    "--batch-size", type=int, default=None,
    help="Tiles per forward pass [default: 16 on a GPU; on a CPU as many as hold 65536 "
         "pixels: 1 tile of 256 px, 16 of 64 px].")
bands_opt = click.option(
    "--bands", callback=parse_bands, default=None, metavar="I,J,K",
    help="1-based bands of both rasters to feed the model, in the model's order "
         "[default: all non-alpha bands, when their count fits the model].")
scales_opt = click.option(
    "--scales", callback=parse_scales, default=None, metavar="S,S,...",
    help="MSI scales, used as given [default: the checkpoint's (the embedded model's: 1,1.5), "
         "reduced on imagery finer than its training data].")
refine_radius_opt = click.option(
    "--refine-radius", type=int, default=None, metavar="PX",
    help="Radius in pixels of the edge-aware refinement that moves the change outlines onto "
         "the images' edges; 0 turns it off [default: the model's, widened on imagery finer "
         "than its training data to cover the same ground].")
overwrite_opt = click.option(
    "--overwrite", is_flag=True, default=False, help="Replace existing output files.")
progress_opt = click.option(
    "--progress", "progress_kind", type=click.Choice(["bar", "json", "none"]), default="bar",
    show_default=True,
    help="bar: a progress bar on stderr; json: one JSON object per line on stdout "
         "(stage, done, total, message), ending with a 'done' line holding the summary.")
