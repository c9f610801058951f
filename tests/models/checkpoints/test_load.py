"""Contract tests for checkpoint conversion: each official layout, written to disk from tiny timm models,
loads through the real loader into a timm backbone with exactly the original tensors."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import pytest
import timm
import torch
from helpers.checkpoints import (  # builders of every official layout
    ARCH,
    LAYOUTS,
    mae_own_training,
    mlp,
    mocov3,
    prefixed,
    random_like,
    tiny_backbone,
)
from timm.layers import resample_abs_pos_embed

from ssl4gie.models.checkpoints import (
    PREDICTOR,
    PROJECTOR,
    CheckpointError,
    LoadReceipt,
    detect_format,
    guess_architecture,
    load_backbone_weights,
    to_timm_state_dict,
)


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


def test_mae_training_checkpoint_with_namespace_args_loads(tmp_path):
    """The real MAE training checkpoint stores argparse.Namespace args: allowed, still with weights_only=True."""
    path = tmp_path / "checkpoint-799.pth"
    source = tiny_backbone("vit")
    obj, _, _ = mae_own_training("vit", source.state_dict())
    obj["args"] = argparse.Namespace(model="mae_vit_base_patch16", mask_ratio=0.75)
    torch.save(obj, path)
    target = tiny_backbone("vit")
    receipt = load_backbone_weights(target, path, "vit_b")
    assert receipt.format == "mae"
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


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
