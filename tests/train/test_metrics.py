import numpy as np
import pytest

from kdmsi_train.metrics import Confusion


def test_hand_computed_confusion_matrix():
    truth = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], bool)
    pred = np.array([1, 1, 1, 0, 1, 1, 0, 0, 0, 0], bool)
    c = Confusion()
    c.update(pred[:4], truth[:4])
    c.update(pred[4:], truth[4:])
    assert (c.tp, c.fp, c.fn, c.tn) == (3, 2, 1, 4)
    m = c.metrics()
    assert m["precision"] == pytest.approx(3 / 5)
    assert m["recall"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    assert m["iou"] == pytest.approx(3 / 6)
    assert m["overall_accuracy"] == pytest.approx(0.7)
    pe = (5 * 4 + 5 * 6) / 100
    assert m["kappa"] == pytest.approx((0.7 - pe) / (1 - pe))


def test_degenerate_cases_are_zero_not_nan():
    c = Confusion()
    c.update(np.zeros((4, 4), bool), np.zeros((4, 4), bool))
    m = c.metrics()
    assert m["f1"] == 0 and m["precision"] == 0 and m["overall_accuracy"] == 1
    assert not any(np.isnan(v) for v in m.values())
