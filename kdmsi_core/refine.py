"""Edge-aware refinement of change probabilities: a guided filter with both dates as guide.

A segmenter draws its map on a grid four pixels apart and upsamples it bilinearly, so its
outlines are smooth and a pixel or two off: with the embedded model, about half of the wrong
pixels lie within 2 px of a true outline (docs/measurements.md). The guided filter (He, Sun
and Tang, 2013) fits the probability, in every (2r + 1)² window, as a linear function of the
pixel values of both dates, and averages the fits over the windows that hold each pixel. The
map keeps its level where the images are flat and takes their edges where they have some:
a changed roof's outline in either date. It reads no labels and learns nothing; the model
card says whether a model is refined and with what radius (:class:`Refinement`).

Like :mod:`kdmsi_core.msi`, it runs on torch tensors (also on a GPU) or on numpy arrays
(ONNX Runtime without torch). Windows are clipped to the tile, so a tile's edge needs no
padding rule; the stitcher's blending hides what differs there.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TypeVar

import numpy as np

from kdmsi_core.errors import ParameterError
from kdmsi_core.limits import REFINE_RADIUS_MAX, valid_radius
from kdmsi_core.msi import resize_array

Array = TypeVar("Array")
"""A torch tensor or a numpy array, (N, C, H, W)."""

# Chosen among radii 8, 12, 16 px and eps 0.001, 0.003, 0.01 on nine test sets (the
# held-back tiles and the robustness sets), not on the fresh draws the result is reported
# on (docs/measurements.md).
DEFAULT_RADIUS = 12
DEFAULT_EPS = 0.001
DEFAULT_STEP = 4
DETAIL_RADIUS = 1
"""The fits are applied to the images averaged over 3 x 3 pixels: applied to the pixels
themselves, they turned single noisy pixels beside a change into specks (on six test sets,
1.3 to 3.7 times as many false regions as without refinement, most of 1 or 2 pixels; with
the average, fewer than without refinement, at the same F1)."""


@dataclass(frozen=True)
class Refinement:
    """Guided-filter settings: window radius in pixels of the input and the regulariser
    ``eps`` (in squared normalised units: larger keeps more of the map's own shape)."""

    radius: int = DEFAULT_RADIUS
    eps: float = DEFAULT_EPS
    step: int = DEFAULT_STEP
    threshold: float | None = None
    """The change threshold of the refined maps (:func:`change_threshold`); None: the card's.
    The filter sharpens a map without moving how much change it holds, so that the refined
    maps flag fewer pixels than the raw ones at the card's threshold (13 % fewer on ten test
    sets, at higher precision and lower recall): training sets it where the
    refined maps of the validation pairs flag the share of pixels the raw maps flag at the
    card's threshold (``kdmsi_train.stage2.refined_threshold``), reading no labels."""

    def to_dict(self) -> dict:
        return {"method": "guided filter, both dates as guide", "radius": self.radius,
                "eps": self.eps, "step": self.step,
                **({} if self.threshold is None else {"threshold": self.threshold})}

    @classmethod
    def from_dict(cls, d: dict | None) -> Refinement | None:
        if not d:
            return None
        t = d.get("threshold")
        return cls(int(d["radius"]), float(d["eps"]), int(d["step"]),
                   None if t is None else float(t))


def _box_numpy(x: np.ndarray, r: int) -> np.ndarray:
    """Mean over the (2r + 1)² window clipped to the last two axes, one axis at a time, as
    a sum of shifted copies (the windows are a few cells of the fits' grid: a few additions
    per value, none reaching past the array)."""
    for axis in (x.ndim - 2, x.ndim - 1):
        n = x.shape[axis]

        def part(start: int | None, stop: int | None, axis: int = axis) -> tuple:
            return (slice(None),) * axis + (slice(start, stop),)

        total = x.copy()
        for d in range(1, min(r, n - 1) + 1):
            total[part(d, None)] += x[part(None, -d)]
            total[part(None, -d)] += x[part(d, None)]
        i = np.arange(n)
        count = (np.minimum(i + r + 1, n) - np.maximum(i - r, 0)).astype(np.float32)
        total /= count.reshape((n,) + (1,) * (x.ndim - 1 - axis))
        x = total
    return x


def _box(x: Array, r: int) -> Array:
    if isinstance(x, np.ndarray):
        return _box_numpy(x, r)
    import torch.nn.functional as F

    return F.avg_pool2d(x, 2 * r + 1, stride=1, padding=r, count_include_pad=False)


def _cat(parts: list) -> Array:
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts, 1)
    import torch

    return torch.cat(parts, 1)


def _solve(sigma: Array, rhs: Array) -> Array:
    """``sigma`` (..., C, C) \\ ``rhs`` (..., C)."""
    if isinstance(sigma, np.ndarray):
        return np.linalg.solve(sigma, rhs[..., None])[..., 0]
    import torch

    return torch.linalg.solve(sigma, rhs.unsqueeze(-1)).squeeze(-1)


def _move(x: Array, source: int, destination: int) -> Array:
    if isinstance(x, np.ndarray):
        return np.moveaxis(x, source, destination)
    return x.movedim(source, destination)


def _channel_sum(x: Array) -> Array:
    """The sum over axis 1, kept as an axis of one."""
    return x.sum(1, keepdims=True) if isinstance(x, np.ndarray) else x.sum(1, keepdim=True)


def guided_filter(guide: Array, prob: Array, radius: int, eps: float, step: int = 1) -> Array:
    """``prob`` (N, 1, H, W) refined along the edges of ``guide`` (N, C, H, W), clipped to
    [0, 1] (see :data:`DETAIL_RADIUS`). With ``step`` > 1 the linear fits are made on a grid
    ``step`` pixels apart and interpolated (the fast guided filter, He and Sun 2015): their
    windows span many pixels, so they vary smoothly, and the cost falls by about
    ``step``²."""
    numpy = isinstance(guide, np.ndarray)
    if not numpy:
        guide, prob = guide.float(), prob.float()
    n, c, h, w = guide.shape
    small = (max(1, -(-h // step)), max(1, -(-w // step)))
    g, p = resize_array(guide, small, "bilinear"), resize_array(prob, small, "bilinear")
    r = max(1, round(radius / step))
    pairs = [(i, j) for i in range(c) for j in range(i, c)]
    means = _box(_cat([g, p, g * p] + [g[:, i:i + 1] * g[:, j:j + 1] for i, j in pairs]), r)
    m_g, m_p, m_gp = means[:, :c], means[:, c:c + 1], means[:, c + 1:2 * c + 1]
    products = means[:, 2 * c + 1:]
    shape = (n, *small, c, c)
    sigma = np.empty(shape, np.float32) if numpy else means.new_empty(shape)
    for k, (i, j) in enumerate(pairs):  # the windows' covariance of the guide, + eps I
        v = products[:, k] - m_g[:, i] * m_g[:, j] + (eps if i == j else 0.0)
        sigma[..., i, j] = v
        sigma[..., j, i] = v
    a = _move(_solve(sigma, _move(m_gp - m_g * m_p, 1, -1)), -1, 1)
    b = m_p - _channel_sum(a * m_g)
    coef = resize_array(_box(_cat([a, b]), r), (h, w), "bilinear")
    out = _channel_sum(coef[:, :c] * _box(guide, DETAIL_RADIUS)) + coef[:, c:]
    return np.clip(out, 0.0, 1.0).astype(np.float32) if numpy else out.clamp(0.0, 1.0)


def for_run(card: Refinement | None, radius: int | None, factor: float = 1.0
            ) -> Refinement | None:
    """The refinement a run applies: the card's, or with ``radius`` (pixels of the imagery;
    0: none) in place of its radius; a model without one gets the default settings at that
    radius.

    The card's radius is in pixels at the model's resolution. Where a run reads finer
    imagery at ``factor`` (< 1) of its size (:func:`kdmsi_core.resolution.run_scales`), the
    maps it refines are the model's, drawn at its resolution and enlarged, so the windows
    are widened by 1 / ``factor`` to cover the same ground (at most
    :data:`~kdmsi_core.limits.REFINE_RADIUS_MAX`). Left at 12 px, the embedded model's
    windows covered 1.8 m of 0.15-m imagery instead of 6 m: widened, change F1 through
    ``detect`` rose on every generated draw finer than 0.5 m (0.15 m: 0.550 -> 0.567 and
    0.502 -> 0.547; 0.2 m 0.644 -> 0.674; 0.25 m 0.607 -> 0.619; 0.3 m 0.582 -> 0.595;
    0.4 m 0.664 -> 0.666), mostly in precision. Coarser imagery is read as it is (factor
    1), and narrowing the windows there gained nothing (1 m: 0.620 both ways; 0.75 m 0.686
    -> 0.682; masks read for that report only; docs/measurements.md)."""
    if radius is None:
        if card is None or factor >= 1.0:
            return card
        return replace(card, radius=min(REFINE_RADIUS_MAX, round(card.radius / factor)))
    if not valid_radius(radius):
        raise ParameterError(f"--refine-radius {radius} is not a whole number of pixels "
                             f"from 0 (off) to {REFINE_RADIUS_MAX}.")
    if radius == 0:
        return None
    return replace(card or Refinement(), radius=int(radius))


def change_threshold(threshold: float, refinement: Refinement | None) -> float:
    """The threshold a run applies to the maps, given the card's ``threshold``: the refined
    maps' own where the run refines and the card records one (cards written before it did
    not), else ``threshold``."""
    if refinement is None or refinement.radius <= 0 or refinement.threshold is None:
        return threshold
    return refinement.threshold


def refine(prob: Array, t1: Array, t2: Array, refinement: Refinement | None) -> Array:
    """The change probability (N, 1, H, W) of normalised t1, t2 refined as the card says;
    unchanged when it says nothing."""
    if refinement is None or refinement.radius <= 0:
        return prob
    if not isinstance(prob, np.ndarray) and prob.device.type == "cpu":
        # torch runs these many small operations slower than numpy on a CPU: 1.4 against
        # 0.2 s per megapixel on two cores
        import torch

        refined = refine(prob.float().numpy(), t1.float().numpy(), t2.float().numpy(),
                         refinement)
        return torch.from_numpy(refined)
    return guided_filter(_cat([t1, t2]), prob, refinement.radius, refinement.eps,
                         refinement.step)
