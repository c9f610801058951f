"""The masked autoencoder: masking invariants, patch ordering, the loss against an independent float64 reference,
expected initial loss, overfitting a batch, official key names, the kNN feature, and the reconstruction figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from omegaconf import OmegaConf
from PIL import Image

from ssl4gie.errors import ConfigError
from ssl4gie.models.backbone import create_backbone
from ssl4gie.ssl.figures import COLUMNS, MASKED_GREY, draw_mae_reconstructions, reconstruction_panels
from ssl4gie.ssl.mae import MaskedAutoencoder, mean_patch_features, patchify, unpatchify
from ssl4gie.ssl.vit_init import sincos_pos_embed_2d

VIT_B_CONFIG = Path(__file__).resolve().parents[2] / "conf" / "backbone" / "vit_b.yaml"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def tiny_mae(img_size: int = 64, depth: int = 2, **kwargs) -> MaskedAutoencoder:
    encoder = timm.create_model(
        "vit_base_patch16_224", embed_dim=32, depth=depth, num_heads=2, img_size=img_size, num_classes=0
    )
    return MaskedAutoencoder(encoder, decoder_dim=16, decoder_depth=1, decoder_heads=2, **kwargs)


def test_masking_keeps_49_of_196_and_ids_restore_inverts_the_shuffle():
    torch.manual_seed(0)
    mae = tiny_mae(img_size=224, depth=1)
    x = torch.randn(5, 196, 32)
    kept, mask, ids_restore = mae.random_masking(x)
    assert kept.shape == (5, 49, 32)
    assert mask.shape == (5, 196) and torch.all(mask.sum(dim=1) == 147)
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(ids_restore.sort(dim=1).values, torch.arange(196).expand(5, -1))  # a permutation
    ids_shuffle = torch.argsort(ids_restore, dim=1)
    assert torch.equal(ids_shuffle.gather(1, ids_restore), torch.arange(196).expand(5, -1))  # its inverse
    for i in range(5):
        visible = torch.nonzero(mask[i] == 0).squeeze(1)
        assert torch.equal(torch.sort(ids_shuffle[i, :49]).values, visible)
        assert torch.equal(kept[i], x[i, ids_shuffle[i, :49]])  # kept tokens are the unmasked ones
    assert not torch.equal(mask[0], mask[1]), "each sample gets its own mask"


def test_masking_is_reproducible_with_a_generator_and_follows_the_input_device():
    mae = tiny_mae()
    x = torch.randn(3, 16, 32)
    a = mae.random_masking(x, torch.Generator().manual_seed(1))
    b = mae.random_masking(x, torch.Generator().manual_seed(1))
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    on_meta = mae.random_masking(torch.empty(3, 16, 32, device="meta"))
    assert all(t.device.type == "meta" for t in on_meta)  # drawn where the tokens live, never on the CPU
    if torch.cuda.is_available():
        assert all(t.is_cuda for t in mae.random_masking(x.cuda()))


def test_class_token_is_never_masked():
    torch.manual_seed(0)
    mae = tiny_mae()
    seen = {}
    mae.encoder.blocks[0].register_forward_pre_hook(lambda _m, args: seen.setdefault("x", args[0]))
    imgs = torch.randn(4, 3, 64, 64)
    latent, _, ids_restore = mae.forward_encoder(imgs)
    tokens = seen["x"]
    assert tokens.shape == latent.shape == (4, 1 + 4, 32)  # 16 patches, 25 % kept, plus the class token
    cls = mae.encoder.cls_token + mae.encoder.pos_embed[:, :1]
    assert torch.allclose(tokens[:, :1], cls.expand(4, -1, -1))
    patches = mae.encoder.patch_embed(imgs) + mae.encoder.pos_embed[:, 1:]
    visible = torch.argsort(ids_restore, dim=1)[:, :4]
    assert torch.allclose(tokens[:, 1:], patches.gather(1, visible[..., None].expand(-1, -1, 32)))


def test_patchify_order_and_round_trip():
    imgs = torch.randn(2, 3, 32, 48)  # non-square: a 2 x 3 grid of 16-px patches
    patches = patchify(imgs, 16)
    assert patches.shape == (2, 6, 16 * 16 * 3)
    for i in range(2):
        for j in range(3):
            block = imgs[:, :, 16 * i : 16 * (i + 1), 16 * j : 16 * (j + 1)]  # (N, C, p, p)
            assert torch.equal(patches[:, 3 * i + j], block.permute(0, 2, 3, 1).reshape(2, -1))
    assert torch.equal(unpatchify(patches, 16, (2, 3)), imgs)
    mae = tiny_mae()
    square = torch.randn(2, 3, 64, 64)
    assert torch.equal(mae.unpatchify(mae.patchify(square)), square)
    assert torch.equal(
        mae.patchify(mae.unpatchify(patches[:, :4].repeat(1, 4, 1))), patches[:, :4].repeat(1, 4, 1)
    )


def reference_loss(
    imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, p: int, norm_pix: bool
) -> float:
    """MAE's forward_loss written out in float64 numpy, one patch at a time."""
    x, pr, m = imgs.double().numpy(), pred.double().numpy(), mask.double().numpy()
    n, _, h, w = x.shape
    total, count = 0.0, 0.0
    for b in range(n):
        for i in range(h // p):
            for j in range(w // p):
                target = x[b, :, i * p : (i + 1) * p, j * p : (j + 1) * p].transpose(1, 2, 0).reshape(-1)
                if norm_pix:
                    target = (target - target.mean()) / np.sqrt(target.var(ddof=1) + 1e-6)
                k = i * (w // p) + j
                total += m[b, k] * np.mean((pr[b, k] - target) ** 2)
                count += m[b, k]
    return total / count


@pytest.mark.parametrize("norm_pix", [True, False])
def test_loss_matches_reference(norm_pix):
    torch.manual_seed(0)
    mae = tiny_mae(norm_pix_loss=norm_pix)
    imgs = torch.randn(3, 3, 64, 64) * 2 + 0.5
    pred = torch.randn(3, 16, 768)
    mask = (torch.rand(3, 16) < 0.75).float()
    mask[:, 0] = 1
    assert mae.loss(imgs, pred, mask).item() == pytest.approx(
        reference_loss(imgs, pred, mask, 16, norm_pix), rel=1e-5
    )
    out = mae(imgs)
    assert set(out) == {"loss", "pred", "mask"}
    assert out["pred"].shape == (3, 16, 768) and out["mask"].shape == (3, 16)
    assert out["loss"].item() == pytest.approx(
        reference_loss(imgs, out["pred"].detach(), out["mask"], 16, norm_pix), rel=1e-5
    )


def test_initial_norm_pix_loss_is_one_plus_prediction_power():
    """Standardised targets have unit mean square ((n-1)/n with the unbiased variance); an untrained decoder's
    output is uncorrelated with them, so loss = 1 + mean(pred**2). With the tiny 16-d decoder pred**2 ~ 0.04."""
    torch.manual_seed(0)
    mae = tiny_mae()
    imgs = torch.randn(16, 3, 64, 64)
    with torch.no_grad():
        out = mae(imgs)
        zero = mae.loss(imgs, torch.zeros_like(out["pred"]), out["mask"])
    assert zero.item() == pytest.approx(767 / 768, rel=1e-5)
    power = (out["pred"] ** 2).mean(-1)[out["mask"].bool()].mean().item()
    assert out["loss"].item() == pytest.approx(1 + power, abs=0.03)
    assert 0.95 < out["loss"].item() < 1.1


@pytest.mark.slow  # a real-size ViT-B MAE
def test_real_size_mae_and_official_names():
    """ViT-B/16 dec512d8b: 150 encoder + 104 decoder tensors, pred (N, 196, 768); its xavier-initialised 512->768
    decoder_pred gives pred**2 ~ 512 * 2 / (512 + 768) = 0.8, so the first norm-pix loss is ~1.8, not ~1.0."""
    torch.manual_seed(0)
    mae = MaskedAutoencoder(create_backbone(OmegaConf.load(VIT_B_CONFIG), 224))
    assert len(mae.encoder.state_dict()) == 150
    decoder = [k for k in mae.state_dict() if not k.startswith("encoder.")]
    assert len(decoder) == 104
    assert {k.split(".")[0] for k in decoder} == {
        "mask_token",
        "decoder_embed",
        "decoder_pos_embed",
        "decoder_blocks",
        "decoder_norm",
        "decoder_pred",
    }
    assert mae.encoder.pos_embed.shape == (1, 197, 768) and mae.decoder_pos_embed.shape == (1, 197, 512)
    assert not mae.encoder.pos_embed.requires_grad and not mae.decoder_pos_embed.requires_grad
    assert torch.equal(mae.decoder_pos_embed, sincos_pos_embed_2d(512, 14, 14))
    assert mae.decoder_blocks[0].norm1.eps == 1e-6 and mae.decoder_norm.eps == 1e-6
    with torch.no_grad():
        out = mae(torch.randn(2, 3, 224, 224))
    assert out["pred"].shape == (2, 196, 768)
    assert torch.all(out["mask"].sum(1) == 147)
    power = (out["pred"] ** 2).mean().item()
    assert power == pytest.approx(0.8, abs=0.15)
    assert out["loss"].item() == pytest.approx(1 + power, abs=0.05)


def test_a_few_steps_on_a_fixed_batch_lower_the_loss():
    torch.manual_seed(0)
    mae = tiny_mae()
    imgs = torch.randn(4, 3, 64, 64)
    trainable = [p for p in mae.parameters() if p.requires_grad]
    assert mae.mask_token.requires_grad and not mae.decoder_pos_embed.requires_grad
    optimizer = torch.optim.AdamW(trainable, lr=5e-3, betas=(0.9, 0.95))
    losses = []
    for _ in range(50):
        out = mae(imgs, generator=torch.Generator().manual_seed(0))  # same mask: a pure overfitting test
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(out["loss"].item())
    assert losses[-1] < 0.8 * losses[0] and losses[-1] < 1.0


def test_mean_patch_features_is_the_mean_of_normed_patch_tokens():
    torch.manual_seed(0)
    mae = tiny_mae()
    enc = mae.encoder.eval()
    imgs = torch.randn(3, 3, 64, 64)
    feats = mean_patch_features(enc, imgs)
    with torch.no_grad():
        x = enc.patch_embed(imgs)
        x = torch.cat([(enc.cls_token + enc.pos_embed[:, :1]).expand(3, -1, -1), x + enc.pos_embed[:, 1:]], 1)
        for block in enc.blocks:
            x = block(x)
        x = enc.norm(x)
    assert feats.shape == (3, 32) and not feats.requires_grad
    torch.testing.assert_close(feats, x[:, 1:].mean(1))
    assert not torch.allclose(feats, x[:, 0])


def test_encoder_must_be_a_bare_vit_with_one_class_token():
    with pytest.raises(ConfigError, match="num_classes=0"):
        MaskedAutoencoder(
            timm.create_model("vit_base_patch16_224", embed_dim=32, depth=1, num_heads=2, img_size=32)
        )
    with pytest.raises(ConfigError, match="prefix token"):
        MaskedAutoencoder(
            timm.create_model(
                "vit_base_patch16_224",
                embed_dim=32,
                depth=1,
                num_heads=2,
                img_size=32,
                num_classes=0,
                reg_tokens=2,
            )
        )
    with pytest.raises(ConfigError, match="VisionTransformer"):
        MaskedAutoencoder(
            timm.create_model("resnet50", layers=(1, 1, 1, 1), channels=(8, 16, 32, 64), num_classes=0)
        )


def test_reconstruction_figure(tmp_path):
    torch.manual_seed(0)
    mae = tiny_mae()
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    imgs = (torch.rand(3, 3, 64, 64) - mean) / std  # a normalised network input
    with torch.no_grad():
        out = mae(imgs)
    path = draw_mae_reconstructions(
        imgs, out["pred"], out["mask"], 16, IMAGENET_MEAN, IMAGENET_STD, tmp_path / "recon.png", max_images=2
    )
    with Image.open(path) as png:
        assert png.format == "PNG"
        assert png.size == (len(COLUMNS) * 200, 2 * 200)  # 2-inch panels at 100 dpi, one row per image
        png.verify()
    assert [p.name for p in tmp_path.iterdir()] == ["recon.png"]  # no temporary file left behind

    # a perfect norm-pix prediction, de-standardised with each patch's own statistics, is the original image
    panels = reconstruction_panels(imgs, mae.target(imgs), out["mask"], 16, IMAGENET_MEAN, IMAGENET_STD)
    original, masked, recon, pasted = panels
    np.testing.assert_allclose(recon, original, atol=1e-5)
    np.testing.assert_allclose(pasted, original, atol=1e-5)
    removed = mae.unpatchify(out["mask"][..., None].expand(-1, -1, 768)).permute(0, 2, 3, 1).bool().numpy()
    assert np.all(masked[removed] == MASKED_GREY) and np.array_equal(masked[~removed], original[~removed])
    np.testing.assert_allclose(original, (imgs * std + mean).permute(0, 2, 3, 1).numpy(), atol=1e-6)
