"""Where training starts: the embedded model, another checkpoint, or random weights.

Fine-tuning the embedded model learns far more in a CPU budget than training from scratch,
and a data set with other bands can still use it: the first convolution is adapted (RGB
weights kept, any extra band starts at zero), everything else is copied.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch

from kdmsi_core.checkpoint import (
    CAM_STUDENT,
    ModelCard,
    default_model_path,
    has_first_stage,
    load_checkpoint,
    read_card,
)
from kdmsi_core.errors import CheckpointError
from kdmsi_core.model import NetworkConfig, SiameseCAM
from kdmsi_core.normalize import Normalization

FIRST_CONV = "backbone.conv1.weight"


@dataclass
class Start:
    """The networks training starts from, and what to record about them."""

    teacher: SiameseCAM
    student: SiameseCAM
    source: str  # "scratch", "default" or a checkpoint path
    note: str = ""
    threshold: float | None = None  # the starting checkpoint's calibrated threshold
    normalization: Normalization | None = None  # the starting checkpoint's


def adapt_bands(state: dict[str, torch.Tensor], bands: int) -> dict[str, torch.Tensor]:
    """A state dict whose first convolution takes ``bands`` inputs.

    Extra bands start at zero weight, so the adapted network computes exactly what the
    original computes on the shared bands: the start that label-free selection keeps when
    fine-tuning does not beat it is the original model, never a perturbed copy (starting the
    NIR band from the mean of the RGB weights had cost 0.011 F1 on a 4-band set where the
    start won). Training gives the extra bands their weights. Fewer bands keep the first ones,
    rescaled so that the first layer's response keeps its magnitude."""
    weight = state[FIRST_CONV]
    have = weight.shape[1]
    if have == bands:
        return state
    if bands < have:
        new = weight[:, :bands] * (have / bands) if bands > 1 else weight.sum(1, keepdim=True)
    else:
        new = torch.cat([weight, weight.new_zeros(weight.shape[0], bands - have,
                                                  *weight.shape[2:])], dim=1)
    return {**state, FIRST_CONV: new.contiguous()}


def why_unfit(config: NetworkConfig, backbone: str, student: str,
              strides: tuple[int, ...]) -> str | None:
    """Why a checkpoint's network cannot start this training, or None."""
    if config.backbone != backbone:
        return f"its backbone is {config.backbone}, not {backbone}"
    if config.combination != student:
        return f"its student fusion is {config.combination}, not {student}"
    if tuple(config.strides) != tuple(strides):
        return f"its strides are {','.join(map(str, config.strides))}"
    return None


@dataclass(frozen=True)
class StartCheckpoint:
    """The checkpoint a training run with a trained start begins from, read from its cards
    only (no weights), and whether it can."""

    path: Path
    card: ModelCard  # the file's own (a segmenter's speaks for the data it learnt from)
    first: ModelCard  # the first stage training starts from: the file's, or the one it carries
    carried: bool  # whether ``first`` is carried inside a segmenter
    why: str | None  # why it cannot start this training; None when it can


def start_checkpoint(init: str, backbone: str, student: str,
                     strides: tuple[int, ...]) -> StartCheckpoint:
    """``init`` (``default``: the embedded model; else a checkpoint path) as a start for a
    first stage of this architecture; a segmenter starts it from the first stage it
    carries."""
    path = default_model_path() if init == "default" else Path(init)
    card = first = read_card(path)
    carried = card.kind != CAM_STUDENT and has_first_stage(path)
    if carried:
        first = read_card(path, first_stage=True)
    why = ("it is a segmenter that carries no first stage (give its "
           "<model>.stages/stage1.safetensors)" if first.kind != CAM_STUDENT
           else why_unfit(first.network, backbone, student, strides))
    return StartCheckpoint(path, card, first, carried, why)


def resolve_start(init: str, backbone: str, teacher: str, student: str,
                  strides: tuple[int, int, int, int], bands: int,
                  pretrained: str | None) -> Start:
    """The starting networks for ``init`` (``default``, ``scratch`` or a checkpoint path).

    ``default`` quietly falls back to scratch when the embedded model does not fit the
    requested architecture or ImageNet weights are given (``pretrained``); an explicit
    checkpoint that does not fit is an error.
    """
    def scratch(note: str = "") -> Start:
        t = SiameseCAM(NetworkConfig(backbone, teacher, bands, strides))
        s = SiameseCAM(NetworkConfig(backbone, student, bands, strides))
        return Start(t, s, "scratch", note)

    if init == "scratch":
        return scratch()
    explicit = init != "default"
    if not explicit and pretrained:
        return scratch("ImageNet weights given: the embedded model is not used")
    checkpoint = start_checkpoint(init, backbone, student, strides)
    path, card, first_stage, why = (checkpoint.path, checkpoint.first, checkpoint.carried,
                                    checkpoint.why)
    if why:
        if explicit:
            raise CheckpointError(f"Training cannot start from {path}: {why}; pass matching "
                                  "--backbone/--student/--strides or --init scratch.")
        return scratch(f"the embedded model does not fit ({why}): trained from scratch")
    loaded = load_checkpoint(path, first_stage=first_stage)
    student_net = SiameseCAM(NetworkConfig(backbone, student, bands, strides))
    student_net.load_state_dict(adapt_bands(loaded.model.state_dict(), bands))
    note = ""
    try:
        old_teacher = load_checkpoint(path, teacher=True, first_stage=first_stage).model
        teacher_net = SiameseCAM(NetworkConfig(backbone, old_teacher.config.combination, bands,
                                               strides))
        teacher_net.load_state_dict(adapt_bands(old_teacher.state_dict(), bands))
    except CheckpointError:
        # No teacher stored: it starts as a copy of the student, so the first distillation
        # targets agree with what the student already maps.
        teacher_net = copy.deepcopy(student_net)
        note = "no teacher in the starting model: the teacher starts as a copy of the student"
    if bands != card.network.in_channels:
        note = "; ".join(filter(None, [note, f"first layer adapted from "
                                       f"{card.network.in_channels} to {bands} bands"]))
    return Start(teacher_net, student_net, "default" if not explicit else str(path), note,
                 card.threshold, card.normalization)
