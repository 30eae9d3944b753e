"""Accepted ranges of the run settings, shared by the options, the library and checkpoint
cards, so that a value refused on the command line is refused in a model file too."""

from __future__ import annotations

import math
from collections.abc import Sequence

SCALE_MIN, SCALE_MAX = 0.125, 4.0
"""MSI scales resize each tile: below 1/8 a tile shrinks to a few network cells, above 4 a
batch needs sixteen times its memory for no gain the paper reports (it uses 0.5 to 2)."""

SCALES_RULE = f"one or more positive factors from {SCALE_MIN:g} to {SCALE_MAX:g}"


def valid_scales(scales: Sequence[float]) -> bool:
    """At least one scale, each finite and within ``SCALE_MIN``..``SCALE_MAX``."""
    return bool(scales) and all(
        isinstance(s, (int, float)) and math.isfinite(s) and SCALE_MIN <= s <= SCALE_MAX
        for s in scales)


def valid_threshold(threshold: float) -> bool:
    """A probability: finite and within 0..1."""
    return isinstance(threshold, (int, float)) and 0.0 <= threshold <= 1.0


REFINE_RADIUS_MAX = 64
"""The guided filter's window radius, in pixels: 0 turns it off; wider than 64 px (a 129-px
window, half a default tile) it would blur across whole buildings instead of following their
outlines."""


def valid_radius(radius: int) -> bool:
    """A refinement radius: a whole number of pixels within 0..``REFINE_RADIUS_MAX``."""
    return isinstance(radius, int) and 0 <= radius <= REFINE_RADIUS_MAX
