"""MoCo v3 and Barlow Twins modules with tiny timm backbones: head recipes, the momentum branch's contract (EMA,
no gradient, outside the optimiser), output keys, values at initialisation and overfitting a fixed batch."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from helpers import optimizer
from torch import nn

from ssl4gie.engine.optim import momentum_cosine
from ssl4gie.ssl.barlowtwins import BarlowTwins
from ssl4gie.ssl.heads import mlp
from ssl4gie.ssl.losses import barlow_twins
from ssl4gie.ssl.mocov3 import MoCoV3

RESNET_HEADS = {
    "projector": {"hidden_dim": 64, "out_dim": 32, "layers": 2, "last_bn": True},
    "predictor": {"hidden_dim": 64, "out_dim": 32, "layers": 2, "last_bn": False},
}
VIT_HEADS = {
    "projector": {"hidden_dim": 64, "out_dim": 32, "layers": 3, "last_bn": True},
    "predictor": {"hidden_dim": 64, "out_dim": 32, "layers": 2, "last_bn": True},
}


def tiny_resnet() -> nn.Module:
    """ResNet-50 key structure, shrunk as conf/backbone/resnet50.yaml tiny_kwargs (256-d pooled features)."""
    return timm.create_model("resnet50", layers=[1, 1, 1, 1], channels=[8, 16, 32, 64], num_classes=0)


def tiny_vit() -> nn.Module:
    return timm.create_model(
        "vit_base_patch16_224", embed_dim=32, depth=2, num_heads=2, img_size=32, patch_size=8, num_classes=0
    )


def tiny_moco(tau: float = 0.2) -> MoCoV3:
    return MoCoV3(tiny_resnet(), 256, tau=tau, **RESNET_HEADS)


def views(n: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed batch of random 32-px images and a second 'view' (mirrored, with a little noise)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=g)
    return x, x.flip(-1) + 0.1 * torch.randn(x.shape, generator=g)


# ------------------------------------------------------------------------------------------------ head recipes


def layer_summary(head: nn.Sequential) -> list[str]:
    out = []
    for m in head:
        if isinstance(m, nn.Linear):
            out.append(f"L{m.in_features}>{m.out_features}{'b' if m.bias is not None else ''}")
        elif isinstance(m, nn.BatchNorm1d):
            out.append(f"BN{m.num_features}{'a' if m.affine else ''}")
        elif isinstance(m, nn.ReLU):
            out.append("R")
    return out


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        # MoCo v3 ResNet-50 projector / predictor
        ((2048, 4096, 256, 2, True), ["L2048>4096", "BN4096a", "R", "L4096>256", "BN256"]),
        ((256, 4096, 256, 2, False), ["L256>4096", "BN4096a", "R", "L4096>256"]),
        # MoCo v3 ViT-B projector / predictor
        (
            (768, 4096, 256, 3, True),
            ["L768>4096", "BN4096a", "R", "L4096>4096", "BN4096a", "R", "L4096>256", "BN256"],
        ),
        ((256, 4096, 256, 2, True), ["L256>4096", "BN4096a", "R", "L4096>256", "BN256"]),
        # Barlow Twins 8192-8192-8192
        (
            (2048, 8192, 8192, 3, False),
            ["L2048>8192", "BN8192a", "R", "L8192>8192", "BN8192a", "R", "L8192>8192"],
        ),
    ],
)
def test_mlp_builds_the_official_heads(args, expected):
    with torch.device("meta"):  # full-size heads without allocating their ~150 M parameters
        head = mlp(*args)
    assert layer_summary(head) == expected
    in_dim, hidden, out, layers, _ = args
    linear = in_dim * hidden + (layers - 2) * hidden * hidden + hidden * out
    bn_affine = 2 * hidden * (layers - 1)
    assert sum(p.numel() for p in head.parameters()) == linear + bn_affine


def test_mlp_options():
    head = mlp(4, 8, 2, layers=1, last_bn=True, last_bn_affine=True, bias=True)
    assert layer_summary(head) == ["L4>2b", "BN2a"]


# -------------------------------------------------------------------------------------------- momentum branch


def test_momentum_branch_starts_as_a_frozen_copy_and_stays_out_of_the_optimiser():
    model = tiny_moco()
    base = dict(model.encoder.named_parameters()) | {
        f"p.{n}": p for n, p in model.projector.named_parameters()
    }
    momentum = dict(model.momentum_encoder.named_parameters()) | {
        f"p.{n}": p for n, p in model.momentum_projector.named_parameters()
    }
    assert base.keys() == momentum.keys()
    assert all(torch.equal(base[n], momentum[n]) and base[n] is not momentum[n] for n in base)
    assert not any(p.requires_grad for p in momentum.values())

    for p in momentum.values():  # even if someone switches them back on, the optimiser never sees them
        p.requires_grad_(True)
    opt = optimizer("lars", model.trainable_named_parameters(), lr=1.0, weight_decay=1e-6)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not in_opt & {id(p) for p in momentum.values()}
    assert len(in_opt) == sum(1 for n, _ in model.named_parameters() if not n.startswith("momentum_"))


def test_optimizer_step_leaves_the_momentum_branch_untouched():
    model = tiny_moco()
    opt = optimizer("adamw", model.trainable_named_parameters(), lr=1e-2, weight_decay=0.1)
    x1, x2 = views(8)
    model(x1, x2, momentum=0.99)["loss"].backward()
    momentum = [*model.momentum_encoder.parameters(), *model.momentum_projector.parameters()]
    assert all(p.grad is None for p in momentum)
    before = [p.detach().clone() for p in momentum]
    base_before = model.encoder.conv1.weight.detach().clone()
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, momentum, strict=True))
    assert not torch.equal(base_before, model.encoder.conv1.weight)  # the base branch did move


def test_update_momentum_is_the_ema_of_parameters_and_leaves_buffers():
    model = tiny_moco()
    with torch.no_grad():  # make base and momentum differ
        for p in [*model.encoder.parameters(), *model.projector.parameters()]:
            p.add_(torch.randn_like(p))
    model.momentum_encoder.bn1.running_mean.fill_(3.0)
    pairs = list(
        zip(
            [*model.momentum_encoder.parameters(), *model.momentum_projector.parameters()],
            [*model.encoder.parameters(), *model.projector.parameters()],
            strict=True,
        )
    )
    expected = [0.9 * k.detach() + 0.1 * q.detach() for k, q in pairs]
    model.update_momentum(0.9)
    for (k, _), want in zip(pairs, expected, strict=True):
        torch.testing.assert_close(k, want, rtol=1e-6, atol=1e-7)
    assert torch.equal(
        model.momentum_encoder.bn1.running_mean, torch.full_like(model.encoder.bn1.running_mean, 3.0)
    )


def test_forward_updates_momentum_before_the_keys_and_keys_carry_no_gradient():
    model = tiny_moco()
    with torch.no_grad():
        model.encoder.conv1.weight.add_(1.0)
    k_weight = model.momentum_encoder.conv1.weight
    expected = 0.9 * k_weight.detach() + 0.1 * model.encoder.conv1.weight.detach()
    seen, keys = [], []
    model.momentum_encoder.register_forward_pre_hook(
        lambda m, args: seen.append(m.conv1.weight.detach().clone())
    )
    model.momentum_projector.register_forward_hook(lambda m, args, out: keys.append(out))
    x1, x2 = views(8)
    out = model(x1, x2, momentum=0.9)
    assert len(seen) == 2 and all(torch.allclose(w, expected, rtol=1e-6, atol=1e-7) for w in seen)
    assert len(keys) == 2 and all(k.grad_fn is None and not k.requires_grad for k in keys)
    assert out["loss"].requires_grad
    assert out["features"].shape == (8, 256) and out["features"].grad_fn is None
    assert {"loss", "contrastive_acc", "embedding_std", "features"} <= out.keys()


def test_frozen_patch_embedding_is_left_out_and_the_vit_heads_follow_the_recipe():
    vit = tiny_vit()
    vit.patch_embed.requires_grad_(False)  # MoCo v3's stop-grad, done by the task
    model = MoCoV3(vit, 32, tau=0.2, **VIT_HEADS)
    names = {n for n, _ in model.trainable_named_parameters()}
    assert not any(n.startswith("encoder.patch_embed") for n in names)
    assert isinstance(model.predictor[-1], nn.BatchNorm1d) and not model.predictor[-1].affine
    assert sum(isinstance(m, nn.Linear) for m in model.projector) == 3
    x1, x2 = views(4)
    out = model(x1, x2, momentum=0.99)
    assert out["features"].shape == (4, 32) and torch.isfinite(out["loss"])


def test_moco_loss_at_initialisation_is_near_4_tau_ln_n():
    """Random heads give near-uniform logits: ≈ 2 directions × 2τ × ln N (cross-entropy ln N,
    scaled by 2τ as MoCo v3's ``moco/builder.py``)."""
    torch.manual_seed(0)
    n, tau = 16, 1.0
    out = tiny_moco(tau)(*views(n), momentum=0.99)
    assert float(out["loss"].detach()) == pytest.approx(4 * tau * math.log(n), rel=0.1)


# -------------------------------------------------------------------------------------------------- overfitting


@pytest.mark.slow
def test_moco_overfits_a_fixed_batch():
    torch.manual_seed(0)
    n, steps = 16, 30
    model = tiny_moco(tau=0.2)
    opt = optimizer("adamw", model.trainable_named_parameters(), lr=3e-3, weight_decay=0.1)
    x1, x2 = views(n)
    history = []
    for step in range(steps):
        out = model(x1, x2, momentum=momentum_cosine(step, steps, 0.9))
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        history.append({k: float(v.detach()) for k, v in out.items() if k != "features"})
    first, last = history[0], history[-1]
    assert last["loss"] < 0.3 * first["loss"], (first, last)  # measured: 2.45 → 0.15
    assert last["contrastive_acc"] >= 0.9 > 4 / n > first["contrastive_acc"], (first, last)  # 0.16 → 1.0
    assert last["embedding_std"] > 0.2 / math.sqrt(32)  # not collapsed


@pytest.mark.slow
def test_barlow_twins_overfits_a_fixed_batch():
    torch.manual_seed(0)
    steps = 30
    model = BarlowTwins(
        tiny_resnet(), 256, projector={"hidden_dim": 64, "out_dim": 64, "layers": 3, "last_bn": False}
    )
    opt = optimizer(
        "lars",
        model.trainable_named_parameters(),
        lr=2.0,
        weight_decay=1e-6,
        exclude_1d=True,
        one_d_lr_scale=0.024,
    )
    x1, x2 = views(16)
    history = []
    for _ in range(steps):
        out = model(x1, x2)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        history.append({k: float(v.detach()) for k, v in out.items() if k != "features"})
    first, last = history[0], history[-1]
    assert last["loss"] < 0.1 * first["loss"], (first, last)  # measured: 73 → 1.2
    assert last["mean_diag"] > 0.8 > 0.1 > first["mean_diag"], (first, last)  # −0.03 → 0.98
    assert last["embedding_std"] > 0.2 / math.sqrt(64)


def test_barlow_twins_forward_is_the_loss_of_its_projections():
    torch.manual_seed(0)
    model = BarlowTwins(
        tiny_resnet(), 256, projector={"hidden_dim": 32, "out_dim": 16, "layers": 3, "last_bn": False}
    )
    x1, x2 = views(8)
    out = model(x1, x2)
    with torch.no_grad():
        z1, z2 = model.projector(model.encoder(x1)), model.projector(model.encoder(x2))
    torch.testing.assert_close(out["loss"].detach(), barlow_twins(z1, z2)["loss"], rtol=1e-4, atol=1e-4)
    assert {"loss", "on_diag", "off_diag", "mean_diag", "embedding_std", "features"} <= out.keys()
    assert out["features"].shape == (8, 256)
