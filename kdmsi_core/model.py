"""The siamese CAM network of KD-MSI: a shared encoder, a fusion, a one-channel 1x1 head."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from kdmsi_core.backbone import build_backbone
from kdmsi_core.netconfig import NetworkConfig

POOLINGS = ("gap", "topk")
TOPK_FRACTION = 0.1  # share of the CAM cells that top-k pooling averages


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
        self.memory_format = torch.contiguous_format

    def forward(self, t1: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
        n = t1.shape[0]
        x = torch.cat([t1, t2], dim=0).contiguous(memory_format=self.memory_format)
        features = self.backbone(x)
        return self.classifier(fuse(features[:n], features[n:], self.config.combination))


def image_logits(cam_logits: torch.Tensor, pooling: str = "gap") -> torch.Tensor:
    """One logit per pair: the mean of the CAM logits (``gap``, the paper's), or the mean of
    their top :data:`TOPK_FRACTION` (``topk``), which a change covering a few cells of the
    map can drive without lifting the whole background with it."""
    if pooling == "gap":
        return cam_logits.mean(dim=(1, 2, 3))
    flat = cam_logits.flatten(1)
    k = max(1, round(flat.shape[1] * TOPK_FRACTION))
    return flat.topk(k, dim=1).values.mean(dim=1)


def teacher_cam(cam_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Max-normalised ReLU CAM, zeroed for unchanged pairs: the student's distillation target."""
    cam = torch.relu(cam_logits)
    peak = cam.amax(dim=(2, 3), keepdim=True)
    return cam / (peak + 1e-5) * labels.view(-1, 1, 1, 1)


def fold_batchnorm(module: nn.Module) -> None:
    """Fold every BatchNorm into the convolution that feeds it, in place (eval mode only).

    Each BatchNorm is a separate pass over an activation; in a narrow network on the CPU
    that pass costs as much as a good part of the convolution. ``bnK`` follows ``convK`` in
    a block, and in a ``Sequential`` (the downsample path) the BatchNorm follows its conv.
    """
    children = dict(module.named_children())
    names = list(children)
    for i, (name, child) in enumerate(children.items()):
        if not isinstance(child, nn.BatchNorm2d):
            fold_batchnorm(child)
            continue
        conv_name = f"conv{name[2:]}" if name.startswith("bn") else names[i - 1] if i else ""
        conv = children.get(conv_name)
        if not isinstance(conv, nn.Conv2d):
            continue
        setattr(module, conv_name, fuse_conv_bn_eval(conv, child))
        setattr(module, name, nn.Identity())


def place(model: SiameseCAM, device: torch.device) -> SiameseCAM:
    """Move the network to ``device``; on the CPU also into channels-last memory, oneDNN's
    native layout, which saves a reorder around every convolution (inputs are converted in
    :meth:`SiameseCAM.forward`, after any resizing, as bicubic resizing is several times
    slower in that layout). Results change by float rounding only."""
    model.to(device)
    if device.type == "cpu":
        model.memory_format = torch.channels_last
        model.to(memory_format=torch.channels_last)
    return model


def for_inference(model: SiameseCAM, device: torch.device) -> SiameseCAM:
    """The network as inference runs it: eval mode, BatchNorm folded, placed on ``device``
    (:func:`place`). Probabilities change by float rounding only (about 1e-7)."""
    model.eval()
    fold_batchnorm(model)
    return place(model, device)
