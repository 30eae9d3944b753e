"""Small generated GeoTIFFs and test checkpoints, made on the fly (no stored blobs).

``random_model`` is a randomly initialised narrow network: right for geometry, seams, CRS,
nodata and output tests. ``difference_model`` is a real SiameseCAM whose weights are set by
hand so that its CAM logit is ``GAIN * sum_bands |t2 - t1|`` (box-filtered): probability
0.5 where nothing changed, close to 1 where the pair differs, threshold 0.75. It makes
polygon tests meaningful before a trained default model exists. ``difference_segmenter``
is the second-stage network wired the same way.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import rasterio
import torch
from affine import Affine
from rasterio.transform import from_origin

from kdmsi_core.checkpoint import SEGMENTER, ModelCard, save_checkpoint
from kdmsi_core.model import NetworkConfig, SiameseCAM
from kdmsi_core.normalize import Normalization
from kdmsi_core.segmenter import SiameseSegmenter

os.environ.pop("PROJ_DATA", None)
os.environ.pop("PROJ_LIB", None)

ORIGIN = (500000.0, 5000000.0)
CRS = "EPSG:32633"
GAIN = 2.0


def transform_for(pixel: float = 1.0, origin: tuple[float, float] = ORIGIN) -> Affine:
    return from_origin(origin[0], origin[1], pixel, pixel)


def write_tif(path: Path, data: np.ndarray, *, crs: str | None = CRS,
              transform: Affine | None = None, nodata: float | None = None,
              alpha: np.ndarray | None = None, **extra) -> Path:
    """Write (C, H, W) ``data`` as a tiled GeoTIFF; ``alpha`` (H, W) adds an alpha band."""
    count = data.shape[0] + (alpha is not None)
    profile = {"driver": "GTiff", "width": data.shape[2], "height": data.shape[1],
               "count": count, "dtype": data.dtype, "crs": crs,
               "transform": transform or transform_for(), "nodata": nodata, **extra}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, list(range(1, data.shape[0] + 1)))
        if alpha is not None:
            dst.write(alpha.astype(data.dtype), count)
            interp = list(dst.colorinterp)
            interp[-1] = rasterio.enums.ColorInterp.alpha
            dst.colorinterp = interp
    return path


def texture(size: tuple[int, int], seed: int, bands: int = 3) -> np.ndarray:
    """A smooth, deterministic uint8 landscape: blurred noise in 60..190."""
    rng = np.random.default_rng(seed)
    h, w = size
    coarse = rng.random((bands, h // 8 + 2, w // 8 + 2))
    fine = np.kron(coarse, np.ones((8, 8)))[:, :h, :w]
    return (60 + 130 * fine).astype(np.uint8)


def scene(size: tuple[int, int] = (160, 160), seed: int = 0,
          changes: tuple[tuple[int, int, int, int], ...] = ((40, 40, 100, 100),)
          ) -> tuple[np.ndarray, np.ndarray]:
    """(t1, t2) uint8 (3, H, W): identical but for bright rectangles (r0, c0, r1, c1) in t2."""
    t1 = texture(size, seed)
    t2 = t1.copy()
    for r0, c0, r1, c1 in changes:
        t2[:, r0:r1, c0:c1] = 250
    return t1, t2


def make_card(threshold: float = 0.5, tile_size: int = 64,
              scales: tuple[float, ...] = (1.0,), combination: str = "cat") -> ModelCard:
    network = NetworkConfig("resnet18n", combination)
    return ModelCard(network, Normalization.for_dtype("uint8", 3), tile_size, threshold, scales)


def random_checkpoint(path: Path, seed: int = 0, **card) -> Path:
    torch.manual_seed(seed)
    model = SiameseCAM(make_card(**card).network).eval()
    return save_checkpoint(path, model, make_card(**card))


def _difference_encoder(model: torch.nn.Module) -> None:
    """Zero ``model``, make every BatchNorm the identity and wire its first convolution to
    +x and -x of each band, box-averaged over 7 x 7 (16 channels: 0-5 used)."""
    for p in model.parameters():
        p.zero_()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.fill_(1.0)
            m.running_mean.zero_()
            m.running_var.fill_(1.0 - m.eps)
    conv1 = model.backbone.conv1.weight  # (16, 3, 7, 7)
    for band in range(3):
        conv1[band, band] = 1.0 / 49
        conv1[band + 3, band] = -1.0 / 49


def difference_checkpoint(path: Path, scales: tuple[float, ...] = (1.0,)) -> Path:
    """A SiameseCAM (abs fusion) hand-wired to compute GAIN * sum |t2 - t1| per location."""
    card = make_card(threshold=0.75, scales=scales, combination="abs")
    model = SiameseCAM(card.network)
    with torch.no_grad():
        _difference_encoder(model)
        for layer in (model.backbone.layer2, model.backbone.layer3, model.backbone.layer4):
            down = layer[0].downsample[0].weight  # (out, in, 1, 1): pass channels through
            for c in range(min(down.shape[0], down.shape[1])):
                down[c, c] = 1.0
        model.classifier.weight[0, :6] = GAIN
    return save_checkpoint(path, model.eval(), card)


def difference_segmenter(path: Path, tile_size: int = 128) -> Path:
    """A SiameseSegmenter (abs fusion) hand-wired like :func:`difference_checkpoint`, through
    its low-level branch only (the high-level one gives zeros): a map with structure, unlike
    a random network's, so that thresholds fall where few probabilities lie."""
    card = replace(make_card(threshold=0.75, tile_size=tile_size, combination="abs"),
                   kind=SEGMENTER)
    model = SiameseSegmenter(card.network)
    with torch.no_grad():
        _difference_encoder(model)
        mid = model.classifier.in_channels
        for c in range(6):  # |f2 - f1| of the six channels, passed through to the classifier
            model.reduce[0].weight[c, c] = 1.0
            model.decoder[0].weight[c, mid + c, 1, 1] = 1.0
            model.decoder[3].weight[c, c, 1, 1] = 1.0
        model.classifier.weight[0, :6] = GAIN
    return save_checkpoint(path, model.eval(), card)
