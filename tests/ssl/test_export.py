"""Exports of pretrained backbones round-trip through the finetuning grid's own reader
(``load_backbone_weights``) into fresh backbones built from ``conf/backbone/*.yaml``, every tensor compared."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torchvision
from helpers.checkpoints import random_like
from omegaconf import OmegaConf
from torch import nn

from ssl4gie.models.backbone import create_backbone
from ssl4gie.models.checkpoints import MAE_DECODER, detect_format, load_backbone_weights, to_timm_state_dict
from ssl4gie.ssl.export import export_mae, export_resnet, export_vit, unwrap, write_export
from ssl4gie.ssl.mae import MaskedAutoencoder
from ssl4gie.ssl.vit_init import fix_sincos_pos_embed, freeze_patch_embed, mocov3_init, sincos_pos_embed_2d

CONF = Path(__file__).resolve().parents[2] / "conf" / "backbone"
INPUT = {"resnet50": 64, "vit_b": 64}


def backbone(name: str, tiny: bool = True, input_size: int = 64) -> nn.Module:
    """A backbone exactly as the finetuning grid builds it (``create_backbone`` on the real config file)."""
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    cfg.tiny = tiny
    return create_backbone(cfg, input_size)


def randomise(module: nn.Module) -> None:
    """Values no fresh initialisation produces, so a tensor that is not transferred cannot pass unnoticed."""
    module.load_state_dict(random_like(module.state_dict()))


def round_trip(obj, tmp_path: Path, name: str, tiny: bool = True, input_size: int = 64):
    path = write_export(obj, tmp_path / f"{name}.pth")
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # written under a temporary name, then renamed
    fresh = backbone(name, tiny, input_size)
    return load_backbone_weights(fresh, path, name), fresh


def assert_same_tensors(model: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    assert loaded.keys() == expected.keys()
    differing = [k for k in expected if not torch.equal(loaded[k], expected[k])]
    assert not differing, f"tensors differ after loading: {differing[:5]}"


def moco_resnet_projector(width: int) -> nn.Module:
    """MoCo v3's 2-layer ResNet projector in place of ``fc``."""
    return nn.Sequential(
        nn.Linear(width, 32, bias=False), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 16, bias=False)
    )


def test_resnet_export_round_trip(tmp_path):
    torch.manual_seed(0)
    encoder = backbone("resnet50")
    randomise(encoder)
    expected = {k: v.clone() for k, v in encoder.state_dict().items()}
    encoder.fc = moco_resnet_projector(encoder.num_features)  # what MoCo v3 trains; must not be exported
    state = export_resnet(encoder)
    assert state.keys() == expected.keys() and not any(k.startswith("fc.") for k in state)
    assert all(not v.requires_grad and v.device.type == "cpu" for v in state.values())
    receipt, fresh = round_trip(state, tmp_path, "resnet50")
    assert receipt.format == "plain" and receipt.dropped == {} and receipt.resampled == []
    assert receipt.loaded == len(fresh.state_dict())
    assert_same_tensors(fresh, expected)


def test_mocov3_vit_export_round_trip(tmp_path):
    torch.manual_seed(0)
    base = backbone("vit_b")
    mocov3_init(base)
    fix_sincos_pos_embed(base, layout="mocov3")
    freeze_patch_embed(base)
    randomise(base)  # as if trained (pos_embed included: whatever the file holds is what must arrive)
    expected = {k: v.clone() for k, v in base.state_dict().items()}
    base.head = nn.Sequential(nn.Linear(32, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 16))
    momentum = copy.deepcopy(base)
    randomise(momentum)
    state = export_vit(base)  # the caller exports the base encoder
    assert not any(k.startswith("head.") for k in state)
    assert not torch.equal(state["blocks.0.attn.qkv.weight"], momentum.blocks[0].attn.qkv.weight)
    receipt, fresh = round_trip(state, tmp_path, "vit_b")
    assert receipt.format == "plain" and receipt.dropped == {}
    assert receipt.loaded == len(fresh.state_dict())
    assert_same_tensors(fresh, expected)
    assert fresh.patch_embed.proj.weight.requires_grad  # MoCo's frozen projection is trainable for finetuning


def test_mae_export_round_trip(tmp_path):
    torch.manual_seed(0)
    mae = MaskedAutoencoder(backbone("vit_b"), decoder_dim=16, decoder_depth=2, decoder_heads=2)
    randomise(mae)
    encoder = {k: v.clone() for k, v in mae.encoder.state_dict().items()}
    obj = export_mae(mae)
    assert list(obj) == ["model"]
    decoder = sorted(set(obj["model"]) - set(encoder))
    assert {k.split(".")[0] for k in decoder} == {
        "mask_token",
        "decoder_embed",
        "decoder_pos_embed",
        "decoder_blocks",
        "decoder_norm",
        "decoder_pred",
    }
    assert all(torch.equal(obj["model"][k], mae.state_dict()[k]) for k in decoder)
    receipt, fresh = round_trip(obj, tmp_path, "vit_b")
    assert receipt.format == "mae"
    assert receipt.loaded == len(encoder) == len(fresh.state_dict())
    assert sorted(receipt.dropped[MAE_DECODER]) == decoder  # the decoder is dropped, by the MAE rule
    assert_same_tensors(fresh, encoder)


def test_wrapped_modules_export_without_prefixes():
    encoder = backbone("resnet50")
    assert unwrap(nn.DataParallel(encoder)) is encoder
    state = export_resnet(nn.DataParallel(encoder))
    assert state.keys() == encoder.state_dict().keys()


def test_exports_reject_the_wrong_family():
    with pytest.raises(ValueError, match="vit backbone"):
        export_vit(backbone("resnet50"))
    with pytest.raises(ValueError, match="resnet backbone"):
        export_resnet(backbone("vit_b"))
    with pytest.raises(TypeError, match="MaskedAutoencoder"):
        export_mae(backbone("vit_b"))


def test_real_size_resnet50_export(tmp_path):
    encoder = backbone("resnet50", tiny=False, input_size=224)
    encoder.fc = moco_resnet_projector(2048)
    state = export_resnet(encoder)
    receipt, fresh = round_trip(state, tmp_path, "resnet50", tiny=False, input_size=224)
    assert (
        receipt.loaded == 318 == len(fresh.state_dict())
    )  # 265 parameters and running stats + 53 step counters
    assert_same_tensors(fresh, state)
    torchvision_rn50 = torchvision.models.resnet50()
    torchvision_rn50.fc = nn.Identity()
    torchvision_rn50.load_state_dict(state, strict=True)  # as the study's ResNet_from_Any loads it: strictly


@pytest.mark.slow  # ~15 s on one core: two real ViT-B builds (timm's init of 86 M weights) and a 1 GB file
def test_real_size_vit_b_and_mae_exports(tmp_path):
    """As MAE's ``mae_pretrain_vit_base.pth``: the MAE file yields exactly 150 encoder tensors by name (timm
    counts cls_token, pos_embed, patch_embed.proj.{weight,bias}, 12 blocks x 12 tensors,
    norm.{weight,bias})."""
    torch.manual_seed(0)
    mae = MaskedAutoencoder(backbone("vit_b", tiny=False, input_size=224))
    obj = export_mae(mae)
    assert len(obj["model"]) == 150 + 104
    assert obj["model"]["pos_embed"].shape == (1, 197, 768)
    assert obj["model"]["decoder_pred.weight"].shape == (768, 512)
    assert torch.equal(obj["model"]["pos_embed"], sincos_pos_embed_2d(768, 14, 14))
    receipt, fresh = round_trip(obj, tmp_path, "vit_b", tiny=False, input_size=224)
    assert receipt.loaded == 150 and len(receipt.dropped[MAE_DECODER]) == 104
    vit = export_vit(mae.encoder)
    assert_same_tensors(fresh, vit)
    # the same encoder as a MoCo-v3-style plain ViT file: recognised as such, 150 tensors, nothing dropped
    state, dropped = to_timm_state_dict(vit)
    assert detect_format(vit) == "plain" and dropped == {} and state.keys() == fresh.state_dict().keys()
