"""Detector builders: windowed attention, the simple feature pyramid, frozen encoders, real-size construction."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from helpers import TINY, compose_config
from timm.models.vision_transformer import Attention
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from ssl4gie.errors import ConfigError
from ssl4gie.models.detection import (
    SimpleFeaturePyramid,
    ViTDetBackbone,
    WindowPartition,
    global_attention_blocks,
    resnet_fpn_detector,
    vit_detector,
)
from ssl4gie.tasks.detection import DetectionTask

# the study's ViTDet_FPN (Models/models.py) at 1024², counted on its module
STUDY_FPN_PARAMETERS = 124_522_752


def _tiny_vit(img_size=64, depth=4):
    return timm.create_model(
        "vit_base_patch16_224",
        pretrained=False,
        num_classes=0,
        img_size=img_size,
        embed_dim=32,
        depth=depth,
        num_heads=2,
    )


def _tiny_resnet():
    return timm.create_model(
        "resnet50", pretrained=False, num_classes=0, layers=[1, 1, 1, 1], channels=[8, 16, 32, 64]
    )


@pytest.mark.parametrize(
    "depth,expected", [(12, [2, 5, 8, 11]), (24, [5, 11, 17, 23]), (8, [1, 3, 5, 7]), (4, [0, 1, 2, 3])]
)
def test_global_attention_in_the_last_block_of_each_quarter(depth, expected):
    assert global_attention_blocks(depth) == expected


def test_windowed_attention_equals_global_attention_inside_each_window():
    torch.manual_seed(0)
    attn = Attention(dim=16, num_heads=2).eval()
    x = torch.randn(2, 6 * 8, 16)  # a 6×8 token grid
    windowed = WindowPartition((6, 8), 2).attach(attn)(x).view(2, 6, 8, 16)
    grid = x.view(2, 6, 8, 16)
    for row in range(0, 6, 2):
        for col in range(0, 8, 2):
            tokens = grid[:, row : row + 2, col : col + 2].reshape(2, 4, 16)
            alone = attn.forward(tokens)  # .forward bypasses the hooks: plain attention over one window
            torch.testing.assert_close(windowed[:, row : row + 2, col : col + 2].reshape(2, 4, 16), alone)
    assert not torch.allclose(windowed.view(2, 48, 16), attn.forward(x), atol=1e-3)  # not global attention


def test_vit_backbone_keeps_timm_names_and_loads_plain_vit_weights():
    vit = _tiny_vit(img_size=128, depth=8)
    plain = {k: v.clone() for k, v in vit.state_dict().items()}
    backbone = ViTDetBackbone(vit, window_size=4)
    assert backbone.windowed == [0, 2, 4, 6]
    assert all(getattr(backbone.encoder.blocks[i].attn, "window_size", None) == 4 for i in backbone.windowed)
    assert not hasattr(backbone.encoder.blocks[1].attn, "window_size")
    expected = {k: v for k, v in plain.items() if k != "cls_token"}
    expected["pos_embed"] = plain["pos_embed"][:, 1:]  # the patch part; the CLS token is gone
    assert set(backbone.encoder.state_dict()) == set(expected)
    backbone.encoder.load_state_dict(expected, strict=True)
    out = backbone(torch.randn(1, 3, 128, 128))
    assert list(out) == ["0", "1", "2", "3", "pool"]
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]


def test_window_must_divide_the_token_grid():
    with pytest.raises(ConfigError, match="task.window_size=3 does not divide the ViT's 4×4 token grid"):
        ViTDetBackbone(_tiny_vit(img_size=64, depth=8), window_size=3)


def test_simple_feature_pyramid_is_channel_wise_and_small():
    n_params = sum(p.numel() for p in SimpleFeaturePyramid(768, 256).parameters())
    assert n_params == 10_231_552  # ViT-B, any canvas size
    assert n_params < STUDY_FPN_PARAMETERS / 10
    fpn = SimpleFeaturePyramid(8, 4)
    for size in (6, 10):  # any input size: the norms are per channel
        sides = [v.shape[-1] for v in fpn(torch.randn(2, 8, size, size)).values()]
        assert sides == [
            4 * size,
            2 * size,
            size,
            size // 2,
            math.ceil(size // 2 / 2),
        ]  # "pool": stride 2 of "3"


def _targets(n, size):
    return [{"boxes": torch.tensor([[4.0, 6.0, size / 2, size / 2 + 3]]), "labels": torch.tensor([1])}] * n


@pytest.mark.parametrize("family", ["resnet", "vit"])
def test_frozen_encoder_is_bit_identical_after_a_training_step(family):
    torch.manual_seed(0)
    if family == "resnet":
        model = resnet_fpn_detector(
            _tiny_resnet(), frozen=True, frozen_bn=False, fpn_channels=8, min_size=64, max_size=96
        )
        encoder = model.backbone.body
    else:
        model = vit_detector(_tiny_vit(), canvas_size=64, window_size=2, frozen=True, fpn_channels=8)
        encoder = model.backbone.encoder
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    head_before = {k: v.clone() for k, v in model.roi_heads.state_dict().items()}
    assert all(not p.requires_grad for p in encoder.parameters())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    sum(model([torch.rand(3, 64, 64), torch.rand(3, 64, 64)], _targets(2, 64)).values()).backward()
    optimizer.step()
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert any(not torch.equal(v, head_before[k]) for k, v in model.roi_heads.state_dict().items())


def test_batchnorm_is_trainable_or_frozen_as_asked():
    trainable = resnet_fpn_detector(_tiny_resnet(), frozen_bn=False, fpn_channels=8)
    frozen = resnet_fpn_detector(_tiny_resnet(), frozen_bn=True, fpn_channels=8)
    assert any(isinstance(m, nn.BatchNorm2d) for m in trainable.backbone.body.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.backbone.body.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in frozen.backbone.body.modules())


def _real_task(backbone, *overrides):
    cfg = compose_config(["task=detection", f"backbone={backbone}", *overrides])
    options = {k: v for k, v in cfg.task.items() if k != "_target_"}
    return DetectionTask(**options), cfg


@pytest.mark.slow
@pytest.mark.parametrize(
    "backbone,overrides,image",
    [
        ("resnet50", ["task.min_size=224", "task.max_size=320"], (3, 240, 320)),
        # ViT-B at a 256² canvas (16×16 tokens, one 16×16 window) keeps CPU time low; 1024² is the study's size
        ("vit_b", ["task.canvas_size=256"], (3, 256, 256)),
    ],
)
def test_real_size_detectors_construct_and_run(backbone, overrides, image, tmp_path):
    task, cfg = _real_task(backbone, *overrides)
    model = task.build_model(cfg.backbone, cfg.pretraining, False, str(tmp_path)).eval()
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params > (40e6 if backbone == "resnet50" else 95e6)  # the real encoder, not the tiny one
    with torch.no_grad():
        out = model([torch.rand(*image)])
    assert len(out) == 1 and set(out[0]) == {"boxes", "scores", "labels"}
    assert out[0]["boxes"].shape[1] == 4 and len(out[0]["scores"]) == len(out[0]["labels"]) <= 100


def test_tiny_config_builds_through_the_task(tmp_path):
    task, cfg = _real_task("vit_b", *TINY, "task.canvas_size=128", "task.window_size=4")
    model = task.build_model(cfg.backbone, cfg.pretraining, False, str(tmp_path))
    assert task.canvas == 128 and model.transform.fixed_size == (128, 128)
    assert model.backbone.windowed == []  # 4 blocks: each is the last of its quarter, so all global
    task, cfg = _real_task("resnet50", *TINY)
    task.build_model(cfg.backbone, cfg.pretraining, False, str(tmp_path))
    assert task.canvas is None
