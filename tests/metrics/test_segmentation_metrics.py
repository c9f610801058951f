import pytest
import torch

from ssl4gie.metrics.segmentation import SegmentationMetricAccumulator, binary_metrics


def mask(rows):
    return torch.tensor(rows, dtype=torch.bool)


def test_hand_computed_case():
    pred = mask([[1, 1, 0], [0, 1, 0]])  # 3 predicted
    target = mask([[1, 0, 0], [0, 1, 1]])  # 3 true, 2 overlap
    m = binary_metrics(pred, target)
    assert m["dice"] == pytest.approx(2 * 2 / 6)
    assert m["iou"] == pytest.approx(2 / 4)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)


def test_empty_vs_empty_scores_one_not_two():
    empty = torch.zeros(4, 4, dtype=torch.bool)
    assert binary_metrics(empty, empty) == {"dice": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0}


def test_empty_prediction_of_a_polyp_scores_zero():
    target = mask([[0, 1], [1, 1]])
    m = binary_metrics(torch.zeros(2, 2, dtype=torch.bool), target)
    assert m == {"dice": 0.0, "iou": 0.0, "precision": 0.0, "recall": 0.0}  # not precision 1 as in the study


def test_false_positives_on_empty_target():
    m = binary_metrics(mask([[1, 0], [0, 0]]), torch.zeros(2, 2, dtype=torch.bool))
    assert m["dice"] == 0.0 and m["precision"] == 0.0 and m["recall"] == 0.0


def test_accumulator_averages_per_image():
    acc = SegmentationMetricAccumulator()
    acc.update(mask([[1, 1]]), mask([[1, 1]]), "a")  # dice 1
    acc.update(mask([[1, 0]]), mask([[0, 1]]), "b")  # dice 0
    means, rows = acc.compute()
    assert means["dice"] == pytest.approx(0.5)
    assert [r["name"] for r in rows] == ["a", "b"]


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        binary_metrics(torch.zeros(2, 2), torch.zeros(3, 2))
