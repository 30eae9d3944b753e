"""The network configuration a model card declares, free of torch so that a card can be read
(from a checkpoint or an ONNX file) where only an inference runtime is installed."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

BACKBONES = ("resnet18n", "resnet18", "resnet34", "resnet50")
"""The encoders :mod:`kdmsi_core.backbone` builds (its ``SPECS``)."""

COMBINATIONS = ("cat", "minus", "abs")


@dataclass(frozen=True)
class NetworkConfig:
    """Everything that fixes the shape and meaning of a network's tensors."""

    backbone: str = "resnet18n"
    combination: str = "cat"
    in_channels: int = 3
    strides: tuple[int, int, int, int] = field(default=(2, 2, 2, 1))

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(
                f"unknown backbone {self.backbone!r}; choose one of {', '.join(BACKBONES)}"
            )
        if self.combination not in COMBINATIONS:
            raise ValueError(
                f"unknown combination {self.combination!r}; choose one of {', '.join(COMBINATIONS)}"
            )
        object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))

    @property
    def output_stride(self) -> int:
        s = self.strides
        return 2 * s[0] * s[1] * s[2] * s[3]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["strides"] = list(self.strides)
        return d
