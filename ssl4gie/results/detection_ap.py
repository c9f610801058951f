"""COCO box mAP of any multiset of test images, from a matching computed once per image.

The bootstrap recomputes mAP on thousands of resamples of the test images. pycocotools (what the run itself
scores with, through torchmetrics) re-matches every image on every call, which takes about a second per resample
on a few hundred images; but COCO's matching is *per image and class* (greedy by score, best unmatched box at or
above each IoU threshold), so it can be done once. A resample is then a weight per image (how often it was
drawn), and AP a weighted cumulative sum over the detections sorted by score. Written here because no library
exposes COCO's accumulation step on precomputed matches; :mod:`tests.results.test_bootstrap` checks it against
``ssl4gie.metrics.detection.DetectionMetricAccumulator`` on random boxes and resampled image lists.

Follows ``pycocotools.cocoeval`` with ``iouType="bbox"``, area range "all", ``maxDets=100``: IoU thresholds
0.50:0.05:0.95, 101 recall points, precision made monotone from the right, classes without a ground-truth box
left out of the mean. No crowd boxes (the datasets have none). One difference: detections of different images
with exactly equal scores are ordered by image position, not by their position in the resample (no effect on
real float scores; copies of one image are always adjacent, which changes no interpolated precision).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
MAX_DETS = 100  # per image and class, as COCO's largest maxDets
KEYS = ("map", "map_50", "map_75")


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (len(a) × len(b)) of xyxy boxes, COCO's convention (width = x1 - x0, no +1)."""
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_image(pred_boxes: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
    """COCO's greedy matching of one image and class: ``tp[d, t]`` for detections already sorted by score.

    Each detection, best score first, takes the unmatched ground-truth box of highest IoU that reaches the
    threshold (pycocotools ``evaluateImg``: a later box of equal IoU wins the tie).
    """
    tp = np.zeros((len(pred_boxes), len(IOU_THRESHOLDS)), dtype=bool)
    if len(pred_boxes) == 0 or len(gt_boxes) == 0:
        return tp
    ious = box_iou(pred_boxes, gt_boxes)
    for t, threshold in enumerate(IOU_THRESHOLDS):
        taken = np.zeros(len(gt_boxes), dtype=bool)
        for d in range(len(pred_boxes)):
            best, match = min(threshold, 1 - 1e-10), -1
            for g in range(len(gt_boxes)):
                if taken[g] or ious[d, g] < best:
                    continue
                best, match = ious[d, g], g
            if match >= 0:
                taken[match], tp[d, t] = True, True
    return tp


class DetectionMatches:
    """Every image's matches, computed once; :meth:`score` gives COCO mAP of any multiset of the images.

    Per image ``i``: ``gt_boxes[i]`` (G×4 xyxy), ``pred_boxes[i]`` (K×4 xyxy, the frame of the ground truth),
    ``pred_scores[i]`` (K); optional ``gt_labels[i]`` / ``pred_labels[i]`` (ints; absent: one class).
    """

    def __init__(
        self,
        gt_boxes: Sequence[np.ndarray],
        pred_boxes: Sequence[np.ndarray],
        pred_scores: Sequence[np.ndarray],
        gt_labels: Sequence[np.ndarray] | None = None,
        pred_labels: Sequence[np.ndarray] | None = None,
    ) -> None:
        n = len(gt_boxes)
        if not (len(pred_boxes) == len(pred_scores) == n):
            raise ValueError(
                f"{n} ground-truth lists but {len(pred_boxes)} box and {len(pred_scores)} score lists"
            )
        zeros = [np.zeros(len(b), dtype=np.int64) for b in gt_boxes]
        gt_labels = gt_labels if gt_labels is not None else zeros
        pred_labels = (
            pred_labels if pred_labels is not None else [np.zeros(len(b), np.int64) for b in pred_boxes]
        )
        classes = sorted({int(c) for labels in (*gt_labels, *pred_labels) for c in np.asarray(labels)})
        self.n_images = n
        # per class: gt count per image; detections (image, score, tp[T]) in the order pycocotools sorts them
        self.classes: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
        for c in classes:
            n_gt = np.zeros(n, dtype=np.int64)
            images, scores, tps = [], [], []
            for i in range(n):
                gt = np.asarray(gt_boxes[i], dtype=np.float64).reshape(-1, 4)[np.asarray(gt_labels[i]) == c]
                keep = np.asarray(pred_labels[i]) == c
                boxes = np.asarray(pred_boxes[i], dtype=np.float64).reshape(-1, 4)[keep]
                score = np.asarray(pred_scores[i], dtype=np.float64).reshape(-1)[keep]
                order = np.argsort(-score, kind="mergesort")[:MAX_DETS]
                n_gt[i] = len(gt)
                images.append(np.full(len(order), i))
                scores.append(score[order])
                tps.append(match_image(boxes[order], gt))
            image, score, tp = np.concatenate(images), np.concatenate(scores), np.concatenate(tps)
            order = np.argsort(-score, kind="mergesort")  # stable: equal scores keep image order
            self.classes[c] = (n_gt, image[order], score[order], tp[order])

    def precision(self, weights: np.ndarray) -> np.ndarray:
        """COCO's interpolated precision (T × R × classes), -1 where a class has no ground truth."""
        weights = np.asarray(weights, dtype=np.float64)
        out = -np.ones((len(IOU_THRESHOLDS), len(RECALL_POINTS), len(self.classes)))
        for k, (n_gt, image, _, tp) in enumerate(self.classes.values()):
            n_positive = float(weights @ n_gt)
            if n_positive == 0:
                continue
            w = weights[image]
            drawn = w > 0
            w, hits = w[drawn, None], tp[drawn]
            tp_sum = np.cumsum(w * hits, axis=0)
            fp_sum = np.cumsum(w * ~hits, axis=0)
            q = np.zeros((len(IOU_THRESHOLDS), len(RECALL_POINTS)))
            if len(w):
                recall = tp_sum / n_positive
                precision = tp_sum / (tp_sum + fp_sum + np.spacing(1))
                precision = np.maximum.accumulate(precision[::-1], axis=0)[::-1]  # monotone from the right
                for t in range(len(IOU_THRESHOLDS)):
                    found = np.searchsorted(recall[:, t], RECALL_POINTS, side="left")
                    valid = found < len(recall)
                    q[t, valid] = precision[found[valid], t]
            out[:, :, k] = q
        return out

    def score(self, weights: np.ndarray | None = None) -> dict[str, float]:
        """``map``, ``map_50``, ``map_75`` with image ``i`` counted ``weights[i]`` times (default once each);
        NaN when the weighted images hold no ground-truth box (torchmetrics' -1)."""
        weights = np.ones(self.n_images) if weights is None else weights
        p = self.precision(weights)

        def mean(values: np.ndarray) -> float:
            scored = values[values > -1]
            return float(scored.mean()) if scored.size else math.nan

        return {"map": mean(p), "map_50": mean(p[0]), "map_75": mean(p[5])}
