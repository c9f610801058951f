"""Monocular depth metrics (per image, in millimetres) and their accumulator over a test split.

The study reported RMSE, a per-image *median* relative error it called "Relative Error", and mean absolute error,
all after a per-image least-squares scale-and-shift fit against the ground truth (SPEC §6.4). That fit is an
oracle: it uses the target of the very image being scored. We keep it (it defines the published numbers) and
report it under the unsuffixed keys, and add the usual mean AbsRel, δ1 and the median-scaling protocol
(suffix ``_median``), which uses only the ground-truth median (SPEC §11 item 15).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ssl4gie.losses import align_median, align_scale_shift, masked_median

log = logging.getLogger(__name__)

METRIC_NAMES = ("rmse", "abs_rel", "med_rel", "mae", "delta1")
DELTA1_THRESHOLD = 1.25


def depth_metrics(pred_mm: Tensor, target_mm: Tensor, valid: Tensor) -> dict[str, float]:
    """Error metrics of one image over its valid pixels; all three tensors share one shape.

    Pixels are scored where ``valid`` is true **and** ``target_mm > 0`` (relative errors divide by the target).
    Returns ``rmse`` = sqrt(mean (p − d)²), ``abs_rel`` = mean |p − d| / d, ``med_rel`` = median |p − d| / d (the
    study's "Relative Error"; mean of the two middle values for an even count), ``mae`` = mean |p − d| and
    ``delta1`` = fraction of pixels with max(p/d, d/p) < 1.25, where a pixel with p <= 0 never counts as within.
    With no scorable pixel every value is NaN (not an exception), so one empty frame cannot stop an evaluation.
    """
    if not (pred_mm.shape == target_mm.shape == valid.shape):
        raise ValueError(
            f"pred_mm {tuple(pred_mm.shape)}, target_mm {tuple(target_mm.shape)} and valid "
            f"{tuple(valid.shape)} must have one shape"
        )
    d = target_mm.float()
    keep = valid.bool() & (d > 0)
    if not bool(keep.any()):
        return dict.fromkeys(METRIC_NAMES, float("nan"))
    p, d = pred_mm.float()[keep], d[keep]
    abs_err = (p - d).abs()
    rel_err = abs_err / d
    # p <= 0 would make d/p negative or infinite; such a pixel is simply not within the threshold.
    positive = p > 0
    ratio = torch.maximum(p / d, d / p.clamp(min=torch.finfo(p.dtype).tiny))
    within = positive & (ratio < DELTA1_THRESHOLD)
    return {
        "rmse": float(torch.sqrt(((p - d) ** 2).mean())),
        "abs_rel": float(rel_err.mean()),
        "med_rel": float(masked_median(rel_err, torch.ones_like(rel_err, dtype=torch.bool))),
        "mae": float(abs_err.mean()),
        "delta1": float(within.float().mean()),
    }


def _as_batch(x: Tensor, name: str) -> Tensor:
    """B×H×W view of a B×1×H×W or B×H×W tensor."""
    if x.dim() == 4 and x.shape[1] == 1:
        return x[:, 0]
    if x.dim() == 3:
        return x
    raise ValueError(f"{name} must be B×1×H×W or B×H×W, got shape {tuple(x.shape)}")


class DepthMetricAccumulator:
    """Collects per-image depth metrics under two alignments; ``reset / update / compute``.

    * Scale-and-shift (the study's protocol, unsuffixed keys ``rmse``, ``abs_rel``, ``med_rel``, ``mae``,
      ``delta1``): per image, least-squares s, t fitted on the valid pixels against the ground truth, applied,
      and the result clamped to ``[0, max_depth_mm]`` (the study clamps to [0, 1] in normalised units). This
      is an **oracle** alignment: it looks at the target of the image it scores.
    * Median scaling (keys with suffix ``_median``, e.g. ``rmse_median``): s = median(target) / median(pred)
      over the valid pixels, no shift, no clamp.

    Args:
        max_depth_mm: upper clamp of the scale-and-shift-aligned prediction (C3VD encodes 0-100 mm).
    """

    def __init__(self, max_depth_mm: float = 100.0) -> None:
        if max_depth_mm <= 0:
            raise ValueError(f"max_depth_mm must be > 0, got {max_depth_mm}")
        self.max_depth_mm = float(max_depth_mm)
        self._rows: list[dict[str, float | str]] = []

    def reset(self) -> None:
        """Forget every image seen so far."""
        self._rows = []

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor, valid: Tensor, names: Sequence[str]) -> None:
        """Score one batch of images.

        ``pred``, ``target`` and ``valid`` are B×1×H×W or B×H×W at the evaluation resolution; ``pred`` and
        ``target`` are in millimetres **before alignment** (the caller scales the raw network output by the
        same constant as the target). ``names`` gives one identifier per image for the per-image rows.
        """
        p, d, v = _as_batch(pred, "pred"), _as_batch(target, "target"), _as_batch(valid, "valid").bool()
        if len(names) != p.shape[0]:
            raise ValueError(f"names has {len(names)} entries but the batch has {p.shape[0]} images")
        v = v & (d > 0)
        aligned, scale, shift = align_scale_shift(p, d, v)
        aligned = aligned.clamp(0.0, self.max_depth_mm)
        median_aligned, median_scale = align_median(p, d, v)
        for i, name in enumerate(names):
            row: dict[str, float | str] = {"name": str(name), "n_valid": float(v[i].sum())}
            row.update(depth_metrics(aligned[i], d[i], v[i]))
            row.update(
                {f"{k}_median": val for k, val in depth_metrics(median_aligned[i], d[i], v[i]).items()}
            )
            row.update(scale=float(scale[i]), shift=float(shift[i]), scale_median=float(median_scale[i]))
            self._rows.append(row)

    def compute(self) -> tuple[dict[str, float], list[dict[str, float | str]]]:
        """Mean over images of every metric, and the per-image rows.

        Returns ``(metrics, rows)``: ``metrics`` maps ``rmse``, ``abs_rel``, ``med_rel``, ``mae``, ``delta1`` and
        the same names with suffix ``_median`` to the arithmetic mean over images; images without any valid
        pixel (NaN metrics) are left out of the mean, with a warning. ``rows`` holds one dict per image:
        ``name``, ``n_valid``, every metric, and the fitted ``scale``, ``shift``, ``scale_median``.
        Raises ``RuntimeError`` when no image was added.
        """
        if not self._rows:
            raise RuntimeError(
                "DepthMetricAccumulator.compute() called before any update(): no image to score"
            )
        empty = [row["name"] for row in self._rows if row["n_valid"] == 0]
        if empty:
            log.warning("%d image(s) without valid depth left out of the means: %s", len(empty), empty[:5])
        keys = [*METRIC_NAMES, *(f"{k}_median" for k in METRIC_NAMES)]
        metrics = {}
        for key in keys:
            values = np.array([row[key] for row in self._rows], dtype=np.float64)
            metrics[key] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
        return metrics, [dict(row) for row in self._rows]
