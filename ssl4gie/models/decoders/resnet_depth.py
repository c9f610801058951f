"""The study's ResNet depth decoder: three bottleneck fusion levels and a Sigmoid head
(``ResNet_from_Any`` with ``dense="depth"`` in the study's ``Models/models.py``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ResNetDepthDecoder"]


def _conv_bn(in_channels: int, out_channels: int, kernel_size: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
        nn.BatchNorm2d(out_channels),
    ]


class _Bottleneck(nn.Module):
    """ReLU(residual(x) + shortcut(x)); residual = 1×1 → 3×3 → 1×1 at a quarter of ``out_channels``.

    The shortcut is Conv1×1 + BN when the channel count changes, the identity otherwise.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 4
        self.residual = nn.Sequential(
            *_conv_bn(in_channels, mid, 1),
            nn.ReLU(),
            *_conv_bn(mid, mid, 3),
            nn.ReLU(),
            *_conv_bn(mid, out_channels, 1),
        )
        self.shortcut = (
            nn.Sequential(*_conv_bn(in_channels, out_channels, 1))
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.residual(x) + self.shortcut(x))


class _DecoderLevel(nn.Module):
    """Reduce the coarse map to the skip's width (Conv1×1 + BN), upsample, concat the skip, three bottlenecks."""

    def __init__(self, coarse_channels: int, skip_channels: int) -> None:
        super().__init__()
        self.reduce = nn.Sequential(*_conv_bn(coarse_channels, skip_channels, 1))
        self.blocks = nn.Sequential(
            _Bottleneck(2 * skip_channels, skip_channels),
            _Bottleneck(skip_channels, skip_channels),
            _Bottleneck(skip_channels, skip_channels),
        )

    def forward(self, coarse: Tensor, skip: Tensor) -> Tensor:
        x = self.reduce(coarse)
        # Resizing to the skip's size (align_corners=True) equals the study's ×2 when the sizes are exactly
        # double, and also handles inputs whose side is not a multiple of 32 (e.g. layer4 4×4 vs layer3 7×7).
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)
        return self.blocks(torch.cat([x, skip], dim=1))


class ResNetDepthDecoder(nn.Module):
    """Depth decoder on the four ResNet stages; output in (0, 1) (Sigmoid).

    ``in_channels`` are the widths of layer1..layer4 (strides 4, 8, 16, 32). Three levels fuse coarse to fine —
    (layer4, layer3), then (that, layer2), then (that, layer1) — each at the skip's width, i.e. 1024, 512, 256
    for ResNet-50 as in the study, so a narrow test ResNet works the same way. The head upsamples ×2 (bilinear,
    align_corners=True), Conv3×3(→``head_channels[0]``), ×2, Conv3×3(→``head_channels[1]``), ReLU, Conv1×1(→1),
    Sigmoid: the natural output is 4× layer1's size (the input size for inputs divisible by 32). If ``out_size``
    differs, the output is resized bilinearly (align_corners=False). All convs have a bias; BatchNorm everywhere
    in the levels (the study converts it to SyncBatchNorm under DDP). ResNet-50 widths: 10,602,817 parameters.
    """

    def __init__(
        self,
        in_channels: Sequence[int] = (256, 512, 1024, 2048),
        head_channels: tuple[int, int] = (128, 32),
    ) -> None:
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(
                f"ResNetDepthDecoder in_channels needs the 4 widths of layer1..layer4, got {list(in_channels)}"
            )
        if any(c < 4 or c % 4 for c in in_channels[:3]):
            raise ValueError(
                "ResNetDepthDecoder in_channels of layer1..layer3 must be multiples of 4 (bottleneck width is a "
                f"quarter), got {list(in_channels)}"
            )
        self.in_channels = tuple(in_channels)
        c1, c2, c3, c4 = self.in_channels
        self.levels = nn.ModuleList([_DecoderLevel(c4, c3), _DecoderLevel(c3, c2), _DecoderLevel(c2, c1)])
        h1, h2 = head_channels
        self.head = nn.Sequential(
            nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=True),
            nn.Conv2d(c1, h1, 3, padding=1),
            nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=True),
            nn.Conv2d(h1, h2, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(h2, 1, 1),
            nn.Sigmoid(),
        )

    def forward(self, feats: Sequence[Tensor], out_size: tuple[int, int]) -> Tensor:
        """Decode [layer1, layer2, layer3, layer4] maps (NCHW) into B×1×``out_size`` depth in (0, 1)."""
        if len(feats) != 4:
            raise ValueError(f"ResNetDepthDecoder expects 4 feature maps (layer1..layer4), got {len(feats)}")
        for i, (f, c) in enumerate(zip(feats, self.in_channels, strict=True)):
            if f.ndim != 4 or f.shape[1] != c:
                raise ValueError(
                    f"ResNetDepthDecoder feature map {i} (layer{i + 1}) must be B×{c}×h×w, got {tuple(f.shape)}"
                )
        x = feats[3]
        for level, skip in zip(self.levels, (feats[2], feats[1], feats[0]), strict=True):
            x = level(x, skip)
        out = self.head(x)
        if tuple(out.shape[-2:]) != tuple(out_size):
            out = F.interpolate(out, size=tuple(out_size), mode="bilinear", align_corners=False)
        return out
