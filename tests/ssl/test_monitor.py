"""Pretraining health signals: RankMe on matrices of known rank, the collapse std, and the weighted kNN probe
against hand-made cases and a brute-force reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ssl4gie.ssl.monitor import knn_top1, l2_normalized_std, rankme


def matrix_with_singular_values(n: int, d: int, sigma: list[float], seed: int = 0) -> torch.Tensor:
    """``U diag(sigma) V^T`` with random orthonormal U (n x r) and V (d x r)."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(n, len(sigma), generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d, len(sigma), generator=g, dtype=torch.float64))
    return (u * torch.tensor(sigma, dtype=torch.float64)) @ v.T


@pytest.mark.parametrize("rank", [1, 5, 32])
def test_rankme_of_equal_singular_values_is_the_rank(rank):
    z = matrix_with_singular_values(200, 64, [3.0] * rank).float()
    assert rankme(z) == pytest.approx(rank, rel=1e-3)
    assert rankme(100 * z) == pytest.approx(rankme(z), rel=1e-5)  # scale-free


def test_rankme_matches_the_entropy_formula():
    sigma = [4.0, 2.0, 1.0, 0.5]
    z = matrix_with_singular_values(50, 10, sigma)
    p = np.array(sigma) / sum(sigma) + 1e-7
    assert rankme(z) == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-5)
    assert 1 < rankme(z) < 4
    with pytest.raises(ValueError, match=r"\(N, d\)"):
        rankme(torch.randn(10))


def test_l2_normalized_std_is_zero_for_a_collapsed_set_and_about_one_over_sqrt_d_when_spread():
    direction = torch.randn(1, 64)
    collapsed = direction * torch.rand(100, 1).add(0.1)  # one direction, different lengths
    assert l2_normalized_std(collapsed) == pytest.approx(0.0, abs=1e-6)
    spread = torch.randn(4096, 64, generator=torch.Generator().manual_seed(0))
    assert l2_normalized_std(spread) == pytest.approx(1 / math.sqrt(64), rel=0.05)


def clustered(n_per_class: int, num_classes: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points scattered tightly around orthogonal class directions."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    centres = torch.eye(d)[:num_classes] * 5
    return centres[labels] + 0.3 * torch.randn(len(labels), d, generator=g), labels


def test_knn_on_separable_vectors_is_perfect():
    bank, bank_labels = clustered(30, 4, 16, seed=0)
    queries, query_labels = clustered(10, 4, 16, seed=1)
    assert knn_top1(bank, bank_labels, queries, query_labels, k=20, t=0.07) == 1.0


def test_knn_on_random_labels_is_at_chance():
    g = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(2000, 32, generator=g), torch.randn(2000, 32, generator=g)
    accuracy = knn_top1(
        bank, torch.randint(0, 4, (2000,), generator=g), queries, torch.randint(0, 4, (2000,), generator=g)
    )
    assert accuracy == pytest.approx(0.25, abs=0.04)


def brute_force_knn(bank, bank_labels, queries, query_labels, k, t, num_classes) -> float:
    """One query at a time in float64 numpy: cosine similarities, the k best, exp(s/t)-weighted votes."""
    b = bank.double().numpy()
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    hits = 0
    for q, label in zip(queries.double().numpy(), query_labels.tolist(), strict=True):
        sim = b @ (q / np.linalg.norm(q))
        best = np.argsort(-sim)[:k]
        votes = np.zeros(num_classes)
        for j in best:
            votes[int(bank_labels[j])] += math.exp(sim[j] / t)
        hits += int(np.argmax(votes) == label)
    return hits / len(queries)


def test_knn_matches_brute_force_and_does_not_depend_on_chunking():
    g = torch.Generator().manual_seed(3)
    bank, queries = torch.randn(300, 8, generator=g), torch.randn(97, 8, generator=g)
    bank_labels = (bank[:, 0] > 0).long() + 2 * (bank[:, 1] > 0).long()  # labels that features predict
    query_labels = (queries[:, 0] > 0).long() + 2 * (queries[:, 1] > 0).long()
    expected = brute_force_knn(bank, bank_labels, queries, query_labels, k=20, t=0.07, num_classes=4)
    assert expected > 0.5
    for chunk in (1, 7, 1000):
        got = knn_top1(bank, bank_labels, queries, query_labels, k=20, t=0.07, chunk_size=chunk)
        assert got == pytest.approx(expected)


def test_knn_vote_is_weighted_by_similarity():
    """Two moderately similar class-0 neighbours lose to one very similar class-1 neighbour at a low t, and win
    by majority at a high t."""
    query = torch.tensor([[1.0, 0.0]])
    bank = torch.tensor([[1.0, 0.05], [1.0, 0.6], [1.0, -0.6]])
    bank_labels = torch.tensor([1, 0, 0])
    assert knn_top1(bank, bank_labels, query, torch.tensor([1]), k=3, t=0.05) == 1.0
    assert knn_top1(bank, bank_labels, query, torch.tensor([0]), k=3, t=10.0) == 1.0
