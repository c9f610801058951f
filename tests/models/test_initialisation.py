"""Backbone initialisation as the study's (torchvision's for a random ResNet-50) and parameters that a model never
uses kept out of training (DDP needs a gradient for every trainable parameter)."""

from __future__ import annotations

import pytest
import torch
from helpers import SMALL_DECODERS, TINY, compose_config

from ssl4gie.models.backbone import create_backbone
from ssl4gie.utils.conf import instantiate_checked


@pytest.mark.parametrize("tiny", [True, False])
def test_random_resnet_has_torchvision_initialisation(tiny):
    """timm zero-initialises each block's last BatchNorm; torchvision (the study) does not."""
    cfg = compose_config([f"backbone.tiny={str(tiny).lower()}"])
    encoder = create_backbone(cfg.backbone, 224)
    last_bns = [
        block.bn3
        for layer in (encoder.layer1, encoder.layer2, encoder.layer3, encoder.layer4)
        for block in layer
    ]
    assert last_bns and all(torch.all(bn.weight == 1) and torch.all(bn.bias == 0) for bn in last_bns)
    conv = encoder.layer1[0].conv2.weight  # Kaiming-normal, fan_out, as torchvision
    fan_out = conv.shape[0] * conv.shape[2] * conv.shape[3]
    assert conv.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.15)


@pytest.mark.parametrize("task", ["segmentation", "depth"])
@pytest.mark.parametrize(
    "backbone, unused", [("vit_b", {"encoder.norm.weight", "encoder.norm.bias"}), ("resnet50", set())]
)
def test_dense_models_train_only_parameters_that_get_gradients(task, backbone, unused, tmp_path):
    overrides = [f"task={task}", f"backbone={backbone}", *TINY, "task.input_size=64"]
    if task == "segmentation":
        overrides += SMALL_DECODERS
    cfg = compose_config(overrides)
    model = instantiate_checked(cfg.task, _recursive_=False).build_model(
        cfg.backbone, cfg.pretraining, False, str(tmp_path)
    )
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == unused
    assert set(model.state_dict()) >= unused  # the keys stay: pretrained and study checkpoints still load
    model.train()
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
