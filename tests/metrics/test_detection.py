"""mAP on boxes whose IoU with the ground truth is known exactly."""

import json
import math

import pytest
import torch

from ssl4gie.metrics.detection import DetectionMetricAccumulator

GT = torch.tensor([[0.0, 0.0, 10.0, 10.0]])  # area 100


def _pred(boxes, scores=None):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    scores = torch.full((len(boxes),), 0.9) if scores is None else torch.tensor(scores)
    return {"boxes": boxes, "scores": scores, "labels": torch.ones(len(boxes), dtype=torch.long)}


def _target(boxes=GT):
    return {"boxes": boxes, "labels": torch.ones(len(boxes), dtype=torch.long)}


def _evaluate(preds, targets):
    accumulator = DetectionMetricAccumulator()
    accumulator.update(preds, targets, [f"img{i}" for i in range(len(preds))])
    return accumulator.compute()


def test_perfect_boxes_score_one():
    metrics, rows = _evaluate(
        [_pred([[0, 0, 10, 10]]), _pred([[5, 5, 20, 25]])],
        [_target(), _target(torch.tensor([[5.0, 5, 20, 25]]))],
    )
    assert metrics == {"map": 1.0, "map_50": 1.0, "map_75": 1.0}
    summary = {k: rows[0][k] for k in ("name", "n_gt", "n_pred", "mean_best_iou")}
    assert summary == {"name": "img0", "n_gt": 1, "n_pred": 1, "mean_best_iou": 1.0}
    # every box, for the bootstrap's recomputed mAP (ssl4gie.results --ci)
    assert json.loads(rows[0]["gt_boxes"]) == [[0.0, 0.0, 10.0, 10.0]]
    assert json.loads(rows[1]["pred_boxes"]) == [[5.0, 5.0, 20.0, 25.0]]
    assert json.loads(rows[0]["pred_labels"]) == [1] and len(json.loads(rows[0]["pred_scores"])) == 1


@pytest.mark.parametrize(
    ("height", "expected_map"),
    [
        # IoU 0.58 matches thresholds 0.50, 0.55 -> AP 1 at 2 of 10 thresholds
        (5.8, 0.2),
        # IoU 0.72 matches 0.50 ... 0.70 -> 5 of 10
        (7.2, 0.5),
        # IoU exactly 0.6: COCO matches IoU >= t, but torchmetrics builds its thresholds in float32 and
        # 0.6 in float32 is 0.6000000238 > 0.6, so 0.60 is missed and the result is also 2/10.
        (6.0, 0.2),
    ],
)
def test_partial_overlap_counts_the_matched_thresholds(height, expected_map):
    metrics, rows = _evaluate([_pred([[0, 0, 10, height]])], [_target()])
    assert metrics["map_50"] == pytest.approx(1.0)
    assert metrics["map_75"] == pytest.approx(0.0)
    assert metrics["map"] == pytest.approx(expected_map)
    assert rows[0]["mean_best_iou"] == pytest.approx(height / 10)


def test_no_predictions_score_zero():
    metrics, rows = _evaluate([_pred([])], [_target()])
    assert metrics == {"map": 0.0, "map_50": 0.0, "map_75": 0.0}
    assert {k: rows[0][k] for k in ("name", "n_gt", "n_pred", "mean_best_iou")} == {
        "name": "img0",
        "n_gt": 1,
        "n_pred": 0,
        "mean_best_iou": 0.0,
    }
    assert rows[0]["pred_boxes"] == "[]"


def test_no_ground_truth_gives_nan_not_minus_one():
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    metrics, rows = _evaluate([_pred([[0, 0, 10, 10]])], [empty])
    assert all(math.isnan(v) for v in metrics.values())
    assert math.isnan(rows[0]["mean_best_iou"])


def test_low_score_predictions_do_not_count_for_best_iou_and_reset_clears():
    accumulator = DetectionMetricAccumulator(score_threshold=0.5)
    accumulator.update([_pred([[0, 0, 10, 10], [0, 0, 10, 5]], scores=[0.2, 0.8])], [_target()], ["x"])
    _, rows = accumulator.compute()
    assert rows[0]["n_pred"] == 2
    assert rows[0]["mean_best_iou"] == pytest.approx(0.5)
    accumulator.reset()
    with pytest.raises(RuntimeError, match="before any update"):
        accumulator.compute()


def test_bad_inputs_are_named():
    accumulator = DetectionMetricAccumulator()
    with pytest.raises(ValueError, match="one length"):
        accumulator.update([_pred([])], [_target()], ["a", "b"])
    with pytest.raises(KeyError, match="scores"):
        accumulator.update([{"boxes": GT, "labels": torch.ones(1, dtype=torch.long)}], [_target()], ["a"])
