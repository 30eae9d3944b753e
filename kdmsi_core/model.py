"""The siamese CAM network of KD-MSI: a shared encoder, a fusion, a one-channel 1x1 head."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from kdmsi_core.backbone import SPECS, build_backbone

COMBINATIONS = ("cat", "minus", "abs")


@dataclass(frozen=True)
class NetworkConfig:
    """Everything that fixes the shape and meaning of a network's tensors."""

    backbone: str = "resnet18n"
    combination: str = "cat"
    in_channels: int = 3
    strides: tuple[int, int, int, int] = field(default=(2, 2, 2, 1))

    def __post_init__(self) -> None:
        if self.backbone not in SPECS:
            raise ValueError(
                f"unknown backbone {self.backbone!r}; choose one of {', '.join(SPECS)}"
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


def fuse(f1: torch.Tensor, f2: torch.Tensor, combination: str) -> torch.Tensor:
    """Combine the two dates' feature maps: ``cat`` = [f2, f1], ``minus`` = f2 - f1, ``abs``."""
    if combination == "cat":
        return torch.cat([f2, f1], dim=1)
    if combination == "minus":
        return f2 - f1
    return (f2 - f1).abs()


class SiameseCAM(nn.Module):
    """Encodes t1 and t2 with shared weights and maps the fused features to CAM logits F.

    ``forward`` returns F with shape (N, 1, H/os, W/os); the image logit is its spatial mean.
    """

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = build_backbone(config.backbone, config.in_channels, config.strides)
        channels = self.backbone.out_channels * (2 if config.combination == "cat" else 1)
        self.classifier = nn.Conv2d(channels, 1, 1, bias=False)

    def forward(self, t1: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
        n = t1.shape[0]
        features = self.backbone(torch.cat([t1, t2], dim=0))
        return self.classifier(fuse(features[:n], features[n:], self.config.combination))


def image_logits(cam_logits: torch.Tensor) -> torch.Tensor:
    """Global average pooling of the CAM logits: one logit per pair."""
    return cam_logits.mean(dim=(1, 2, 3))


def teacher_cam(cam_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Max-normalised ReLU CAM, zeroed for unchanged pairs: the student's distillation target."""
    cam = torch.relu(cam_logits)
    peak = cam.amax(dim=(2, 3), keepdim=True)
    return cam / (peak + 1e-5) * labels.view(-1, 1, 1, 1)
