"""The second-stage network: a siamese DeepLabv3+ that outlines change at full resolution.

One ResNet encoder (shared by both dates) gives low-level (stride 4, after ``layer1``) and
high-level (output stride 16) features; both are fused across dates like the CAM network's
(``minus`` = f2 - f1 by default, as in the paper). ASPP runs on the high-level difference,
the decoder joins its upsampled output with the reduced low-level difference, and a 1x1
convolution gives one change logit per pixel, upsampled to the input size.

``forward`` has the CAM student's contract — normalised t1, t2 in, change logits (N, 1, h, w)
out, probability = sigmoid — so tiling, multiscale + flip averaging (:mod:`msi`), stitching
and every inference engine treat both kinds alike. Widths follow the backbone: 256 ASPP and
decoder channels and 48 low-level channels for the standard ResNets (DeepLabv3+'s), a
quarter of that for the narrow ``resnet18n``, so that the decoder does not outweigh it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdmsi_core.backbone import SPECS, build_backbone
from kdmsi_core.model import NetworkConfig, fuse

BASE_RATES = (6, 12, 18)
"""ASPP dilation rates at output stride 16, scaled for other strides."""


def _conv_bn_relu(cin: int, cout: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (kernel // 2)
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation,
                                   bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: a 1x1 branch, three dilated 3x3 branches and image
    pooling, concatenated and projected. The pooling branch has no BatchNorm, so that a
    batch of one pair still trains."""

    def __init__(self, cin: int, cout: int, rates: tuple[int, ...]) -> None:
        super().__init__()
        self.branches = nn.ModuleList([_conv_bn_relu(cin, cout)]
                                      + [_conv_bn_relu(cin, cout, 3, r) for r in rates])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1),
                                  nn.ReLU(inplace=True))
        self.project = nn.Sequential(*_conv_bn_relu(cout * (len(rates) + 2), cout),
                                     nn.Dropout(0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [b(x) for b in self.branches]
        outs.append(self.pool(x).expand(-1, -1, *x.shape[-2:]))
        return self.project(torch.cat(outs, dim=1))


class SiameseSegmenter(nn.Module):
    """Siamese DeepLabv3+ change segmenter; ``forward`` returns full-resolution logits."""

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        self.config = config
        spec = SPECS[config.backbone]
        self.backbone = build_backbone(config.backbone, config.in_channels, config.strides)
        fused = 2 if config.combination == "cat" else 1
        low = spec.width * spec.block.expansion * fused
        high = self.backbone.out_channels * fused
        mid, reduced = 4 * spec.width, 3 * spec.width // 4
        rates = tuple(max(1, r * 16 // config.output_stride) for r in BASE_RATES)
        self.aspp = ASPP(high, mid, rates)
        self.reduce = _conv_bn_relu(low, reduced)
        self.decoder = nn.Sequential(*_conv_bn_relu(mid + reduced, mid, 3),
                                     *_conv_bn_relu(mid, mid, 3))
        self.classifier = nn.Conv2d(mid, 1, 1)
        self.memory_format = torch.contiguous_format

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.backbone
        low = b.layer1(b.maxpool(b.relu(b.bn1(b.conv1(x)))))
        return low, b.layer4(b.layer3(b.layer2(low)))

    def forward(self, t1: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
        n, size = t1.shape[0], t1.shape[-2:]
        x = torch.cat([t1, t2], dim=0).contiguous(memory_format=self.memory_format)
        low, high = self._encode(x)
        combination = self.config.combination
        y = self.aspp(fuse(high[:n], high[n:], combination))
        d_low = self.reduce(fuse(low[:n], low[n:], combination))
        y = F.interpolate(y, size=d_low.shape[-2:], mode="bilinear", align_corners=False)
        y = self.classifier(self.decoder(torch.cat([y, d_low], dim=1)))
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)
