"""Contract tests for checkpoint conversion: each official layout, written to disk from tiny timm models,
loads through the real loader into a timm backbone with exactly the original tensors."""

from __future__ import annotations

import argparse
import itertools
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import Block
from torch import Tensor

from ssl4gie.models.checkpoints import (
    CLASSIFIER_HEAD,
    MAE_DECODER,
    MOMENTUM_ENCODER,
    PREDICTOR,
    PROJECTOR,
    TRAINING_STATE,
    CheckpointError,
    LoadReceipt,
    detect_format,
    guess_architecture,
    load_backbone_weights,
    to_timm_state_dict,
)

ARCH = {"resnet": "resnet50", "vit": "vit_b"}


def tiny_backbone(family: str, img_size: int = 64, num_classes: int = 0) -> torch.nn.Module:
    """Tiny models from the production factories: same key structure as ResNet-50 / ViT-B."""
    if family == "resnet":
        return timm.create_model(
            "resnet50", layers=(1, 1, 1, 1), channels=(8, 16, 32, 64), num_classes=num_classes
        )
    return timm.create_model(
        "vit_base_patch16_224", embed_dim=32, depth=4, num_heads=2, img_size=img_size, num_classes=num_classes
    )


def random_like(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Values that differ from any fresh initialisation, so a skipped tensor cannot pass unnoticed."""
    return {k: torch.randn_like(v) if v.is_floating_point() else v + 7 for k, v in sd.items()}


def linear(name: str, out_dim: int, in_dim: int) -> dict[str, Tensor]:
    return {f"{name}.weight": torch.randn(out_dim, in_dim)}  # MoCo v3 / Barlow Twins MLPs use bias=False


def batchnorm(name: str, dim: int, affine: bool = True) -> dict[str, Tensor]:
    sd = {f"{name}.running_mean": torch.randn(dim), f"{name}.running_var": torch.rand(dim)}
    sd[f"{name}.num_batches_tracked"] = torch.tensor(100)
    if affine:
        sd.update({f"{name}.weight": torch.randn(dim), f"{name}.bias": torch.randn(dim)})
    return sd


def mlp(prefix: str, dims: list[int]) -> dict[str, Tensor]:
    """Linear-BN-ReLU MLP as MoCo v3 builds it: indices 0,1 | 3,4 | 6,7; last BN without affine."""
    sd: dict[str, Tensor] = {}
    for i, (d_in, d_out) in enumerate(itertools.pairwise(dims)):
        sd |= linear(f"{prefix}.{3 * i}", d_out, d_in)
        sd |= batchnorm(f"{prefix}.{3 * i + 1}", d_out, affine=i < len(dims) - 2)
    return sd


def prefixed(prefix: str, sd: dict[str, Tensor]) -> dict[str, Tensor]:
    return {prefix + k: v for k, v in sd.items()}


OPTIMIZER = {"state": {0: {"momentum_buffer": torch.zeros(3)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}
SCALER = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000}


# Each builder takes (family, source backbone state dict) and returns
# (checkpoint object as released, expected format, expected dropped keys by reason).
def mocov3(family: str, src: dict[str, Tensor]):
    width = 256 if family == "resnet" else 32  # tiny ResNet num_features / tiny ViT embed_dim
    head = "fc" if family == "resnet" else "head"
    dims = [width, 32, 16] if family == "resnet" else [width, 32, 32, 16]
    proj = mlp(head, dims)
    base = prefixed("module.base_encoder.", src | proj)
    momentum = prefixed("module.momentum_encoder.", random_like(src | proj))
    pred = prefixed("module.predictor.", mlp("predictor", [16, 32, 16]))
    top = {"epoch": 100, "arch": ARCH[family], "state_dict": base | momentum | pred}
    top |= {"optimizer": OPTIMIZER, "scaler": SCALER}
    dropped = {
        PROJECTOR: [f"module.base_encoder.{k}" for k in proj],
        MOMENTUM_ENCODER: list(momentum),
        PREDICTOR: list(pred),
        TRAINING_STATE: ["epoch", "arch", "optimizer", "scaler"],
    }
    return top, "mocov3", dropped


def plain(family: str, src: dict[str, Tensor]):
    """Re-saved MoCo v3 base encoder / Barlow Twins resnet50.pth / study's released backbones."""
    return dict(src), "plain", {}


def resaved_with_projector(family: str, src: dict[str, Tensor]):
    """The study README's re-save recipe keeps MoCo v3's projector (fc.N / head.N) in the plain file."""
    proj = mlp("fc", [256, 32, 16]) if family == "resnet" else mlp("head", [32, 32, 32, 16])
    return src | proj, "plain", {PROJECTOR: list(proj)}


def supervised(family: str, src: dict[str, Tensor]):
    """torchvision resnet50-19c8e357.pth or a timm ViT state dict, with its 1000-way classifier."""
    head = {"fc": torch.randn(10, 256)} if family == "resnet" else {"head": torch.randn(10, 32)}
    name, weight = next(iter(head.items()))
    cls = {f"{name}.weight": weight, f"{name}.bias": torch.randn(10)}
    return src | cls, "plain", {CLASSIFIER_HEAD: list(cls)}


def ddp_nested(family: str, src: dict[str, Tensor]):
    return {"state_dict": prefixed("module.", src), "epoch": 3}, "plain", {TRAINING_STATE: ["epoch"]}


def barlowtwins_full(family: str, src: dict[str, Tensor]):
    # projector: Linear-BN-ReLU, Linear-BN-ReLU, Linear; then `bn`, an affine-free BatchNorm on its output
    proj = linear("module.projector.0", 64, 256) | batchnorm("module.projector.1", 64)
    proj |= linear("module.projector.3", 64, 64) | batchnorm("module.projector.4", 64)
    proj |= linear("module.projector.6", 64, 64) | batchnorm("module.bn", 64, affine=False)
    top = {"epoch": 1000, "model": prefixed("module.backbone.", src) | proj, "optimizer": OPTIMIZER}
    return top, "barlowtwins_full", {PROJECTOR: list(proj), TRAINING_STATE: ["epoch", "optimizer"]}


def mae_decoder() -> dict[str, Tensor]:
    dec = {"mask_token": torch.randn(1, 1, 16), "decoder_pos_embed": torch.randn(1, 17, 16)}
    dec |= {"decoder_embed.weight": torch.randn(16, 32), "decoder_embed.bias": torch.randn(16)}
    for i in range(2):
        dec |= prefixed(f"decoder_blocks.{i}.", Block(dim=16, num_heads=2).state_dict())
    dec |= {"decoder_norm.weight": torch.randn(16), "decoder_norm.bias": torch.randn(16)}
    return dec | {"decoder_pred.weight": torch.randn(768, 16), "decoder_pred.bias": torch.randn(768)}


def mae_encoder(family: str, src: dict[str, Tensor]):
    return {"model": dict(src)}, "mae", {}


def mae_full(family: str, src: dict[str, Tensor]):
    dec = mae_decoder()
    return {"model": src | dec}, "mae", {MAE_DECODER: list(dec)}


def mae_own_training(family: str, src: dict[str, Tensor]):
    dec = mae_decoder()
    top = {"model": src | dec, "optimizer": OPTIMIZER, "epoch": 799, "scaler": SCALER}
    top["args"] = {"model": "mae_vit_base_patch16", "mask_ratio": 0.75}  # the real file holds a Namespace
    return top, "mae", {MAE_DECODER: list(dec), TRAINING_STATE: ["optimizer", "epoch", "scaler", "args"]}


Builder = Callable[[str, dict[str, Tensor]], tuple[dict, str, dict[str, list[str]]]]
LAYOUTS: list[tuple[str, str, Builder]] = [
    ("r-50-100ep.pth.tar", "resnet", mocov3),
    ("vit-b-300ep.pth.tar", "vit", mocov3),
    ("mocov3_resaved_resnet.pth", "resnet", plain),
    ("mocov3_resaved_vit.pth", "vit", plain),
    ("vit-b-resaved.pth", "vit", resaved_with_projector),
    ("r-50-resaved.pth", "resnet", resaved_with_projector),
    ("barlowtwins_resnet50.pth", "resnet", plain),
    ("checkpoint.pth", "resnet", barlowtwins_full),
    ("resnet50-19c8e357.pth", "resnet", supervised),
    ("vit_augreg.pth", "vit", supervised),
    ("ddp.pth", "resnet", ddp_nested),
    ("mae_pretrain_vit_base.pth", "vit", mae_encoder),
    ("mae_pretrain_vit_base_full.pth", "vit", mae_full),
    ("checkpoint-799.pth", "vit", mae_own_training),
]


@pytest.mark.parametrize(
    ("filename", "family", "build"), LAYOUTS, ids=[f"{b.__name__}-{f}" for _, f, b in LAYOUTS]
)
def test_official_layout_loads_exact_tensors(tmp_path, caplog, filename, family, build):
    torch.manual_seed(0)
    src = random_like(tiny_backbone(family).state_dict())
    obj, fmt, expected_dropped = build(family, src)
    path = tmp_path / filename
    torch.save(obj, path)
    model = tiny_backbone(family)

    with caplog.at_level(logging.INFO, logger="ssl4gie.models.checkpoints"):
        receipt = load_backbone_weights(model, path, ARCH[family])

    assert receipt.format == fmt
    assert receipt.loaded == len(src)
    assert receipt.resampled == []
    assert {r: sorted(k) for r, k in receipt.dropped.items()} == {
        r: sorted(k) for r, k in expected_dropped.items()
    }
    loaded = model.state_dict()
    assert loaded.keys() == src.keys()
    assert all(torch.equal(loaded[k], src[k]) for k in src), (
        "a tensor differs from the file's backbone tensor"
    )
    assert receipt.summary() in caplog.text
    assert f"loaded {len(src)} backbone tensors from {fmt} file {filename}" in receipt.summary()
    for reason, keys in expected_dropped.items():
        assert f"{len(keys)} {reason}" in receipt.summary()


def test_summary_text():
    receipt = LoadReceipt(
        "/x/r-50-100ep.pth.tar", "mocov3", 318, {PROJECTOR: ["a"] * 10, PREDICTOR: ["b"] * 10}
    )
    assert receipt.summary() == (
        "loaded 318 backbone tensors from mocov3 file r-50-100ep.pth.tar; dropped by rule: 10 projector, 10 predictor"
    )
    assert LoadReceipt("f.pth", "plain", 3).summary().endswith("; nothing dropped")


def test_pos_embed_resampled_to_model_grid(tmp_path):
    torch.manual_seed(0)
    src = random_like(tiny_backbone("vit", img_size=224).state_dict())  # 14x14 grid + cls token
    obj, _, _ = mocov3("vit", src)
    torch.save(obj, tmp_path / "vit-b-300ep.pth.tar")
    model = tiny_backbone("vit", img_size=64)  # 4x4 grid
    assert model.pos_embed.shape != src["pos_embed"].shape

    receipt = load_backbone_weights(model, tmp_path / "vit-b-300ep.pth.tar", "vit_b")

    assert receipt.resampled == ["pos_embed"]
    assert "resampled" in receipt.summary()
    expected = resample_abs_pos_embed(src["pos_embed"], [4, 4], num_prefix_tokens=1)
    assert torch.equal(model.pos_embed.detach(), expected)
    assert torch.equal(model.pos_embed[:, 0], src["pos_embed"][:, 0])  # the cls token's embedding is kept
    assert torch.equal(model.blocks[0].attn.qkv.weight.detach(), src["blocks.0.attn.qkv.weight"])


@pytest.mark.parametrize(
    ("file_family", "model_family", "words"), [("resnet", "vit", "ResNet"), ("vit", "resnet", "ViT")]
)
def test_wrong_architecture_names_both(tmp_path, file_family, model_family, words):
    path = tmp_path / "weights.pth"
    torch.save(mocov3(file_family, tiny_backbone(file_family).state_dict())[0], path)
    with pytest.raises(CheckpointError) as err:
        load_backbone_weights(tiny_backbone(model_family), path, ARCH[model_family])
    message = str(err.value)
    assert f"looks like a {words} checkpoint" in message
    assert f"backbone={ARCH[model_family]}" in message
    assert str(path) in message


def _drop(sd, key):
    del sd[key]


def _add(sd, key):
    sd[key] = torch.zeros(3)


def _reshape(sd, key):
    sd[key] = torch.zeros(5)


@pytest.mark.parametrize(
    ("edit", "key", "words"),
    [
        (_drop, "layer1.0.conv2.weight", "missing from the file"),
        (_add, "layer1.0.extra.weight", "unknown to the model"),
        (_reshape, "bn1.weight", "shape mismatch"),
    ],
)
def test_key_mismatch_is_an_error_naming_the_key(tmp_path, edit, key, words):
    sd = tiny_backbone("resnet").state_dict()
    edit(sd, key)
    torch.save(sd, tmp_path / "resnet50.pth")
    with pytest.raises(CheckpointError, match=words) as err:
        load_backbone_weights(tiny_backbone("resnet"), tmp_path / "resnet50.pth", "resnet50")
    assert key in str(err.value)


def test_missing_bn_counters_are_tolerated(tmp_path):
    src = random_like(tiny_backbone("resnet").state_dict())
    weights = {k: v for k, v in src.items() if not k.endswith("num_batches_tracked")}
    torch.save(weights, tmp_path / "resnet50.pth")
    model = tiny_backbone("resnet")
    receipt = load_backbone_weights(model, tmp_path / "resnet50.pth", "resnet50")
    assert receipt.loaded == len(weights) < len(src)
    assert torch.equal(model.state_dict()["layer4.0.bn3.running_var"], src["layer4.0.bn3.running_var"])
    assert model.state_dict()["bn1.num_batches_tracked"].item() == 0  # the model's own counter is kept


def test_model_with_classifier_is_refused(tmp_path):
    torch.save(tiny_backbone("resnet").state_dict(), tmp_path / "resnet50.pth")
    with pytest.raises(CheckpointError, match="num_classes=0"):
        load_backbone_weights(tiny_backbone("resnet", num_classes=10), tmp_path / "resnet50.pth", "resnet50")


def test_unknown_mocov3_key_is_not_dropped_silently():
    obj = {"state_dict": {"module.base_encoder.conv1.weight": torch.zeros(1), "module.queue": torch.zeros(1)}}
    with pytest.raises(CheckpointError, match=r"module\.queue"):
        to_timm_state_dict(obj)


@pytest.mark.parametrize("damage", ["truncated", "empty", "text"])
def test_corrupt_file_is_reported(tmp_path, damage):
    path = tmp_path / "r-50-100ep.pth.tar"
    torch.save(tiny_backbone("resnet").state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(
        {"truncated": data[: len(data) // 2], "empty": b"", "text": b"<html>404 Not Found</html>"}[damage]
    )
    with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
        load_backbone_weights(tiny_backbone("resnet"), path, "resnet50")
    assert str(path) in str(err.value)


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist") as err:
        load_backbone_weights(tiny_backbone("resnet"), tmp_path / "nope.pth", "resnet50")
    assert "nope.pth" in str(err.value)


class _RunsCode:
    """A pickle payload that would run a shell command when unpickled without weights_only."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": tiny_backbone("resnet").state_dict(), "extra": _RunsCode(marker)}, path)
    with pytest.raises(CheckpointError, match="pickled Python objects") as err:
        load_backbone_weights(tiny_backbone("resnet"), path, "resnet50")
    assert str(path) in str(err.value)
    assert not marker.exists()


def test_mae_training_checkpoint_with_namespace_args_is_refused(tmp_path):
    """The real MAE training checkpoint stores argparse.Namespace args, which weights_only cannot load."""
    path = tmp_path / "checkpoint-799.pth"
    obj, _, _ = mae_own_training("vit", tiny_backbone("vit").state_dict())
    obj["args"] = argparse.Namespace(model="mae_vit_base_patch16", mask_ratio=0.75)
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match="pickled Python objects") as err:
        load_backbone_weights(tiny_backbone("vit"), path, "vit_b")
    assert "argparse.Namespace" in str(err.value)


def test_non_dict_and_unknown_layouts_are_reported(tmp_path):
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="expected a dict"):
        load_backbone_weights(tiny_backbone("resnet"), tmp_path / "list.pth", "resnet50")
    with pytest.raises(
        CheckpointError, match=r"top-level keys \['encoder_q'\], sample keys .*encoder_q\.conv_stem\.weight"
    ):
        detect_format({"encoder_q": {"conv_stem.weight": torch.zeros(1)}})


def test_safetensors_file(tmp_path):
    from safetensors.torch import save_file

    src = random_like(tiny_backbone("vit").state_dict())
    save_file(src, tmp_path / "model.safetensors")
    model = tiny_backbone("vit")
    assert load_backbone_weights(model, tmp_path / "model.safetensors", "vit_b").loaded == len(src)
    assert torch.equal(model.cls_token.detach(), src["cls_token"])


@pytest.mark.parametrize(
    ("keys", "family"),
    [
        (["conv1.weight", "bn1.weight", "layer1.0.conv1.weight"], "resnet"),
        (["module.base_encoder.layer1.0.bn1.weight", "module.base_encoder.bn1.bias"], "resnet"),
        (["cls_token", "pos_embed", "blocks.0.norm1.weight"], "vit"),
        (["encoder.weight"], "unknown"),
    ],
)
def test_guess_architecture(keys, family):
    assert guess_architecture(keys) == family


@pytest.mark.parametrize(
    ("name", "projector", "count"),
    [("resnet50", [2048, 4096, 256], 318), ("vit_base_patch16_224", [768, 4096, 4096, 256], 150)],
)
def test_real_size_mocov3_keys_match_timm(name, projector, count):
    """Key names and shapes of a full-size MoCo v3 checkpoint convert to exactly timm's backbone."""
    with torch.device("meta"):
        model = timm.create_model(name, num_classes=0)
        target = model.state_dict()
        head = "fc" if name.startswith("resnet") else "head"
        encoder = target | mlp(head, projector)
        base = prefixed("module.base_encoder.", encoder)
        other = prefixed("module.momentum_encoder.", encoder) | mlp("module.predictor", [256, 4096, 256])
    state, dropped = to_timm_state_dict({"epoch": 1, "arch": name, "state_dict": base | other})
    assert len(state) == count
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in target.items()}
    assert len(dropped[PROJECTOR]) == len(mlp(head, projector))
