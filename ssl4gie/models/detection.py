"""Faster R-CNN detectors (torchvision) on timm encoders, as in the study's ``Object_detection/`` scripts.

* :func:`resnet_fpn_detector` — a timm ResNet wrapped by torchvision's ``BackboneWithFPN`` (layer1..4, 256 channels,
  LastLevelMaxPool), i.e. torchvision's ResNet-50-FPN Faster R-CNN with our encoder inside.
* :func:`vit_detector` — a plain ViT à la ViTDet: CLS token removed, windowed attention in most blocks, the
  final norm, then a simple feature pyramid with channel-wise LayerNorm (strides 4..32 + "pool"). Two variants
  reproduce the study's detector (``Models/models.py``, ``ViTDet_FPN``): ``pyramid_norm="study"``
  (whole-(C,H,W) LayerNorms, biased convs) and ``pos_embed="study"`` (the 1×(1+G²)×C table kept, its G×G part
  interpolated to the canvas every forward).

Both take images as float [0, 1] tensors and normalise inside with ImageNet mean/std (as the study's
detectors) unless a pretraining row has its own (``image_mean`` / ``image_std``), use torchvision's default
anchors (one size per level, 32..512, ratios 0.5/1/2) and 2 classes (background, polyp).

The pyramid is always built on a stride-16 map of the canvas (RoIAlign infers power-of-two level scales from map
sizes): a ViT with another patch size (ViT-B/14) sees the canvas resized to (canvas/16)·patch px, so its token grid
is canvas/16 whatever the patch.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d, freeze_batch_norm_2d
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ssl4gie.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ssl4gie.errors import ConfigError

log = logging.getLogger(__name__)

NUM_CLASSES = 2  # background + polyp
PYRAMID_STRIDE = 16  # the ViT map the simple feature pyramid starts from, in canvas pixels per token
RESNET_LAYERS = ("layer1", "layer2", "layer3", "layer4")  # timm ResNets use torchvision's child names


def _faster_rcnn(
    backbone: nn.Module,
    score_threshold: float,
    detections_per_img: int,
    rois_per_image: int,
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
    **transform,
) -> FasterRCNN:
    return FasterRCNN(
        backbone,
        num_classes=NUM_CLASSES,
        image_mean=list(IMAGENET_MEAN if image_mean is None else image_mean),
        image_std=list(IMAGENET_STD if image_std is None else image_std),
        box_score_thresh=score_threshold,
        box_detections_per_img=detections_per_img,
        box_batch_size_per_image=rois_per_image,
        **transform,
    )


def resnet_fpn_detector(
    encoder: nn.Module,
    *,
    frozen: bool = False,
    frozen_bn: bool = True,
    fpn_channels: int = 256,
    min_size: int = 800,
    max_size: int = 1333,
    score_threshold: float = 0.05,
    detections_per_img: int = 100,
    rois_per_image: int = 512,
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
) -> FasterRCNN:
    """Faster R-CNN with an FPN on the timm ResNet ``encoder`` (weights already loaded).

    ``frozen_bn`` turns every BatchNorm into a FrozenBatchNorm (fixed statistics and affine, as torchvision does
    for pretrained backbones); ``frozen`` also stops gradients into the encoder (and implies ``frozen_bn``), so the
    encoder stays bit-identical during training. Images are resized inside the model so that the short side is
    ``min_size`` unless the long side would exceed ``max_size``; detections come back in the input's frame.
    Post-processing keeps detections scored above ``score_threshold``, at most ``detections_per_img``; the box
    head trains on ``rois_per_image`` sampled proposals per image (torchvision's ``box_batch_size_per_image``).
    ``image_mean`` / ``image_std``: the input normalisation (None: ImageNet's).
    """
    if frozen or frozen_bn:
        encoder = freeze_batch_norm_2d(encoder)
    if frozen:
        encoder.requires_grad_(False)
    channels = {info["module"]: info["num_chs"] for info in encoder.feature_info}
    missing = [name for name in RESNET_LAYERS if name not in channels]
    if missing:
        raise ConfigError(
            f"the ResNet detector needs encoder stages {list(RESNET_LAYERS)}; {missing} not found "
            f"in the timm model's feature_info {sorted(channels)}"
        )
    backbone = BackboneWithFPN(
        encoder,
        return_layers={name: str(i) for i, name in enumerate(RESNET_LAYERS)},
        in_channels_list=[channels[name] for name in RESNET_LAYERS],
        out_channels=fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )
    return _faster_rcnn(
        backbone,
        score_threshold,
        detections_per_img,
        rois_per_image,
        image_mean,
        image_std,
        min_size=min_size,
        max_size=max_size,
    )


# ------------------------------------------------------------------------------------------------------- ViT
def global_attention_blocks(depth: int) -> list[int]:
    """Blocks that keep global attention: the last block of each quarter (2, 5, 8, 11 for 12 blocks,
    as the study's ``Models/models.py``)."""
    return sorted({max(0, round((k + 1) * depth / 4) - 1) for k in range(4)})


class WindowPartition:
    """Makes a token-mixing module (timm ``Attention``) act independently inside non-overlapping windows.

    Forward hooks cut the module's B×(H·W)×C input into B·(H/w)·(W/w) sequences of w×w tokens (windows in
    row-major order, tokens row-major inside a window) and put its outputs back in place. On a timm ViT block this
    computes what the study's ``WindowedAttention`` does: the same windows in the same order, qkv with bias, scale
    head_dim^-0.5, and the output projection (per token, so applying it before or after un-permuting is the same);
    ``tests/models/checkpoints/test_study.py`` checks it against an explicit re-implementation of theirs.

    Hooks rather than a wrapping module keep the module, its class and its parameter names (``blocks.i.attn.qkv``
    / ``proj``) exactly as timm has them, so pretrained weights and checkpoints load unchanged; calling
    ``module.forward(x)`` directly bypasses the windows (global attention).
    """

    def __init__(self, grid: tuple[int, int], window: int) -> None:
        height, width = grid
        if height % window or width % window:
            raise ValueError(f"token grid {height}×{width} is not divisible into {window}×{window} windows")
        self.grid, self.window = (height, width), window

    def attach(self, module: nn.Module) -> nn.Module:
        module.register_forward_pre_hook(self._partition, with_kwargs=True)
        module.register_forward_hook(self._merge)
        module.window_size = self.window  # visible to anyone inspecting the model
        return module

    def _partition(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if kwargs.get("attn_mask") is not None or kwargs.get("is_causal"):
            raise ValueError("windowed attention does not take an attention mask")
        x, *rest = args
        (h, w), s = self.grid, self.window
        b, n, c = x.shape
        if n != h * w:
            raise ValueError(f"windowed attention expects {h}×{w} = {h * w} tokens (no class token), got {n}")
        windows = x.view(b, h // s, s, w // s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, s * s, c)
        return (windows, *rest), kwargs

    def _merge(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        (h, w), s = self.grid, self.window
        c = output.shape[-1]
        grid = output.view(-1, h // s, w // s, s, s, c).permute(0, 1, 3, 2, 4, 5)
        return grid.reshape(-1, h * w, c)


def drop_class_token(vit: nn.Module) -> None:
    """Remove a timm ViT's CLS token and register tokens after its weights are loaded (the detector uses patch
    tokens only: windows partition a grid of patches, and the study's detector deletes the CLS token too).

    The position embedding keeps its patch part (requires_grad unchanged: frozen sin-cos tables stay frozen),
    so ``forward_features`` returns B×(H·W)×C tokens.
    """
    registers = getattr(vit, "reg_token", None)
    if vit.cls_token is None and registers is None:
        return
    if registers is not None:
        log.info("ViT detector: the %d register tokens are removed with the class token", registers.shape[1])
    if vit.pos_embed is not None and not vit.no_embed_class:
        patch_part = vit.pos_embed.detach()[:, vit.num_prefix_tokens :].clone()
        vit.pos_embed = nn.Parameter(patch_part, requires_grad=vit.pos_embed.requires_grad)
    vit.cls_token, vit.reg_token = None, None
    vit.num_prefix_tokens, vit.has_class_token = 0, False
    vit.num_reg_tokens = 0


PYRAMID_NORMS = ("channel", "study")
POS_EMBEDS = ("resample", "study")


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple feature pyramid on a stride-16 map (as the study's ``ViTDet_FPN``).

    Input B×C×H×W; output ``OrderedDict`` "0", "1", "2", "3" at strides 4, 8, 16, 32 and "pool" (stride 64),
    each with ``out_channels`` channels. Each level is [ConvT2×2 (LN GELU ConvT2×2) | MaxPool] Conv1×1 LN Conv3×3
    LN at the same module indices as the study's ``fpn4`` / ``fpn3`` / ``fpn2`` / ``fpn1`` (no LN after a single
    ConvTranspose, as theirs).

    ``norm="channel"``: channel-wise LayerNorm2d and no conv bias before a norm (as ViTDet); works at any input
    size. ``norm="study"``: the study's ``nn.LayerNorm((C, H, W))`` over the whole map of each level, with an
    elementwise affine of that shape, and biased convs as theirs; it is only defined for the ``grid`` (H×W of the
    input map) it is built for, and any other input is a :class:`ConfigError`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 256,
        norm: str = "channel",
        grid: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if norm not in PYRAMID_NORMS:
            raise ConfigError(f"task.pyramid_norm={norm!r} is not valid; valid: {', '.join(PYRAMID_NORMS)}")
        if norm == "study" and grid is None:
            raise ValueError("the study's whole-map LayerNorm pyramid needs the input grid")
        self.norm, self.grid = norm, None if grid is None else tuple(grid)
        c, bias = in_channels, norm == "study"

        def ln(channels: int, scale: float) -> nn.Module:
            # scale: the level's size relative to the stride-16 input (MaxPool floors, as theirs)
            if norm == "channel":
                return LayerNorm2d(channels)
            h, w = (int(g * scale) for g in self.grid)
            return nn.LayerNorm((channels, h, w))

        def conv_ln(scale: float) -> list[nn.Module]:
            return [
                nn.Conv2d(c, out_channels, 1, bias=bias),
                ln(out_channels, scale),
                nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=bias),
                ln(out_channels, scale),
            ]

        self.stride4 = nn.Sequential(
            nn.ConvTranspose2d(c, c, 2, stride=2),
            ln(c, 2),
            nn.GELU(),
            nn.ConvTranspose2d(c, c, 2, stride=2),
            *conv_ln(4),
        )
        self.stride8 = nn.Sequential(nn.ConvTranspose2d(c, c, 2, stride=2), *conv_ln(2))
        self.stride16 = nn.Sequential(*conv_ln(1))
        self.stride32 = nn.Sequential(nn.MaxPool2d(2), *conv_ln(0.5))
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        if self.norm == "study" and tuple(x.shape[-2:]) != self.grid:
            raise ConfigError(
                f"task.pyramid_norm=study: the whole-map LayerNorms are built for a {self.grid[0]}×{self.grid[1]} "
                f"token grid, got {x.shape[-2]}×{x.shape[-1]}; use the canvas_size the model was built for"
            )
        levels = [self.stride4(x), self.stride8(x), self.stride16(x), self.stride32(x)]
        out = OrderedDict((str(i), level) for i, level in enumerate(levels))
        out["pool"] = F.max_pool2d(levels[-1], kernel_size=1, stride=2)  # as torchvision's LastLevelMaxPool
        return out


class ViTDetBackbone(nn.Module):
    """timm ViT (no CLS token; windowed attention except in ``global_blocks``) + :class:`SimpleFeaturePyramid`.

    Takes B×3×S×S normalised images at the size of ``canvas_grid`` (tokens; default the grid the ViT was built
    for); returns the pyramid dict torchvision's Faster R-CNN expects (``out_channels`` attribute included).
    ``frozen`` stops gradients into the ViT and runs it without autograd, so it stays bit-identical during
    training. ``pyramid_norm``: see :class:`SimpleFeaturePyramid`.

    ``pos_embed="resample"``: the ViT is built for the canvas (its table resampled to the canvas grid once, when
    weights are loaded) and only the CLS slot is removed. ``pos_embed="study"``: the ViT keeps its
    1×(1+G²)×C table as built (the study's files hold it so, CLS slot included) and every forward interpolates
    the G×G patch part bilinearly (align_corners=True) to ``canvas_grid``, as the study's detector did.
    """

    def __init__(
        self,
        vit: nn.Module,
        window_size: int,
        global_blocks: Sequence[int] | None = None,
        out_channels: int = 256,
        frozen: bool = False,
        pyramid_norm: str = "channel",
        pos_embed: str = "resample",
        canvas_grid: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if pos_embed not in POS_EMBEDS:
            raise ConfigError(f"task.pos_embed={pos_embed!r} is not valid; valid: {', '.join(POS_EMBEDS)}")
        self.pos_embed_mode = pos_embed
        if pos_embed == "study":
            self._keep_study_table(vit, canvas_grid)
        else:
            drop_class_token(vit)
        self.grid = tuple(vit.patch_embed.grid_size)
        self.input_size = tuple(vit.patch_embed.img_size)  # the canvas is resized to it if it differs
        depth = len(vit.blocks)
        global_blocks = global_attention_blocks(depth) if global_blocks is None else sorted(global_blocks)
        if any(not 0 <= i < depth for i in global_blocks):
            raise ConfigError(f"task.global_blocks={global_blocks}: block indices must lie in 0..{depth - 1}")
        self.windowed = [i for i in range(depth) if i not in global_blocks]
        if self.windowed and (self.grid[0] % window_size or self.grid[1] % window_size):
            raise ConfigError(
                f"task.window_size={window_size} does not divide the ViT's {self.grid[0]}×{self.grid[1]} token "
                f"grid (task.canvas_size / patch size); choose a canvas_size that is a multiple of "
                f"patch size × window_size"
            )
        for i in self.windowed:
            WindowPartition(self.grid, window_size).attach(vit.blocks[i].attn)
        log.info(
            "ViT detector: %d×%d tokens, windowed attention (%d×%d) in blocks %s, global in %s",
            *self.grid,
            window_size,
            window_size,
            self.windowed,
            global_blocks,
        )
        self.encoder, self.frozen = vit, frozen
        self.fpn = SimpleFeaturePyramid(vit.embed_dim, out_channels, pyramid_norm, self.grid)
        self.out_channels = out_channels
        if frozen:
            vit.requires_grad_(False)

    def _keep_study_table(self, vit: nn.Module, canvas_grid: tuple[int, int] | None) -> None:
        table = vit.pos_embed
        if (
            table is None
            or vit.no_embed_class
            or vit.cls_token is None
            or getattr(vit, "reg_token", None) is not None
        ):
            raise ConfigError(
                "task.pos_embed=study needs a ViT with a class token and a learned table that covers it "
                "(timm's original layout); valid for this ViT: task.pos_embed=resample"
            )
        self.source_grid = tuple(vit.patch_embed.grid_size)
        if table.shape[1] != 1 + self.source_grid[0] * self.source_grid[1]:
            raise ConfigError(
                f"task.pos_embed=study: table of {table.shape[1]} tokens is not 1 + {self.source_grid}"
            )
        # The study deletes the CLS token but not its slot in the table; the patch embedding then runs at the
        # canvas (as the study set patch_embed.img_size to its fixed size).
        vit.cls_token = None
        vit.num_prefix_tokens, vit.has_class_token = 0, False
        grid = self.source_grid if canvas_grid is None else tuple(canvas_grid)
        patch = vit.patch_embed.patch_size
        vit.patch_embed.img_size = (grid[0] * patch[0], grid[1] * patch[1])
        vit.patch_embed.grid_size = grid
        vit.patch_embed.num_patches = grid[0] * grid[1]

    def _study_tokens(self, x: torch.Tensor) -> torch.Tensor:
        # The study's forward: patch embedding, + the table's patch part interpolated to this grid, blocks, norm.
        vit = self.encoder
        x = vit.patch_embed(x)
        c = x.shape[-1]
        patch_part = vit.pos_embed[:, 1:].transpose(1, 2).reshape(1, c, *self.source_grid)
        pos = F.interpolate(patch_part, size=self.grid, mode="bilinear", align_corners=True)
        x = vit.pos_drop(x + pos.flatten(2).transpose(1, 2))
        x = vit.norm_pre(vit.patch_drop(x))
        return vit.norm(vit.blocks(x))

    def train(self, mode: bool = True) -> ViTDetBackbone:
        super().train(mode)
        if self.frozen:
            self.encoder.eval()  # no dropout / drop-path in a frozen encoder
        return self

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        if tuple(x.shape[-2:]) != self.input_size:  # a patch other than 16: keep one token per 16 canvas px
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=True)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            if self.pos_embed_mode == "study":
                tokens = self._study_tokens(x)
            else:
                tokens = self.encoder.forward_features(x)  # B×N×C, final norm applied
        b, _, c = tokens.shape
        return self.fpn(tokens.transpose(1, 2).reshape(b, c, *self.grid))


def vit_detector(
    vit: nn.Module,
    *,
    canvas_size: int,
    window_size: int = 16,
    global_blocks: Sequence[int] | None = None,
    frozen: bool = False,
    fpn_channels: int = 256,
    score_threshold: float = 0.05,
    detections_per_img: int = 100,
    rois_per_image: int = 512,
    pyramid_norm: str = "channel",
    pos_embed: str = "resample",
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
) -> FasterRCNN:
    """Faster R-CNN on a timm ViT (weights already loaded) for ``canvas_size``² inputs.

    The ViT runs on a (canvas/16)² token grid (:func:`vit_input_size`: the canvas itself for a 16-px patch). With
    ``pos_embed="resample"`` the ViT must be built for that input size; with ``"study"`` it is built for its
    pretraining size (the table the study's files hold) and runs at it (:class:`ViTDetBackbone`).
    Inputs must already be ``canvas_size``² canvases (see ``ssl4gie.data.detection.to_canvas``); the model's
    transform keeps that size (``fixed_size``) and adds no padding. Head options and normalisation as
    :func:`resnet_fpn_detector`; ``pyramid_norm`` as :class:`SimpleFeaturePyramid`.
    """
    patch = vit.patch_embed.patch_size[0]
    size = vit_input_size(canvas_size, patch)
    built_for_canvas = tuple(vit.patch_embed.img_size) == (size, size)
    if pos_embed != "study" and not built_for_canvas:
        raise ConfigError(
            f"task.canvas_size={canvas_size}: the ViT (patch {patch}) must be built for {size}² inputs "
            f"(found img_size {tuple(vit.patch_embed.img_size)})"
        )
    grid = (canvas_size // PYRAMID_STRIDE, canvas_size // PYRAMID_STRIDE)
    backbone = ViTDetBackbone(
        vit, window_size, global_blocks, fpn_channels, frozen, pyramid_norm, pos_embed, grid
    )
    return _faster_rcnn(
        backbone,
        score_threshold,
        detections_per_img,
        rois_per_image,
        image_mean,
        image_std,
        min_size=canvas_size,
        max_size=canvas_size,
        fixed_size=(canvas_size, canvas_size),
        size_divisible=PYRAMID_STRIDE,
    )


def vit_input_size(canvas_size: int, patch: int) -> int:
    """Side of the ViT's input for a ``canvas_size``² canvas: one ``patch``-px token per 16 canvas px (so the
    pyramid starts at stride 16 for any patch size; the canvas itself for a 16-px patch)."""
    if canvas_size % PYRAMID_STRIDE:
        raise ConfigError(
            f"task.canvas_size={canvas_size} must be a multiple of {PYRAMID_STRIDE} (the ViT detector's "
            f"pyramid starts from one token per {PYRAMID_STRIDE} canvas pixels)"
        )
    return canvas_size // PYRAMID_STRIDE * patch
