"""The change rule: sure pixels, and weak pixels a short path links to them."""

from __future__ import annotations

import numpy as np

from kdmsi_core.hysteresis import GROW_PX, change_mask


def test_weak_pixels_join_a_sure_one_they_touch_and_stay_out_alone() -> None:
    p = np.zeros((20, 30), np.float32)
    p[5:10, 5:10] = 0.3  # a weak rim ...
    p[7, 7] = 0.8  # ... around a sure core
    p[5:10, 20:25] = 0.3  # weak and alone
    p[15, 0] = 0.8  # sure and alone
    mask = change_mask(p, 0.5, 0.25)
    assert mask[5:10, 5:10].all() and mask[15, 0]
    assert not mask[5:10, 20:25].any()
    assert mask.sum() == 25 + 1
    assert np.array_equal(change_mask(p, 0.5, 0.5), p > 0.5)  # no growth: plain threshold


def test_growth_follows_diagonals_and_stops_after_its_reach() -> None:
    p = np.zeros((40, 40), np.float32)
    idx = np.arange(30)
    p[idx, idx] = 0.3  # a weak diagonal line
    p[0, 0] = 0.9
    mask = change_mask(p, 0.5, 0.2)
    assert mask[idx[:GROW_PX + 1], idx[:GROW_PX + 1]].all()
    assert not mask[GROW_PX + 1:].any()
    assert np.array_equal(change_mask(p, 0.5, 0.2, steps=2).nonzero()[0], [0, 1, 2])


def test_invalid_pixels_neither_seed_nor_carry_growth() -> None:
    p = np.full((3, 10), 0.3, np.float32)
    p[1, 0] = 0.9
    valid = np.ones((3, 10), bool)
    valid[:, 4] = False  # a nodata column cuts the weak region
    mask = change_mask(p, 0.5, 0.2, valid)
    assert mask[:, :4].all() and not mask[:, 4:].any()
    valid[1, 0] = False
    assert not change_mask(p, 0.5, 0.2, valid).any()


def test_batches_are_decided_per_image() -> None:
    p = np.full((2, 6, 6), 0.3, np.float32)
    p[0, 2, 2] = 0.9
    mask = change_mask(p, 0.5, 0.2)
    assert mask[0].all() and not mask[1].any()
