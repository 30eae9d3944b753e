"""Bicubic and bilinear resizing of (..., H, W) float32 arrays, as torch's ``F.interpolate``
does it (``align_corners=False``, cubic coefficient -0.75, edge pixels repeated), so that MSI
gives the same probabilities whichever engine runs the network, without torch.

Each axis is a sum of 2 or 4 gathered copies weighted per output row or column (separable
filtering); the indices and weights depend only on the sizes and are cached.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

CUBIC_A = -0.75


def _cubic_weights(t: np.ndarray) -> np.ndarray:
    """Weights of the 4 taps at offsets -1, 0, 1, 2 for fractional positions ``t``."""
    a = CUBIC_A

    def near(x: np.ndarray) -> np.ndarray:  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: np.ndarray) -> np.ndarray:  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


@lru_cache(maxsize=64)
def taps(size_in: int, size_out: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Source indices (out, k) and float32 weights (out, k) along one axis."""
    # torch's float32 arithmetic, its multiply-add rounded once (as a fused one would be)
    scale = np.float64(np.float32(size_in) / np.float32(size_out))
    src = (scale * (np.arange(size_out) + 0.5) - 0.5).astype(np.float32)
    if mode == "bicubic":
        base = np.floor(src)
        weights = _cubic_weights(src - base)
        index = base.astype(np.int64)[:, None] + np.arange(-1, 3)
    elif mode == "bilinear":
        src = np.maximum(src, np.float32(0))
        base = np.floor(src)
        frac = src - base
        weights = np.stack([1 - frac, frac], axis=-1)
        index = base.astype(np.int64)[:, None] + np.arange(2)
    else:
        raise ValueError(f"unknown resize mode {mode!r}")
    return np.clip(index, 0, size_in - 1), weights.astype(np.float32)


def _rows(x: np.ndarray, size: int, mode: str) -> np.ndarray:
    """Resize along axis -2: whole rows are gathered, contiguous copies numpy makes fast."""
    if x.shape[-2] == size:
        return x
    index, weights = taps(x.shape[-2], size, mode)
    shape = (*x.shape[:-2], size, x.shape[-1])
    # two buffers reused for every tap: fresh arrays per tap cost as much in page faults
    out, term = np.empty(shape, np.float32), np.empty(shape, np.float32)
    np.take(x, index[:, 0], axis=-2, out=out)
    out *= weights[:, 0, None]
    for k in range(1, index.shape[1]):
        np.take(x, index[:, k], axis=-2, out=term)
        term *= weights[:, k, None]
        out += term
    return out


def resize(x: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    """``x`` (..., H, W) float32 resized to ``size`` = (h, w) with ``mode`` bicubic or
    bilinear. Columns are resized as the rows of the transposed array (a gather along the
    last axis is slower); the result may be a transposed view."""
    out = _rows(x.astype(np.float32, copy=False), size[0], mode)
    if out.shape[-1] == size[1]:
        return out
    turned = np.ascontiguousarray(np.swapaxes(out, -1, -2))
    return np.swapaxes(_rows(turned, size[1], mode), -1, -2)
