"""Contract tests for the dense decoders: study parameter counts, shapes, value ranges, odd sizes, gradients."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from ssl4gie.models.decoders import DPT, DeepLabV3Plus, ResNetDepthDecoder
from ssl4gie.models.decoders.dpt import _FusionBlock

# DPT decoder alone at in_channels=768 with the study's widths (counted on the study's Models/DPT_decoder.py).
DPT_STUDY_PARAMS = {"segmentation": 20_328_641, "depth": 20_065_921}
# The coarsest fusion block's first residual conv unit, which the study builds but never runs:
# two 256→256 3×3 convs, without bias and with two BatchNorms (segmentation) or with bias and no BN (depth).
UNUSED_RCU_PARAMS = {"segmentation": 2 * 256 * 256 * 9 + 2 * 2 * 256, "depth": 2 * (256 * 256 * 9 + 256)}
# smp DeepLabV3Plus(encoder_name="resnet50", encoder_weights=None, classes=1): parameters of model.decoder
# (3,169,296) + model.segmentation_head (257). Counted with segmentation-models-pytorch 0.3.3 (+ timm 0.9.2),
# installed in a throwaway folder; its deeplabv3/decoder.py, model.py and base/heads.py are identical to 0.3.2's.
SMP_DEEPLABV3PLUS_R50_PARAMS = 3_169_553
# ResNetDepthDecoder at ResNet-50 widths, summed from the layers of the study's ResNet_from_Any: levels
# 7,818,752 + 1,959,680 + 492,416, head 331,969.
RESNET_DEPTH_R50_PARAMS = 10_602_817


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _n_bn(module: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in module.modules())


def _params_without_grad(module: nn.Module, out: Tensor) -> list[str]:
    module.zero_grad(set_to_none=True)
    out.square().mean().backward()
    return [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]


def _tiny_dpt(head: str, **kwargs) -> DPT:
    return DPT(in_channels=32, reassemble_channels=(8, 16, 24, 32), features=16, head=head, **kwargs)


def _grid_feats(batch: int, channels: int, h: int, w: int) -> list[Tensor]:
    return [torch.randn(batch, channels, h, w) for _ in range(4)]


# ---------------------------------------------------------------------------------------------------- DPT


@pytest.mark.parametrize("head", ["segmentation", "depth"])
def test_dpt_parameter_counts_match_the_study(head: str) -> None:
    study = DPT(head=head, skip_unused=False)
    assert _n_params(study) == DPT_STUDY_PARAMS[head]
    assert _n_bn(study) == (17 if head == "segmentation" else 0)
    default = DPT(head=head)
    assert _n_params(default) == DPT_STUDY_PARAMS[head] - UNUSED_RCU_PARAMS[head]
    assert _n_bn(default) == (15 if head == "segmentation" else 0)


def test_dpt_use_bn_overrides_the_head_default() -> None:
    # use_bn switches the two BatchNorms of each of the 7 residual units in use; the segmentation head keeps its
    # own BN either way.
    assert _n_bn(DPT(head="segmentation", use_bn=False)) == 1
    assert _n_bn(DPT(head="depth", use_bn=True)) == 14


@pytest.mark.parametrize("head", ["segmentation", "depth"])
def test_dpt_vit_b_channels_on_a_small_grid(head: str) -> None:
    torch.manual_seed(0)
    model = DPT(head=head).eval()
    with torch.no_grad():
        out = model(_grid_feats(2, 768, 4, 4), out_size=(64, 64))
    assert out.shape == (2, 1, 64, 64)
    assert torch.isfinite(out).all()
    if head == "depth":
        assert out.min() > 0 and out.max() < 1
    else:
        assert out.min() < 0 < out.max()  # logits, no activation


@pytest.mark.parametrize("head", ["segmentation", "depth"])
def test_dpt_study_grid_gives_input_resolution(head: str) -> None:
    model = _tiny_dpt(head).eval()
    with torch.no_grad():
        out = model(_grid_feats(1, 32, 14, 14), out_size=(224, 224))
        resized = model(_grid_feats(1, 32, 14, 14), out_size=(100, 150))
    assert out.shape == (1, 1, 224, 224)
    assert resized.shape == (1, 1, 100, 150)


@pytest.mark.parametrize("grid", [(5, 7), (3, 2), (2, 2)])
def test_dpt_odd_and_tiny_grids(grid: tuple[int, int]) -> None:
    h, w = grid
    model = _tiny_dpt("depth").eval()
    with torch.no_grad():
        natural = model(_grid_feats(2, 32, h, w), out_size=(16 * h, 16 * w))
        other = model(_grid_feats(2, 32, h, w), out_size=(37, 41))
    assert natural.shape == (2, 1, 16 * h, 16 * w)
    assert other.shape == (2, 1, 37, 41)
    assert other.min() > 0 and other.max() < 1


def test_fusion_resize_to_double_size_equals_the_studys_fixed_x2() -> None:
    torch.manual_seed(0)
    block = _FusionBlock(8, use_bn=False, with_skip_unit=True).eval()
    x, skip = torch.randn(1, 8, 7, 7), torch.randn(1, 8, 7, 7)
    torch.testing.assert_close(block(x, skip, size=(14, 14)), block(x, skip))


@pytest.mark.parametrize("head", ["segmentation", "depth"])
def test_dpt_every_parameter_gets_a_gradient(head: str) -> None:
    model = _tiny_dpt(head).train()
    assert _params_without_grad(model, model(_grid_feats(2, 32, 5, 7), out_size=(80, 112))) == []


def test_dpt_study_layout_has_exactly_the_unused_unit_without_gradient() -> None:
    model = _tiny_dpt("segmentation", skip_unused=False).train()
    missing = _params_without_grad(model, model(_grid_feats(2, 32, 4, 4), out_size=(64, 64)))
    expected = [n for n, _ in model.named_parameters() if n.startswith("fusion.3.skip_unit.")]
    assert expected and missing == expected


def test_dpt_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="segmentation"):
        DPT(head="classification")
    model = _tiny_dpt("depth")
    with pytest.raises(ValueError, match="4 feature maps"):
        model(_grid_feats(1, 32, 4, 4)[:3], out_size=(64, 64))
    with pytest.raises(ValueError, match="B×32×h×w"):
        model(_grid_feats(1, 16, 4, 4), out_size=(64, 64))


# ----------------------------------------------------------------------------------------------- DeepLabV3+


def test_deeplabv3plus_parameter_count_matches_smp() -> None:
    model = DeepLabV3Plus(in_channels=(256, 2048))
    assert _n_params(model) == SMP_DEEPLABV3PLUS_R50_PARAMS
    assert _n_bn(model) == 9


def test_deeplabv3plus_resnet50_channels_small_input() -> None:
    torch.manual_seed(0)
    model = DeepLabV3Plus((256, 2048)).eval()
    with torch.no_grad():
        out = model([torch.randn(2, 256, 16, 16), torch.randn(2, 2048, 4, 4)], out_size=(64, 64))
    assert out.shape == (2, 1, 64, 64)
    assert torch.isfinite(out).all()


def _tiny_deeplab() -> DeepLabV3Plus:
    return DeepLabV3Plus(in_channels=(16, 32), channels=16, low_proj_channels=8, atrous_rates=(1, 2))


def test_deeplabv3plus_odd_sizes() -> None:
    # A 50-px input: layer1 13×13, output-stride-16 layer4 4×4; natural output 52×52, resized to 50×50.
    model = _tiny_deeplab().eval()
    with torch.no_grad():
        out = model([torch.randn(2, 16, 13, 13), torch.randn(2, 32, 4, 4)], out_size=(50, 50))
    assert out.shape == (2, 1, 50, 50)


def test_deeplabv3plus_every_parameter_gets_a_gradient() -> None:
    model = _tiny_deeplab().train()
    out = model([torch.randn(2, 16, 16, 16), torch.randn(2, 32, 4, 4)], out_size=(64, 64))
    assert _params_without_grad(model, out) == []


def test_deeplabv3plus_batch_of_one_trains_and_keeps_pooling_statistics() -> None:
    model = _tiny_deeplab().train()
    pool_bn = model.aspp.branches[-1].bn
    project_bn = model.aspp.project[1]
    pool_mean, project_mean = pool_bn.running_mean.clone(), project_bn.running_mean.clone()
    out = model([torch.randn(1, 16, 16, 16), torch.randn(1, 32, 4, 4)], out_size=(64, 64))
    assert out.shape == (1, 1, 64, 64) and torch.isfinite(out).all()
    assert _params_without_grad(model, out) == []
    # One 1×1 sample per channel: the pooling BN normalises with its running statistics and leaves them as they were.
    torch.testing.assert_close(pool_bn.running_mean, pool_mean)
    assert not torch.equal(project_bn.running_mean, project_mean)  # other BNs still learn batch statistics


def test_deeplabv3plus_rejects_swapped_inputs() -> None:
    model = _tiny_deeplab()
    with pytest.raises(ValueError, match="'low' must be B×16"):
        model([torch.randn(1, 32, 4, 4), torch.randn(1, 16, 16, 16)], out_size=(64, 64))


# ------------------------------------------------------------------------------------------ ResNet depth


def test_resnet_depth_parameter_count_resnet50() -> None:
    model = ResNetDepthDecoder()
    assert _n_params(model) == RESNET_DEPTH_R50_PARAMS
    assert _n_bn(model) == 33  # 3 levels × (reduce + 3 blocks × 3 + 1 projection shortcut)


def _resnet_feats(batch: int, channels: tuple[int, ...], size: int) -> list[Tensor]:
    # ResNet stage sizes: conv1 and max-pool each halve with ceil, then layer2..4 halve with ceil.
    sides, side = [], size
    for _ in range(2):
        side = (side + 1) // 2
    for _ in channels:
        sides.append(side)
        side = (side + 1) // 2
    return [torch.randn(batch, c, s, s) for c, s in zip(channels, sides, strict=True)]


def test_resnet_depth_resnet50_channels_small_input() -> None:
    torch.manual_seed(0)
    model = ResNetDepthDecoder().train()
    out = model(_resnet_feats(2, (256, 512, 1024, 2048), 32), out_size=(32, 32))
    assert out.shape == (2, 1, 32, 32)
    assert out.min() > 0 and out.max() < 1


@pytest.mark.parametrize("size", [64, 50])
def test_resnet_depth_tiny_channels_any_input_size(size: int) -> None:
    channels = (32, 64, 128, 256)
    model = ResNetDepthDecoder(in_channels=channels).train()
    feats = _resnet_feats(2, channels, size)
    out = model(feats, out_size=(size, size))
    assert out.shape == (2, 1, size, size)
    assert out.min() > 0 and out.max() < 1
    assert _params_without_grad(model, out) == []


def test_resnet_depth_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="multiples of 4"):
        ResNetDepthDecoder(in_channels=(30, 64, 128, 256))
    model = ResNetDepthDecoder(in_channels=(32, 64, 128, 256))
    with pytest.raises(ValueError, match=r"layer2\) must be B×64"):
        model(_resnet_feats(1, (32, 32, 128, 256), 64), out_size=(64, 64))
