import numpy as np
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


# ------------------------------------ protocol=study (the study's Binary_segmentation/Metrics/performance.py)
def study_formulas(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """The study's smoothed per-image ratios, written out independently in numpy."""
    s = 1e-8
    a, b = pred.astype(bool), target.astype(bool)
    inter, n_a, n_b = float((a & b).sum()), float(a.sum()), float(b.sum())
    return {
        "dice": 2 * (inter + s) / (n_a + n_b + s),
        "iou": (inter + s) / (n_a + n_b - inter + s),
        "precision": (inter + s) / (n_a + s),
        "recall": (inter + s) / (n_b + s),
    }


STUDY_CASES = {
    "overlap": ([[1, 1, 0], [0, 1, 0]], [[1, 0, 0], [0, 1, 1]]),
    "empty vs empty": ([[0, 0], [0, 0]], [[0, 0], [0, 0]]),
    "empty prediction of a polyp": ([[0, 0], [0, 0]], [[0, 1], [1, 1]]),
    "prediction on an empty mask": ([[1, 0], [0, 0]], [[0, 0], [0, 0]]),
    "disjoint": ([[1, 0], [0, 0]], [[0, 0], [0, 1]]),
}


@pytest.mark.parametrize("case", STUDY_CASES)
def test_study_protocol_equals_the_studys_formulas(case):
    pred, target = (np.array(x, dtype=bool) for x in STUDY_CASES[case])
    got = binary_metrics(torch.from_numpy(pred), torch.from_numpy(target), protocol="study")
    expected = study_formulas(pred, target)
    assert got == pytest.approx(expected, rel=1e-12)


def test_empty_vs_empty_scores_two_under_study_one_under_ssl4gie():
    empty = torch.zeros(4, 4, dtype=torch.bool)
    assert binary_metrics(empty, empty, protocol="study")["dice"] == pytest.approx(2.0)
    assert binary_metrics(empty, empty, protocol="study")["iou"] == pytest.approx(1.0)
    assert binary_metrics(empty, empty)["dice"] == 1.0


def test_study_accumulator_means_the_studys_per_image_scores():
    acc = SegmentationMetricAccumulator("study")
    for pred, target in STUDY_CASES.values():
        acc.update(torch.tensor(pred, dtype=torch.bool), torch.tensor(target, dtype=torch.bool), "x")
    means, rows = acc.compute()
    assert len(rows) == len(STUDY_CASES)
    expected = [study_formulas(np.array(p), np.array(t)) for p, t in STUDY_CASES.values()]
    for key in ("dice", "iou", "precision", "recall"):
        assert means[key] == pytest.approx(np.mean([e[key] for e in expected]), rel=1e-12)


def test_an_unknown_protocol_is_refused():
    with pytest.raises(ValueError, match="protocol must be one of"):
        binary_metrics(torch.zeros(1, 1, dtype=torch.bool), torch.zeros(1, 1, dtype=torch.bool), protocol="x")
