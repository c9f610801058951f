"""COCO-style box mAP over a split (torchmetrics + pycocotools, as the study) and per-image diagnostics."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics.detection import MeanAveragePrecision
from torchvision.ops import box_iou

MAP_KEYS = ("map", "map_50", "map_75")


def _detached(item: dict[str, Tensor], keys: Sequence[str], where: str) -> dict[str, Tensor]:
    """CPU copies of ``keys`` of one image's dict, with a clear error if a key is missing."""
    missing = [k for k in keys if k not in item]
    if missing:
        raise KeyError(f"{where} dict lacks {missing}; expected keys {list(keys)}")
    return {k: item[k].detach().cpu() for k in keys}


class DetectionMetricAccumulator:
    """Mean average precision (COCO protocol, boxes in xyxy pixels) with ``reset / update / compute``.

    Wraps ``torchmetrics.detection.MeanAveragePrecision(box_format="xyxy", iou_type="bbox",
    backend="pycocotools")``: ``map`` averages AP over IoU thresholds 0.50:0.05:0.95, ``map_50`` and ``map_75``
    are AP at one threshold. torchmetrics reports -1 when there is no ground-truth box at all; we return NaN
    instead so that the value cannot be mistaken for a score.

    Per image it also records ``n_gt``, ``n_pred`` and ``mean_best_iou``: for each ground-truth box the highest
    IoU with any prediction scored >= ``score_threshold``, averaged over the image's boxes (0 when there is no
    such prediction, NaN when the image has no ground truth).

    Args:
        score_threshold: minimum score of the predictions considered by ``mean_best_iou`` (mAP uses them all).
    """

    def __init__(self, score_threshold: float = 0.5) -> None:
        self.score_threshold = float(score_threshold)
        # sync_on_compute=False: the split is evaluated by one process (rank 0 under DDP); torchmetrics would
        # otherwise wait in compute() for the other ranks to gather their (absent) states, forever.
        self._map = MeanAveragePrecision(
            box_format="xyxy", iou_type="bbox", backend="pycocotools", sync_on_compute=False
        )
        self._rows: list[dict[str, float | str]] = []

    def reset(self) -> None:
        """Forget every image seen so far."""
        self._map.reset()
        self._rows = []

    @torch.no_grad()
    def update(
        self, preds: Sequence[dict[str, Tensor]], targets: Sequence[dict[str, Tensor]], names: Sequence[str]
    ) -> None:
        """Add one batch: per image, ``preds[i]`` has ``boxes`` (K×4 xyxy), ``scores`` (K), ``labels`` (K) and
        ``targets[i]`` has ``boxes`` (G×4 xyxy) and ``labels`` (G), in the same pixel frame."""
        if not (len(preds) == len(targets) == len(names)):
            raise ValueError(
                f"preds ({len(preds)}), targets ({len(targets)}) and names ({len(names)}) must have one length"
            )
        preds = [_detached(p, ("boxes", "scores", "labels"), "prediction") for p in preds]
        targets = [_detached(t, ("boxes", "labels"), "target") for t in targets]
        self._map.update(preds, targets)
        for pred, target, name in zip(preds, targets, names, strict=True):
            self._rows.append(
                {
                    "name": str(name),
                    "n_gt": len(target["boxes"]),
                    "n_pred": len(pred["boxes"]),
                    "mean_best_iou": self._mean_best_iou(pred, target),
                    # every box at full precision, so that mAP can be recomputed on resampled images
                    # (ssl4gie.results --ci)
                    "gt_boxes": json.dumps(target["boxes"].tolist()),
                    "gt_labels": json.dumps(target["labels"].tolist()),
                    "pred_boxes": json.dumps(pred["boxes"].tolist()),
                    "pred_scores": json.dumps(pred["scores"].tolist()),
                    "pred_labels": json.dumps(pred["labels"].tolist()),
                }
            )

    def _mean_best_iou(self, pred: dict[str, Tensor], target: dict[str, Tensor]) -> float:
        gt_boxes = target["boxes"].float()
        if len(gt_boxes) == 0:
            return math.nan
        kept = pred["boxes"][pred["scores"] >= self.score_threshold].float()
        if len(kept) == 0:
            return 0.0
        return float(box_iou(gt_boxes, kept).max(dim=1).values.mean())

    def compute(self) -> tuple[dict[str, float], list[dict[str, float | str]]]:
        """Returns ``(metrics, rows)``: ``map``, ``map_50``, ``map_75`` as floats (NaN when no ground-truth box
        was seen) and one dict per image (``name``, ``n_gt``, ``n_pred``, ``mean_best_iou``, and the boxes, labels and scores as
        JSON lists).
        Raises ``RuntimeError`` when no image was added."""
        if not self._rows:
            raise RuntimeError(
                "DetectionMetricAccumulator.compute() called before any update(): no image to score"
            )
        result = self._map.compute()
        metrics = {}
        for key in MAP_KEYS:
            value = float(result[key])
            metrics[key] = math.nan if value == -1.0 else value
        return metrics, [dict(row) for row in self._rows]
