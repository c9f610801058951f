"""Monocular depth metrics (per image, in millimetres) and their accumulator over a test split.

The study reported RMSE, a per-image *median* relative error it called "Relative Error", and mean absolute
error, all after a per-image least-squares scale-and-shift fit against the ground truth (the study's
``Depth_estimation/eval_depth.py``). That fit is an oracle: it uses the target of the very image being scored.
We keep it (it defines the published numbers) and report it under the unsuffixed keys, and add the usual mean
AbsRel, δ1 and the median-scaling protocol (suffix ``_median``), which uses only the ground-truth median.

:func:`study_depth_metrics` is ``task.protocol=study``: the study's eval_depth.py step by step, in its units
and with its constants, to reproduce its numbers on the same frames.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ssl4gie.tasks.losses import align_median, align_scale_shift, masked_median

log = logging.getLogger(__name__)

METRIC_NAMES = ("rmse", "abs_rel", "med_rel", "mae", "delta1")
DELTA1_THRESHOLD = 1.25
STUDY_METRIC_NAMES = ("rmse", "med_rel", "mae")  # the study's "RMSE", "Relative Error", "Absolute Error"
STUDY_NATIVE_SCALE = 65536  # eval_depth.py divides the native 16-bit code by 65536 (training used 65535)
STUDY_UNIT = 10.0  # eval_depth.py's hard-coded C3VD factor: [0, 1] -> ×10 (cm if 65535 ↔ 100 mm)


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


def study_crop_offsets(height: int, width: int) -> tuple[int, int]:
    """(top, left) of the H×W centre crop of the S×S square, S = max(H, W), as torchvision's ``center_crop``
    computes it: Python ``round((S − H) / 2)`` (half to even). It equals the square-padding offset
    ``(S − H) // 2`` whenever S − H is even (C3VD's 1350×1080: 135) and may be one more when it is odd."""
    side = max(height, width)
    return round((side - height) / 2.0), round((side - width) / 2.0)


@torch.no_grad()
def study_depth_maps(output: Tensor, target: Tensor, native: Tensor) -> tuple[Tensor, Tensor]:
    """One frame through the study's ``eval_depth.py`` post-processing; returns ``(pred, target)``.

    ``output``: the network's s×s map in (0, 1); ``target``: the s×s training target (code / 65535, Pillow-NEAREST
    resized from the padded square, 0 = invalid); ``native``: the H×W native target as the study reads it,
    code / **65536**. Steps: least-squares scale and shift of ``output`` onto ``target`` over ``target > 0``
    (s = t = 0 when singular), applied; bilinear resize (``align_corners=False``, no antialias) to S×S with
    S = max(H, W); centre crop to H×W (:func:`study_crop_offsets`); clamp to [0, 1]; 0 where ``native == 0``;
    both maps ×10 (:data:`STUDY_UNIT`). Both results are float32 H×W.
    """
    if output.dim() != 2 or target.shape != output.shape or native.dim() != 2:
        raise ValueError(
            f"output {tuple(output.shape)} and target {tuple(target.shape)} must be one s×s shape and native "
            f"{tuple(native.shape)} an H×W map"
        )
    aligned, _, _ = align_scale_shift(output[None].float(), target[None].float(), (target > 0)[None])
    height, width = native.shape
    side = max(height, width)
    big = F.interpolate(aligned[None], size=(side, side), mode="bilinear", align_corners=False)[0, 0]
    top, left = study_crop_offsets(height, width)
    pred = big[top : top + height, left : left + width].clamp(0.0, 1.0)
    native = native.float()
    pred = torch.where(native == 0, torch.zeros_like(pred), pred)
    return pred * STUDY_UNIT, native * STUDY_UNIT


def study_depth_metrics(pred: Tensor, target: Tensor) -> dict[str, float]:
    """The study's three per-image numbers over ``target > 0`` (maps from :func:`study_depth_maps`).

    ``rmse`` = sqrt(mean (p − d)²), ``med_rel`` = median |p − d| / d with torch's convention (the **lower** of the
    two middle values for an even count, as ``torch.median`` in eval_depth.py), ``mae`` = mean |p − d|; NaN
    each when no pixel is valid.
    """
    keep = target > 0
    if not bool(keep.any()):
        return dict.fromkeys(STUDY_METRIC_NAMES, float("nan"))
    p, d = pred[keep].float(), target[keep].float()
    return {
        "rmse": float(torch.sqrt(((p - d) ** 2).mean())),
        "med_rel": float(torch.median((p - d).abs() / d)),
        "mae": float((p - d).abs().mean()),
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
