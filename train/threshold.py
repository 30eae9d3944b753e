"""Choosing the change threshold from image-level labels only.

No pixel labels exist in weak supervision, but image labels say that every pixel of an
unchanged pair is unchanged and that a changed pair holds some change. The rule, on each
pair's peak probability:

t = max(a lower confidence bound of the (1 - PAIR_FALSE_ALARM) quantile of the unchanged
        pairs' peaks,
        the midpoint of the unchanged and the changed pairs' median peaks),

clipped to [T_MIN, T_MAX]. The first term lets at most one unchanged pair in ten show any
change; it counts pairs, not pixels, so a few pairs labelled unchanged that hold an
unlabelled sliver of change (image labels are rarely perfect) move it little, where a pixel
quantile of those pairs would be set by those very slivers. The second keeps the threshold
off the faint halo around changes of a model whose unchanged maps are all but empty: there
the first term would sit at the floor of the halo. Without unchanged pairs, Otsu's
threshold of the changed pairs' probabilities splits their two populations instead.

The first term is not the sample quantile but the highest order statistic of the unchanged
peaks that lies at or below their distribution's quantile with probability
:data:`CONFIDENCE` (binomial, whatever the distribution; :func:`quantile_lower_bound`). A
validation split holds a few dozen unchanged pairs, whose sample 0.9 quantile is one of
their two to four highest peaks, so that a few stray peaks set it; the bound raises the
threshold above the midpoint only as far as the pairs show with confidence, and with
hundreds of pairs it is all but the sample quantile. Pairs count one by one whatever
their size (:func:`kdmsi_train.stage2.histograms` says why).

On the robustness benchmark's sets this rule came closer to the best threshold than the
former max(Otsu on changed pairs, 0.998 pixel quantile of unchanged pairs), which failed
outright where the labels miss slivers (README, *Threshold without pixel labels*, with the
figures of the confidence bound).

A segmenter fine-tuned from a trained one is thresholded otherwise, without labels: it
flags as many pixels as its start flags at the start's own threshold (:func:`matching`;
:func:`kdmsi_train.stage2.matched_threshold` says why).

Probabilities are accumulated in 1000-bin histograms and peaks one number per pair, batch
by batch, so calibration never holds the maps in memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

BINS = 1000
PAIR_FALSE_ALARM = 0.1
CONFIDENCE = 0.9
T_MIN, T_MAX = 0.05, 0.95


def rule(floor: str = f"{T_MIN}", square: int | None = None) -> str:
    """The rule in words, for model cards, with its lower clip ``floor`` and, when given,
    the side of the squares whose peaks unchanged pairs give (:class:`Histograms`)."""
    unchanged, median = ((f"the {square}-px squares of the pairs labelled unchanged",
                          "those squares") if square
                         else ("the pairs labelled unchanged", "unchanged"))
    return (f"max(lower {CONFIDENCE:.0%} confidence bound of the {1 - PAIR_FALSE_ALARM:g} "
            f"quantile of the peak probabilities of {unchanged}, midpoint of "
            f"the median peaks of {median} and changed pairs) (Otsu on changed pairs without "
            f"unchanged ones), clipped to [{floor}, {T_MAX}]; image-level labels only")


RULE = rule()


@dataclass
class Histograms:
    """Probability histograms of changed and unchanged pairs, and each pair's peak.

    With ``square``, an unchanged pair gives the peak of each square of about ``square`` pixels
    that tiles its map (:func:`square_peaks`) instead of its own, so that "one unchanged
    pair in ten" means the same area whatever the tile size; changed pairs still give one
    peak each."""

    changed: np.ndarray = field(default_factory=lambda: np.zeros(BINS, np.int64))
    unchanged: np.ndarray = field(default_factory=lambda: np.zeros(BINS, np.int64))
    unchanged_peaks: list[float] = field(default_factory=list)
    changed_peaks: list[float] = field(default_factory=list)
    square: int | None = None

    def update(self, maps: np.ndarray, labels: np.ndarray) -> None:
        for m, y in zip(maps, labels, strict=True):
            h = histogram(m)
            if y > 0.5:
                self.changed += h
                self.changed_peaks.append(float(np.max(m)))
            else:
                self.unchanged += h
                self.unchanged_peaks.extend(square_peaks(m, self.square) if self.square
                                            else [float(np.max(m))])


def histogram(values: np.ndarray) -> np.ndarray:
    """Counts of ``values`` (probabilities, any shape) in :data:`BINS` bins over [0, 1]."""
    return np.bincount(np.clip((values.ravel() * BINS).astype(np.int64), 0, BINS - 1),
                       minlength=BINS)


def square_peaks(m: np.ndarray, side: int) -> list[float]:
    """The peak of each of the squares of about ``side`` pixels that tile the last two axes
    of ``m`` (round(length / side) per axis, at least one)."""
    rows = max(1, round(m.shape[-2] / side))
    cols = max(1, round(m.shape[-1] / side))
    return [float(np.max(part)) for band in np.array_split(m, rows, axis=-2)
            for part in np.array_split(band, cols, axis=-1)]


def share_above(hist: np.ndarray, t: float) -> float:
    """The share of a histogram's mass at or above ``t``."""
    total = hist.sum()
    return float(hist[min(BINS - 1, int(t * BINS)):].sum() / total) if total else 0.0


def matching(hist: np.ndarray, share: float, floor: float = T_MIN) -> float:
    """The threshold above which a ``share`` of the histogram's mass lies, clipped to
    [floor, T_MAX]: the one that flags as many pixels as another map flags at its own."""
    return float(np.clip(quantile(hist, 1 - share), floor, T_MAX))


def matched_rule(floor: str, share: float, reference_threshold: float, split: str,
                 reference: str = "the starting segmenter") -> str:
    """:func:`matching`'s rule in words, for model cards; ``reference`` names the model
    whose share is matched."""
    return (f"flags the same share of the {split} split's pixels ({share:.3%}) as "
            f"{reference} flags there at its own threshold ({reference_threshold:.3f}), "
            f"clipped to [{floor}, {T_MAX}]; no labels read")


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


def quantile_lower_bound(values: np.ndarray, q: float, confidence: float = CONFIDENCE
                         ) -> float:
    """The largest order statistic of ``values`` that lies at or below the ``q`` quantile of
    their distribution with probability at least ``confidence``.

    The k-th smallest of n independent draws is at or below that quantile exactly when at
    least k draws are, which happens with probability P(Binomial(n, q) >= k), whatever the
    distribution. With n = 11 and q = confidence = 0.9 that is the third-highest value;
    with n = 300, the 38th-highest (the sample quantile: about the 30th)."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    n = len(x)
    j = np.arange(n + 1)
    log_pmf = (math.lgamma(n + 1) - np.array([math.lgamma(k + 1) + math.lgamma(n - k + 1)
                                              for k in j])
               + j * math.log(q) + (n - j) * math.log1p(-q))
    at_least = np.cumsum(np.exp(log_pmf)[::-1])[::-1]  # at_least[k] = P(Binomial >= k)
    ks = np.flatnonzero(at_least[1:] >= confidence) + 1
    return float(x[ks[-1] - 1]) if len(ks) else float(x[0])


def calibrate(h: Histograms, floor: float = T_MIN) -> float:
    """The threshold the rule in the module docstring gives, clipped to [floor, T_MAX]."""
    if h.unchanged_peaks:
        t = quantile_lower_bound(h.unchanged_peaks, 1 - PAIR_FALSE_ALARM)
        if h.changed_peaks:
            t = max(t, float(np.median(h.unchanged_peaks) + np.median(h.changed_peaks)) / 2)
    elif h.changed.sum():
        t = otsu(h.changed)
    else:
        t = floor
    return float(np.clip(t, floor, T_MAX))
