"""MoCo v3 and Barlow Twins losses at world size 1 against plain-formula oracles written here, their invariants,
their expected values at initialisation, and the collectives' single-process identities.

(Named test_ssl_losses.py, not test_losses.py: tests/ has no __init__.py files, so two test modules called
test_losses would collide with tests/tasks/test_losses.py.)
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ssl4gie.ssl.distributed import all_reduce_sum, gather_no_grad, gather_with_offset, world
from ssl4gie.ssl.losses import barlow_twins, mocov3_contrastive, normalised_std


def moco_oracle(q: torch.Tensor, k: torch.Tensor, tau: float) -> tuple[torch.Tensor, float]:
    """The official formula at world size 1, by hand: −log softmax of each query's own key, mean, × 2τ."""
    qn = q / q.norm(dim=1, keepdim=True)
    kn = k / k.norm(dim=1, keepdim=True)
    logits = qn @ kn.T / tau
    per_query = torch.logsumexp(logits, dim=1) - torch.diagonal(logits)
    top1 = sum(int(logits[i].argmax()) == i for i in range(len(q))) / len(q)
    return per_query.mean() * 2 * tau, top1


def bt_oracle(z1: torch.Tensor, z2: torch.Tensor, lambd: float) -> torch.Tensor:
    """The official Barlow Twins main.py loss at world size 1: BatchNorm1d(affine=False), c/N, off-diagonal view."""
    n, d = z1.shape
    bn = nn.BatchNorm1d(d, affine=False).to(z1.dtype).train()
    c = bn(z1).T @ bn(z2) / n
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off = c.flatten()[:-1].view(d - 1, d + 1)[:, 1:].flatten()  # every element but the diagonal
    return on_diag + lambd * off.pow(2).sum()


def test_world_and_collectives_are_identities_in_one_process():
    x = torch.randn(5, 3, requires_grad=True)
    assert world() == (0, 1)
    gathered, offset = gather_with_offset(x)
    assert offset == 0 and torch.equal(gathered, x) and gathered.grad_fn is None
    assert torch.equal(gather_no_grad(x), x)
    for exact in (True, False):
        assert all_reduce_sum(x, exact_gradient=exact) is x


@pytest.mark.parametrize("tau", [1.0, 0.2])
def test_mocov3_contrastive_matches_the_formula_and_gives_keys_no_gradient(tau):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(12, 8, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(12, 8, generator=g, dtype=torch.float64, requires_grad=True)
    loss, top1 = mocov3_contrastive(q, k, tau)
    ref, ref_top1 = moco_oracle(q, k, tau)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    assert float(top1) == pytest.approx(ref_top1)
    loss.backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert k.grad is None  # keys are constants (momentum branch, gathered without gradient)


def test_mocov3_top1_counts_queries_whose_own_key_wins():
    q = torch.eye(4)
    k = torch.eye(4)[[0, 1, 3, 2]]  # queries 2 and 3 find the other's key
    _, top1 = mocov3_contrastive(q, k, tau=0.2)
    assert float(top1) == 0.5
    _, top1 = mocov3_contrastive(q, q + 0.01, tau=0.2)
    assert float(top1) == 1.0


@pytest.mark.parametrize("tau", [1.0, 0.2])
def test_mocov3_symmetrised_loss_is_about_4_tau_ln_n_for_random_embeddings(tau):
    """Random 256-d unit vectors have near-uniform logits: each direction ≈ 2τ·ln N (cross-entropy
    ln N, scaled by 2τ as MoCo v3's ``moco/builder.py``)."""
    g = torch.Generator().manual_seed(1)
    n = 64
    q1, q2, k1, k2 = (torch.randn(n, 256, generator=g) for _ in range(4))
    loss = mocov3_contrastive(q1, k2, tau)[0] + mocov3_contrastive(q2, k1, tau)[0]
    assert float(loss) == pytest.approx(2 * 2 * tau * math.log(n), rel=0.03)


@pytest.mark.parametrize("lambd", [0.0051, 0.5])
def test_barlow_twins_matches_batchnorm_oracle_and_gradients(lambd):
    g = torch.Generator().manual_seed(2)
    z1 = torch.randn(10, 6, generator=g, dtype=torch.float64) * 3 + 1
    z2 = (z1 + torch.randn(10, 6, generator=g, dtype=torch.float64)).requires_grad_()
    z1.requires_grad_()
    out = barlow_twins(z1, z2, lambd=lambd)
    ref = bt_oracle(z1, z2, lambd)
    torch.testing.assert_close(out["loss"], ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out["on_diag"] + lambd * out["off_diag"], ref.detach(), rtol=1e-10, atol=1e-10)
    got = torch.autograd.grad(out["loss"], (z1, z2))
    want = torch.autograd.grad(ref, (z1, z2))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    assert not out["on_diag"].requires_grad and not out["mean_diag"].requires_grad


def test_barlow_twins_ignores_per_feature_affine_maps():
    g = torch.Generator().manual_seed(3)
    z1 = torch.randn(32, 16, generator=g, dtype=torch.float64)
    z2 = z1 + 0.5 * torch.randn(32, 16, generator=g, dtype=torch.float64)
    scale = torch.rand(16, generator=g, dtype=torch.float64) * 1.5 + 0.5  # positive: a sign flip changes c_ii
    shift = torch.randn(16, generator=g, dtype=torch.float64) * 10
    base = barlow_twins(z1, z2)["loss"]
    moved = barlow_twins(z1 * scale + shift, z2 / scale - shift)["loss"]
    torch.testing.assert_close(moved, base, rtol=1e-4, atol=0)  # eps=1e-5 in the variance: not bit-identical


def test_barlow_twins_of_independent_views_is_about_d_plus_lambda_d_squared_over_n():
    """c_ij of independent views ≈ N(0, 1/N): Σ(1 − c_ii)² ≈ D and Σ_{i≠j} c_ij² ≈ D(D − 1)/N."""
    g = torch.Generator().manual_seed(4)
    n, d, lambd = 256, 64, 0.0051
    out = barlow_twins(torch.randn(n, d, generator=g), torch.randn(n, d, generator=g), lambd=lambd)
    assert float(out["off_diag"]) == pytest.approx(d * (d - 1) / n, rel=0.05)
    assert float(out["on_diag"]) == pytest.approx(d, rel=0.05)
    assert float(out["loss"]) == pytest.approx(d + lambd * d * (d - 1) / n, rel=0.05)
    assert abs(float(out["mean_diag"])) < 3 / math.sqrt(n)


def test_barlow_twins_of_identical_views_has_unit_diagonal():
    z = torch.randn(64, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    out = barlow_twins(z, z)
    var = z.var(dim=0, unbiased=False)
    expected_diag = var / (var + 1e-5)  # c_ii = var/(var + eps): 1 up to BatchNorm's eps
    assert float(out["mean_diag"]) == pytest.approx(float(expected_diag.mean()), rel=1e-12)
    assert float(out["on_diag"]) == pytest.approx(float((1 - expected_diag).pow(2).sum()), rel=1e-9)


def test_losses_stay_float32_under_autocast():
    z1, z2 = torch.randn(16, 8), torch.randn(16, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = barlow_twins(z1.bfloat16(), z2.bfloat16())
        loss, _ = mocov3_contrastive(z1.bfloat16(), z2.bfloat16(), 0.2)
    assert out["loss"].dtype == torch.float32 and loss.dtype == torch.float32
    torch.testing.assert_close(
        out["loss"], barlow_twins(z1.bfloat16().float(), z2.bfloat16().float())["loss"]
    )


def test_normalised_std_is_zero_for_collapse_and_about_one_over_sqrt_d_when_spread():
    d = 128
    collapsed = torch.randn(1, d).expand(64, d) * torch.rand(64, 1)  # one direction, different lengths
    assert float(normalised_std(collapsed)) < 1e-6
    spread = torch.randn(4096, d, generator=torch.Generator().manual_seed(6))
    assert float(normalised_std(spread)) == pytest.approx(1 / math.sqrt(d), rel=0.05)
