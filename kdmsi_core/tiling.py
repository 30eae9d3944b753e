"""Overlapping tile windows over the analysed part of the grid, in row-major order.

Tiles advance by ``tile_size - overlap``; the last tile of a row or column is pulled back
to end at the edge, so every tile has the same shape (and batches stack) and no tile is
thinner than the overlap. A region smaller than a tile becomes one tile of its own size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from kdmsi_core.errors import ParameterError

if TYPE_CHECKING:  # rasterio stays out of the CLI's start-up, which needs the defaults only
    from rasterio.windows import Window

DEFAULT_TILE_SIZE = 256
DEFAULT_OVERLAP = 32


@dataclass(frozen=True)
class Tile:
    """One window of the grid and how far it overlaps its neighbours on each side (pixels),
    which is what the blend window needs."""

    row: int
    col: int
    height: int
    width: int
    top: int = 0
    bottom: int = 0
    left: int = 0
    right: int = 0

    @property
    def window(self) -> Window:
        from rasterio.windows import Window

        return Window(self.col, self.row, self.width, self.height)


def check_tiling(tile_size: int, overlap: int, stride: int) -> None:
    """Refuse tilings the network cannot use or that would never advance."""
    if tile_size < stride:
        raise ParameterError(f"--tile-size {tile_size} is smaller than the network's output "
                             f"stride ({stride} pixels); use at least {stride}.")
    if overlap < 0:
        raise ParameterError(f"--overlap {overlap} is negative; use 0 or more pixels.")
    if overlap >= tile_size:
        raise ParameterError(f"--overlap {overlap} must be smaller than --tile-size "
                             f"{tile_size}.")


def axis_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile starts along one axis of ``length`` pixels (relative to its first pixel)."""
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


def _overlaps(starts: list[int], size: int) -> list[tuple[int, int]]:
    """(before, after) overlap of each tile with its predecessor and successor."""
    ends = [s + size for s in starts]
    return [(ends[i - 1] - starts[i] if i else 0,
             ends[i] - starts[i + 1] if i + 1 < len(starts) else 0)
            for i in range(len(starts))]


def plan_tiles(region: Window, tile_size: int, overlap: int) -> list[list[Tile]]:
    """Rows of tiles covering ``region`` (a window of the grid), top to bottom."""
    height, width = int(region.height), int(region.width)
    th, tw = min(tile_size, height), min(tile_size, width)
    rows, cols = axis_starts(height, th, overlap), axis_starts(width, tw, overlap)
    row_ov, col_ov = _overlaps(rows, th), _overlaps(cols, tw)
    r0, c0 = int(region.row_off), int(region.col_off)
    return [[Tile(r0 + r, c0 + c, th, tw, top, bottom, left, right)
             for c, (left, right) in zip(cols, col_ov, strict=True)]
            for r, (top, bottom) in zip(rows, row_ov, strict=True)]
