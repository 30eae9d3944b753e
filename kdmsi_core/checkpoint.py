"""The checkpoint contract: one ``.safetensors`` file, tensors plus a JSON ``kdmsi`` entry.

The JSON carries everything needed to run the network (format version, network config,
bands and their normalisation, training tile size, MSI scales, calibrated threshold and a
summary of the training data). Loading never unpickles code, and a file whose tensors do
not fit its declared network is refused instead of silently running the wrong fusion.

A segmenter may carry the first stage it was trained from (the CAM student, its teacher and
their card, under ``kdmsi_stage1``): fine-tuning starts from those two networks, and
``evaluate`` shows both stages from one file. Floating-point tensors may be stored in
float16 (the embedded model, to stay small) and are widened to float32 when loaded.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import SafetensorError, safe_open

from kdmsi_core.errors import CheckpointError
from kdmsi_core.limits import (
    REFINE_RADIUS_MAX,
    SCALES_RULE,
    valid_radius,
    valid_scales,
    valid_threshold,
)
from kdmsi_core.msi import DEFAULT_SCALES
from kdmsi_core.netconfig import NetworkConfig
from kdmsi_core.normalize import Normalization
from kdmsi_core.refine import Refinement

if TYPE_CHECKING:  # torch only where a network is built: cards are read without it
    import torch

    from kdmsi_core.model import SiameseCAM
    from kdmsi_core.segmenter import SiameseSegmenter

FORMAT = "kdmsi-geo"
FORMAT_VERSION = 1
STUDENT = "student."
TEACHER = "teacher."
FIRST_STAGE = "kdmsi_stage1"
"""Metadata key of the card of the first stage a segmenter carries."""
CAM_STUDENT, SEGMENTER = "cam-student", "segmenter"
KINDS: dict[str, str] = {CAM_STUDENT: STUDENT, SEGMENTER: "segmenter."}
"""Model kinds a card may name, and their tensors' prefix. Both map normalised t1, t2 to
change logits, so inference treats them alike. Cards written before kinds existed hold a
CAM student."""


def network_class(kind: str) -> type[SiameseCAM] | type[SiameseSegmenter]:
    """The torch network of a model kind (imported here, so that cards read without torch)."""
    if kind == SEGMENTER:
        from kdmsi_core.segmenter import SiameseSegmenter

        return SiameseSegmenter
    from kdmsi_core.model import SiameseCAM

    return SiameseCAM


@dataclass
class ModelCard:
    """The checkpoint's metadata, as a typed object."""

    network: NetworkConfig
    normalization: Normalization
    tile_size: int
    threshold: float
    scales: tuple[float, ...] = DEFAULT_SCALES
    band_names: tuple[str, ...] = ("red", "green", "blue")
    threshold_rule: str = ""
    teacher_combination: str | None = None
    training: dict = field(default_factory=dict)
    kind: str = CAM_STUDENT
    refine: Refinement | None = None
    """Edge-aware refinement of the probabilities (:mod:`kdmsi_core.refine`); cards written
    before it existed have none."""

    @property
    def map_stride(self) -> int:
        """Pixels per cell of the grid the change map is drawn on: the encoder's output
        stride for a CAM student; for a segmenter, its decoder's (after the first block, where
        its low-level features come from), whose map is then upsampled to every pixel."""
        if self.kind == SEGMENTER:
            return 2 * self.network.strides[0]
        return self.network.output_stride

    @property
    def pixel_size(self) -> float | None:
        """The ground size in metres of the training data's pixels, where training knew it
        (``training.pixel_size``); detection meets finer data at it
        (:mod:`~kdmsi_core.resolution`)."""
        value = self.training.get("pixel_size")
        return float(value) if isinstance(value, int | float) and value > 0 else None

    def to_json(self) -> str:
        return json.dumps({
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "network": self.network.to_dict(),
            "bands": {"count": self.network.in_channels, "names": list(self.band_names)},
            "normalization": self.normalization.to_dict(),
            "tile_size": self.tile_size,
            "scales": list(self.scales),
            "threshold": self.threshold,
            "threshold_rule": self.threshold_rule,
            "teacher_combination": self.teacher_combination,
            "training": self.training,
            "refine": None if self.refine is None else self.refine.to_dict(),
        })

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        d = json.loads(text)
        if not isinstance(d, dict):
            raise CheckpointError("The checkpoint's metadata is not a JSON object; the file is "
                                  "damaged or from another program.")
        if d.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(
                f"This checkpoint has format version {d.get('format_version')}, but this "
                f"kdmsi-geo reads version {FORMAT_VERSION}; retrain or upgrade kdmsi-geo."
            )
        kind = d.get("kind", CAM_STUDENT)
        if kind not in KINDS:
            raise CheckpointError(
                f"This checkpoint holds a model of kind {kind!r}, which this kdmsi-geo cannot "
                f"run (it runs {' and '.join(KINDS)}); upgrade kdmsi-geo or give another model."
            )
        network = NetworkConfig(**d["network"])
        names = tuple(d["bands"]["names"])
        if d["bands"]["count"] != network.in_channels or len(names) != network.in_channels:
            raise CheckpointError("The checkpoint's band list does not match its network's "
                                  "input channels; the file is inconsistent, retrain it.")
        return cls(network, Normalization.from_dict(d["normalization"]), int(d["tile_size"]),
                   float(d["threshold"]), tuple(float(s) for s in d["scales"]), names,
                   d.get("threshold_rule", ""), d.get("teacher_combination"),
                   d.get("training", {}), kind, Refinement.from_dict(d.get("refine")))


@dataclass
class LoadedModel:
    """A network (CAM student or segmenter) in eval mode on its device, with its card."""

    model: SiameseCAM | SiameseSegmenter
    card: ModelCard
    path: Path
    device: torch.device


def default_model_path() -> Path:
    """The model embedded in the package, trained on generated scenes."""
    return Path(str(resources.files("kdmsi_core") / "models" / "default.safetensors"))


def save_checkpoint(path: str | os.PathLike, student: SiameseCAM | SiameseSegmenter,
                    card: ModelCard, teacher: SiameseCAM | None = None,
                    first_stage: str | os.PathLike | None = None, half: bool = False) -> Path:
    """Write atomically (temporary name, then rename) so a crash leaves no half file.

    ``student`` is the network of the card's kind. ``first_stage``, for a segmenter, is the
    checkpoint of the CAM student (with its teacher) it was trained from, copied in whole, or
    a segmenter that carries it.
    ``half`` stores floating-point tensors in float16, which halves the file."""
    path = Path(path)
    from safetensors.torch import save_file

    tensors = {KINDS[card.kind] + k: v.detach().cpu().contiguous()
               for k, v in student.state_dict().items()}
    if teacher is not None:
        tensors.update({TEACHER + k: v.detach().cpu().contiguous()
                        for k, v in teacher.state_dict().items()})
    metadata = {"format": FORMAT, "kdmsi": card.to_json()}
    if first_stage is not None:
        if card.kind != SEGMENTER:
            raise ValueError("only a segmenter carries a first stage")
        # a CAM student, or a segmenter that carries one (whose first stage is copied)
        stage1, stage1_tensors = _open(Path(first_stage), first_stage=has_first_stage(
            first_stage))
        if stage1.kind != CAM_STUDENT:
            raise CheckpointError(f"{first_stage} is neither a first-stage (CAM student) "
                                  "model nor carries one.")
        tensors.update({k: v for k, v in stage1_tensors.items()
                        if k.startswith((STUDENT, TEACHER))})
        metadata[FIRST_STAGE] = stage1.to_json()
    if half:
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    fd, tmp = tempfile.mkstemp(prefix=".kdmsi-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide the model from others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_card(path: str | os.PathLike, first_stage: bool = False) -> ModelCard:
    """The metadata of a checkpoint or of its ONNX export, without building a network; with
    ``first_stage``, that of the first stage a segmenter carries."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        if first_stage:
            raise CheckpointError(f"{path} is an ONNX export, which holds no first stage; "
                                  "give its .safetensors checkpoint.")
        from kdmsi_core.engine import read_onnx_card

        return read_onnx_card(path)
    return _open(path, weights=False, first_stage=first_stage)[0]


def has_first_stage(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a checkpoint that carries its first stage."""
    try:
        read_card(path, first_stage=True)
    except CheckpointError:
        return False
    return True


def _open(path: Path, weights: bool = True,
          first_stage: bool = False) -> tuple[ModelCard, dict[str, torch.Tensor]]:
    """The card (with ``first_stage``, the carried first stage's) and, with ``weights``,
    the tensors; the card alone needs no torch (numpy reads the header), so that a
    detect-only install shows it too."""
    if not path.is_file():
        raise CheckpointError(f"The model file {path} does not exist; give the path of a "
                              "kdmsi .safetensors checkpoint or omit --model.")
    try:
        with safe_open(str(path), framework="pt" if weights else "numpy") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT or "kdmsi" not in meta:
                raise CheckpointError(f"{path} is a safetensors file but not a kdmsi-geo "
                                      "checkpoint; train one with `kdmsi-geo train`.")
            tensors = {k: f.get_tensor(k) for k in f.keys()} if weights else {}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a kdmsi-geo checkpoint (not a readable "
                              f"safetensors file: {exc}); give a model made by "
                              "`kdmsi-geo train`.") from None
    if not first_stage:
        return parse_card(meta["kdmsi"], path, "retrain it"), tensors
    if FIRST_STAGE not in meta:
        raise CheckpointError(f"{path} carries no first-stage model; give the first stage's "
                              "checkpoint (`<model>.stages/stage1.safetensors`).")
    card = parse_card(meta[FIRST_STAGE], path, "retrain it")
    if card.kind != CAM_STUDENT:
        raise CheckpointError(f"The first stage carried by {path} is not a CAM student; "
                              "the file is damaged, retrain it.")
    return card, tensors


def parse_card(text: str | None, path: Path, remedy: str) -> ModelCard:
    """The card stored in a model file's metadata, parsed and range-checked; ``remedy`` ends
    the sentence when it is out of range (how to make the file anew)."""
    try:
        card = ModelCard.from_json(text)
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"The metadata of {path} is incomplete or invalid ({exc}); "
                              "the file is damaged or from another program.") from None
    problem = card_problem(card)
    if problem:
        raise CheckpointError(f"The metadata of {path} is out of range: {problem}; the file "
                              f"was edited or is damaged, {remedy}.")
    return card


def card_problem(card: ModelCard) -> str | None:
    """What in a card is out of range, by the rules the command line applies to the same
    settings (see :mod:`kdmsi_core.limits`); None when it is sound. Without this check a
    zero std gives all-NaN maps and an absurd scale or threshold silently finds nothing."""
    bands = card.network.in_channels
    norm = card.normalization
    if bands < 1:
        return f"the network takes {bands} bands"
    parts = {"low": norm.low, "high": norm.high, "mean": norm.mean, "std": norm.std}
    if any(len(v) != bands for v in parts.values()):
        return f"the normalisation does not list one value per band for its {bands} bands"
    if not all(math.isfinite(x) for v in parts.values() for x in v):
        return "the normalisation holds a value that is not a finite number"
    if not all(s > 0 for s in norm.std):
        return f"the normalisation std {list(norm.std)} must be positive"
    if not all(hi > lo for lo, hi in zip(norm.low, norm.high, strict=True)):
        return "the normalisation range has a high value not above its low value"
    if norm.reference is not None and not (
            all(len(v) == bands for v in norm.reference)
            and all(0.0 <= lo < hi <= 1.0 for lo, hi in zip(*norm.reference, strict=True))):
        return ("the normalisation reference must hold, per band, two fractions of the "
                "range in 0..1, the low below the high")
    if not valid_scales(card.scales):
        return f"the MSI scales {list(card.scales)} must be {SCALES_RULE}"
    if not valid_threshold(card.threshold):
        return f"the threshold {card.threshold} is outside 0..1"
    if card.tile_size < 1:
        return f"the tile size {card.tile_size} is not a size in pixels"
    refine = card.refine
    if refine is not None and not (valid_radius(refine.radius) and 1 <= refine.step <= 16
                                   and math.isfinite(refine.eps) and refine.eps > 0):
        return (f"the refinement (radius {refine.radius}, eps {refine.eps}, step "
                f"{refine.step}) needs a radius of 0 to {REFINE_RADIUS_MAX} px, a positive eps "
                "and a step of 1 to 16")
    if refine is not None and refine.threshold is not None and not valid_threshold(
            refine.threshold):
        return f"the refined maps' threshold {refine.threshold} is outside 0..1"
    return None


def _load_into(network: SiameseCAM | SiameseSegmenter, tensors: dict[str, torch.Tensor],
               prefix: str, path: Path) -> None:
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    own = network.state_dict()
    wrong = [k for k in own if k not in state or state[k].shape != own[k].shape]
    extra = [k for k in state if k not in own]
    if wrong or extra:
        cfg = network.config
        raise CheckpointError(
            f"The weights in {path} do not fit the network its metadata declares "
            f"({cfg.backbone}, {cfg.combination} fusion, {cfg.in_channels} bands): "
            f"{len(wrong)} tensors missing or of another shape, {len(extra)} unexpected; "
            "the file was edited or written for another configuration."
        )
    network.load_state_dict(state, strict=True)


def load_checkpoint(path: str | os.PathLike | None = None, device: torch.device | str = "cpu",
                    teacher: bool = False, first_stage: bool = False) -> LoadedModel:
    """Build the network of the checkpoint's kind (or its teacher) and load its weights;
    with ``first_stage``, the CAM student (or teacher) a segmenter carries."""
    import torch

    path = Path(path) if path is not None else default_model_path()
    card, tensors = _open(path, first_stage=first_stage)
    build, prefix = network_class(card.kind), KINDS[card.kind]
    if teacher:
        build, prefix = network_class(CAM_STUDENT), TEACHER
    config = card.network
    if teacher:
        if card.teacher_combination is None or not any(k.startswith(TEACHER) for k in tensors):
            raise CheckpointError(f"{path} holds no teacher network; save it with the teacher.")
        config = NetworkConfig(config.backbone, card.teacher_combination, config.in_channels,
                               config.strides)
    network = build(config)
    _load_into(network, tensors, prefix, path)
    device = torch.device(device)
    network.to(device).eval()
    return LoadedModel(network, card, path, device)
