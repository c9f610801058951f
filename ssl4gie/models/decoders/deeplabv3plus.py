"""DeepLabV3+ decoder and head for ResNet segmentation, as smp 0.3.2's ``DeepLabV3Plus``.

The study used segmentation_models_pytorch 0.3.2's ``DeepLabV3Plus``; this is our own module with the same layers,
parameter count and initialisation, fed with backbone feature maps so that the encoder stays a timm model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DeepLabV3Plus"]


def _separable_conv(in_channels: int, out_channels: int, dilation: int = 1) -> nn.Sequential:
    """Depthwise Conv3×3 (atrous ``dilation``) then pointwise Conv1×1, both without bias (BN follows)."""
    return nn.Sequential(
        nn.Conv2d(
            in_channels, in_channels, 3, padding=dilation, dilation=dilation, groups=in_channels, bias=False
        ),
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
    )


def _bn_relu(conv: nn.Module, channels: int) -> nn.Sequential:
    return nn.Sequential(conv, nn.BatchNorm2d(channels), nn.ReLU())


class _ImagePooling(nn.Module):
    """ASPP image-level branch: global average pool → Conv1×1 → BN → ReLU, broadcast back to the input size.

    At batch size 1 in training mode the BatchNorm sees one value per channel, whose batch statistics are
    undefined: PyTorch raises there, and so does smp 0.3.2 (the study always trained with larger batches). We
    instead normalise that one case with the running statistics and leave them unchanged, so batch-size-1
    training (tiny datasets, gradient accumulation, a last batch of one) runs; batches of two or more behave
    exactly like smp. Under DDP the sampler gives every rank the same batch size, so all ranks take the same path.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x.mean(dim=(2, 3), keepdim=True))
        if self.training and y.shape[0] == 1:
            bn = self.bn
            y = F.batch_norm(
                y, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False, eps=bn.eps
            )
        else:
            y = self.bn(y)
        # smp upsamples the 1×1 map bilinearly, which is a constant map: broadcasting gives the same values.
        return F.relu(y).expand(-1, -1, x.shape[2], x.shape[3])


class _ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1×1, separable atrous 3×3 per rate, image pooling; concat → Conv1×1."""

    def __init__(self, in_channels: int, channels: int, atrous_rates: Sequence[int], dropout: float) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [_bn_relu(nn.Conv2d(in_channels, channels, 1, bias=False), channels)]
            + [_bn_relu(_separable_conv(in_channels, channels, rate), channels) for rate in atrous_rates]
            + [_ImagePooling(in_channels, channels)]
        )
        n = len(self.branches)
        self.project = nn.Sequential(
            nn.Conv2d(n * channels, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


class DeepLabV3Plus(nn.Module):
    """DeepLabV3+ decoder + segmentation head on a stride-4 and a stride-16 feature map.

    ``in_channels`` = (low, high) widths. ``high`` (B×``high_channels``×h×w, e.g. ResNet layer4 at output stride 16, 2048 ch) goes through ASPP
    (``channels`` wide, separable atrous convs at ``atrous_rates``, projection with ``dropout``) and a separable
    Conv3×3 + BN + ReLU, is upsampled bilinearly (align_corners=True) to the size of ``low`` (B×``low_channels``×
    H×W, e.g. ResNet layer1, 256 ch), concatenated after ``low``'s Conv1×1(→``low_proj_channels``) + BN + ReLU,
    and fused by a separable Conv3×3 + BN + ReLU. The head is a Conv1×1(→``out_channels``) — smp 0.3.2 builds
    DeepLabV3+'s head with kernel 1, not 3 — and ×4 bilinear upsampling (align_corners=True), so the natural
    output is 4·(H, W), the input resolution. If ``out_size`` differs, the logits are then resized bilinearly
    (align_corners=False). Returns **logits** B×``out_channels``×``out_size``.

    With ResNet-50 channels (256, 2048) and the defaults this has 3,169,553 parameters (decoder 3,169,296 + head
    257, 9 BatchNorm layers), the same as smp's ``decoder`` + ``segmentation_head``. Initialisation is PyTorch's
    default, as in the study: smp 0.3.2's DeepLabV3/DeepLabV3+ never call their ``initialize()`` (its other
    architectures do), so its Kaiming/Xavier decoder init does not apply there.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: int = 256,
        low_proj_channels: int = 48,
        atrous_rates: Sequence[int] = (12, 24, 36),
        out_channels: int = 1,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if len(in_channels) != 2:
            raise ValueError(
                f"DeepLabV3Plus in_channels needs the widths of (low, high) features, got {in_channels}"
            )
        low_channels, high_channels = in_channels
        self.low_channels = low_channels
        self.high_channels = high_channels
        self.aspp = _ASPP(high_channels, channels, atrous_rates, dropout)
        self.aspp_out = _bn_relu(_separable_conv(channels, channels), channels)
        self.low_proj = _bn_relu(nn.Conv2d(low_channels, low_proj_channels, 1, bias=False), low_proj_channels)
        self.fuse = _bn_relu(_separable_conv(channels + low_proj_channels, channels), channels)
        self.head = nn.Conv2d(channels, out_channels, 1)

    def forward(self, feats: Sequence[Tensor], out_size: tuple[int, int]) -> Tensor:
        """Decode ``feats = [low (stride 4), high (stride 16)]`` into logits of size ``out_size``."""
        low, high = feats
        for name, t, c in (("low", low, self.low_channels), ("high", high, self.high_channels)):
            if t.ndim != 4 or t.shape[1] != c:
                raise ValueError(
                    f"DeepLabV3Plus input {name!r} must be B×{c}×h×w (NCHW), got {tuple(t.shape)}"
                )
        x = self.aspp_out(self.aspp(high))
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=True)
        x = self.fuse(torch.cat([x, self.low_proj(low)], dim=1))
        x = self.head(x)
        x = F.interpolate(x, size=(4 * x.shape[2], 4 * x.shape[3]), mode="bilinear", align_corners=True)
        if tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, size=tuple(out_size), mode="bilinear", align_corners=False)
        return x
