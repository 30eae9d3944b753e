"""Blend window and strip streaming: exact reconstruction, bounded buffer, order."""

from __future__ import annotations

import numpy as np
import pytest
from rasterio.windows import Window

from kdmsi_core.stitch import StripStitcher, axis_weights, blend_weights, ramp
from kdmsi_core.tiling import Tile, plan_tiles


@pytest.mark.parametrize("n", [1, 7, 32])
def test_ramps_of_neighbours_sum_to_one(n: int) -> None:
    r = ramp(n)
    assert np.allclose(r + r[::-1], 1.0)
    assert np.all(np.diff(r) > 0) and 0 < r[0] < 0.05 + 1 / n


def test_weights_are_one_at_region_edges_and_taper_towards_neighbours() -> None:
    w = axis_weights(10, 0, 4)
    assert np.all(w[:6] == 1) and np.all(np.diff(w[6:]) < 0) and w[-1] < 0.1
    tile = Tile(0, 0, 10, 12, top=3, bottom=0, left=0, right=5)
    bw = blend_weights(tile)
    assert bw.shape == (10, 12) and bw.dtype == np.float32 and bw[5, 0] == 1


def _collect(region: Window, tile_size: int, overlap: int, truth: np.ndarray,
             noise: float = 0.0, skip: set[tuple[int, int]] = frozenset()):
    rows = plan_tiles(region, tile_size, overlap)
    strips: list[tuple[int, np.ndarray, np.ndarray]] = []
    stitcher = StripStitcher(region, rows[0][0].height,
                             lambda r, p, v: strips.append((r, p.copy(), v.copy())))
    rng = np.random.default_rng(0)
    r0, c0 = int(region.row_off), int(region.col_off)
    for row in rows:
        for t in row:
            if (t.row, t.col) in skip:
                continue
            part = truth[t.row - r0:t.row - r0 + t.height, t.col - c0:t.col - c0 + t.width]
            stitcher.add(t, part + noise * rng.standard_normal(part.shape),
                         np.ones(part.shape, bool))
    stitcher.finish()
    return rows, strips


def test_stitching_true_tiles_reconstructs_the_image_in_order_strips() -> None:
    region = Window(5, 7, 131, 97)
    truth = np.random.default_rng(1).random((97, 131)).astype(np.float32)
    rows, strips = _collect(region, 40, 12, truth)
    assert [s[0] for s in strips] == sorted(s[0] for s in strips)
    assert strips[0][0] == 7 and sum(len(s[1]) for s in strips) == 97
    assert max(len(s[1]) for s in strips) <= 40  # never more than one tile band held
    image = np.concatenate([s[1] for s in strips])
    assert np.allclose(image, truth, atol=1e-6)
    assert all(s[2].all() for s in strips)


def test_rows_are_emitted_before_the_last_tile_arrives() -> None:
    region = Window(0, 0, 64, 200)
    truth = np.zeros((200, 64), np.float32)
    emitted_before_last: list[int] = []
    rows = plan_tiles(region, 32, 8)
    stitcher = StripStitcher(region, 32, lambda r, p, v: emitted_before_last.append(len(p)))
    for row in rows:
        for t in row:
            stitcher.add(t, truth[t.row:t.row + 32, t.col:t.col + 32], np.ones((32, 32), bool))
    before = sum(emitted_before_last)
    stitcher.finish()
    assert before >= 200 - 32 and sum(emitted_before_last) == 200


def test_skipped_tiles_leave_invalid_nan_pixels() -> None:
    region = Window(0, 0, 64, 64)
    truth = np.full((64, 64), 0.3, np.float32)
    rows, strips = _collect(region, 32, 0, truth, skip={(32, 32)})
    prob = np.concatenate([s[1] for s in strips])
    valid = np.concatenate([s[2] for s in strips])
    assert not valid[32:, 32:].any() and np.isnan(prob[32:, 32:]).all()
    assert valid[:32].all() and np.allclose(prob[:32], 0.3)


def test_out_of_order_tiles_are_rejected() -> None:
    region = Window(0, 0, 64, 64)
    rows = plan_tiles(region, 32, 0)
    stitcher = StripStitcher(region, 32, lambda *a: None)
    ones = np.ones((32, 32), np.float32)
    stitcher.add(rows[1][0], ones, ones > 0)
    with pytest.raises(ValueError, match="row-major"):
        stitcher.add(rows[0][0], ones, ones > 0)
