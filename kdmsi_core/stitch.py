"""Blending overlapping tile predictions and handing out finished strips as soon as possible.

Each tile's weight falls from 1 to ~0 across the band it shares with a neighbour, following
``sin^2``; the neighbour's weight rises across the same band following ``cos^2``, so the
two always sum to one. A pixel near a tile edge, where the network sees least context, is
thus taken almost entirely from the tile in which it lies deeper, and the blend has no kink.
Sides at the edge of the analysed region keep weight 1. Only a band of rows as high as one
tile is held in memory: rows above the next tile row can no longer change and are emitted.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
from rasterio.windows import Window

from kdmsi_core.tiling import Tile


def ramp(length: int) -> np.ndarray:
    """Rising weights over ``length`` pixels; ``ramp(n) + ramp(n)[::-1] == 1``."""
    x = (np.arange(length, dtype=np.float64) + 0.5) / length
    return np.sin(np.pi / 2 * x) ** 2


def axis_weights(size: int, before: int, after: int) -> np.ndarray:
    """1-D weights of a tile side to side: ramps over the shared bands, 1 elsewhere."""
    w = np.ones(size, np.float64)
    if before:
        w[:before] *= ramp(before)
    if after:
        w[size - after:] *= ramp(after)[::-1]
    return w


def blend_weights(tile: Tile) -> np.ndarray:
    """The 2-D weight window of ``tile`` (float32, tile shape; read-only, shared)."""
    return _weights(tile.height, tile.width, tile.top, tile.bottom, tile.left, tile.right)


@lru_cache(maxsize=64)  # a tiling has at most 4 x 4 kinds of tile
def _weights(height: int, width: int, top: int, bottom: int, left: int,
             right: int) -> np.ndarray:
    w = np.outer(axis_weights(height, top, bottom), axis_weights(width, left, right))
    w = w.astype(np.float32)
    w.flags.writeable = False
    return w


Sink = Callable[[int, np.ndarray, np.ndarray], None]
"""Receives ``(first_row, probability, valid)`` for finished full-width rows of the region."""


class StripStitcher:
    """Accumulates weighted tiles over the region's width and emits finished strips.

    Tiles must arrive in row-major order (tiles that hold no valid pixel may be skipped).
    ``probability`` is the weighted mean where some tile contributed, NaN elsewhere.
    """

    def __init__(self, region: Window, tile_height: int, sink: Sink) -> None:
        self.row0, self.col0 = int(region.row_off), int(region.col_off)
        self.end = self.row0 + int(region.height)
        self.top = self.row0
        width = int(region.width)
        self._sum = np.zeros((tile_height, width), np.float32)
        self._weight = np.zeros((tile_height, width), np.float32)
        self._valid = np.zeros((tile_height, width), bool)
        self._sink = sink

    def add(self, tile: Tile, probability: np.ndarray, valid: np.ndarray) -> None:
        """Blend one tile's (h, w) probabilities; flushes the rows above it first."""
        if tile.row < self.top:
            raise ValueError("tiles must arrive in row-major order")
        self._flush(tile.row)
        r, c = tile.row - self.top, tile.col - self.col0
        h, w = tile.height, tile.width
        weight = blend_weights(tile)
        self._sum[r:r + h, c:c + w] += probability * weight
        self._weight[r:r + h, c:c + w] += weight
        self._valid[r:r + h, c:c + w] |= valid

    def finish(self) -> None:
        """Emit every row still held."""
        self._flush(self.end)

    def _flush(self, until: int) -> None:
        while self.top < min(until, self.end):
            n = min(until, self.end, self.top + self._sum.shape[0]) - self.top
            self._emit(n)

    def _emit(self, n: int) -> None:
        weight = self._weight[:n]
        prob = np.full(weight.shape, np.nan, np.float32)
        ok = self._valid[:n] & (weight > 0)
        np.divide(self._sum[:n], weight, out=prob, where=ok)
        self._sink(self.top, prob, ok)
        keep = len(self._sum) - n
        for buf in (self._sum, self._weight, self._valid):
            buf[:keep] = buf[n:]  # numpy copies overlapping slices safely
            buf[keep:] = 0
        self.top += n
