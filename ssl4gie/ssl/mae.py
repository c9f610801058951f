"""Masked autoencoder (He et al. 2022) around a timm ViT encoder, reimplemented from the recipe
(facebookresearch/mae: ``PRETRAIN.md``, the paper).

The encoder is the very timm ``VisionTransformer`` the finetuning grid builds (``num_classes=0``), held as
``self.encoder`` with timm's key names; the decoder parts sit on the model itself under the official
``MaskedAutoencoderViT`` names (``mask_token``, ``decoder_embed``, ``decoder_pos_embed``, ``decoder_blocks``,
``decoder_norm``, ``decoder_pred``). So ``encoder.state_dict()`` plus the decoder tensors *is* the official
checkpoint layout (:func:`ssl4gie.ssl.export.export_mae`), with no renaming.
"""

from __future__ import annotations

from functools import partial

import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from ssl4gie.errors import ConfigError
from ssl4gie.ssl.vit_init import fix_sincos_pos_embed, mae_init, sincos_pos_embed_2d

# The official MAE normalises every transformer input with LayerNorm eps 1e-6 (timm's Block defaults to 1e-5).
_LayerNorm = partial(nn.LayerNorm, eps=1e-6)
NORM_PIX_EPS = 1e-6


def _check_encoder(encoder: nn.Module) -> None:
    """The MAE needs a plain timm ViT: one class token inside ``pos_embed``, no classifier, no register tokens."""
    needed = ("patch_embed", "pos_embed", "cls_token", "blocks", "norm")
    missing = [name for name in needed if getattr(encoder, name, None) is None]
    if missing:
        raise ConfigError(
            f"the MAE encoder must be a timm VisionTransformer with a class token and an absolute position "
            f"embedding (backbone=vit_b); this one has no {', '.join(missing)}."
        )
    if getattr(encoder, "num_prefix_tokens", 1) != 1 or getattr(encoder, "no_embed_class", False):
        raise ConfigError(
            "the MAE encoder must have exactly one prefix token (the class token) with its own pos_embed slot, as "
            f"vit_base_patch16_224; got num_prefix_tokens={encoder.num_prefix_tokens}, "
            f"no_embed_class={encoder.no_embed_class}."
        )
    # the MAE runs the encoder's pieces itself (masking sits between them): a pre-norm would be skipped silently
    if not isinstance(getattr(encoder, "norm_pre", nn.Identity()), nn.Identity):
        raise ConfigError("the MAE encoder must have no pre-norm (timm pre_norm=False), as ViT-B/16.")
    if getattr(encoder, "dynamic_img_size", False):
        raise ConfigError("the MAE encoder must have a fixed img_size (timm dynamic_img_size=False).")
    if not isinstance(getattr(encoder, "head", nn.Identity()), nn.Identity):
        raise ConfigError("the MAE encoder must be built without a classifier (timm num_classes=0).")


def patchify(imgs: Tensor, patch_size: int) -> Tensor:
    """``(N, C, H, W) -> (N, L, p*p*C)``: patches in row-major order, each flattened as (row, col, channel) -- the
    official ordering, which ``decoder_pred`` of an official checkpoint expects."""
    n, c, h, w = imgs.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"images of shape {tuple(imgs.shape)} do not split into {p}x{p} patches")
    x = imgs.reshape(n, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(n, (h // p) * (w // p), p * p * c)


def unpatchify(x: Tensor, patch_size: int, grid_size: tuple[int, int], in_chans: int = 3) -> Tensor:
    """Inverse of :func:`patchify`: ``(N, gh*gw, p*p*C) -> (N, C, gh*p, gw*p)``."""
    (gh, gw), p, c = grid_size, patch_size, in_chans
    n, length, width = x.shape
    if length != gh * gw or width != p * p * c:
        raise ValueError(
            f"patch tensor of shape {tuple(x.shape)} does not fit a {gh}x{gw} grid of {p}x{p}x{c}"
        )
    x = x.reshape(n, gh, gw, p, p, c)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(n, c, gh * p, gw * p)


def standardise_patches(patches: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor, Tensor]:
    """Per-patch ``(patches - mean) / sqrt(var + eps)``, and the ``mean`` and ``var`` used ``(N, L, 1)``.

    The variance is torch's default unbiased one, as the official ``forward_loss``.
    """
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps).sqrt(), mean, var


class MaskedAutoencoder(nn.Module):
    """MAE pretraining model: random masking, ViT encoder on the visible patches, light decoder, pixel loss.

    ``encoder``: a timm ``VisionTransformer`` built with ``num_classes=0`` (e.g.
    ``create_backbone(cfg.backbone, 224)`` for ``backbone=vit_b``). Construction re-initialises it and the decoder
    as MAE does (:func:`~ssl4gie.ssl.vit_init.mae_init`) and fixes both position embeddings to the 2-D sin-cos
    table (``requires_grad=False``). ``norm_pix_loss``: regress per-patch standardised pixels (the recipe's
    ``--norm_pix_loss``, on by default here; the official argparse default is off).
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = True,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        _check_encoder(encoder)
        if not 0.0 <= mask_ratio < 1.0:
            raise ConfigError(f"ssl.mask_ratio must be in [0, 1), got {mask_ratio}")
        self.encoder = encoder
        self.mask_ratio, self.norm_pix_loss = float(mask_ratio), bool(norm_pix_loss)
        embed_dim = encoder.pos_embed.shape[-1]
        self.patch_size = int(encoder.patch_embed.patch_size[0])
        if encoder.patch_embed.patch_size[0] != encoder.patch_embed.patch_size[1]:
            raise ConfigError(f"the MAE needs square patches, got {tuple(encoder.patch_embed.patch_size)}")
        self.in_chans = int(encoder.patch_embed.proj.in_channels)
        self.grid_size = tuple(int(g) for g in encoder.patch_embed.grid_size)
        num_patches = self.grid_size[0] * self.grid_size[1]

        self.decoder_embed = nn.Linear(embed_dim, decoder_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos_embed = nn.Parameter(
            torch.zeros(1, num_patches + 1, decoder_dim), requires_grad=False
        )
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_dim, decoder_heads, mlp_ratio=mlp_ratio, qkv_bias=True, norm_layer=_LayerNorm)
            for _ in range(decoder_depth)
        )
        self.decoder_norm = _LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch_size**2 * self.in_chans, bias=True)

        fix_sincos_pos_embed(encoder, layout="mae")
        with torch.no_grad():
            self.decoder_pos_embed.copy_(sincos_pos_embed_2d(decoder_dim, *self.grid_size, cls_token=True))
        mae_init(self)

    # ------------------------------------------------------------------ pixels <-> patches
    def patchify(self, imgs: Tensor) -> Tensor:
        """:func:`patchify` with this model's patch size."""
        if imgs.shape[1] != self.in_chans:
            raise ValueError(f"expected {self.in_chans}-channel images, got shape {tuple(imgs.shape)}")
        return patchify(imgs, self.patch_size)

    def unpatchify(self, x: Tensor, grid_size: tuple[int, int] | None = None) -> Tensor:
        """:func:`unpatchify` on ``grid_size`` (default: the encoder's patch grid)."""
        return unpatchify(x, self.patch_size, grid_size or self.grid_size, self.in_chans)

    # ------------------------------------------------------------------ masking
    def random_masking(
        self, x: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Keep a random ``int(L * (1 - mask_ratio))`` tokens of each sample (per-sample uniform noise, argsort).

        ``x``: ``(N, L, D)`` patch tokens (position embedding already added). Returns ``(kept (N, len_keep, D),
        mask (N, L) with 1 = removed / 0 = kept, ids_restore (N, L))`` where ``ids_restore`` undoes the shuffle:
        ``cat([kept, dropped], 1).gather(1, ids_restore)`` is back in patch order. All on ``x.device``;
        ``generator`` (on that device) makes the draw reproducible.
        """
        n, length, dim = x.shape
        len_keep = int(length * (1 - self.mask_ratio))
        noise = torch.rand(n, length, device=x.device, generator=generator)
        ids_shuffle = torch.argsort(noise, dim=1)  # ascending: the lowest-noise tokens are kept
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :len_keep]
        kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
        mask = torch.ones(n, length, device=x.device, dtype=x.dtype)
        mask[:, :len_keep] = 0
        return kept, torch.gather(mask, 1, ids_restore), ids_restore

    # ------------------------------------------------------------------ forward
    def trainable_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` of encoder and decoder that require grad (same contract as MoCoV3's)."""
        return [(name, p) for name, p in self.named_parameters() if p.requires_grad]

    def forward_encoder(
        self, imgs: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Encode the visible patches: ``(latent (N, 1 + len_keep, D) after the final norm, mask, ids_restore)``.

        The class token (with its pos-embed slot) is prepended after masking, so it is never masked.
        """
        enc = self.encoder
        x = enc.patch_embed(imgs) + enc.pos_embed[:, 1:, :]
        x, mask, ids_restore = self.random_masking(x, generator)
        cls = (enc.cls_token + enc.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for block in enc.blocks:
            x = block(x)
        return enc.norm(x), mask, ids_restore

    def forward_decoder(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        """Predict every patch: ``(N, L, p*p*C)`` (the class token's output is dropped)."""
        x = self.decoder_embed(latent)
        n, length = ids_restore.shape
        masked = self.mask_token.to(x.dtype).expand(n, length + 1 - x.shape[1], -1)
        tokens = torch.cat([x[:, 1:, :], masked], dim=1)
        tokens = torch.gather(tokens, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        x = torch.cat([x[:, :1, :], tokens], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:, :]

    def target(self, imgs: Tensor) -> Tensor:
        """The regression target: patchified network input (float32), per-patch standardised when
        ``norm_pix_loss`` (:func:`standardise_patches`, eps 1e-6)."""
        target = self.patchify(imgs).float()
        return standardise_patches(target, NORM_PIX_EPS)[0] if self.norm_pix_loss else target

    def loss(self, imgs: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        """Mean squared error per patch, averaged over the removed patches only (``mask == 1``); float32."""
        per_patch = (pred.float() - self.target(imgs)).pow(2).mean(dim=-1)
        mask = mask.float()
        return (per_patch * mask).sum() / mask.sum()

    def forward(self, imgs: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """``imgs``: the normalised network input ``(N, C, H, W)`` at the encoder's ``img_size``.

        Returns ``{"loss": scalar, "pred": (N, L, p*p*C) in target space, "mask": (N, L), 1 = removed}``.
        """
        latent, mask, ids_restore = self.forward_encoder(imgs, generator)
        pred = self.forward_decoder(latent, ids_restore)
        return {"loss": self.loss(imgs, pred, mask), "pred": pred, "mask": mask}


@torch.no_grad()
def mean_patch_features(encoder: nn.Module, imgs: Tensor) -> Tensor:
    """kNN / linear-probe feature of an MAE encoder: mean of the patch tokens after the final norm, ``(N, D)``.

    MAE's class token gets no training signal of its own, so it is a weak feature; the pooled patch tokens are the
    usual choice. Runs without gradients and without masking; the caller chooses train/eval mode.
    """
    tokens = encoder.forward_features(imgs)
    return tokens[:, int(getattr(encoder, "num_prefix_tokens", 1)) :, :].mean(dim=1)
