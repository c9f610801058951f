"""Dilating encoder stages the way segmentation_models_pytorch 0.3.2 does for its ``DeepLabV3Plus`` (output
stride 16), the study's ResNet segmentation model.

smp's ``make_dilated`` (``replace_strides_with_dilation``) walks every ``nn.Conv2d`` of a stage and sets stride 1,
dilation d and padding (k // 2)·d, so *every* 3×3 conv of the stage is dilated, the first block's included, and
its downsampling 1×1 conv keeps the full resolution. timm's ``output_stride`` (like torchvision's
``replace_stride_with_dilation``) instead keeps the first block's 3×3 conv at the previous dilation (1 for
ResNet layer4): the same weights, but a different function. The study's DeepLabV3+ encoder is smp's, hence this.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from ssl4gie.errors import ConfigError

__all__ = ["dilate_like_smp"]


def dilate_like_smp(encoder: nn.Module, dilations: Mapping[str, int]) -> nn.Module:
    """Apply smp 0.3.2's rule in place to the submodules named in ``dilations`` (e.g. ``{"layer4": 2}``).

    Every ``nn.Conv2d`` inside ``encoder.get_submodule(name)`` gets stride (1, 1), dilation (d, d) and padding
    ((kh // 2)·d, (kw // 2)·d). Only these hyper-parameters change: parameters, buffers and state-dict keys stay
    as they are. A name the encoder lacks is a ConfigError listing its top-level children. Returns ``encoder``.

    With timm's ``output_stride`` set to the same overall stride the result is identical whether or not timm
    dilated the stage first, and timm's ``feature_info`` then reports the true reductions.
    """
    for name, dilation in dilations.items():
        try:
            stage = encoder.get_submodule(name)
        except AttributeError:
            children = [n for n, _ in encoder.named_children()]
            raise ConfigError(
                f"encoder_dilation names '{name}', which the encoder does not have; its stages: {children}"
            ) from None
        d = int(dilation)
        if d < 1:
            raise ConfigError(f"encoder_dilation.{name}={dilation}: a dilation must be an integer >= 1")
        for conv in stage.modules():
            if isinstance(conv, nn.Conv2d):
                kh, kw = conv.kernel_size
                conv.stride, conv.dilation, conv.padding = (1, 1), (d, d), ((kh // 2) * d, (kw // 2) * d)
    return encoder
