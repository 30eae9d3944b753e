"""How well change outlines and change objects come out, beyond pixel counts.

- **Boundary F1** (tolerance 2 pixels): the boundary of a mask is its change pixels with an
  unchanged pixel among their 8 neighbours (a tile's edge is no boundary). Boundary
  precision = share of predicted boundary pixels within 2 pixels (Euclidean) of a true
  boundary pixel; recall = share of true boundary pixels within 2 pixels of a predicted
  one; F1 their harmonic mean. Counts are summed over a split before dividing.
- **Objects**: 8-connected change regions, per tile. A true object is *hit* when a predicted
  change pixel lies on it, else *missed*; a predicted object that touches no true change
  pixel is a *false object*.

Blobby maps score a fair pixel F1 but a low boundary F1 and fragmented maps many false
objects, so these tell a first-stage map from a sharp second-stage one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

TOLERANCE = 2


def boundary(mask: np.ndarray) -> np.ndarray:
    """Change pixels with an unchanged 8-neighbour; the tile's edge does not count."""
    m = np.asarray(mask, bool)
    padded = np.pad(m, 1, mode="edge")
    h, w = m.shape
    interior = np.ones_like(m)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            interior &= padded[dy:dy + h, dx:dx + w]
    return m & ~interior


def dilate(mask: np.ndarray, radius: int = TOLERANCE) -> np.ndarray:
    """Pixels within Euclidean distance ``radius`` of a set pixel."""
    m = np.asarray(mask, bool)
    padded = np.pad(m, radius)
    h, w = m.shape
    out = np.zeros_like(m)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dy * dy + dx * dx <= radius * radius:
                out |= padded[radius + dy:radius + dy + h, radius + dx:radius + dx + w]
    return out


def _neighbourhood_max(labels: np.ndarray) -> np.ndarray:
    """The maximum over each pixel's 3 x 3 neighbourhood (outside the tile counts as 0)."""
    padded = np.pad(labels, 1)
    rows = np.maximum(np.maximum(padded[:-2], padded[1:-1]), padded[2:])
    return np.maximum(np.maximum(rows[:, :-2], rows[:, 1:-1]), rows[:, 2:])


def components(mask: np.ndarray) -> np.ndarray:
    """8-connected regions of ``mask`` as int64 labels (0 = none; labels not consecutive).

    Each pixel starts with its own number (flat index + 1) and takes its neighbours'
    maximum until nothing changes, so a region ends with its largest number. A pixel's
    label always names a pixel of its region whose own label is no smaller, so it may also
    take that pixel's label: long regions then need far fewer rounds. Numpy only, so that
    evaluation runs without torch.
    """
    m = np.ascontiguousarray(mask, dtype=bool)
    if not m.any():
        return np.zeros(m.shape, np.int64)
    labels = np.where(m, np.arange(1, m.size + 1, dtype=np.int64).reshape(m.shape), 0)
    while True:
        grown = np.where(m, _neighbourhood_max(labels), 0)
        grown = np.where(m, grown.ravel()[grown - 1], 0)  # where each label points
        if np.array_equal(grown, labels):
            return labels
        labels = grown


@dataclass
class BoundaryScore:
    """Boundary pixel counts; add tiles with :meth:`update`."""

    predicted: int = 0
    predicted_matched: int = 0
    true: int = 0
    true_matched: int = 0

    def update(self, predicted: np.ndarray, truth: np.ndarray) -> None:
        bp, bt = boundary(predicted), boundary(truth)
        self.predicted += int(bp.sum())
        self.true += int(bt.sum())
        self.predicted_matched += int((bp & dilate(bt)).sum())
        self.true_matched += int((bt & dilate(bp)).sum())

    def metrics(self) -> dict[str, float]:
        p = self.predicted_matched / self.predicted if self.predicted else 0.0
        r = self.true_matched / self.true if self.true else 0.0
        return {"boundary_precision": p, "boundary_recall": r,
                "boundary_f1": 2 * p * r / (p + r) if p + r else 0.0}


@dataclass
class ObjectCounts:
    """True objects hit and missed, predicted objects that are false; add tiles with
    :meth:`update`."""

    hit: int = 0
    missed: int = 0
    false: int = 0

    def update(self, predicted: np.ndarray, truth: np.ndarray) -> None:
        p, t = np.asarray(predicted, bool), np.asarray(truth, bool)
        true_objects, predicted_objects = components(t), components(p)
        n_true = len(np.unique(true_objects[t]))
        hit = len(np.unique(true_objects[t & p]))
        self.hit += hit
        self.missed += n_true - hit
        self.false += len(np.unique(predicted_objects[p])) - len(
            np.unique(predicted_objects[p & t]))

    def as_dict(self) -> dict[str, int]:
        return {f"objects_{k}": v for k, v in asdict(self).items()}
