"""Figures people look at: predictions beside targets, error maps. matplotlib with the Agg backend."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from ssl4gie.utils.io import atomic_path

# Error-map colours: true positive, false positive, false negative.
TP, FP, FN = (0.0, 0.8, 0.2), (1.0, 0.15, 0.15), (0.2, 0.45, 1.0)


def overlay(image: np.ndarray, mask: np.ndarray, colour, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 image with ``mask`` pixels tinted by ``colour`` (floats in [0, 1])."""
    out = image.astype(np.float32) / 255.0
    out[mask] = (1 - alpha) * out[mask] + alpha * np.asarray(colour, dtype=np.float32)
    return out


def segmentation_panels(image: np.ndarray, target: np.ndarray, pred: np.ndarray, title: str = ""):
    """image | target | prediction coloured by outcome (green hit, red false alarm, blue missed polyp)."""
    target, pred = target.astype(bool), pred.astype(bool)
    errors = overlay(image, pred & target, TP)
    errors = overlay((errors * 255).astype(np.uint8), pred & ~target, FP)
    errors = overlay((errors * 255).astype(np.uint8), ~pred & target, FN)
    return _panels(
        [
            (image, "image"),
            (overlay(image, target, (1.0, 0.9, 0.0)), "target"),
            (errors, "prediction (green hit, red false, blue missed)"),
        ],
        title,
    )


def _panels(panels: list[tuple[np.ndarray, str]], title: str):
    """One row of labelled images under ``title``, 4 inches per panel."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.2))
    for ax, (img, label) in zip(axes, panels, strict=True):
        ax.imshow(img)
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def save_figure(fig, path: Path, dpi: int = 100) -> Path:
    """Save atomically as PNG and close the figure."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return path


def prediction_panels(image: np.ndarray, pred: np.ndarray, title: str = ""):
    """image | predicted mask tinted green (frames without ground truth)."""
    return _panels([(image, "image"), (overlay(image, pred.astype(bool), TP), "prediction")], title)
