"""Cheap random fields and resampling on numpy arrays.

Aerial texture is multi-scale, so every surface is modulated by sums of smooth random
fields (low-resolution noise upsampled bilinearly) instead of per-pixel Python loops.
"""

from __future__ import annotations

import numpy as np


def sample_separable(a: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Bilinearly sample the last two axes of ``a`` at row positions ``ys`` and column ``xs``.

    Positions outside the array are clamped to the border, which is what a slightly
    misregistered sensor sees at the image edge.
    """
    h, w = a.shape[-2:]
    ys = np.clip(ys, 0, h - 1)
    xs = np.clip(xs, 0, w - 1)
    y0 = np.minimum(np.floor(ys).astype(np.intp), max(h - 2, 0))
    x0 = np.minimum(np.floor(xs).astype(np.intp), max(w - 2, 0))
    fy = (ys - y0).astype(np.float32)[:, None]
    fx = (xs - x0).astype(np.float32)
    y1 = np.minimum(y0 + 1, h - 1)
    x1 = np.minimum(x0 + 1, w - 1)
    rows = a[..., y0, :] * (1 - fy) + a[..., y1, :] * fy
    return rows[..., x0] * (1 - fx) + rows[..., x1] * fx


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Zero-mean random field whose features are about ``cell`` pixels wide."""
    h, w = shape
    gh, gw = int(np.ceil(h / cell)) + 2, int(np.ceil(w / cell)) + 2
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    oy, ox = rng.random(2)
    ys = oy + np.arange(h, dtype=np.float32) / cell
    xs = ox + np.arange(w, dtype=np.float32) / cell
    return sample_separable(grid, ys, xs)


def fbm(
    rng: np.random.Generator,
    shape: tuple[int, int],
    largest: float,
    smallest: float = 2.0,
    persistence: float = 0.55,
) -> np.ndarray:
    """Fractal noise: octaves from ``largest`` down to ``smallest`` pixels, about unit std."""
    out = np.zeros(shape, np.float32)
    cell, amp, norm = float(largest), 1.0, 0.0
    while cell >= smallest:
        out += amp * smooth_field(rng, shape, cell)
        norm += amp * amp
        cell /= 2.0
        amp *= persistence
    # a bilinear-upsampled unit-normal grid has a std of about 0.66
    return out / (0.66 * np.sqrt(max(norm, 1e-6)))


def worley(
    rng: np.random.Generator, shape: tuple[int, int], cell: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cellular noise for tree canopies: one jittered point per ``cell`` square.

    Returns the distance to the nearest point and the offset (dx, dy) from it, all in
    cells, and a per-point random value in [0, 1) that identifies the nearest point.
    The cell is rounded to whole pixels so that per-cell values expand by repetition.
    """
    h, w = shape
    c = max(int(round(cell)), 2)
    gh, gw = -(-h // c) + 2, -(-w // c) + 2
    fields = [np.repeat(np.repeat(rng.random((gh, gw), np.float32), c, 0), c, 1)
              for _ in range(3)]
    pos = (np.arange(max(h, w), dtype=np.float32) + 0.5) / c
    frac_y = (pos[:h] - np.floor(pos[:h]))[:, None]
    frac_x = (pos[:w] - np.floor(pos[:w]))[None, :]
    best = np.full(shape, np.inf, np.float32)
    out = [np.zeros(shape, np.float32) for _ in range(3)]
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            win = (slice((1 + dy) * c, (1 + dy) * c + h), slice((1 + dx) * c, (1 + dx) * c + w))
            jx, jy, ident = (f[win] for f in fields)
            ox = frac_x - dx - jx
            oy = frac_y - dy - jy
            d2 = ox * ox + oy * oy
            closer = d2 < best
            best = np.where(closer, d2, best)
            for o, v in zip(out, (ox, oy, ident), strict=True):
                np.copyto(o, v, where=closer)
    return np.sqrt(best), out[0], out[1], out[2]


def box_blur(a: np.ndarray, radius: int) -> np.ndarray:
    """Mean filter of half-width ``radius`` over the last two axes (soft shadow edges)."""
    if radius < 1:
        return a
    k = 2 * radius + 1
    h, w = a.shape[-2:]
    pad = [(0, 0)] * (a.ndim - 2) + [(radius, radius), (radius, radius)]
    p = np.pad(a.astype(np.float32), pad, mode="edge")
    if radius <= 2:  # a few shifted sums beat running sums
        rows = sum(p[..., i : i + h, :] for i in range(k))
        return sum(rows[..., j : j + w] for j in range(k)) / (k * k)
    c = np.cumsum(p, axis=-2)
    c = np.concatenate([np.zeros_like(c[..., :1, :]), c], axis=-2)
    p = c[..., k:, :] - c[..., :-k, :]
    c = np.cumsum(p, axis=-1)
    c = np.concatenate([np.zeros_like(c[..., :1]), c], axis=-1)
    return (c[..., k:] - c[..., :-k]) / (k * k)


def shift(a: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """Translate the last two axes by a (sub-)pixel offset, bilinearly; content moves
    right/down and the borders repeat, as at the edge of a misregistered image."""
    h, w = a.shape[-2:]
    ix, iy = int(np.floor(dx)), int(np.floor(dy))
    fx, fy = np.float32(dx - ix), np.float32(dy - iy)
    r = max(abs(ix), abs(iy)) + 2
    pad = [(0, 0)] * (a.ndim - 2) + [(r, r), (r, r)]
    p = np.pad(a, pad, mode="edge")

    def source(oy: int, ox: int) -> np.ndarray:  # a[y - oy, x - ox]
        return p[..., r - oy : r - oy + h, r - ox : r - ox + w]

    top = source(iy, ix) * (1 - fx) + source(iy, ix + 1) * fx
    bottom = source(iy + 1, ix) * (1 - fx) + source(iy + 1, ix + 1) * fx
    return top * (1 - fy) + bottom * fy


def shift_mask(mask: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Translate a boolean mask by whole pixels, filling uncovered borders with False."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    src = mask[max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)]
    out[max(0, dy) : max(0, dy) + src.shape[0], max(0, dx) : max(0, dx) + src.shape[1]] = src
    return out
