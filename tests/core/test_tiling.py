"""Tile plans: full cover, equal shapes, neighbour overlaps, refused tilings."""

from __future__ import annotations

import numpy as np
import pytest
from rasterio.windows import Window

from kdmsi_core.errors import ParameterError
from kdmsi_core.tiling import axis_starts, check_tiling, plan_tiles


@pytest.mark.parametrize("length", [1, 15, 64, 65, 100, 129, 1000])
def test_axis_starts_cover_every_pixel_within_bounds(length: int) -> None:
    tile, overlap = 64, 16
    starts = axis_starts(length, min(tile, length), overlap)
    covered = np.zeros(length, int)
    for s in starts:
        assert s >= 0 and s + min(tile, length) <= length
        covered[s:s + min(tile, length)] += 1
    assert covered.min() >= 1
    assert starts == sorted(set(starts))
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:], strict=False))


def test_plan_covers_region_with_equal_tiles_and_records_overlaps() -> None:
    region = Window(10, 20, 150, 70)
    rows = plan_tiles(region, 64, 16)
    tiles = [t for row in rows for t in row]
    assert {(t.height, t.width) for t in tiles} == {(64, 64)}
    cover = np.zeros((200, 200), int)
    for t in tiles:
        cover[t.row:t.row + t.height, t.col:t.col + t.width] += 1
    inside = cover[20:90, 10:160]
    assert inside.min() >= 1 and cover.sum() == sum(64 * 64 for _ in tiles)
    assert cover[:20].sum() == 0 and cover[:, :10].sum() == 0
    first, second = rows[0][0], rows[0][1]
    assert first.left == 0 and first.right == second.left == first.col + 64 - second.col
    assert rows[-1][-1].bottom == 0 and rows[0][0].top == 0
    assert [row[0].row for row in rows] == sorted(row[0].row for row in rows)


def test_small_region_is_one_tile_of_its_own_size() -> None:
    rows = plan_tiles(Window(3, 4, 17, 9), 256, 32)
    assert len(rows) == 1 and len(rows[0]) == 1
    t = rows[0][0]
    assert (t.row, t.col, t.height, t.width) == (4, 3, 9, 17)
    assert (t.top, t.bottom, t.left, t.right) == (0, 0, 0, 0)


@pytest.mark.parametrize(("tile", "overlap", "words"), [
    (8, 0, "smaller than the network's output stride"),
    (64, 64, "must be smaller than --tile-size"),
    (64, 100, "must be smaller than --tile-size"),
    (64, -1, "negative"),
])
def test_bad_tilings_are_refused(tile: int, overlap: int, words: str) -> None:
    with pytest.raises(ParameterError, match=words):
        check_tiling(tile, overlap, 16)
