"""ViT initialisations of the SSL recipes: the sin-cos table against independent computations of each official
layout, fixing it on timm ViTs of any grid, and the MAE / MoCo v3 weight initialisations by their bounds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer

from ssl4gie.ssl.vit_init import (
    fix_sincos_pos_embed,
    freeze_patch_embed,
    mae_init,
    mocov3_init,
    sincos_pos_embed_2d,
)


def reference_table(dim: int, grid_h: int, grid_w: int, first: str) -> np.ndarray:
    """Token by token, channel by channel in float64: ``first`` ("col" or "row") is encoded in channels [0, d/2)."""
    quarter = dim // 4
    out = np.zeros((grid_h * grid_w, dim))
    for r in range(grid_h):
        for c in range(grid_w):
            a, b = (c, r) if first == "col" else (r, c)
            for k in range(quarter):
                omega = 10000.0 ** (-k / quarter)
                token = r * grid_w + c
                out[token, k] = math.sin(a * omega)
                out[token, quarter + k] = math.cos(a * omega)
                out[token, 2 * quarter + k] = math.sin(b * omega)
                out[token, 3 * quarter + k] = math.cos(b * omega)
    return out


def mae_official_formula(dim: int, size: int) -> np.ndarray:
    """The MAE recipe as stated: np.meshgrid(grid_w, grid_h) ("w goes first"), first half from grid[0]."""
    grid = np.stack(np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32)))

    def one_axis(pos: np.ndarray, d: int) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        angles = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    return np.concatenate([one_axis(grid[0], dim // 2), one_axis(grid[1], dim // 2)], axis=1)


def mocov3_official_formula(dim: int, size: int) -> torch.Tensor:
    """The MoCo v3 recipe as stated: torch.meshgrid(grid_w, grid_h) in the default ij indexing, float32."""
    grid_w, grid_h = torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
    )
    omega = 1.0 / 10000.0 ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))
    out_w, out_h = grid_w.flatten()[:, None] * omega, grid_h.flatten()[:, None] * omega
    return torch.cat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], dim=1)


@pytest.mark.parametrize(("grid_h", "grid_w"), [(4, 4), (3, 5), (14, 14)])
def test_mae_layout_matches_token_by_token_reference(grid_h, grid_w):
    table = sincos_pos_embed_2d(32, grid_h, grid_w)
    assert table.shape == (1, 1 + grid_h * grid_w, 32) and table.dtype == torch.float32
    assert torch.all(table[0, 0] == 0), "the class-token slot must be zero"
    np.testing.assert_allclose(table[0, 1:].numpy(), reference_table(32, grid_h, grid_w, "col"), atol=1e-6)
    assert sincos_pos_embed_2d(32, grid_h, grid_w, cls_token=False).shape == (1, grid_h * grid_w, 32)


def test_layouts_match_the_official_formulas_on_square_grids():
    """MAE's first half is the column index; MoCo v3's 'w' half is, through its ij meshgrid, the row index."""
    np.testing.assert_allclose(
        sincos_pos_embed_2d(768, 14, 14, cls_token=False)[0].numpy(), mae_official_formula(768, 14), atol=1e-6
    )
    moco = sincos_pos_embed_2d(768, 14, 14, cls_token=False, layout="mocov3")[0]
    torch.testing.assert_close(moco, mocov3_official_formula(768, 14), atol=2e-5, rtol=0)
    np.testing.assert_allclose(moco.numpy(), reference_table(768, 14, 14, "row"), atol=1e-5)
    # same information, halves swapped
    mae = sincos_pos_embed_2d(768, 14, 14, cls_token=False)[0]
    assert torch.equal(moco, torch.cat([mae[:, 384:], mae[:, :384]], dim=1))


def test_mae_first_half_is_shared_down_a_column():
    table = sincos_pos_embed_2d(16, 3, 5, cls_token=False)[0].reshape(3, 5, 16)
    assert torch.equal(table[0, :, :8], table[2, :, :8])  # same column, other row: first half identical
    assert torch.equal(table[:, 0, 8:], table[:, 4, 8:])  # same row, other column: second half identical
    assert not torch.equal(table[0, 0, :8], table[0, 1, :8])


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="multiple of 4"):
        sincos_pos_embed_2d(30, 2, 2)
    with pytest.raises(ValueError, match="layout"):
        sincos_pos_embed_2d(32, 2, 2, layout="dino")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"img_size": 64, "patch_size": 16},
        {"img_size": (32, 64), "patch_size": 8},  # non-square 4 x 8 grid
        {"img_size": 32, "patch_size": 8, "reg_tokens": 2},  # 3 prefix slots in pos_embed
        {"img_size": 32, "patch_size": 8, "no_embed_class": True},  # no prefix slot
    ],
    ids=["square", "non-square", "registers", "no-embed-class"],
)
def test_fix_sincos_pos_embed_on_timm_vits(kwargs):
    vit = VisionTransformer(embed_dim=32, depth=1, num_heads=2, num_classes=0, **kwargs)
    grid_h, grid_w = vit.patch_embed.grid_size
    prefix = 0 if kwargs.get("no_embed_class") else 1 + kwargs.get("reg_tokens", 0)
    fix_sincos_pos_embed(vit)
    pos = vit.pos_embed
    assert isinstance(pos, torch.nn.Parameter) and not pos.requires_grad
    assert "pos_embed" in vit.state_dict()
    assert pos.shape == (1, prefix + grid_h * grid_w, 32)
    assert torch.all(pos[0, :prefix] == 0)
    np.testing.assert_allclose(pos[0, prefix:].numpy(), reference_table(32, grid_h, grid_w, "col"), atol=1e-6)
    vit(torch.randn(1, 3, *vit.patch_embed.img_size)).sum().backward()
    assert pos.grad is None


def tiny_vit(embed_dim: int = 64) -> torch.nn.Module:
    return timm.create_model(
        "vit_base_patch16_224", embed_dim=embed_dim, depth=2, num_heads=2, img_size=32, num_classes=0
    )


def assert_uniform(t: torch.Tensor, bound: float) -> None:
    """Values inside (-bound, bound) with the standard deviation of U(-bound, bound)."""
    assert t.abs().max() <= bound
    assert t.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)


def test_mae_init():
    torch.manual_seed(0)
    vit = tiny_vit(embed_dim=192)
    vit.mask_token = torch.nn.Parameter(torch.zeros(1, 1, 192))
    mae_init(vit)
    d = 192
    qkv = vit.blocks[0].attn.qkv
    assert_uniform(qkv.weight, math.sqrt(6 / (3 * d + d)))  # the fused qkv is one matrix for MAE
    assert torch.all(qkv.bias == 0)
    assert_uniform(vit.blocks[0].mlp.fc1.weight, math.sqrt(6 / (d + 4 * d)))
    assert_uniform(vit.patch_embed.proj.weight, math.sqrt(6 / (3 * 16 * 16 + d)))
    assert vit.patch_embed.proj.bias.abs().max() <= 1 / math.sqrt(3 * 16 * 16)
    assert vit.patch_embed.proj.bias.abs().max() > 0
    assert torch.all(vit.norm.weight == 1) and torch.all(vit.norm.bias == 0)
    assert torch.all(vit.blocks[1].norm2.weight == 1) and torch.all(vit.blocks[1].norm2.bias == 0)
    for token in (vit.cls_token, vit.mask_token):
        assert token.std().item() == pytest.approx(0.02, rel=0.25)


def test_mocov3_init_and_frozen_patch_embed():
    torch.manual_seed(0)
    vit = tiny_vit(embed_dim=192)
    mocov3_init(vit)
    d = 192
    assert_uniform(vit.blocks[0].attn.qkv.weight, math.sqrt(6 / (d + d)))  # q, k, v as three matrices
    assert_uniform(vit.blocks[0].attn.proj.weight, math.sqrt(6 / (d + d)))
    assert_uniform(vit.patch_embed.proj.weight, math.sqrt(6 / (3 * 16 * 16 + d)))
    assert torch.all(vit.patch_embed.proj.bias == 0)
    assert all(torch.all(m.bias == 0) for m in vit.modules() if isinstance(m, torch.nn.Linear))
    assert torch.all(vit.blocks[0].norm1.weight == 1) and torch.all(vit.blocks[0].norm1.bias == 0)
    assert 0 < vit.cls_token.std().item() < 1e-5

    frozen = freeze_patch_embed(vit)
    assert frozen == ["patch_embed.proj.weight", "patch_embed.proj.bias"]
    vit(torch.randn(2, 3, 32, 32)).sum().backward()
    assert vit.patch_embed.proj.weight.grad is None and vit.patch_embed.proj.bias.grad is None
    assert vit.blocks[0].attn.qkv.weight.grad is not None
    assert "patch_embed.proj.weight" in vit.state_dict()
