"""Choosing the change threshold from image-level labels only.

No pixel labels exist in weak supervision, but image labels say two useful things: every
pixel of an unchanged pair is unchanged, and a changed pair mixes unchanged background with
some change. The rule: t = max(Otsu threshold of the probabilities of changed pairs,
the (1 - FALSE_ALARM) quantile of the probabilities of unchanged pairs), clipped to
[T_MIN, T_MAX]. Otsu splits the changed pairs' two populations (background and change)
without knowing which pixel is which; the quantile guarantees that at most FALSE_ALARM of
the pixels known to be unchanged are flagged. Both are computed from 1000-bin histograms
accumulated batch by batch, so calibration never holds the maps in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

BINS = 1000
FALSE_ALARM = 0.002
T_MIN, T_MAX = 0.05, 0.95
RULE = (f"max(Otsu on changed validation pairs, {1 - FALSE_ALARM:.3f} quantile of unchanged "
        f"validation pairs), clipped to [{T_MIN}, {T_MAX}]; image-level labels only")


@dataclass
class Histograms:
    """Probability histograms of changed and unchanged pairs."""

    changed: np.ndarray = field(default_factory=lambda: np.zeros(BINS, np.int64))
    unchanged: np.ndarray = field(default_factory=lambda: np.zeros(BINS, np.int64))

    def update(self, maps: np.ndarray, labels: np.ndarray) -> None:
        for m, y in zip(maps, labels, strict=True):
            h = np.bincount(np.clip((m.ravel() * BINS).astype(np.int64), 0, BINS - 1),
                            minlength=BINS)
            if y > 0.5:
                self.changed += h
            else:
                self.unchanged += h


def otsu(hist: np.ndarray) -> float:
    """Otsu's threshold of a histogram over [0, 1] (between-class variance maximum)."""
    centers = (np.arange(len(hist)) + 0.5) / len(hist)
    w = hist.astype(np.float64)
    if w.sum() == 0:
        return 0.5
    w0 = np.cumsum(w)
    w1 = w0[-1] - w0
    m0 = np.cumsum(w * centers)
    mean0 = np.divide(m0, w0, out=np.zeros_like(m0), where=w0 > 0)
    mean1 = np.divide(m0[-1] - m0, w1, out=np.zeros_like(m0), where=w1 > 0)
    between = w0 * w1 * (mean0 - mean1) ** 2
    # An empty gap between the modes gives a plateau of equal values: take its middle.
    ties = np.flatnonzero(between >= between.max() * (1 - 1e-12))
    return float((ties[0] + ties[-1]) / 2 + 1) / len(hist)


def quantile(hist: np.ndarray, q: float) -> float:
    """The value below which a fraction ``q`` of the histogram's mass lies."""
    total = hist.sum()
    if total == 0:
        return 0.0
    return float((np.searchsorted(np.cumsum(hist), q * total) + 1) / len(hist))


def calibrate(h: Histograms) -> float:
    """The threshold the rule in the module docstring gives."""
    candidates = [T_MIN]
    if h.changed.sum():
        candidates.append(otsu(h.changed))
    if h.unchanged.sum():
        candidates.append(quantile(h.unchanged, 1 - FALSE_ALARM))
    return float(np.clip(max(candidates), T_MIN, T_MAX))
