"""Training losses, grouped by task; every loss is computed in fp32.

The study's ``train_*.py`` scripts computed their losses under ``torch.cuda.amp.autocast``, so partly in fp16.
Each loss here casts its inputs to float32 and runs with autocast disabled, whatever context the caller is in.

Sections: classification (class weights, weighted cross-entropy), depth (scale-and-shift alignment, MiDaS SSI
loss). Add a new task's losses as a new section.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def _no_autocast(device: torch.device) -> torch.autocast:
    """A context that disables autocast on ``device`` so the reductions below stay in fp32."""
    return torch.autocast(device_type=device.type, enabled=False)


# ----------------------------------------------------------------------------------------------------------
# Classification
# ----------------------------------------------------------------------------------------------------------


def class_weights(labels: Tensor | Sequence[int], num_classes: int) -> Tensor:
    """Inverse-frequency class weights w_c = N / (num_classes · N_c), as a float32 tensor of ``num_classes``.

    N is the number of labels passed and N_c the count of class c. The study computed them over all splits,
    test included (``Classification/train_classification.py``); the caller should pass the **training
    split's** labels only. A class with N_c = 0 gets weight 0 (instead of a division by zero): it cannot occur
    as a target of the split the weights come from. Labels outside ``[0, num_classes)`` or an empty ``labels``
    raise ``ValueError``.
    """
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if labels.numel() == 0:
        raise ValueError("class_weights got no labels; pass the training split's class ids")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"class_weights: labels span [{int(labels.min())}, {int(labels.max())}] but num_classes={num_classes}"
        )
    counts = torch.bincount(labels, minlength=num_classes).to(torch.float32)
    weights = torch.zeros(num_classes, dtype=torch.float32)
    present = counts > 0
    weights[present] = labels.numel() / (num_classes * counts[present])
    return weights


def weighted_cross_entropy(logits: Tensor, target: Tensor, weights: Tensor | None) -> Tensor:
    """Class-weighted cross-entropy in fp32: Σ_i w_{y_i} · CE_i / Σ_i w_{y_i} (PyTorch's weighted mean).

    ``logits`` is N×C (any float dtype; cast to float32), ``target`` N integer class ids, ``weights`` C
    per-class weights or ``None`` for the plain mean. The result is NaN when every target in the batch has
    weight 0 (only possible for classes absent from the data the weights came from).
    """
    with _no_autocast(logits.device):
        if weights is not None:
            weights = weights.to(device=logits.device, dtype=torch.float32)
        return F.cross_entropy(logits.float(), target, weight=weights)


# ----------------------------------------------------------------------------------------------------------
# Segmentation
# ----------------------------------------------------------------------------------------------------------


def soft_dice_loss(logits: Tensor, target: Tensor, eps: float = 1e-8) -> Tensor:
    """The study's soft Dice loss (``Binary_segmentation/Metrics/losses.py``), in fp32:
    ``1 − mean_i 2(Σ p·t + ε) / (Σ p² + Σ t² + ε)``.

    ``logits`` and the soft ``target`` in [0, 1] are B×1×H×W (or B×H×W); p = sigmoid(logits), sums per image.
    """
    with _no_autocast(logits.device):
        p = torch.sigmoid(logits.float()).flatten(1)
        t = target.float().flatten(1)
        dice = (2 * (p * t).sum(1) + eps) / ((p * p).sum(1) + (t * t).sum(1) + eps)
        return 1 - dice.mean()


# ----------------------------------------------------------------------------------------------------------
# Depth: scale-and-shift alignment and the MiDaS scale-and-shift-invariant (SSI) loss, as the study's
# `Depth_estimation/Metrics/losses.py` (alpha 0.1, 4 scales, batch-based reduction)
# ----------------------------------------------------------------------------------------------------------

# A determinant this small relative to a00·a11 means a constant prediction over the mask: det is 0 in exact
# arithmetic, but floating-point sums leave a rounding residue that would give an arbitrary scale.
_DET_RTOL = 1e-9


def _as_bhw(x: Tensor, name: str) -> Tensor:
    """Return a B×H×W view of a B×1×H×W or B×H×W tensor."""
    if x.dim() == 4 and x.shape[1] == 1:
        return x[:, 0]
    if x.dim() == 3:
        return x
    raise ValueError(f"{name} must be B×1×H×W or B×H×W, got shape {tuple(x.shape)}")


def _prepare(pred: Tensor, target: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """fp32 B×H×W prediction, target and float {0,1} mask (default: target > 0)."""
    p = _as_bhw(pred, "pred").float()
    d = _as_bhw(target, "target").float()
    m = d > 0 if mask is None else _as_bhw(mask, "mask").bool()
    if p.shape != d.shape or m.shape != d.shape:
        raise ValueError(
            f"pred {tuple(p.shape)}, target {tuple(d.shape)} and mask {tuple(m.shape)} must have one shape"
        )
    return p, d, m.float()


def _solve_scale_shift(p: Tensor, d: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image least-squares (s, t) minimising Σ_M (s·p + t − d)² via the 2×2 normal equations."""
    # The five sums go through float64 (MPS has none): det = n·Σp² − (Σp)² cancels badly in fp32 for
    # near-constant p.
    wide = torch.float32 if p.device.type == "mps" else torch.float64
    p64, d64, m64 = p.to(wide), d.to(wide), m.to(wide)
    a00 = (m64 * p64 * p64).sum(dim=(1, 2))
    a01 = (m64 * p64).sum(dim=(1, 2))
    a11 = m64.sum(dim=(1, 2))
    b0 = (m64 * p64 * d64).sum(dim=(1, 2))
    b1 = (m64 * d64).sum(dim=(1, 2))
    det = a00 * a11 - a01 * a01
    solvable = det > _DET_RTOL * a00 * a11
    # Divide by 1 where unsolvable so that no inf/NaN enters the graph (torch.where would still pass NaN grads).
    safe_det = torch.where(solvable, det, torch.ones_like(det))
    scale = torch.where(solvable, (a11 * b0 - a01 * b1) / safe_det, torch.zeros_like(det))
    shift = torch.where(solvable, (-a01 * b0 + a00 * b1) / safe_det, torch.zeros_like(det))
    return scale.float(), shift.float()


def align_scale_shift(pred: Tensor, target: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Per-image least-squares scale and shift of ``pred`` onto ``target`` over ``mask`` (the study's
    ``compute_scale_and_shift``: the 2×2 normal equations).

    Inputs are B×1×H×W or B×H×W (``mask`` boolean or {0,1}; ``None`` means ``target > 0``). For each image,
    (s, t) minimise Σ_M (s·p + t − d)²; when the system is singular (empty mask, or a prediction constant over
    the mask, i.e. det = 0) the study's convention s = t = 0 applies. Returns ``(aligned, scale, shift)``:
    ``aligned = s·pred + t`` in float32 with ``pred``'s shape (unmasked pixels included), ``scale`` and
    ``shift`` of shape B. Differentiable with respect to ``pred``.
    """
    with _no_autocast(pred.device):
        p, d, m = _prepare(pred, target, mask)
        scale, shift = _solve_scale_shift(p, d, m)
        aligned = scale[:, None, None] * p + shift[:, None, None]
        return aligned.reshape(pred.shape), scale, shift


def masked_median(values: Tensor, mask: Tensor) -> Tensor:
    """Median of ``values[mask]`` (the mean of the two middle values for an even count); NaN if empty."""
    selected = values[mask.bool()].float()
    if selected.numel() == 0:
        return torch.tensor(float("nan"), device=values.device)
    ordered = selected.sort().values
    n = ordered.numel()
    return (ordered[(n - 1) // 2] + ordered[n // 2]) / 2


def align_median(pred: Tensor, target: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Per-image median scaling: s = median(target[M]) / median(pred[M]); returns ``(s·pred, s)``.

    Shapes as :func:`align_scale_shift`. An image with an empty mask or a non-positive prediction median gets
    s = 0 (no meaningful scale exists). Unlike the scale-and-shift fit this uses only one statistic of the
    ground truth, the usual protocol for scale-ambiguous monocular depth.
    """
    with _no_autocast(pred.device):
        p, d, m = _prepare(pred, target, mask)
        scales = []
        for p_i, d_i, m_i in zip(p, d, m, strict=True):
            median_pred = masked_median(p_i, m_i)
            ok = bool(torch.isfinite(median_pred)) and float(median_pred) > 0
            scales.append(masked_median(d_i, m_i) / median_pred if ok else torch.zeros((), device=p.device))
        scale = torch.stack(scales).float()
        aligned = scale[:, None, None] * p
        return aligned.reshape(pred.shape), scale


def _data_term(q: Tensor, d: Tensor, m: Tensor) -> Tensor:
    """Σ_batch Σ_M (q − d)² / (2 Σ_batch |M|), 0 when there is no valid pixel."""
    n_valid = m.sum()
    squared = (m * (q - d) ** 2).sum()
    return torch.where(n_valid > 0, squared / (2 * n_valid.clamp(min=1)), torch.zeros_like(squared))


def _gradient_term(q: Tensor, d: Tensor, m: Tensor, scales: int) -> Tensor:
    """Σ_k over ``scales`` steps 2^k of the masked L1 gradient of the residual, each over Σ_batch |M_k|."""
    total = q.new_zeros(())
    for k in range(scales):
        step = 2**k
        q_k, d_k, m_k = q[:, ::step, ::step], d[:, ::step, ::step], m[:, ::step, ::step]
        r = m_k * (q_k - d_k)
        grad_x = (r[:, :, 1:] - r[:, :, :-1]).abs() * m_k[:, :, 1:] * m_k[:, :, :-1]
        grad_y = (r[:, 1:, :] - r[:, :-1, :]).abs() * m_k[:, 1:, :] * m_k[:, :-1, :]
        n_valid = m_k.sum()
        summed = grad_x.sum() + grad_y.sum()
        total = total + torch.where(n_valid > 0, summed / n_valid.clamp(min=1), torch.zeros_like(summed))
    return total


def ssi_loss(
    pred: Tensor, target: Tensor, mask: Tensor | None = None, alpha: float = 0.1, scales: int = 4
) -> Tensor:
    """MiDaS scale-and-shift-invariant loss with batch-based reduction, in fp32 (the study's
    ``ScaleAndShiftInvariantLoss``).

    ``pred`` and ``target`` are B×1×H×W or B×H×W; ``mask`` defaults to ``target > 0``. Each image's prediction
    is aligned by :func:`align_scale_shift` (q = s·p + t); the loss is data + ``alpha`` · gradient with

    * data = Σ_batch Σ_M (q − d)² / (2 Σ_batch |M|);
    * gradient = Σ_{k < scales} [Σ_batch Σ |∇_x r_k|·M_k(x)M_k(x+1) + |∇_y r_k|·M_k(y)M_k(y+1)] / Σ_batch |M_k|,
      where r = M·(q − d) and the subscript k keeps every 2^k-th row and column.

    Each term is 0 when its mask is empty, so an all-invalid batch gives loss 0 (and finite gradients).
    """
    with _no_autocast(pred.device):
        p, d, m = _prepare(pred, target, mask)
        scale, shift = _solve_scale_shift(p, d, m)
        q = scale[:, None, None] * p + shift[:, None, None]
        loss = _data_term(q, d, m)
        if alpha > 0:
            loss = loss + alpha * _gradient_term(q, d, m, scales)
        return loss


def ssi_mse(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """The data term of :func:`ssi_loss` alone (alpha = 0): the study's depth validation metric."""
    return ssi_loss(pred, target, mask, alpha=0.0)
