"""DPT decoder for ViT patch-grid features, as the study used it for segmentation and depth
(its ``Models/DPT_decoder.py``).

Written from the DPT paper's description (reassemble → refinenet fusion → head), with the study's widths. The
module only sees feature maps, so it works for any patch grid, not just 224 px / patch 16 (the study's
module hard-codes a 14×14 grid).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DPT"]

HEADS = ("segmentation", "depth")


class _ResidualConvUnit(nn.Module):
    """ReLU → Conv3×3 → [BN] → ReLU → Conv3×3 → [BN], added to the input. Convs carry a bias only without BN."""

    def __init__(self, channels: int, use_bn: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=not use_bn)
        self.bn1 = nn.BatchNorm2d(channels) if use_bn else nn.Identity()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=not use_bn)
        self.bn2 = nn.BatchNorm2d(channels) if use_bn else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn1(self.conv1(F.relu(x)))
        out = self.bn2(self.conv2(F.relu(out)))
        return out + x


class _FusionBlock(nn.Module):
    """Refinenet fusion: ``x (+ skip_unit(skip))`` → unit → bilinear upsample (align_corners=True) → Conv1×1."""

    def __init__(self, channels: int, use_bn: bool, with_skip_unit: bool) -> None:
        super().__init__()
        self.skip_unit = _ResidualConvUnit(channels, use_bn) if with_skip_unit else None
        self.unit = _ResidualConvUnit(channels, use_bn)
        self.out_conv = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor, skip: Tensor | None = None, size: tuple[int, int] | None = None) -> Tensor:
        """Fuse ``x`` with ``skip`` (same shape), then upsample to ``size`` (``None``: exactly ×2)."""
        if skip is not None:
            if self.skip_unit is None:
                raise RuntimeError(
                    "this fusion block was built without a skip unit; it cannot take a skip input"
                )
            x = x + self.skip_unit(skip)
        x = self.unit(x)
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)
        else:
            # With align_corners=True, resizing n → 2n equals the study's fixed ×2; an explicit size also covers
            # odd grids, where the stride-2 level is ceil(n/2) and ×2 would overshoot the skip by one pixel.
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        return self.out_conv(x)


def _upsample2x() -> nn.Module:
    return nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=True)


class DPT(nn.Module):
    """DPT decoder: four ViT feature maps on the patch grid → one dense map at ``out_size``.

    Structure (study defaults in brackets): each of the four inputs (C = ``in_channels`` [768], h×w patch grid) is
    reassembled to its own scale — level 1: Conv1×1(C→r1) + ConvTranspose(k4, s4) (×4); level 2: Conv1×1(C→r2)
    + ConvTranspose(k2, s2) (×2); level 3: Conv1×1(C→r3); level 4: Conv1×1(C→r4) + Conv3×3 stride 2 (÷2),
    where r = ``reassemble_channels`` [96, 192, 384, 768] — then projected to ``features`` [256] channels by a
    bias-free Conv3×3. Fusion runs coarse to fine (level 4, then 3, 2, 1), each block adding a residual conv unit
    (RCU) of the skip level, applying a second RCU, upsampling and a Conv1×1. Heads:

    * ``"segmentation"``: Conv3×3 (no bias) → BN → ReLU → Dropout(0.1) → Conv1×1(→``out_channels``) → ×2;
      returns **logits** (no activation).
    * ``"depth"``: Conv3×3(→features/2) → ×2 → Conv3×3(→32) → ReLU → Conv1×1(→``out_channels``) → **Sigmoid**,
      values in (0, 1).

    The natural output size is 16·(h, w) (224² for a 14×14 grid); if ``out_size`` differs, the head output is
    resized bilinearly (align_corners=False). ``use_bn`` (default: BN iff segmentation, as the study) only
    switches BatchNorm in the RCUs; the segmentation head always has its BatchNorm.

    **The unused unit and the parameter counts.** The study builds every fusion block with two RCUs, but the
    coarsest block (level 4) has no skip input, so its first RCU never runs. The study's counts include it: with
    ``skip_unused=False`` this module has exactly the study's parameters at the defaults, 20,328,641
    (segmentation, 17 BatchNorm layers) and 20,065,921 (depth). That unit gets no gradient, which breaks
    DistributedDataParallel unless ``find_unused_parameters=True`` (the study's workaround). The default
    ``skip_unused=True`` omits it: 19,147,969 (segmentation, 15 BatchNorm layers) and 18,885,761 (depth)
    parameters, the same function, and every parameter is used. Keep ``False`` only to load a state dict that
    holds the unit.
    """

    def __init__(
        self,
        in_channels: int | Sequence[int] = 768,
        reassemble_channels: Sequence[int] = (96, 192, 384, 768),
        features: int = 256,
        head: str = "segmentation",
        use_bn: bool | None = None,
        out_channels: int = 1,
        skip_unused: bool = True,
    ) -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"DPT head must be one of {list(HEADS)}, got {head!r}")
        if len(reassemble_channels) != 4:
            raise ValueError(
                f"DPT reassemble_channels needs 4 widths (one per level), got {list(reassemble_channels)}"
            )
        if use_bn is None:
            use_bn = head == "segmentation"
        if not isinstance(in_channels, int):  # one width per hooked block: a ViT's are all equal
            if len(set(in_channels)) != 1:
                raise ValueError(f"DPT needs feature maps of one width, got {list(in_channels)}")
            in_channels = in_channels[0]
        self.in_channels = in_channels
        self.head_kind = head
        r1, r2, r3, r4 = reassemble_channels
        self.reassemble = nn.ModuleList(
            [
                nn.Sequential(nn.Conv2d(in_channels, r1, 1), nn.ConvTranspose2d(r1, r1, 4, stride=4)),
                nn.Sequential(nn.Conv2d(in_channels, r2, 1), nn.ConvTranspose2d(r2, r2, 2, stride=2)),
                nn.Sequential(nn.Conv2d(in_channels, r3, 1)),
                nn.Sequential(nn.Conv2d(in_channels, r4, 1), nn.Conv2d(r4, r4, 3, stride=2, padding=1)),
            ]
        )
        self.project = nn.ModuleList(
            [nn.Conv2d(r, features, 3, padding=1, bias=False) for r in reassemble_channels]
        )
        # fusion[i] serves level i + 1; fusion[3] (coarsest) never receives a skip input.
        self.fusion = nn.ModuleList(
            [_FusionBlock(features, use_bn, with_skip_unit=i < 3 or not skip_unused) for i in range(4)]
        )
        if head == "segmentation":
            self.head = nn.Sequential(
                nn.Conv2d(features, features, 3, padding=1, bias=False),
                nn.BatchNorm2d(features),
                nn.ReLU(),
                nn.Dropout(0.1),
                nn.Conv2d(features, out_channels, 1),
                _upsample2x(),
            )
        else:
            self.head = nn.Sequential(
                nn.Conv2d(features, features // 2, 3, padding=1),
                _upsample2x(),
                nn.Conv2d(features // 2, 32, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(32, out_channels, 1),
                nn.Sigmoid(),
            )

    def forward(self, feats: Sequence[Tensor], out_size: tuple[int, int]) -> Tensor:
        """Decode four B×``in_channels``×h×w maps (shallow to deep; CLS token already dropped).

        Returns B×``out_channels``×``out_size``: logits (segmentation) or values in (0, 1) (depth).
        """
        if len(feats) != 4:
            raise ValueError(f"DPT expects 4 feature maps (one per hooked block), got {len(feats)}")
        for i, f in enumerate(feats):
            if f.ndim != 4 or f.shape[1] != self.in_channels:
                raise ValueError(
                    f"DPT feature map {i} must be B×{self.in_channels}×h×w (NCHW), got shape {tuple(f.shape)}"
                )
        levels = [proj(reas(f)) for f, reas, proj in zip(feats, self.reassemble, self.project, strict=True)]
        path = self.fusion[3](levels[3], size=levels[2].shape[-2:])
        path = self.fusion[2](path, levels[2], size=levels[1].shape[-2:])
        path = self.fusion[1](path, levels[1], size=levels[0].shape[-2:])
        path = self.fusion[0](path, levels[0])
        out = self.head(path)
        if tuple(out.shape[-2:]) != tuple(out_size):
            out = F.interpolate(out, size=tuple(out_size), mode="bilinear", align_corners=False)
        return out
