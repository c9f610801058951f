"""The study's finetuned files in the tests: their classifier state and independent forward passes."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from helpers.checkpoints import (
    random_like,
    ref_bn,
    ref_conv,
    tiny_backbone,
)
from ssl4gie.data.transforms import IMAGENET_MEAN, IMAGENET_STD

SIZE = 64  # task.input_size of the FAST overrides


def study_classifier_state(family: str, classes: int) -> dict:
    """The study's classifier: the backbone's own keys (ResNet fc / ViT head removed) + ``lin_head``."""
    torch.manual_seed(0)
    backbone = random_like(tiny_backbone(family, img_size=SIZE).state_dict())
    width = 256 if family == "resnet" else 32  # tiny ResNet-50: 64 × 4 channels; tiny ViT: embed_dim 32
    state = {
        **backbone,
        "lin_head.weight": torch.randn(classes, width) * 0.1,
        "lin_head.bias": torch.randn(classes),
    }
    if family == "vit":
        state["decoder_pos_embed"] = torch.zeros(1, (SIZE // 16) ** 2 + 1, 16)  # MAE-derived models carry it
    return state


def independent_probabilities(family: str, state: dict, paths: list[str]) -> np.ndarray:
    """The study's model and evaluation, written independently: timm's classifier with lin_head as its fc/head,
    PIL bicubic resize to SIZE², ToTensor, ImageNet normalisation, softmax."""
    name = {"resnet": "fc", "vit": "head"}[family]
    model = tiny_backbone(family, img_size=SIZE, num_classes=state["lin_head.weight"].shape[0])
    weights = {k: v for k, v in state.items() if not k.startswith(("lin_head.", "decoder_pos_embed"))}
    weights[f"{name}.weight"], weights[f"{name}.bias"] = state["lin_head.weight"], state["lin_head.bias"]
    model.load_state_dict(weights)
    model.eval()
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    images = []
    for path in paths:
        image = Image.open(path).convert("RGB").resize((SIZE, SIZE), Image.Resampling.BICUBIC)
        images.append(
            (torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255 - mean) / std
        )
    with torch.no_grad():
        return torch.softmax(model(torch.stack(images)), dim=1).numpy()


# ------------------------------------------------------------------------- ResNet-50 segmentation (smp DeepLabV3+)
SMP_NAMES = (  # ssl4gie -> smp 0.3.2's DeepLabV3Plus, for fabricating a file in their layout
    ("decoder.aspp.branches.4.conv.", "decoder.aspp.0.convs.4.1."),
    ("decoder.aspp.branches.4.bn.", "decoder.aspp.0.convs.4.2."),
    ("decoder.aspp.branches.", "decoder.aspp.0.convs."),
    ("decoder.aspp.project.", "decoder.aspp.0.project."),
    ("decoder.aspp_out.0.", "decoder.aspp.1."),
    ("decoder.aspp_out.1.", "decoder.aspp.2."),
    ("decoder.low_proj.", "decoder.block1."),
    ("decoder.fuse.", "decoder.block2."),
    ("decoder.head.", "segmentation_head.0."),
    ("encoder.", "encoder."),
)


def smp_deeplab_forward(sd: dict, layer1: torch.Tensor, layer4: torch.Tensor) -> torch.Tensor:
    """smp 0.3.2's DeepLabV3+ decoder and head (eval mode) from smp's own key names, with functional ops."""

    def conv(x, name, **kw):
        return ref_conv(sd, x, name, **kw)

    def bn_relu(x, name):
        return F.relu(ref_bn(sd, x, name))

    def separable(x, name, dilation=1):  # depthwise 3×3 (groups = channels), then pointwise 1×1
        x = conv(x, f"{name}.0", padding=dilation, dilation=dilation, groups=x.shape[1])
        return conv(x, f"{name}.1")

    aspp = "decoder.aspp.0.convs"
    branches = [bn_relu(conv(layer4, f"{aspp}.0.0"), f"{aspp}.0.1")]
    for i, rate in zip((1, 2, 3), (12, 24, 36), strict=True):
        branches.append(bn_relu(separable(layer4, f"{aspp}.{i}.0", rate), f"{aspp}.{i}.1"))
    pooled = bn_relu(conv(layer4.mean(dim=(2, 3), keepdim=True), f"{aspp}.4.1"), f"{aspp}.4.2")
    branches.append(F.interpolate(pooled, size=layer4.shape[-2:], mode="bilinear", align_corners=False))
    x = bn_relu(conv(torch.cat(branches, 1), "decoder.aspp.0.project.0"), "decoder.aspp.0.project.1")
    x = bn_relu(separable(x, "decoder.aspp.1"), "decoder.aspp.2")
    x = F.interpolate(x, scale_factor=4.0, mode="bilinear", align_corners=True)
    high = bn_relu(conv(layer1, "decoder.block1.0"), "decoder.block1.1")
    x = bn_relu(separable(torch.cat([x, high], 1), "decoder.block2.0"), "decoder.block2.1")
    return F.interpolate(
        conv(x, "segmentation_head.0"), scale_factor=4.0, mode="bilinear", align_corners=True
    )
