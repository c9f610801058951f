"""The MoCo v3 contrastive loss and the Barlow Twins redundancy-reduction loss, global-batch exact under DDP.

Both follow the official recipes (MoCo v3's ``moco/builder.py``, Barlow Twins' ``main.py``) and reduce to the
plain single-process formulas at world size 1. They run in (at least) float32 with autocast switched off: a
bf16 logit or cross-correlation matrix keeps only ~3 significant digits, and the cost (an N×N_global or D×D
matrix product) is small next to the encoders.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl4gie.ssl.distributed import all_reduce_sum, gather_with_offset


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 → fp32; fp32 and fp64 unchanged (the tests compare in fp64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def mocov3_contrastive(q: torch.Tensor, k: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One direction of the MoCo v3 loss: queries ``q`` (N_local × d) against the keys ``k`` of every rank.

    Both are ℓ2-normalised here; ``k`` is gathered from all ranks without gradient (keys come from the momentum
    branch). Logits ``q·kᵀ/τ`` are N_local × N_global and the positive of query i is key ``i + offset`` (this rank's
    first row in the gathered keys: ``N_local·rank`` when ranks hold equal batches). The loss is the mean
    cross-entropy over the local queries times ``2τ`` (the official scaling); DDP's gradient averaging then makes
    it the mean over the global batch. Returns ``(loss, top1)`` where ``top1`` (detached) is the fraction of local
    queries whose largest logit is their own key.
    """
    with torch.autocast(q.device.type, enabled=False):
        q = F.normalize(_at_least_float32(q), dim=1)
        keys, offset = gather_with_offset(F.normalize(_at_least_float32(k), dim=1))
        logits = q @ keys.T / tau
        labels = torch.arange(q.shape[0], device=q.device) + offset
        loss = F.cross_entropy(logits, labels) * (2 * tau)
        top1 = (logits.detach().argmax(dim=1) == labels).float().mean()
    return loss, top1


def _standardise(z1: torch.Tensor, z2: torch.Tensor, n: torch.Tensor, eps: float) -> tuple[torch.Tensor, ...]:
    """Each of z1, z2 minus its global per-feature mean, over sqrt(global biased variance + eps).

    This is ``BatchNorm1d(affine=False)`` in training mode run as SyncBatchNorm (as the official code does), but
    two-pass (mean first, then the centred sum of squares) for accuracy. The sums are all-reduced differentiably:
    SyncBatchNorm's backward likewise sums the statistics' gradient terms over ranks.
    """
    mean = all_reduce_sum(torch.stack([z1.sum(0), z2.sum(0)]), exact_gradient=True) / n
    c1, c2 = z1 - mean[0], z2 - mean[1]
    var = all_reduce_sum(torch.stack([c1.pow(2).sum(0), c2.pow(2).sum(0)]), exact_gradient=True) / n
    return c1 * torch.rsqrt(var[0] + eps), c2 * torch.rsqrt(var[1] + eps)


def barlow_twins(
    z1: torch.Tensor, z2: torch.Tensor, lambd: float = 0.0051, exact_gradient: bool = True, eps: float = 1e-5
) -> dict[str, torch.Tensor]:
    """The Barlow Twins loss of two views' projections ``z1``, ``z2`` (N_local × D each, same rows = same image).

    Each view is standardised per feature with the global batch statistics (see :func:`_standardise`); the
    cross-correlation ``c = z1nᵀ z2n / N_global`` is summed over ranks, and
    ``loss = Σ_i (1 − c_ii)² + lambd · Σ_{i≠j} c_ij²``, the same value on every rank.

    ``exact_gradient`` picks how the sum of ``c`` over ranks is differentiated
    (:func:`ssl4gie.ssl.distributed.all_reduce_sum`): True, parameter gradients after DDP's averaging equal the
    single-process gradient on the whole global batch; False, they are ``1/world_size`` of it, as in the official
    code (which tuned its learning rates that way). Identical at world size 1.

    Returns ``loss`` (with gradient) and the detached monitors ``on_diag`` = Σ(1 − c_ii)², ``off_diag`` =
    Σ_{i≠j} c_ij² (not multiplied by lambd) and ``mean_diag`` = mean c_ii (→ 1 as training succeeds).
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(
            f"barlow_twins needs two N×D tensors of equal shape, got {tuple(z1.shape)}, {tuple(z2.shape)}"
        )
    with torch.autocast(z1.device.type, enabled=False):
        z1, z2 = _at_least_float32(z1), _at_least_float32(z2)
        n = all_reduce_sum(z1.new_tensor(float(z1.shape[0])))
        z1n, z2n = _standardise(z1, z2, n, eps)
        c = all_reduce_sum(z1n.T @ z2n / n, exact_gradient=exact_gradient)
        diag = torch.diagonal(c)
        on_diag = (1 - diag).pow(2).sum()
        off_diag = c.pow(2).sum() - diag.pow(2).sum()
        loss = on_diag + lambd * off_diag
    return {
        "loss": loss,
        "on_diag": on_diag.detach(),
        "off_diag": off_diag.detach(),
        "mean_diag": diag.detach().mean(),
    }


@torch.no_grad()
def normalised_std(z: torch.Tensor) -> torch.Tensor:
    """Collapse monitor: std over the batch of the ℓ2-normalised rows of ``z`` (N × d), averaged over features.

    About 1/√d for well-spread embeddings and 0 for a collapsed one (SimSiam's diagnostic). Local batch only.
    """
    return F.normalize(_at_least_float32(z), dim=1).std(dim=0).mean()
