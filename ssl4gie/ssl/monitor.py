"""Health signals for self-supervised pretraining: collapse measures (SimSiam's std of ℓ2-normalised outputs,
RankMe) and a kNN probe on held-out labelled images, as solo-learn and lightly monitor their runs.

Pure functions of embedding tensors; the caller gathers the embeddings (and, under DDP, all-gathers them) and
logs the floats. Nothing here trains or changes a model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

RANKME_EPS = 1e-7


def _check_matrix(z: Tensor, name: str = "z") -> None:
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"{name} must be an (N, d) matrix of N >= 2 embeddings, got shape {tuple(z.shape)}")


@torch.no_grad()
def rankme(z: Tensor, eps: float = RANKME_EPS) -> float:
    """RankMe (Garrido et al. 2023, arXiv 2210.02885): effective rank of an ``(N, d)`` embedding matrix.

    ``exp(-sum_k p_k log p_k)`` with ``p_k = sigma_k / sum(sigma) + eps`` over the singular values of ``z``;
    between 1 (one direction, collapse) and ``min(N, d)`` (all directions equally used). The paper evaluates it on
    ~25.6k embeddings; fewer than ``d`` rows cap the value at ``N``. Computed in float64.
    """
    _check_matrix(z)
    sigma = torch.linalg.svdvals(z.detach().double())
    p = sigma / sigma.sum() + eps
    return float(torch.exp(-(p * p.log()).sum()))


@torch.no_grad()
def l2_normalized_std(z: Tensor) -> float:
    """Mean over features of the batch standard deviation of the l2-normalised rows of ``z`` ``(N, d)``.

    About ``1/sqrt(d)`` for embeddings spread over the sphere, 0 when every row points the same way (complete
    collapse); the SimSiam paper's collapse monitor. Unbiased (N - 1) standard deviation.
    """
    _check_matrix(z)
    return float(F.normalize(z.detach().float(), dim=1).std(dim=0).mean())


@torch.no_grad()
def knn_top1(
    bank: Tensor,
    bank_labels: Tensor,
    queries: Tensor,
    query_labels: Tensor,
    k: int = 20,
    t: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 256,
) -> float:
    """Top-1 accuracy of a weighted kNN classifier: ``queries`` classified by their ``k`` nearest ``bank`` rows.

    The weighted vote of Wu et al. 2018 (instance discrimination), as in DINO's ``eval_knn.py`` and solo-learn's
    ``WeightedKNNClassifier`` (k 20, T 0.07): cosine similarity ``s`` between l2-normalised features, each of the
    ``k`` most similar bank items votes for its label with weight ``exp(s / t)``, the class with the largest summed
    weight wins (ties: the lowest class index). ``num_classes`` defaults to ``1 + max label`` of both sets.

    Queries are processed ``chunk_size`` at a time, so memory is ``chunk_size x len(bank)`` similarities (256 x 100k
    float32 = 100 MB) on top of the normalised bank; everything runs on ``bank.device``. Returns a fraction in [0, 1].
    """
    if bank.ndim != 2 or queries.ndim != 2 or bank.shape[1] != queries.shape[1]:
        raise ValueError(
            f"bank {tuple(bank.shape)} and queries {tuple(queries.shape)} must be (N, d) with one d"
        )
    if bank_labels.shape != (bank.shape[0],) or query_labels.shape != (queries.shape[0],):
        raise ValueError("bank_labels / query_labels must hold one label per row of bank / queries")
    if len(queries) == 0 or len(bank) == 0 or k < 1:
        raise ValueError(f"need a non-empty bank and query set and k >= 1 (k={k})")
    device = bank.device
    bank_labels = bank_labels.to(device=device, dtype=torch.long)
    query_labels = query_labels.to(device=device, dtype=torch.long)
    if num_classes is None:
        num_classes = int(max(bank_labels.max(), query_labels.max())) + 1
    k = min(k, len(bank))
    bank = F.normalize(bank.detach().float(), dim=1)
    correct = 0
    for start in range(0, len(queries), chunk_size):
        q = F.normalize(queries[start : start + chunk_size].detach().to(device).float(), dim=1)
        sim, idx = (q @ bank.T).topk(k, dim=1)
        votes = torch.zeros(len(q), num_classes, device=device)
        votes.scatter_add_(1, bank_labels[idx], (sim / t).exp())
        correct += int((votes.argmax(dim=1) == query_labels[start : start + chunk_size]).sum())
    return correct / len(queries)
