"""Band normalisation as a checkpoint records it: a value range mapped to [0, 1], then mean/std.

The paper normalises 8-bit images with mean 0.5 and std 0.5 after scaling to [0, 1]; the
range makes the same rule explicit for 16-bit or float data. A model that learnt from 8-bit
data also records where that data's 2nd and 98th percentiles fell (``reference``), so that
16-bit or float data, which have no fixed range, are stretched to look as bright and as
contrasted as what it learnt from (:func:`data_range`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TypeVar

import numpy as np

Array = TypeVar("Array")


@dataclass(frozen=True)
class Normalization:
    """``((x - low) / (high - low) - mean) / std`` per band, values clipped to the range first.

    ``reference`` (low, high per band, within [0, 1]): where the 2nd and 98th percentiles of
    the data the model learnt from fell after its range; None on older cards."""

    low: tuple[float, ...]
    high: tuple[float, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    reference: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    @classmethod
    def for_dtype(cls, dtype: str, bands: int) -> Normalization:
        """The paper's rule for the full range of an integer type (uint8: 0..255)."""
        info = np.iinfo(np.dtype(dtype)) if np.dtype(dtype).kind in "ui" else None
        low, high = (float(info.min), float(info.max)) if info else (0.0, 1.0)
        return cls((low,) * bands, (high,) * bands, (0.5,) * bands, (0.5,) * bands)

    @classmethod
    def from_dict(cls, d: dict) -> Normalization:
        ref = d.get("reference")
        return cls(*(tuple(float(v) for v in d[k]) for k in ("low", "high", "mean", "std")),
                   reference=None if ref is None else (tuple(float(v) for v in ref["low"]),
                                                       tuple(float(v) for v in ref["high"])))

    def to_dict(self) -> dict:
        d = {k: list(getattr(self, k)) for k in ("low", "high", "mean", "std")}
        if self.reference is not None:
            d["reference"] = {"low": list(self.reference[0]), "high": list(self.reference[1])}
        return d

    @property
    def bands(self) -> int:
        return len(self.low)

    def with_range(self, low: tuple[float, ...], high: tuple[float, ...]) -> Normalization:
        """The same mean/std on another input range (e.g. a 16-bit raster's stretch)."""
        return replace(self, low=tuple(low), high=tuple(high))

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


def fit_reference(reference: tuple[tuple[float, ...], tuple[float, ...]], bands: int
                  ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``reference`` for ``bands`` bands: bands beyond its own (a NIR band on an RGB model)
    get 0 and 1, the plain stretch; surplus ones are dropped."""
    return tuple(tuple(list(v[:bands]) + [edge] * (bands - len(v)))
                 for v, edge in zip(reference, (0.0, 1.0), strict=True))


def reference_range(values: np.ndarray, reference: tuple[tuple[float, ...], tuple[float, ...]]
                    ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-band range of (C, n) values that puts their 2nd and 98th percentiles at the
    ``reference`` fractions of [0, 1] (:func:`fit_reference` to their band count)."""
    lows, highs = percentile_range(values)
    out_low, out_high = [], []
    for lo, hi, r_lo, r_hi in zip(lows, highs, *fit_reference(reference, len(lows)),
                                  strict=True):
        span = (hi - lo) / (r_hi - r_lo)
        out_low.append(lo - r_lo * span)
        out_high.append(lo - r_lo * span + span)
    return tuple(out_low), tuple(out_high)


def data_range(values: np.ndarray,
               reference: tuple[tuple[float, ...], tuple[float, ...]] | None = None
               ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The one scaling rule of training, evaluation and detection for (C, n) sampled values
    of both dates: 8-bit-like data map 0..255 to [0, 1]; anything else is stretched so that
    its 2nd and 98th percentiles per band fall where those of the model's training data fell
    (``reference``), or, without one, at 0 and 1.

    Stretched onto 0 and 1, 16-bit scenes looked far more contrasted than any 8-bit image
    the embedded model learnt from (whose percentiles lie near 0.07 and 0.7) and it flagged
    much of their texture (docs/measurements.md)."""
    if fits_eight_bit(values):
        return (0.0,) * len(values), (255.0,) * len(values)
    if reference is not None:
        return reference_range(values, reference)
    return percentile_range(values)


def own_reference(values: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The reference an 8-bit training set leaves on its model: its (C, n) values' 2nd and
    98th percentiles per band as fractions of 0..255."""
    lows, highs = percentile_range(values)
    return tuple(v / 255.0 for v in lows), tuple(v / 255.0 for v in highs)


def for_data(card: Normalization, values: np.ndarray) -> Normalization:
    """The normalisation a checkpoint's rule gives for these data: a model trained on 8-bit
    data takes :func:`data_range` of them (with its reference); any other recorded range was
    chosen for its data type during training and is used as is."""
    if not is_eight_bit(card):
        return card
    return card.with_range(*data_range(values, card.reference))
