"""The segmentation ResNet-50 is dilated as smp 0.3.2's DeepLabV3Plus dilates it, from the shipped config."""

from __future__ import annotations

import pytest
import torch
import torchvision
from helpers import TINY, compose_config
from torch import nn

from ssl4gie.errors import ConfigError
from ssl4gie.models.backbone import create_backbone, intermediates
from ssl4gie.models.dilation import dilate_like_smp
from ssl4gie.tasks.segmentation import build_dense_model

SIZE = 64  # one small forward of the real ResNet-50 keeps this fast


@pytest.fixture(scope="module")
def encoder() -> nn.Module:
    """The real segmentation encoder, built as a run builds it (random init, no weights to download)."""
    cfg = compose_config(["backbone=resnet50", "pretraining=random", f"task.input_size={SIZE}"])
    model = build_dense_model(
        cfg.task.decoder, "segmentation", SIZE, cfg.backbone, cfg.pretraining, False, "unused"
    )
    return model.encoder.eval()


def _smp_rule(stage: nn.Module, dilation: int) -> None:
    """smp 0.3.2's ``replace_strides_with_dilation``, restated here independently of ssl4gie's code."""
    for m in stage.modules():
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0]
            m.stride, m.dilation, m.padding = (1, 1), (dilation, dilation), ((k // 2) * dilation,) * 2


def test_every_layer4_conv_is_dilated_and_layer4_has_stride_16(encoder):
    convs = {n: m for n, m in encoder.layer4.named_modules() if isinstance(m, nn.Conv2d)}
    three = {n: m for n, m in convs.items() if m.kernel_size == (3, 3)}
    assert len(three) == 3  # one per bottleneck, the first block's conv2 included
    for name, conv in three.items():
        assert (conv.stride, conv.dilation, conv.padding) == ((1, 1), (2, 2), (2, 2)), name
    assert all(m.stride == (1, 1) for m in convs.values())  # the downsampling 1×1 conv too
    # Only hyper-parameters changed: the state-dict keys are those of the undilated timm model.
    cfg = compose_config(["backbone=resnet50"])
    assert list(encoder.state_dict()) == list(create_backbone(cfg.backbone, SIZE).state_dict())
    with torch.no_grad():
        (layer4,) = intermediates(encoder, torch.zeros(1, 3, SIZE, SIZE), [4])
    assert layer4.shape == (1, 2048, SIZE // 16, SIZE // 16)


def test_layer4_equals_torchvision_resnet50_dilated_by_smps_rule(encoder):
    torch.manual_seed(0)
    reference = torchvision.models.resnet50().eval()
    _smp_rule(reference.layer4, 2)
    with torch.no_grad():  # BatchNorm statistics away from 1/0, so that eval-mode BN is not near the identity
        for m in reference.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1), m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.1, 0.1)
    weights = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    encoder.load_state_dict(weights)  # strict: timm's ResNet-50 keys are torchvision's
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = reference.layer4(
            reference.layer3(
                reference.layer2(
                    reference.layer1(reference.maxpool(reference.relu(reference.bn1(reference.conv1(x)))))
                )
            )
        )
        (ours,) = intermediates(encoder, x, [4])
    assert ours.shape == expected.shape == (1, 2048, SIZE // 16, SIZE // 16)
    assert (ours - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_dilation_of_a_stage_the_encoder_lacks_is_a_config_error():
    cfg = compose_config(TINY)
    encoder = create_backbone(cfg.backbone, 32)
    with pytest.raises(ConfigError, match="layer5.*layer4"):
        dilate_like_smp(encoder, {"layer5": 2})
