"""Optimisers, parameter groups and schedules of the trainer/optimizer and trainer/scheduler config groups, against
hand computations and the recipes' rules (the official MoCo v3, Barlow Twins and MAE code)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import timm
import timm.optim
import torch
from helpers import CONF, optimizer
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from ssl4gie.engine.optim import (
    Lars,
    PlateauSchedule,
    WarmupCosineSchedule,
    momentum_cosine,
    param_groups,
    warmup_cosine,
)
from ssl4gie.errors import ConfigError
from ssl4gie.ssl.mocov3 import MoCoV3

TINY_RESNET = {"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64]}


def tiny_resnet() -> nn.Module:
    return timm.create_model("resnet50", num_classes=0, **TINY_RESNET)


def tiny_vit() -> nn.Module:
    return timm.create_model(
        "vit_base_patch16_224", embed_dim=32, depth=2, num_heads=2, img_size=32, patch_size=8, num_classes=0
    )


# ------------------------------------------------------------------------------------------------- schedules


@pytest.mark.parametrize(("total", "warmup", "final"), [(1000, 100, 0.0), (650, 100, 0.001), (50, 0, 0.0)])
def test_warmup_cosine_end_points_and_shape(total, warmup, final):
    peak = 1.2
    lrs = [warmup_cosine(s, total, warmup, peak, final * peak) for s in range(total + 1)]
    assert lrs[warmup] == pytest.approx(peak)
    if warmup:
        assert lrs[0] == 0.0
        assert lrs[warmup // 2] == pytest.approx(peak * (warmup // 2) / warmup)
    assert lrs[total] == pytest.approx(final * peak)
    assert lrs[warmup + (total - warmup) // 2] == pytest.approx((peak + final * peak) / 2, rel=1e-2)
    assert all(a <= b for a, b in itertools.pairwise(lrs[: warmup + 1]))
    assert all(a >= b for a, b in itertools.pairwise(lrs[warmup:]))
    assert warmup_cosine(total + 10, total, warmup, peak, final * peak) == pytest.approx(final * peak)


def test_warmup_cosine_is_the_barlow_twins_formula():
    """Barlow Twins main.py: lr = f·q + 0.001·f·(1 − q), q = ½(1 + cos(π·(step − W)/(T − W))), after W linear."""
    steps_per_epoch, epochs, f = 7, 20, 6.0
    total, warm = steps_per_epoch * epochs, 10 * steps_per_epoch
    for step in range(total):
        if step < warm:
            ref = f * step / warm
        else:
            q = 0.5 * (1 + math.cos(math.pi * (step - warm) / (total - warm)))
            ref = f * q + 0.001 * f * (1 - q)
        assert warmup_cosine(step, total, warm, f, 0.001 * f) == pytest.approx(ref, rel=1e-12)


def test_momentum_cosine_rises_from_m0_to_one():
    total, m0 = 500, 0.99
    ms = [momentum_cosine(s, total, m0) for s in range(total + 1)]
    assert ms[0] == pytest.approx(m0) and ms[-1] == pytest.approx(1.0)
    assert ms[total // 2] == pytest.approx((1 + m0) / 2)
    assert all(a <= b for a, b in itertools.pairwise(ms))
    assert momentum_cosine(2 * total, total, m0) == pytest.approx(1.0)


def schedule(group: str, optimizer, epochs: int, peak_lr: float, monitor: str | None = None, **options):
    """The schedule of config group option ``conf/trainer/scheduler/<group>.yaml``, as the trainer builds it."""
    node = OmegaConf.merge(OmegaConf.load(CONF / "trainer" / "scheduler" / f"{group}.yaml"), options)
    return instantiate(node)(optimizer, monitor=monitor, monitor_mode="max", epochs=epochs, peak_lr=peak_lr)


def test_step_schedule_scales_every_group_and_resumes_from_its_step():
    w, b = nn.Parameter(torch.ones(3, 3)), nn.Parameter(torch.ones(3))
    opt = optimizer("lars", [("w", w), ("b", b)], lr=1.2, weight_decay=1e-6, one_d_lr_scale=0.024)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1.2, 1.2 * 0.024])
    sched = schedule("warmup_cosine", opt, epochs=10, peak_lr=1.2, warmup_epochs=2, final_lr_ratio=0.001)
    assert isinstance(sched, WarmupCosineSchedule)
    sched.start(steps_per_epoch=5)
    assert sched.step_lr(0) == 0.0 and [g["lr"] for g in opt.param_groups] == [0.0, 0.0]
    assert sched.step_lr(10) == pytest.approx(1.2)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1.2, 1.2 * 0.024])
    assert sched.step_lr(50) == pytest.approx(1.2e-3)
    lr_at_23 = sched.step_lr(23)
    resumed = schedule("warmup_cosine", opt, epochs=10, peak_lr=1.2, warmup_epochs=2, final_lr_ratio=0.001)
    resumed.start(steps_per_epoch=5)
    opt.param_groups[0]["lr"] = -1.0
    resumed.load_state_dict(sched.state_dict())
    assert resumed.last_step == 23 and opt.param_groups[0]["lr"] == pytest.approx(lr_at_23)
    assert lr_at_23 == pytest.approx(warmup_cosine(23, 50, 10, 1.2, 1.2e-3))


def test_plateau_schedule_halves_the_lr_after_patience_epochs_without_improvement():
    opt = optimizer("adamw", [("w", nn.Parameter(torch.ones(2)))], lr=1e-4, weight_decay=0.01)
    sched = schedule("plateau", opt, epochs=50, peak_lr=1e-4, monitor="val/dice", patience=2)
    assert isinstance(sched, PlateauSchedule) and sched.step_lr(0) is None
    for value in (0.5, 0.5, 0.5):
        sched.validated(value)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4)
    sched.validated(0.5)  # the third epoch without improvement
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-5)
    with pytest.raises(ConfigError, match="trainer/scheduler=plateau needs a validation metric"):
        schedule("plateau", opt, epochs=50, peak_lr=1e-4, monitor=None)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"name": "step"}, "trainer.scheduler.name=step does not match the scheduler that"),
        ({"warmup_epochs": -1}, "trainer.scheduler.warmup_epochs=-1 must be at least 0"),
        ({"final_lr_ratio": 2}, "trainer.scheduler.final_lr_ratio=2 must lie in [0, 1]"),
    ],
)
def test_step_schedule_rejects_bad_options(options, message):
    opt = torch.optim.SGD([nn.Parameter(torch.ones(2))], lr=0.1)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        schedule("warmup_cosine", opt, epochs=10, peak_lr=0.1, **options).start(steps_per_epoch=3)


def test_a_run_shorter_than_its_warmup_warms_up_all_the_way_with_one_warning(caplog):
    """MoCo v3's, MAE's and Barlow Twins' code: lr = peak · step / warmup while warming up, whatever the run's
    length; a 1-epoch trial of a 40-epoch-warmup recipe ends at 1/40 of the peak (minus the last step)."""
    opt = torch.optim.SGD([nn.Parameter(torch.ones(2))], lr=0.1)
    caplog.set_level("WARNING")
    sched = schedule("warmup_cosine", opt, epochs=1, peak_lr=0.1, warmup_epochs=40)
    sched.start(steps_per_epoch=3)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "never leaves its warmup" in warnings[0] and "(1 epochs)" in warnings[0]
    assert [sched.step_lr(s) for s in range(3)] == pytest.approx([0.0, 0.1 / 120, 0.2 / 120])


# ---------------------------------------------------------------------------------------------- param groups


def names_by_group(model: nn.Module, groups: list[dict]) -> dict[str, set[str]]:
    by_id = {id(p): n for n, p in model.named_parameters()}
    return {g["name"]: {by_id[id(p)] for p in g["params"]} for g in groups}


def test_moco_lars_groups_exempt_1d_params_and_leave_out_the_momentum_branch():
    model = MoCoV3(
        tiny_resnet(),
        256,
        projector={"hidden_dim": 64, "out_dim": 32, "layers": 2, "last_bn": True},
        predictor={"hidden_dim": 64, "out_dim": 32, "layers": 2, "last_bn": False},
        tau=1.0,
    )
    groups = param_groups(model.trainable_named_parameters(), exclude_1d=True)
    names = names_by_group(model, groups)
    base = {n: p for n, p in model.named_parameters() if not n.startswith("momentum_")}
    assert names["weights"] == {n for n, p in base.items() if p.ndim > 1}
    assert names["no_decay"] == {n for n, p in base.items() if p.ndim == 1}
    assert "encoder.conv1.weight" in names["weights"] and "encoder.bn1.bias" in names["no_decay"]
    assert "projector.1.weight" in names["no_decay"]  # hidden BatchNorm's affine weight
    # 4 stages × 1 bottleneck × (3 conv + downsample conv) + stem conv; + 2 + 2 Linear layers in the heads
    assert len(names["weights"]) == 4 * 4 + 1 + 4
    assert groups[1]["weight_decay"] == 0.0 and "weight_decay" not in groups[0]  # the optimiser's decay
    lars = optimizer("lars", model.trainable_named_parameters(), lr=1.0, weight_decay=1e-6)
    assert [(g["name"], g["lars_adapt"]) for g in lars.param_groups] == [
        ("weights", True),
        ("no_decay", False),
    ]


def test_adamw_groups_mae_exempts_1d_and_biases_moco_vit_decays_everything():
    vit = tiny_vit()
    vit.pos_embed.requires_grad_(False)  # MAE/MoCo v3 ViT: fixed sin-cos embedding, not optimised
    opt = optimizer(
        "adamw", vit.named_parameters(), lr=4.5e-4, weight_decay=0.05, betas=[0.9, 0.95], exclude_1d=True
    )
    names = names_by_group(vit, opt.param_groups)
    trainable = {n: p for n, p in vit.named_parameters() if p.requires_grad}
    assert names["weights"] == {n for n, p in trainable.items() if p.ndim > 1}
    assert "cls_token" in names["weights"]  # 3-D: decays, as in MAE (timm add_weight_decay without skip list)
    assert {"blocks.0.attn.qkv.bias", "norm.weight"} <= names["no_decay"]
    assert "pos_embed" not in names["weights"] | names["no_decay"]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    assert all(g["betas"] == (0.9, 0.95) and "lars_adapt" not in g for g in opt.param_groups)

    opt = optimizer("adamw", vit.named_parameters(), lr=4.5e-4, weight_decay=0.1, exclude_1d=False)
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["name"] == "all"
    assert names_by_group(vit, opt.param_groups)["all"] == set(trainable)
    assert opt.param_groups[0]["weight_decay"] == 0.1 and opt.param_groups[0]["betas"] == (0.9, 0.999)


def test_barlow_twins_groups_give_1d_params_their_own_lr():
    model = nn.Sequential(nn.Linear(4, 8, bias=False), nn.BatchNorm1d(8), nn.Linear(8, 8, bias=False))
    opt = optimizer(
        "lars",
        model.named_parameters(),
        lr=0.2 * 6,
        weight_decay=1e-6,
        exclude_1d=True,
        one_d_lr_scale=0.0048 / 0.2,
    )
    assert [g["name"] for g in opt.param_groups] == ["weights", "no_decay"]
    assert [len(g["params"]) for g in opt.param_groups] == [2, 2]
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1.2, 0.0048 * 6])
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-6, 0.0]


def test_name_rule_catches_biases_that_are_not_1d():
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Module()
            self.proj.bias = nn.Parameter(torch.zeros(1, 4))
            self.weight = nn.Parameter(torch.zeros(4, 4))

    groups = param_groups(Odd().named_parameters(), exclude_1d=True)
    assert [g["name"] for g in groups] == ["weights", "no_decay"]
    assert [g["params"][0].shape for g in groups] == [(4, 4), (1, 4)]


@pytest.mark.parametrize(
    ("group", "options", "message"),
    [
        ("adamw", {"name": "lars"}, "trainer.optimizer.name=lars does not match the optimizer that"),
        ("adamw", {"one_d_lr_scale": 0.1}, "needs optimizer.exclude_1d=true"),
    ],
)
def test_optimizers_refuse_bad_options(group, options, message):
    with pytest.raises(ConfigError, match=message):
        optimizer(group, nn.Linear(2, 2).named_parameters(), lr=1.0, weight_decay=0.0, **options)
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        optimizer(group, frozen.named_parameters(), lr=1.0, weight_decay=0.0)


# ---------------------------------------------------------------------------------------------------- LARS


def lars_reference(p, grads, lr, wd, momentum, eta, adapt):
    """The recipe, step by step in float64 numpy."""
    p, mu = p.astype(np.float64).copy(), np.zeros_like(p, dtype=np.float64)
    for g in grads:
        g = g + wd * p
        if adapt:
            pn, gn = np.sqrt((p**2).sum()), np.sqrt((g**2).sum())
            g = g * (eta * pn / gn if pn > 0 and gn > 0 else 1.0)
        mu = momentum * mu + g
        p = p - lr * mu
    return p


def test_lars_matches_a_hand_computation_for_three_steps():
    rng = np.random.default_rng(0)
    w0, b0 = rng.normal(size=(3, 4)), rng.normal(size=4)
    grads_w = [rng.normal(size=(3, 4)) for _ in range(3)]
    grads_b = [rng.normal(size=4) for _ in range(3)]
    w, b = nn.Parameter(torch.tensor(w0)), nn.Parameter(torch.tensor(b0))
    opt = Lars(
        [{"params": [w]}, {"params": [b], "weight_decay": 0.0, "lars_adapt": False}],
        lr=2.0,
        weight_decay=0.1,
        momentum=0.9,
        trust_coefficient=0.01,
    )
    for gw, gb in zip(grads_w, grads_b, strict=True):
        w.grad, b.grad = torch.tensor(gw), torch.tensor(gb)
        opt.step()
    np.testing.assert_allclose(
        w.detach().numpy(), lars_reference(w0, grads_w, 2.0, 0.1, 0.9, 0.01, True), rtol=1e-12
    )
    np.testing.assert_allclose(
        b.detach().numpy(), lars_reference(b0, grads_b, 2.0, 0.0, 0.9, 0.01, False), rtol=1e-12
    )


def test_lars_trust_ratio_is_one_when_a_norm_is_zero():
    zero_p, zero_g = nn.Parameter(torch.zeros(2, 2)), nn.Parameter(torch.ones(2, 2))
    opt = Lars([zero_p, zero_g], lr=0.5, momentum=0.9)
    zero_p.grad, zero_g.grad = torch.full((2, 2), 3.0), torch.zeros(2, 2)
    opt.step()
    assert torch.equal(zero_p.detach(), torch.full((2, 2), -1.5))  # plain SGD step: ratio 1
    assert torch.equal(zero_g.detach(), torch.ones(2, 2))  # nothing to apply
    assert torch.isfinite(opt.state[zero_g]["mu"]).all()


def test_lars_without_adaptation_is_sgd_with_momentum():
    torch.manual_seed(0)
    a, b = nn.Parameter(torch.randn(5, 3)), nn.Parameter(torch.randn(5, 3))
    b.data.copy_(a.data)
    ours = Lars([a], lr=0.3, weight_decay=0.01, momentum=0.9, lars_adapt=False)
    ref = torch.optim.SGD([b], lr=0.3, weight_decay=0.01, momentum=0.9)
    for _ in range(4):
        g = torch.randn(5, 3)
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_lars_agrees_with_timm_where_their_rules_coincide():
    """timm's Lars divides by ‖g‖ + wd·‖p‖ + eps and adapts only decayed groups unless always_adapt: with no
    weight decay and always_adapt=True the two rules are the same up to eps."""
    torch.manual_seed(1)
    a = nn.Parameter(torch.randn(6, 4))
    b = nn.Parameter(a.detach().clone())
    ours = Lars([a], lr=1.5, weight_decay=0.0, momentum=0.9)
    ref = timm.optim.Lars([b], lr=1.5, momentum=0.9, trust_coeff=0.001, always_adapt=True)
    for _ in range(3):
        g = torch.randn(6, 4)
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert not torch.equal(a.detach(), torch.zeros(6, 4))
