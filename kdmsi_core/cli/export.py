"""``kdmsi-geo export``: a checkpoint as an ONNX model, for ONNX Runtime without torch."""

from __future__ import annotations

import click

from kdmsi_core.cli.options import overwrite_opt
from kdmsi_core.errors import ParameterError


@click.command("export", short_help="Export a checkpoint to ONNX (.onnx).")
@click.argument("model", required=False, type=click.Path(readable=False))
@click.option("-o", "--output", required=True, type=click.Path(),
              help="The ONNX file to write (.onnx).")
@overwrite_opt
def command(model: str | None, output: str, overwrite: bool) -> None:
    """Write MODEL (a .safetensors checkpoint; default: the embedded model) as an ONNX file
    with dynamic batch and tile sizes and the model card in its metadata, so that
    `kdmsi-geo detect --model OUTPUT` runs it with ONNX Runtime, even where torch is not
    installed. Exporting needs torch and onnx (kdmsi-geo[torch])."""
    from kdmsi_core.engine import TORCH_HINT, has_module

    missing = [name for name in ("torch", "onnx") if not has_module(name)]
    if missing:
        raise ParameterError(f"Exporting needs {' and '.join(missing)}, which this "
                             f"installation lacks; {TORCH_HINT}.")
    from kdmsi_core.export import export_onnx

    path = export_onnx(model, output, overwrite)
    click.echo(f"Wrote {path}.")
