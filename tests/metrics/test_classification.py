"""Hand-computed checks of the confusion matrix and the macro metrics' zero-division rules."""

import numpy as np
import pytest
import torch

from ssl4gie.metrics.classification import classification_metrics, confusion_matrix


def test_confusion_matrix_rows_are_true_columns_predicted():
    matrix = confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], num_classes=3)
    expected = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    np.testing.assert_array_equal(matrix, expected)


def test_confusion_matrix_accepts_tensors_and_rejects_out_of_range_ids():
    matrix = confusion_matrix(torch.tensor([1, 1]), torch.tensor([0, 1]), num_classes=2)
    np.testing.assert_array_equal(matrix, [[0, 0], [1, 1]])
    with pytest.raises(ValueError, match=r"num_classes=2"):
        confusion_matrix([0, 2], [0, 1], num_classes=2)
    with pytest.raises(ValueError, match="must match"):
        confusion_matrix([0, 1], [0], num_classes=2)


# Class 2 is absent from y_true and never predicted.
#   class 0: support 2, predicted 2, tp 1 -> P = R = F1 = 1/2
#   class 1: support 3, predicted 3, tp 2 -> P = R = F1 = 2/3
Y_TRUE = [0, 0, 1, 1, 1]
Y_PRED = [0, 1, 1, 1, 0]


def test_absent_unpredicted_class_is_left_out_of_the_macro_mean():
    metrics, table = classification_metrics(Y_TRUE, Y_PRED, num_classes=3, class_names=["a", "b", "c"])
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["n_classes_scored"] == 2
    assert metrics["f1"] == pytest.approx((1 / 2 + 2 / 3) / 2)  # 7/12, not the study's (1/2 + 2/3 + 2)/3
    assert metrics["precision"] == pytest.approx(7 / 12)
    assert metrics["recall"] == pytest.approx(7 / 12)
    assert list(table["class"]) == ["a", "b", "c"]
    assert list(table["support"]) == [2, 3, 0]
    assert list(table["predicted"]) == [2, 3, 0]
    assert list(table["tp"]) == [1, 2, 0]
    assert list(table["scored"]) == [True, True, False]
    assert table.loc[2, ["precision", "recall", "f1"]].tolist() == [0.0, 0.0, 0.0]


def test_average_over_all_counts_absent_classes_as_zero():
    metrics, _ = classification_metrics(Y_TRUE, Y_PRED, num_classes=3, average_over="all")
    assert metrics["n_classes_scored"] == 3
    assert metrics["f1"] == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)  # 7/18
    assert metrics["accuracy"] == pytest.approx(3 / 5)


def test_class_absent_but_predicted_scores_zero_and_counts():
    # class 0: support 2, predicted 1, tp 1 -> P 1, R 1/2, F1 2/3
    # class 1: support 1, predicted 1, tp 1 -> 1, 1, 1
    # class 2: support 0, predicted 1, tp 0 -> 0, 0, 0 (its prediction is wrong; it enters the mean)
    metrics, table = classification_metrics([0, 0, 1], [0, 2, 1], num_classes=3)
    assert metrics["n_classes_scored"] == 3
    assert metrics["f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert metrics["precision"] == pytest.approx(2 / 3)
    assert metrics["recall"] == pytest.approx(1 / 2)
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert table.loc[2, "f1"] == 0.0
    assert table.loc[0, "f1"] == pytest.approx(2 / 3)


def test_present_but_never_predicted_class_has_zero_precision():
    metrics, table = classification_metrics([0, 1], [0, 0], num_classes=2)
    assert table.loc[1, ["precision", "recall", "f1"]].tolist() == [0.0, 0.0, 0.0]
    assert table.loc[0, "precision"] == pytest.approx(1 / 2)
    assert metrics["f1"] == pytest.approx((2 / 3 + 0) / 2)


def test_perfect_predictions_score_one():
    metrics, _ = classification_metrics([2, 0, 1, 2], [2, 0, 1, 2], num_classes=4)
    assert metrics == {"accuracy": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0, "n_classes_scored": 3.0}


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="average_over"):
        classification_metrics([0], [0], num_classes=1, average_over="some")
    with pytest.raises(ValueError, match="class_names"):
        classification_metrics([0], [0], num_classes=2, class_names=["only-one"])
    with pytest.raises(ValueError, match="empty"):
        classification_metrics([], [], num_classes=2)


# ----------------------------------------- protocol=study (the study's Classification/Metrics/performance.py)
def study_formulas(y_true, y_pred, n_class: int) -> dict[str, float]:
    """The study's macro metrics over all n_class classes with s = 1e-8, written out independently."""
    s = 1e-8
    t, p = np.asarray(y_true), np.asarray(y_pred)
    f1 = prec = rec = 0.0
    for c in range(n_class):
        tp, n_p, n_t = float(((p == c) & (t == c)).sum()), float((p == c).sum()), float((t == c).sum())
        f1 += 2 * (tp + s) / (n_p + n_t + s)
        prec += (tp + s) / (n_p + s)
        rec += (tp + s) / (n_t + s)
    return {
        "f1": f1 / n_class,
        "precision": prec / n_class,
        "recall": rec / n_class,
        "accuracy": float((t == p).mean()),
    }


@pytest.mark.parametrize(
    "y_true, y_pred, n_class",
    [
        ([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], 3),
        ([0, 0, 1, 1], [0, 1, 1, 1], 4),  # classes 2 and 3 absent and never predicted
        ([0, 0, 1, 1], [0, 3, 1, 1], 4),  # class 3 absent but predicted once
        ([2, 2, 2], [2, 2, 2], 3),
    ],
)
def test_study_protocol_equals_the_studys_formulas(y_true, y_pred, n_class):
    metrics, table = classification_metrics(y_true, y_pred, n_class, average_over="all", protocol="study")
    expected = study_formulas(y_true, y_pred, n_class)
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, rel=1e-12), key
    assert metrics["n_classes_scored"] == n_class
    assert table["scored"].all()


def test_an_absent_never_predicted_class_scores_f1_two_under_study_only():
    _, study = classification_metrics([0, 1], [0, 1], 3, average_over="all", protocol="study")
    assert study.loc[2, "f1"] == pytest.approx(2.0)
    assert study.loc[2, "precision"] == pytest.approx(1.0) and study.loc[2, "recall"] == pytest.approx(1.0)
    _, ours = classification_metrics([0, 1], [0, 1], 3, average_over="all")
    assert ours.loc[2, "f1"] == 0.0


def test_study_protocol_refuses_averaging_over_present_classes_only():
    with pytest.raises(ValueError, match="average_over must be 'all'"):
        classification_metrics([0, 1], [0, 1], 3, average_over="present", protocol="study")
    with pytest.raises(ValueError, match="protocol must be one of"):
        classification_metrics([0, 1], [0, 1], 3, protocol="sklearn")
