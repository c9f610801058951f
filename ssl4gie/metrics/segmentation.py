"""Per-image binary segmentation metrics (SPEC 6.3) with explicit empty-mask handling.

The study adds 1e-8 to numerators and denominators, so an empty prediction of an empty mask scores Dice 2 and any
empty prediction scores precision 1. Here a ratio whose denominator is 0 is defined instead:

* prediction and target both empty: every metric is 1 (a perfect answer);
* otherwise an undefined ratio (precision of an empty prediction, recall of an empty target) is 0, as scikit-learn's
  ``zero_division=0`` — the image holds only mistakes of one kind.
"""

from __future__ import annotations

import torch

METRICS = ("dice", "iou", "precision", "recall")


def _ratio(num: int, den: int) -> float:
    return num / den if den else 0.0


def binary_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Dice, IoU, precision and recall of two boolean masks of the same shape."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    pred, target = pred.bool(), target.bool()
    tp = int((pred & target).sum())
    n_pred, n_true = int(pred.sum()), int(target.sum())
    if n_pred == 0 and n_true == 0:
        return dict.fromkeys(METRICS, 1.0)
    return {
        "dice": _ratio(2 * tp, n_pred + n_true),
        "iou": _ratio(tp, n_pred + n_true - tp),
        "precision": _ratio(tp, n_pred),
        "recall": _ratio(tp, n_true),
    }


class SegmentationMetricAccumulator:
    """Collects per-image metrics; ``compute`` returns their means (no pooling over images, as the study)."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def reset(self) -> None:
        self.rows = []

    def update(self, pred: torch.Tensor, target: torch.Tensor, name: str) -> dict[str, float]:
        row = {"name": name, **binary_metrics(pred, target)}
        self.rows.append(row)
        return row

    def compute(self) -> tuple[dict[str, float], list[dict]]:
        if not self.rows:
            return {}, []
        means = {m: sum(r[m] for r in self.rows) / len(self.rows) for m in METRICS}
        return means, list(self.rows)
