"""An independent numpy rendering of the study's depth scoring (its ``Depth_estimation/eval_depth.py``),
shared by the metric test and the end-to-end ``task.protocol=study`` test; it uses no ssl4gie code."""

from __future__ import annotations

import numpy as np


def bilinear_matrix(n_out: int, n_in: int) -> np.ndarray:
    """n_out×n_in weights of 1-D linear upsampling with half-pixel centres (align_corners=False): source
    x = (i + 0.5)·n_in/n_out − 0.5, clamped at 0, neighbours clamped at the last sample."""
    x = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
    left = np.minimum(np.floor(x).astype(int), n_in - 1)
    right = np.minimum(left + 1, n_in - 1)
    frac = x - left
    weights = np.zeros((n_out, n_in))
    np.add.at(weights, (np.arange(n_out), left), 1 - frac)
    np.add.at(weights, (np.arange(n_out), right), frac)
    return weights


def study_reference(output: np.ndarray, target: np.ndarray, native: np.ndarray) -> dict[str, float]:
    """eval_depth.py's numbers for one frame, written from its steps in float64 numpy."""
    mask = target > 0
    design = np.stack([output[mask], np.ones(mask.sum())], axis=1)
    (scale, shift), *_ = np.linalg.lstsq(design, target[mask], rcond=None)
    aligned = scale * output + shift
    height, width = native.shape
    side = max(height, width)
    up = bilinear_matrix(side, output.shape[0])
    square = up @ aligned @ up.T
    top, left = round((side - height) / 2.0), round((side - width) / 2.0)  # torchvision center_crop
    pred = np.clip(square[top : top + height, left : left + width], 0.0, 1.0)
    pred[native == 0] = 0.0
    p, d = pred * 10, native * 10
    valid = d > 0
    rel = np.sort(np.abs(p - d)[valid] / d[valid])
    return {
        "rmse": float(np.sqrt(np.mean((p - d)[valid] ** 2))),
        "med_rel": float(rel[(rel.size - 1) // 2]),  # torch.median: the lower middle value
        "mae": float(np.mean(np.abs(p - d)[valid])),
    }
