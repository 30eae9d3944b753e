"""Multiscale Sigmoid Inference, batched over tiles.

For each scale both dates are resized (bicubic), the pair and its horizontal flip go through
the network in one forward pass, the two sigmoid maps are averaged (the flipped one flipped
back) and upsampled bilinearly to the input size; the result is the mean over scales. Being
a mean of probabilities, it is comparable across images (unlike max-normalised CAMs).

The same steps run on torch tensors (the torch engine, training) or on numpy arrays (ONNX
Runtime, without torch): only the network call and these few array operations differ.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

from kdmsi_core import resize as np_resize

DEFAULT_SCALES: tuple[float, ...] = (0.5, 1.0, 1.25, 2.0)

Array = TypeVar("Array")
"""A torch tensor or a numpy array, (N, C, H, W)."""


def resize_array(x: Array, size: tuple[int, int], mode: str) -> Array:
    """A tensor or numpy array (..., H, W) resized to ``size`` (torch's rule either way)."""
    if tuple(x.shape[-2:]) == size:
        return x
    if isinstance(x, np.ndarray):
        return np_resize.resize(x, size, mode)
    import torch.nn.functional as F

    return F.interpolate(x, size=size, mode=mode, align_corners=False)


def _flip(x: Array) -> Array:
    return x[..., ::-1] if isinstance(x, np.ndarray) else x.flip(-1)


def _cat(a: Array, b: Array) -> Array:
    if isinstance(a, np.ndarray):
        return np.concatenate([a, b])
    import torch

    return torch.cat([a, b], dim=0)


def _sigmoid(x: Array) -> Array:
    if isinstance(x, np.ndarray):  # the tanh form cannot overflow
        return (0.5 + 0.5 * np.tanh(0.5 * x.astype(np.float32))).astype(np.float32)
    import torch

    return torch.sigmoid(x.float())


def scale_probabilities(model: Callable[[Array, Array], Array], t1: Array, t2: Array,
                        scale: float, flip: bool = True) -> Array:
    """P_s for one scale, at the input size: shape (N, 1, H, W), values in [0, 1].
    ``model`` maps normalised t1, t2 to change logits of any size."""
    n, _, h, w = t1.shape
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    a, b = resize_array(t1, size, "bicubic"), resize_array(t2, size, "bicubic")
    if flip:
        a, b = _cat(a, _flip(a)), _cat(b, _flip(b))
    prob = _sigmoid(model(a, b))
    if flip:
        prob = (prob[:n] + _flip(prob[n:])) / 2
    return resize_array(prob, (h, w), "bilinear")


def msi(model: Callable[[Array, Array], Array], t1: Array, t2: Array,
        scales: Sequence[float] = DEFAULT_SCALES, flip: bool = True) -> Array:
    """Change probability P = mean over scales of P_s; normalised inputs (N, C, H, W)."""
    if not scales:
        raise ValueError("at least one scale is needed")
    total = None
    for s in scales:
        p = scale_probabilities(model, t1, t2, float(s), flip)
        total = p if total is None else total + p
    return total / len(scales)
