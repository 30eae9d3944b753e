"""Export a checkpoint's network to ONNX, the card in the file's metadata, so that an
``.onnx`` file is a complete model that ONNX Runtime runs without torch.

Whatever network the checkpoint holds (CAM student, segmenter) is traced once at a small
size with dynamic batch and spatial axes, BatchNorm folded first (as torch inference runs
it). Needs torch and the ``onnx`` package (``kdmsi-geo[torch]``).
"""

from __future__ import annotations

import copy
import io
import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from kdmsi_core.checkpoint import FORMAT, ModelCard, load_checkpoint
from kdmsi_core.distributed import file_digest
from kdmsi_core.engine import INPUTS, META_CARD, META_SOURCE, ONNX_SUFFIX, OUTPUT
from kdmsi_core.errors import OutputError
from kdmsi_core.model import fold_batchnorm

OPSET = 17
TRACE_SIZE = 64
"""Side of the dummy tiles traced; any size works at run time (dynamic axes)."""


def onnx_bytes(network: nn.Module, card: ModelCard) -> bytes:
    """The serialised ONNX graph of ``network`` (t1, t2 -> logits), without metadata."""
    net = copy.deepcopy(network).cpu().float().eval()
    fold_batchnorm(net)
    x = torch.zeros(1, card.network.in_channels, TRACE_SIZE, TRACE_SIZE)
    dynamic = {name: {0: "batch", 2: "height", 3: "width"} for name in INPUTS}
    dynamic[OUTPUT] = {0: "batch", 2: "out_height", 3: "out_width"}
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter announces its successor
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x, x), buffer, input_names=list(INPUTS), output_names=[OUTPUT],
                          dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)
    return buffer.getvalue()


def with_metadata(model: bytes, card: ModelCard, source_digest: str) -> bytes:
    """``model`` with the card and the source checkpoint's digest in its metadata."""
    import onnx

    proto = onnx.load_from_string(model)
    onnx.helper.set_model_props(proto, {"format": FORMAT, META_CARD: card.to_json(),
                                        META_SOURCE: source_digest})
    proto.producer_name = "kdmsi-geo"
    return proto.SerializeToString()


def export_onnx(model: str | os.PathLike | None, output: str | os.PathLike,
                overwrite: bool = False) -> Path:
    """Write the ONNX export of ``model`` (default: the embedded model) to ``output``,
    atomically (temporary name, then rename)."""
    output = Path(output)
    if output.suffix.lower() != ONNX_SUFFIX:
        raise OutputError(f"The export {output} must end in .onnx; give a path like "
                          "model.onnx.")
    if output.exists() and not overwrite:
        raise OutputError(f"{output} exists; choose another path or pass --overwrite.")
    if not output.parent.is_dir():
        raise OutputError(f"The folder {output.parent} does not exist; create it first.")
    loaded = load_checkpoint(model, "cpu")
    data = with_metadata(onnx_bytes(loaded.model, loaded.card), loaded.card,
                         file_digest(loaded.path))
    fd, tmp = tempfile.mkstemp(prefix=".kdmsi-", suffix=".tmp", dir=output.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return output
