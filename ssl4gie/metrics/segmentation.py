"""Per-image binary segmentation metrics with explicit empty-mask handling.

The study (``Binary_segmentation/Metrics/performance.py``) adds 1e-8 to numerators and denominators, so an
empty prediction of an empty mask scores Dice 2 and any empty prediction scores precision 1. Here a ratio
whose denominator is 0 is defined instead:

* prediction and target both empty: every metric is 1 (a perfect answer);
* otherwise an undefined ratio (precision of an empty prediction, recall of an empty target) is 0, as scikit-learn's
  ``zero_division=0`` — the image holds only mistakes of one kind.

``protocol="study"`` scores instead with the study's smoothed formulas, s = 1e-8:
Dice = 2(|A∩B| + s)/(|A| + |B| + s), IoU = (|A∩B| + s)/(|A| + |B| − |A∩B| + s), precision = (|A∩B| + s)/(|A| + s),
recall = (|A∩B| + s)/(|B| + s), so that the study's numbers can be reproduced (``task.protocol=study``).
"""

from __future__ import annotations

import torch

METRICS = ("dice", "iou", "precision", "recall")
PROTOCOLS = ("ssl4gie", "study")  # task.protocol: ours (explicit empty-mask rules) or the study's smoothing
STUDY_SMOOTH = 1e-8  # the study's ``smooth`` of every ratio (Binary_segmentation/Metrics)


def _ratio(num: int, den: int) -> float:
    return num / den if den else 0.0


def check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")


def binary_metrics(pred: torch.Tensor, target: torch.Tensor, protocol: str = "ssl4gie") -> dict[str, float]:
    """Dice, IoU, precision and recall of two boolean masks of the same shape, by ``protocol`` (module doc)."""
    check_protocol(protocol)
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    pred, target = pred.bool(), target.bool()
    tp = int((pred & target).sum())
    n_pred, n_true = int(pred.sum()), int(target.sum())
    if protocol == "study":
        s = STUDY_SMOOTH  # in float64; the study's float32 differs by rounding only
        return {
            "dice": 2 * (tp + s) / (n_pred + n_true + s),
            "iou": (tp + s) / (n_pred + n_true - tp + s),
            "precision": (tp + s) / (n_pred + s),
            "recall": (tp + s) / (n_true + s),
        }
    if n_pred == 0 and n_true == 0:
        return dict.fromkeys(METRICS, 1.0)
    return {
        "dice": _ratio(2 * tp, n_pred + n_true),
        "iou": _ratio(tp, n_pred + n_true - tp),
        "precision": _ratio(tp, n_pred),
        "recall": _ratio(tp, n_true),
    }


class SegmentationMetricAccumulator:
    """Collects per-image metrics (by ``protocol``, see :func:`binary_metrics`); ``compute`` returns their means
    (no pooling over images, as the study)."""

    def __init__(self, protocol: str = "ssl4gie") -> None:
        check_protocol(protocol)
        self.protocol = protocol
        self.rows: list[dict] = []

    def reset(self) -> None:
        self.rows = []

    def update(self, pred: torch.Tensor, target: torch.Tensor, name: str) -> dict[str, float]:
        row = {"name": name, **binary_metrics(pred, target, self.protocol)}
        self.rows.append(row)
        return row

    def compute(self) -> tuple[dict[str, float], list[dict]]:
        if not self.rows:
            return {}, []
        means = {m: sum(r[m] for r in self.rows) / len(self.rows) for m in METRICS}
        return means, list(self.rows)
