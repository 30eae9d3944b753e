import numpy as np
import pytest

from kdmsi_train import threshold


def test_otsu_separates_two_modes():
    rng = np.random.default_rng(0)
    h = threshold.Histograms()
    background = np.clip(rng.normal(0.1, 0.03, 9000), 0, 1)
    change = np.clip(rng.normal(0.7, 0.05, 1000), 0, 1)
    h.update(np.concatenate([background, change])[None, :, None], np.array([1]))
    t = threshold.otsu(h.changed)
    assert 0.25 < t < 0.55


def test_false_alarm_quantile_dominates_when_negatives_are_noisy():
    h = threshold.Histograms()
    ramp = np.linspace(0, 0.8, 10000)
    h.update(ramp[None, :, None], np.array([0]))
    h.update(np.array([0.0, 0.05, 0.9, 0.95])[None, :, None], np.array([1]))
    t = threshold.calibrate(h)
    assert t == pytest.approx(0.8 * (1 - threshold.FALSE_ALARM), abs=2e-3)
    flagged = np.mean(ramp > t)
    assert flagged <= threshold.FALSE_ALARM + 1e-3


def test_threshold_is_clipped():
    h = threshold.Histograms()
    h.update(np.zeros((1, 10, 10)), np.array([0]))
    assert threshold.calibrate(h) == threshold.T_MIN
