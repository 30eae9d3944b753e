"""The guided-filter refinement: box means, what the filter keeps and what it moves, the
torch and numpy forms, the run-time radius, the refined maps' threshold and the card field."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kdmsi_core.checkpoint import ModelCard, card_problem
from kdmsi_core.errors import ParameterError
from kdmsi_core.refine import (
    Refinement,
    _box_numpy,
    change_threshold,
    for_run,
    guided_filter,
    refine,
)


def _brute_box(x: np.ndarray, r: int) -> np.ndarray:
    out = np.empty_like(x)
    h, w = x.shape[-2:]
    for i in range(h):
        for j in range(w):
            win = x[..., max(0, i - r):i + r + 1, max(0, j - r):j + r + 1]
            out[..., i, j] = win.mean(axis=(-2, -1))
    return out


def test_box_mean_is_the_window_mean_clipped_to_the_tile() -> None:
    x = np.random.default_rng(0).normal(size=(2, 3, 13, 9)).astype(np.float32)
    for r in (1, 3, 7):
        assert np.allclose(_box_numpy(x, r), _brute_box(x, r), atol=1e-5)


def _square_pair(size: int = 96, lo: int = 30, hi: int = 66, seed: int = 0):
    """A pair whose t2 has a bright square; the map is that square blurred and shifted,
    as an upsampled coarse map draws it."""
    rng = np.random.default_rng(seed)
    t1 = rng.normal(0, 0.05, (1, 3, size, size)).astype(np.float32)
    t2 = t1 + rng.normal(0, 0.05, t1.shape).astype(np.float32)
    t2[..., lo:hi, lo:hi] += 0.8
    truth = np.zeros((size, size), bool)
    truth[lo:hi, lo:hi] = True
    yy, xx = np.mgrid[:size, :size]
    c, half = (lo + hi) / 2 + 3, (hi - lo) / 2 - 4  # shifted 3 px and 4 px too small
    d = np.maximum(np.abs(yy - c), np.abs(xx - c)) - half
    prob = (1 / (1 + np.exp(d / 3)))[None, None].astype(np.float32)
    return t1, t2, prob, truth


def _best_iou(prob: np.ndarray, truth: np.ndarray) -> float:
    """The IoU of the map with the square at the threshold that fits best: how well the
    map's outline follows the square's, whatever its level."""
    return max(float(((prob >= t) & truth).sum() / ((prob >= t) | truth).sum())
               for t in np.linspace(0.05, 0.95, 19))


def test_outline_moves_onto_the_images_edge() -> None:
    t1, t2, prob, truth = _square_pair()
    refined = refine(prob, t1, t2, Refinement(radius=12, eps=0.001, step=4))
    assert _best_iou(prob[0, 0], truth) < 0.75 and _best_iou(refined[0, 0], truth) > 0.95
    assert refined.dtype == np.float32 and refined.min() >= 0.0 and refined.max() <= 1.0
    far = np.ones_like(truth)
    far[10:-10, 10:-10] = False  # away from the square the map stays near zero
    assert refined[0, 0][far].max() < 0.05


def test_flat_images_leave_the_map_as_it_is_and_constants_stay_constant() -> None:
    flat = np.zeros((1, 3, 40, 40), np.float32)
    prob = np.random.default_rng(1).random((1, 1, 40, 40)).astype(np.float32)
    out = guided_filter(np.concatenate([flat, flat], 1), prob, 4, 0.001, 1)
    # no edges to follow: the fit is the window mean of the map (a box blur)
    assert np.allclose(out, _brute_box(_brute_box(prob, 4), 4), atol=1e-5)
    images = np.random.default_rng(2).normal(size=(1, 6, 40, 40)).astype(np.float32)
    assert np.allclose(guided_filter(images, np.full((1, 1, 40, 40), 0.3, np.float32), 4,
                                     0.001, 2), 0.3, atol=1e-5)


@pytest.mark.parametrize("step", [1, 4])
def test_torch_form_matches_numpy(step: int) -> None:
    t1, t2, prob, _ = _square_pair(size=70)
    guide = np.concatenate([t1, t2], 1)
    expected = guided_filter(guide, prob, 9, 0.001, step)
    got = guided_filter(torch.from_numpy(guide), torch.from_numpy(prob), 9, 0.001, step)
    assert isinstance(got, torch.Tensor)
    assert np.allclose(got.numpy(), expected, atol=1e-4)
    # a CPU tensor goes through the numpy form and comes back a tensor
    via = refine(torch.from_numpy(prob), torch.from_numpy(t1), torch.from_numpy(t2),
                 Refinement(9, 0.001, step))
    assert isinstance(via, torch.Tensor) and np.allclose(via.numpy(), expected, atol=1e-6)


def test_no_refinement_returns_the_map_itself() -> None:
    t1, t2, prob, _ = _square_pair(size=40)
    assert refine(prob, t1, t2, None) is prob
    assert refine(prob, t1, t2, Refinement(radius=0)) is prob


def test_run_radius_replaces_the_cards() -> None:
    card = Refinement(radius=12, eps=0.002, step=4)
    assert for_run(card, None) is card and for_run(None, None) is None
    assert for_run(card, 0) is None
    assert for_run(card, 5) == Refinement(5, 0.002, 4)
    assert for_run(None, 6) == Refinement(radius=6)
    for bad in (-1, 65, 2.5):
        with pytest.raises(ParameterError, match="--refine-radius"):
            for_run(card, bad)


def test_the_cards_radius_covers_the_same_ground_on_imagery_read_reduced() -> None:
    card = Refinement(radius=12, eps=0.002, step=4, threshold=0.3)
    # 0.25-m imagery read at half its size by a 0.5-m model: twice the pixels per window
    assert for_run(card, None, 0.5) == Refinement(24, 0.002, 4, 0.3)
    assert for_run(card, None, 0.3).radius == 40  # 0.15 m
    assert for_run(card, None, 0.1).radius == 64  # at most REFINE_RADIUS_MAX
    assert for_run(card, None, 1.0) is card  # read as it is (coarser imagery too)
    assert for_run(card, 12, 0.5).radius == 12  # a radius given is in the imagery's pixels
    assert for_run(card, 0, 0.5) is None and for_run(None, None, 0.5) is None


def test_refined_maps_are_cut_at_their_own_threshold_where_the_card_has_one() -> None:
    card = Refinement(threshold=0.3)
    assert change_threshold(0.4, for_run(card, None)) == 0.3
    assert change_threshold(0.4, for_run(card, 6)) == 0.3  # another radius, still refined
    assert change_threshold(0.4, for_run(card, 0)) == 0.4  # not refined: the raw maps'
    assert change_threshold(0.4, Refinement(radius=0, threshold=0.3)) == 0.4
    assert change_threshold(0.4, for_run(Refinement(), None)) == 0.4  # written without one
    assert change_threshold(0.4, None) == 0.4


def test_card_keeps_the_refinement_and_old_cards_have_none(random_model) -> None:
    from kdmsi_core.checkpoint import read_card

    card = read_card(random_model)
    assert card.refine is None  # written without one
    text = json.loads(card.to_json())
    text["refine"] = Refinement(10, 0.004, 2).to_dict()
    again = ModelCard.from_json(json.dumps(text))
    assert again.refine == Refinement(10, 0.004, 2) and card_problem(again) is None
    del text["refine"]
    assert ModelCard.from_json(json.dumps(text)).refine is None
    text["refine"] = {"radius": 500, "eps": 0.001, "step": 4}
    assert "refinement" in card_problem(ModelCard.from_json(json.dumps(text)))
    text["refine"] = {"radius": 8, "eps": 0.0, "step": 4}
    assert "positive eps" in card_problem(ModelCard.from_json(json.dumps(text)))
    text["refine"] = Refinement(threshold=0.25).to_dict()
    assert ModelCard.from_json(json.dumps(text)).refine.threshold == 0.25
    text["refine"]["threshold"] = 1.5
    assert "refined maps' threshold" in card_problem(ModelCard.from_json(json.dumps(text)))
