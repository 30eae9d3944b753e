"""Band normalisation as a checkpoint records it: a value range mapped to [0, 1], then mean/std.

The paper normalises 8-bit images with mean 0.5 and std 0.5 after scaling to [0, 1]; the
range makes the same rule explicit for 16-bit or float data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TypeVar

import numpy as np

Array = TypeVar("Array")


@dataclass(frozen=True)
class Normalization:
    """``((x - low) / (high - low) - mean) / std`` per band, values clipped to the range first."""

    low: tuple[float, ...]
    high: tuple[float, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def for_dtype(cls, dtype: str, bands: int) -> Normalization:
        """The paper's rule for the full range of an integer type (uint8: 0..255)."""
        info = np.iinfo(np.dtype(dtype)) if np.dtype(dtype).kind in "ui" else None
        low, high = (float(info.min), float(info.max)) if info else (0.0, 1.0)
        return cls((low,) * bands, (high,) * bands, (0.5,) * bands, (0.5,) * bands)

    @classmethod
    def from_dict(cls, d: dict) -> Normalization:
        return cls(*(tuple(float(v) for v in d[k]) for k in ("low", "high", "mean", "std")))

    def to_dict(self) -> dict:
        return {k: list(v) for k, v in asdict(self).items()}

    @property
    def bands(self) -> int:
        return len(self.low)

    def with_range(self, low: tuple[float, ...], high: tuple[float, ...]) -> Normalization:
        """The same mean/std on another input range (e.g. a 16-bit raster's stretch)."""
        return Normalization(tuple(low), tuple(high), self.mean, self.std)

    def apply(self, x: Array) -> Array:
        """Normalise a tensor or numpy array shaped (..., C, H, W) to float32 (numpy needs
        no torch, so detection with ONNX Runtime runs without it)."""
        if isinstance(x, np.ndarray):
            low, high, mean, std = (np.asarray(v, np.float32).reshape(-1, 1, 1) for v in
                                    (self.low, self.high, self.mean, self.std))
            scaled = np.clip((x.astype(np.float32) - low) / np.maximum(high - low, 1e-12),
                             0.0, 1.0)
            return (scaled - mean) / std
        import torch

        def t(v: tuple[float, ...]) -> torch.Tensor:
            return torch.tensor(v, dtype=torch.float32, device=x.device).view(-1, 1, 1)

        low, high = t(self.low), t(self.high)
        scaled = ((x.float() - low) / (high - low).clamp_min(1e-12)).clamp(0.0, 1.0)
        return (scaled - t(self.mean)) / t(self.std)


PERCENTILES = (2.0, 98.0)


def is_eight_bit(norm: Normalization) -> bool:
    """Whether ``norm`` is the fixed 0..255 rule of a model trained on 8-bit data."""
    return all(lo == 0 and hi == 255 for lo, hi in zip(norm.low, norm.high, strict=True))


def fits_eight_bit(values: np.ndarray) -> bool:
    """Whether sampled values look like 8-bit data whatever their type: whole numbers in
    0..255 (a uint16 or float copy of an 8-bit image), so that they scale exactly as the
    8-bit original would."""
    finite = values[np.isfinite(values)]
    return bool(finite.size and finite.min() >= 0 and finite.max() <= 255
                and np.all(finite == np.round(finite)))


def percentile_range(values: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-band (low, high) 2nd-98th percentile stretch of (C, n) values; a flat or empty
    band gets a unit range."""
    lows, highs = [], []
    for band in values:
        band = band[np.isfinite(band)]
        lo, hi = np.percentile(band, PERCENTILES) if band.size else (0.0, 1.0)
        lows.append(float(lo))
        highs.append(float(hi) if hi > lo else float(lo) + 1.0)
    return tuple(lows), tuple(highs)


def data_range(values: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The one scaling rule of training, evaluation and detection for (C, n) sampled values
    of both dates: 8-bit-like data map 0..255 to [0, 1], anything else its own 2nd-98th
    percentiles per band."""
    if fits_eight_bit(values):
        return (0.0,) * len(values), (255.0,) * len(values)
    return percentile_range(values)


def for_data(card: Normalization, values: np.ndarray) -> Normalization:
    """The normalisation a checkpoint's rule gives for these data: a model trained on 8-bit
    data takes :func:`data_range` of them; any other recorded range was chosen for its data
    type during training and is used as is."""
    if not is_eight_bit(card):
        return card
    return card.with_range(*data_range(values))
