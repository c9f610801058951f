"""MAE reconstruction figures for pretraining runs (as MAE's ``demo/mae_visualize.ipynb`` shows
them).

matplotlib with the Agg backend, written atomically through :func:`ssl4gie.utils.figures.save_figure`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ssl4gie.ssl.mae import NORM_PIX_EPS, patchify, standardise_patches, unpatchify
from ssl4gie.utils.figures import plt, save_figure

COLUMNS = ("original", "masked", "reconstruction", "reconstruction + visible")
MASKED_GREY = 0.5  # removed patches are shown mid-grey, as in the MAE paper's figures


def _to_display(x: Tensor, mean: Tensor, std: Tensor) -> np.ndarray:
    """Normalised ``(N, C, H, W)`` -> ``(N, H, W, C)`` floats in [0, 1]."""
    return (x * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def reconstruction_panels(
    images: Tensor,
    pred: Tensor,
    mask: Tensor,
    patch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    norm_pix: bool = True,
) -> list[np.ndarray]:
    """The four panels of :data:`COLUMNS` as ``(N, H, W, C)`` arrays in [0, 1].

    ``images``: the normalised network input; ``pred``: the MAE's ``(N, L, p*p*C)`` output; ``mask``: ``(N, L)``,
    1 = removed. With ``norm_pix`` the prediction is in per-patch standardised units; it is mapped back to pixels
    with each patch's own mean and variance taken from the original image. The official MAE demo shows a checkpoint
    trained without norm-pix (nothing to undo); using the original's statistics means the displayed colours of
    masked patches borrow their true mean and contrast -- a display choice, not something the model predicted.
    """
    images, pred, mask = (
        images.detach().float().cpu(),
        pred.detach().float().cpu(),
        mask.detach().float().cpu(),
    )
    _, c, h, w = images.shape
    grid = (h // patch_size, w // patch_size)
    mean_t = torch.as_tensor(mean, dtype=torch.float32).view(1, c, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).view(1, c, 1, 1)
    if norm_pix:
        _, patch_mean, patch_var = standardise_patches(patchify(images, patch_size), NORM_PIX_EPS)
        pred = pred * (patch_var + NORM_PIX_EPS).sqrt() + patch_mean
    recon = unpatchify(pred, patch_size, grid, c)
    removed = unpatchify(mask[..., None].expand(-1, -1, patch_size**2 * c), patch_size, grid, c).bool()
    shown = _to_display(images, mean_t, std_t)
    removed_np = removed.permute(0, 2, 3, 1).numpy()
    recon_shown = _to_display(recon, mean_t, std_t)
    return [
        shown,
        np.where(removed_np, MASKED_GREY, shown),
        recon_shown,
        np.where(removed_np, recon_shown, shown),
    ]


def draw_mae_reconstructions(
    images: Tensor,
    pred: Tensor,
    mask: Tensor,
    patch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    path: str | os.PathLike[str],
    max_images: int = 8,
    norm_pix: bool = True,
    panel_inches: float = 2.0,
    dpi: int = 100,
) -> Path:
    """Save a PNG grid, one row per image (the first ``max_images``), columns :data:`COLUMNS`.

    Arguments as :func:`reconstruction_panels`; ``mean`` / ``std`` are the input normalisation (ImageNet's for the
    recipes). The image is exactly ``4 * panel_inches * dpi`` by ``rows * panel_inches * dpi`` pixels. Written
    atomically; returns ``path``.
    """
    count = min(len(images), max_images)
    if count < 1:
        raise ValueError("draw_mae_reconstructions needs at least one image")
    panels = reconstruction_panels(
        images[:count], pred[:count], mask[:count], patch_size, mean, std, norm_pix
    )
    fig, axes = plt.subplots(
        count, len(COLUMNS), figsize=(len(COLUMNS) * panel_inches, count * panel_inches), squeeze=False
    )
    for row in range(count):
        for col, label in enumerate(COLUMNS):
            ax = axes[row, col]
            ax.imshow(panels[col][row])
            ax.axis("off")
            if row == 0:
                ax.set_title(label, fontsize=8)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.25 / count, wspace=0.03, hspace=0.03)
    return save_figure(fig, Path(path), dpi=dpi)
