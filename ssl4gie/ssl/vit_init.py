"""ViT initialisations of the self-supervised recipes: fixed 2-D sin-cos position embeddings, MAE's and MoCo v3's
weight initialisations, and MoCo v3's frozen patch projection (MoCo v3's ``vits.py``,
MAE's ``models_mae.py`` and ``util/pos_embed.py``).

All functions act in place on timm modules and keep timm's key names, so the pretrained backbone exports as a
plain timm state dict.

Channel layout of :func:`sincos_pos_embed_2d` (``d = embed_dim``, ``F = d/4`` frequencies
``omega_k = 1 / 10000**(k/F)``, token ``m = row * grid_w + col`` in timm's row-major patch order):

* ``layout="mae"`` (MAE ``util/pos_embed.py``): channels ``[0, d/2)`` encode the **column** (horizontal, x)
  index as ``sin(col*omega), cos(col*omega)``; channels ``[d/2, d)`` encode the **row** (vertical, y) index the same
  way. MAE builds its grid with ``np.meshgrid(grid_w, grid_h)`` ("w goes first", xy indexing), so its first half
  is the coordinate that varies fastest along the token sequence.
* ``layout="mocov3"`` (MoCo v3 ``vits.py``): the two halves swapped -- row first, then column. MoCo v3 calls its
  first half the "w" grid, but builds it with ``torch.meshgrid(grid_w, grid_h)`` in the default ``ij`` indexing,
  so on the square grids it is used with (14 x 14 at 224/16) the first half is constant along a row of patches,
  i.e. it encodes the row. (On non-square grids MoCo v3's code pairs a (w, h) grid with (h, w) tokens; we do not
  reproduce that and use the row/column meaning instead.)

The two layouts carry the same information; the tensor is saved in every checkpoint, so the choice only matters
for bit-exact reproduction of a method's initial state.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from timm.layers import PatchEmbed
from torch import Tensor, nn

Layout = Literal["mae", "mocov3"]
_LAYOUTS = ("mae", "mocov3")


def _sincos_1d(positions: Tensor, dim: int) -> Tensor:
    """``(len(positions), dim)``: ``dim/2`` sines then ``dim/2`` cosines of ``positions * omega_k``."""
    omega = 1.0 / 10000.0 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim // 2))
    angles = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_pos_embed_2d(
    embed_dim: int, grid_h: int, grid_w: int, cls_token: bool = True, layout: Layout = "mae"
) -> Tensor:
    """Fixed 2-D sin-cos position embedding, ``(1, [1 +] grid_h*grid_w, embed_dim)`` float32.

    Rows of the result follow timm's patch order (row-major: token ``row * grid_w + col``); with ``cls_token`` a
    leading all-zero slot is prepended. Channel layout: see the module docstring (``"mae"``: column half first,
    ``"mocov3"``: row half first). Computed in float64 and rounded once to float32, as MAE does.
    Raises ValueError unless ``embed_dim`` is divisible by 4 and the grid is non-empty.
    """
    if embed_dim % 4 != 0 or embed_dim <= 0:
        raise ValueError(
            f"embed_dim must be a positive multiple of 4 for a 2-D sin-cos embedding, got {embed_dim}"
        )
    if grid_h <= 0 or grid_w <= 0:
        raise ValueError(f"the patch grid must be non-empty, got {grid_h} x {grid_w}")
    if layout not in _LAYOUTS:
        raise ValueError(f"layout must be one of {_LAYOUTS}, got {layout!r}")
    rows = torch.arange(grid_h).repeat_interleave(grid_w)  # row index of each token
    cols = torch.arange(grid_w).repeat(grid_h)  # column index of each token
    first, second = (cols, rows) if layout == "mae" else (rows, cols)
    emb = torch.cat([_sincos_1d(first, embed_dim // 2), _sincos_1d(second, embed_dim // 2)], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, embed_dim, dtype=emb.dtype), emb], dim=0)
    return emb.float().unsqueeze(0)


def _pos_embed_prefix(vit: nn.Module) -> int:
    """Prefix-token slots (class / register tokens) that ``vit.pos_embed`` holds before the patch grid."""
    return 0 if getattr(vit, "no_embed_class", False) else int(getattr(vit, "num_prefix_tokens", 1))


@torch.no_grad()
def fix_sincos_pos_embed(vit: nn.Module, layout: Layout = "mae") -> None:
    """Overwrite a timm VisionTransformer's ``pos_embed`` with the fixed sin-cos embedding and freeze it.

    Works for any ``img_size`` / patch size (grid from ``vit.patch_embed.grid_size``); the prefix-token slots
    (class and register tokens, absent when ``no_embed_class``) are zero. ``pos_embed`` stays a parameter (so it is
    saved in the state dict, as in the official checkpoints) with ``requires_grad=False``.
    Raises ValueError when the model has no absolute position embedding of the expected size.
    """
    pos = getattr(vit, "pos_embed", None)
    if not isinstance(pos, nn.Parameter):
        raise ValueError("the ViT has no learnable absolute pos_embed to fix (built with pos_embed='none'?)")
    grid_h, grid_w = vit.patch_embed.grid_size
    prefix = _pos_embed_prefix(vit)
    table = sincos_pos_embed_2d(pos.shape[-1], grid_h, grid_w, cls_token=False, layout=layout)
    table = torch.cat([torch.zeros(1, prefix, pos.shape[-1]), table], dim=1)
    if table.shape != pos.shape:
        raise ValueError(
            f"pos_embed has shape {tuple(pos.shape)}, expected {tuple(table.shape)} for the patch grid"
        )
    pos.copy_(table)
    pos.requires_grad_(False)


def _xavier_uniform_flat_(weight: Tensor) -> None:
    """Xavier-uniform over the weight viewed as a 2-D ``(out, in*kh*kw)`` matrix (both recipes' patch embed).

    ``nn.init.xavier_uniform_`` on the 4-D conv weight would count the receptive field into both fans.
    """
    fan_out, fan_in = weight.shape[0], weight[0].numel()
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    nn.init.uniform_(weight, -bound, bound)


@torch.no_grad()
def _reset_layernorm(norm: nn.LayerNorm) -> None:
    """Weight 1, bias 0 (both recipes' LayerNorm)."""
    if norm.weight is not None:
        nn.init.ones_(norm.weight)
    if norm.bias is not None:
        nn.init.zeros_(norm.bias)


def mae_init(module: nn.Module) -> None:
    """MAE's initialisation of every submodule of ``module`` (an encoder, or a whole :class:`MaskedAutoencoder`).

    * ``nn.Linear``: xavier-uniform over the whole weight (the fused qkv as one matrix), bias 0;
    * ``nn.LayerNorm``: weight 1, bias 0;
    * timm ``PatchEmbed``: xavier-uniform over the flattened conv weight; the bias gets PyTorch's Conv2d default
      ``U(+-1/sqrt(fan_in))``, which the MAE code leaves untouched;
    * parameters named ``cls_token`` / ``mask_token``: N(0, 0.02).

    Position embeddings are not touched (see :func:`fix_sincos_pos_embed`).
    """
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            nn.init.xavier_uniform_(sub.weight)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.LayerNorm):
            _reset_layernorm(sub)
        elif isinstance(sub, PatchEmbed):
            _xavier_uniform_flat_(sub.proj.weight)
            if sub.proj.bias is not None:
                bound = 1.0 / math.sqrt(sub.proj.weight[0].numel())
                nn.init.uniform_(sub.proj.bias, -bound, bound)
    for name, param in module.named_parameters():
        if name.rsplit(".", 1)[-1] in ("cls_token", "mask_token"):
            nn.init.normal_(param, std=0.02)


@torch.no_grad()
def mocov3_init(vit: nn.Module) -> None:
    """MoCo v3's ViT initialisation (``vits.py``), in place; the position embedding is not touched.

    * ``nn.Linear``: xavier-uniform, bias 0; a fused ``qkv`` weight ``(3*D, D)`` counts as three ``(D, D)``
      matrices, i.e. bound ``sqrt(6 / (D + D))``;
    * ``nn.LayerNorm``: weight 1, bias 0 (timm's own init, which MoCo v3 inherits);
    * timm ``PatchEmbed``: xavier-uniform over the flattened ``3*p*p -> D`` weight, bias 0;
    * ``cls_token``: N(0, 1e-6).

    Apply it to the bare ViT before the projector replaces ``head``: MoCo v3 builds its projector and predictor
    MLPs afterwards with PyTorch's default initialisation. Written out rather than timm's ``init_weights('moco')``
    because that mode leaves the patch embedding at timm's default (timm says so) and its LayerNorm handling
    depends on the timm version.
    """
    for name, sub in vit.named_modules():
        if isinstance(sub, nn.Linear):
            if name.rsplit(".", 1)[-1] == "qkv":
                bound = math.sqrt(6.0 / (sub.weight.shape[0] // 3 + sub.weight.shape[1]))
                nn.init.uniform_(sub.weight, -bound, bound)
            else:
                nn.init.xavier_uniform_(sub.weight)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.LayerNorm):
            _reset_layernorm(sub)
        elif isinstance(sub, PatchEmbed):
            _xavier_uniform_flat_(sub.proj.weight)
            if sub.proj.bias is not None:
                nn.init.zeros_(sub.proj.bias)
    cls = getattr(vit, "cls_token", None)
    if cls is not None:
        nn.init.normal_(cls, std=1e-6)


def freeze_patch_embed(vit: nn.Module) -> list[str]:
    """MoCo v3's ``--stop-grad-conv1``: the (random) patch projection gets no gradient. Returns the frozen names.

    The parameters stay in the state dict; a finetuning model built fresh from timm has them trainable again.
    """
    frozen = []
    for name, param in vit.patch_embed.named_parameters():
        param.requires_grad_(False)
        frozen.append(f"patch_embed.{name}")
    return frozen
