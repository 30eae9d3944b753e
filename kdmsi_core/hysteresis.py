"""The change mask from the probability: plain thresholding, or hysteresis with bounded growth.

A pixel whose probability exceeds the threshold is change. Given a lower threshold, a pixel
above it is change too when an 8-connected path of such pixels, at most :data:`GROW_PX`
steps long, links it to one above the threshold: a change keeps the weaker rim and the weak
parts that a segmenter trained on pseudo labels (which mark the surest core of each change)
leaves below the threshold, while weak pixels alone stay out. Bounding the path keeps the
rule local, so that strips and tiles decide it exactly with a margin of :data:`GROW_PX`
pixels, and a weak halo cannot creep along a road. It is an option, not the default: it
helped raw maps, but the refined maps ``detect`` thresholds already reach each change's
edges, and on them it costs F1 on most imagery (see docs/measurements.md). The bound is in
the imagery's pixels: growing over the same ground on finer imagery did not help.
"""

from __future__ import annotations

import numpy as np

from kdmsi_core.errors import ParameterError

GROW_PX = 8
"""How far, in pixels along the weak pixels, a change grows from its sure part."""


def lower_threshold(threshold: float, low: float | None) -> float:
    """The lower threshold in use: ``low``, or the threshold itself (no growth) when None."""
    if low is None:
        return threshold
    if low > threshold:
        raise ParameterError(f"--low-threshold {low} is above the threshold {threshold}; give "
                             "a lower threshold at most the threshold (equal to it: no growth).")
    return float(low)


def _dilate(mask: np.ndarray) -> np.ndarray:
    """3 x 3 dilation (8-connectivity) over the last two axes, separable: rows, then columns."""
    out = mask.copy()
    out[..., 1:] |= mask[..., :-1]
    out[..., :-1] |= mask[..., 1:]
    rows = out.copy()
    out[..., 1:, :] |= rows[..., :-1, :]
    out[..., :-1, :] |= rows[..., 1:, :]
    return out


def change_mask(probability: np.ndarray, threshold: float, low: float,
                valid: np.ndarray | None = None, steps: int = GROW_PX) -> np.ndarray:
    """Boolean change mask of ``probability`` (..., H, W); ``valid`` limits it (nodata)."""
    sure = probability > threshold
    if valid is not None:
        sure &= valid
    if low >= threshold or steps <= 0 or not sure.any():
        return sure
    weak = probability > low
    if valid is not None:
        weak &= valid
    out = sure
    for _ in range(steps):
        grown = _dilate(out) & weak
        if np.array_equal(grown, out):
            break
        out = grown
    return out
