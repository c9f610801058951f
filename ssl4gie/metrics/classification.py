"""Confusion matrix and macro classification metrics with explicit zero-division handling.

The study's ``Classification/Metrics/performance.py`` smoothed every ratio as (TP + 1e-8) / (count + 1e-8), so
a class absent from the test split and never predicted scored F1 = 2 and precision = recall = 1, inflating the
macro averages. Here every ratio with a zero denominator is 0, as scikit-learn does with ``zero_division=0``,
and the macro average by default skips classes that have nothing to be scored on. ``protocol="study"``
reproduces the study's smoothed formulas instead (``task.protocol=study``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch

ArrayLike = np.ndarray | torch.Tensor | Sequence[int]

_AVERAGE_OVER = ("present", "all")
PROTOCOLS = ("ssl4gie", "study")  # task.protocol: explicit zero division (ours) or the study's smoothing
STUDY_SMOOTH = 1e-8  # the study's ``smooth`` (Classification/Metrics)


def _as_labels(values: ArrayLike, name: str, num_classes: int) -> np.ndarray:
    """Return ``values`` as a flat int64 array, checking every label lies in ``[0, num_classes)``."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values).reshape(-1)
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name} must hold integer class ids, got dtype {array.dtype}")
    array = array.astype(np.int64)
    if array.size and (array.min() < 0 or array.max() >= num_classes):
        raise ValueError(
            f"{name} holds class ids in [{array.min()}, {array.max()}] but num_classes={num_classes}: "
            f"ids must lie in [0, {num_classes - 1}]"
        )
    return array


def _safe_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Element-wise ``numerator / denominator`` with 0 wherever the denominator is 0."""
    out = np.zeros(numerator.shape, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def confusion_matrix(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int) -> np.ndarray:
    """Count matrix of shape ``(num_classes, num_classes)``: rows are true classes, columns predicted ones.

    ``y_true`` and ``y_pred`` are equally long sequences (lists, numpy arrays or tensors) of integer class ids
    in ``[0, num_classes)``; anything else raises ``ValueError``/``TypeError``.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    true = _as_labels(y_true, "y_true", num_classes)
    pred = _as_labels(y_pred, "y_pred", num_classes)
    if true.shape != pred.shape:
        raise ValueError(f"y_true has {true.size} labels but y_pred has {pred.size}; they must match")
    counts = np.bincount(true * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def classification_metrics(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    num_classes: int,
    class_names: Sequence[str] | None = None,
    *,
    average_over: Literal["present", "all"] = "present",
    protocol: Literal["ssl4gie", "study"] = "ssl4gie",
) -> tuple[dict[str, float], pd.DataFrame]:
    """Overall accuracy and macro precision / recall / F1, plus a per-class table.

    Per class c, with support T_c (true count), P_c (predicted count) and TP_c:

    * precision_c = TP_c / P_c, and 0 when P_c == 0;
    * recall_c = TP_c / T_c, and 0 when T_c == 0;
    * f1_c = 2 TP_c / (T_c + P_c), and 0 when both are 0 (equal to the harmonic mean of the two above
      whenever that is defined).

    ``average_over`` chooses the classes the macro mean runs over:

    * ``"present"`` (default): classes that occur in ``y_true`` **or** ``y_pred`` (scikit-learn's default
      label set). A class absent from the evaluated split and never predicted has no evidence either way, so
      it neither helps (the study scored it F1 = 2) nor hurts (scoring it 0 would punish a model for a
      split that lacks the class). A class absent from ``y_true`` but predicted still counts, with
      precision 0 and F1 0: those predictions are all wrong.
    * ``"all"``: every one of the ``num_classes`` classes; absent ones contribute 0 to every mean.

    ``protocol="study"`` (needs ``average_over="all"``, the study's mean over every class) replaces the three
    ratios by the study's smoothed ones (``Metrics/performance.py``), s = 1e-8:
    precision_c = (TP_c + s)/(P_c + s), recall_c = (TP_c + s)/(T_c + s), f1_c = 2(TP_c + s)/(P_c + T_c + s);
    an absent, never-predicted class scores F1 = 2. Accuracy is the same under both.

    Returns ``(metrics, table)``. ``metrics`` has ``accuracy`` (fraction of correct predictions), ``precision``,
    ``recall``, ``f1`` (macro means) and ``n_classes_scored`` (how many classes the means ran over, as a
    float). ``table`` has one row per class with columns ``class_id``, ``class``, ``support``, ``predicted``,
    ``tp``, ``precision``, ``recall``, ``f1`` and ``scored`` (whether the class entered the macro means).
    Empty inputs raise ``ValueError``.
    """
    if average_over not in _AVERAGE_OVER:
        raise ValueError(f"average_over must be one of {_AVERAGE_OVER}, got {average_over!r}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if protocol == "study" and average_over != "all":
        raise ValueError("protocol='study' averages over all classes: average_over must be 'all'")
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"class_names has {len(class_names)} entries but num_classes={num_classes}")
    matrix = confusion_matrix(y_true, y_pred, num_classes)
    total = int(matrix.sum())
    if total == 0:
        raise ValueError("classification_metrics got no labels: y_true and y_pred are empty")

    tp = np.diag(matrix)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    if protocol == "study":
        smooth = STUDY_SMOOTH
        precision = (tp + smooth) / (predicted + smooth)
        recall = (tp + smooth) / (support + smooth)
        f1 = 2 * (tp + smooth) / (predicted + support + smooth)
    else:
        precision = _safe_ratio(tp, predicted)
        recall = _safe_ratio(tp, support)
        f1 = _safe_ratio(2 * tp, support + predicted)
    scored = (support + predicted) > 0 if average_over == "present" else np.ones(num_classes, dtype=bool)

    names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
    table = pd.DataFrame(
        {
            "class_id": np.arange(num_classes),
            "class": names,
            "support": support,
            "predicted": predicted,
            "tp": tp,
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "scored": scored,
        }
    )
    metrics = {
        "accuracy": float(tp.sum() / total),
        "precision": float(precision[scored].mean()),
        "recall": float(recall[scored].mean()),
        "f1": float(f1[scored].mean()),
        "n_classes_scored": float(scored.sum()),
    }
    return metrics, table
