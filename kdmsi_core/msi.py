"""Multiscale Sigmoid Inference, batched over tiles.

For each scale both dates are resized (bicubic), the pair and its horizontal flip go through
the student in one forward pass, the two sigmoid maps are averaged (the flipped one flipped
back) and upsampled bilinearly to the input size; the result is the mean over scales. Being
a mean of probabilities, it is comparable across images (unlike max-normalised CAMs).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

DEFAULT_SCALES: tuple[float, ...] = (0.5, 1.0, 1.25, 2.0)


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False)


def scale_probabilities(model: torch.nn.Module, t1: torch.Tensor, t2: torch.Tensor,
                        scale: float, flip: bool = True) -> torch.Tensor:
    """P_s for one scale, at the input size: shape (N, 1, H, W), values in [0, 1]."""
    n, _, h, w = t1.shape
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    a, b = _resize(t1, size), _resize(t2, size)
    if flip:
        a = torch.cat([a, a.flip(-1)], dim=0)
        b = torch.cat([b, b.flip(-1)], dim=0)
    prob = torch.sigmoid(model(a, b).float())
    if flip:
        prob = (prob[:n] + prob[n:].flip(-1)) / 2
    return F.interpolate(prob, size=(h, w), mode="bilinear", align_corners=False)


def msi(model: torch.nn.Module, t1: torch.Tensor, t2: torch.Tensor,
        scales: Sequence[float] = DEFAULT_SCALES, flip: bool = True) -> torch.Tensor:
    """Change probability P = mean over scales of P_s; normalised inputs (N, C, H, W)."""
    if not scales:
        raise ValueError("at least one scale is needed")
    total = None
    for s in scales:
        p = scale_probabilities(model, t1, t2, float(s), flip)
        total = p if total is None else total + p
    return total / len(scales)
