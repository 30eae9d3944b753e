"""ResNet encoders written here, with torchvision's parameter names.

Standard ImageNet weights (``resnet50-*.pth`` state dicts) load straight from a local file;
``fc`` is not built because the CAM head replaces it. ``strides`` are those of conv1, layer2,
layer3 and layer4 (PuzzleCAM's convention): (2, 2, 2, 1) gives output stride 16. The
``resnet18n`` variant keeps ResNet-18's shape at a quarter of its width so that it trains on
a laptop CPU in minutes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


@dataclass(frozen=True)
class ResNetSpec:
    block: type[nn.Module]
    layers: tuple[int, int, int, int]
    width: int


SPECS: dict[str, ResNetSpec] = {
    "resnet18n": ResNetSpec(BasicBlock, (2, 2, 2, 2), 16),
    "resnet18": ResNetSpec(BasicBlock, (2, 2, 2, 2), 64),
    "resnet34": ResNetSpec(BasicBlock, (3, 4, 6, 3), 64),
    "resnet50": ResNetSpec(Bottleneck, (3, 4, 6, 3), 64),
}


class ResNet(nn.Module):
    """A ResNet trunk without pooling head; ``forward`` returns the last feature map."""

    def __init__(self, spec: ResNetSpec, in_channels: int = 3,
                 strides: tuple[int, int, int, int] = (2, 2, 2, 1)) -> None:
        super().__init__()
        width = spec.width
        self.inplanes = width
        self.conv1 = nn.Conv2d(in_channels, width, 7, strides[0], 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        block = spec.block
        self.layer1 = self._layer(block, width, spec.layers[0], 1)
        self.layer2 = self._layer(block, width * 2, spec.layers[1], strides[1])
        self.layer3 = self._layer(block, width * 4, spec.layers[2], strides[2])
        self.layer4 = self._layer(block, width * 8, spec.layers[3], strides[3])
        self.out_channels = width * 8 * block.expansion
        self.output_stride = 2 * strides[0] * strides[1] * strides[2] * strides[3]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _layer(self, block: type[nn.Module], planes: int, blocks: int,
               stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def build_backbone(name: str, in_channels: int = 3,
                   strides: tuple[int, int, int, int] = (2, 2, 2, 1)) -> ResNet:
    """The encoder called ``name`` (one of :data:`SPECS`)."""
    if name not in SPECS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(SPECS)}")
    return ResNet(SPECS[name], in_channels, strides)


def load_pretrained(backbone: ResNet, state: dict[str, torch.Tensor]) -> list[str]:
    """Copy an ImageNet state dict into ``backbone``; returns the names that were loaded.

    ``fc.*`` is ignored. A band count other than 3 keeps conv1's pretrained filters by
    repeating their mean over the extra bands (a common, harmless adaptation).
    """
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = backbone.state_dict()
    w = state.get("conv1.weight")
    if w is not None and w.shape[1] != own["conv1.weight"].shape[1]:
        bands = own["conv1.weight"].shape[1]
        mean = w.mean(dim=1, keepdim=True)
        state["conv1.weight"] = torch.cat([w[:, :bands], mean.repeat(1, max(0, bands - 3), 1, 1)],
                                          dim=1)[:, :bands] * (3 / bands)
    bad = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    missing = [k for k in own if k not in state]
    if bad or missing:
        raise ValueError(
            f"{len(bad)} tensors do not fit and {len(missing)} are missing "
            f"(first: {(bad or missing)[0]})"
        )
    backbone.load_state_dict(state, strict=True)
    return sorted(state)
