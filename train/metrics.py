"""Change-class metrics from a pixel confusion matrix.

Definitions (change = positive class, counted over all evaluated pixels of a split):
precision = TP / (TP + FP), recall = TP / (TP + FN), F1 = 2PR / (P + R),
IoU = TP / (TP + FP + FN), overall accuracy = (TP + TN) / N, and Cohen's kappa =
(OA - pe) / (1 - pe) with pe = ((TP + FP)(TP + FN) + (FN + TN)(FP + TN)) / N^2.
These are the change-class figures, not the two-class mean F1 some papers print.
A ratio whose denominator is zero is reported as 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class Confusion:
    """Pixel counts of the change class; add batches with :meth:`update`."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def update(self, predicted: np.ndarray, truth: np.ndarray) -> None:
        p, t = np.asarray(predicted, bool), np.asarray(truth, bool)
        tp = int(np.count_nonzero(p & t))
        fp = int(np.count_nonzero(p)) - tp
        fn = int(np.count_nonzero(t)) - tp
        self.tp += tp
        self.fp += fp
        self.fn += fn
        self.tn += p.size - tp - fp - fn

    def metrics(self) -> dict[str, float]:
        tp, fp, fn, tn = self.tp, self.fp, self.fn, self.tn
        n = tp + fp + fn + tn

        def ratio(a: float, b: float) -> float:
            return a / b if b else 0.0

        precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
        oa = ratio(tp + tn, n)
        pe = ratio((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn), n * n)
        return {
            "precision": precision,
            "recall": recall,
            "f1": ratio(2 * precision * recall, precision + recall),
            "iou": ratio(tp, tp + fp + fn),
            "overall_accuracy": oa,
            "kappa": ratio(oa - pe, 1 - pe),
        }

    def as_dict(self) -> dict:
        return {**asdict(self), **self.metrics()}
