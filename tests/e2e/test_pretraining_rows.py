"""The study's 12 backbone rows: each official weight file loads through the public config path
(``pretraining=... pretraining.checkpoint=...`` or ``paths.weights_dir``), finetunes, and bad pairs are refused."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import compose_config, run_cli, segmentation_overrides
from helpers.checkpoints import mae_encoder, mae_full, mocov3, plain, random_like, supervised, tiny_backbone

from ssl4gie.errors import ConfigError
from ssl4gie.run.pipeline import execute
from ssl4gie.tasks.segmentation import SegmentationTask

# (backbone, pretraining, layout of the file as published); random has no file.
ROWS = [
    ("resnet50", "hyperkvasir_mocov3", plain),  # the study's re-saved base encoder
    ("resnet50", "hyperkvasir_barlowtwins", plain),
    ("resnet50", "imagenet_mocov3", mocov3),  # r-50-100ep.pth.tar as released
    ("resnet50", "imagenet_barlowtwins", plain),  # resnet50.pth as released
    ("resnet50", "imagenet_supervised", supervised),  # torchvision file with its fc
    ("resnet50", "random", None),
    ("vit_b", "hyperkvasir_mocov3", mocov3),
    ("vit_b", "hyperkvasir_mae", mae_encoder),
    ("vit_b", "imagenet_mocov3", mocov3),  # vit-b-300ep.pth.tar as released
    ("vit_b", "imagenet_mae", mae_full),  # mae_pretrain_vit_base_full.pth
    ("vit_b", "imagenet_supervised", supervised),
    ("vit_b", "random", None),
]
INVALID = [
    ("resnet50", "imagenet_mae"),
    ("resnet50", "hyperkvasir_mae"),
    ("vit_b", "imagenet_barlowtwins"),
    ("vit_b", "hyperkvasir_barlowtwins"),
    ("vit_b", "imagenet_supervised_tv2"),
]
FAMILY = {"resnet50": "resnet", "vit_b": "vit"}


def write_row_file(tmp_path, backbone, pretraining, layout, in_weights_dir):
    """Write the row's file in its official layout; return (overrides, source backbone state)."""
    source = tiny_backbone(FAMILY[backbone], img_size=224)  # as pretrained: 224 inputs, 14×14 grid
    obj, _, _ = layout(FAMILY[backbone], source.state_dict())
    cfg = compose_config([f"backbone={backbone}", f"pretraining={pretraining}"])
    if in_weights_dir:  # the documented file name in paths.weights_dir
        path = tmp_path / "w" / cfg.pretraining.files[backbone]
        extra = []
    else:
        path = tmp_path / "elsewhere" / "weights.pth"
        extra = [f"pretraining.checkpoint={path}"]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return extra, source.state_dict()


@pytest.mark.parametrize(("backbone", "pretraining", "layout"), ROWS, ids=[f"{b}-{p}" for b, p, _ in ROWS])
def test_every_row_loads_its_file_and_finetunes(tmp_path, kvasir_tiny, backbone, pretraining, layout, caplog):
    extra = []
    source = None
    if layout is not None:
        extra, source = write_row_file(
            tmp_path, backbone, pretraining, layout, in_weights_dir=pretraining.startswith("hyper")
        )
    overrides = segmentation_overrides(
        kvasir_tiny, tmp_path, f"backbone={backbone}", f"pretraining={pretraining}", *extra
    )
    cfg = compose_config(overrides, tmp_path / "run")
    task = SegmentationTask(**{k: v for k, v in cfg.task.items() if k != "_target_"})
    model = task.build_model(cfg.backbone, cfg.pretraining, False, cfg.paths.weights_dir)
    if source is not None:
        loaded = model.encoder.state_dict()
        for key, value in source.items():
            if (
                key == "pos_embed"
            ):  # resampled from the 14×14 grid of the file to the 4×4 grid of a 64-px input
                assert loaded[key].shape[1] == 17
                continue
            assert torch.equal(loaded[key], value), key
    if FAMILY[backbone] == "vit" and cfg.pretraining.get("train_pos_embed") is False:
        assert not model.encoder.pos_embed.requires_grad  # fixed sin-cos embedding stays frozen (study)
        assert model.encoder.patch_embed.proj.weight.requires_grad  # patch projection finetuned
    execute(cfg)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["pretraining"] == pretraining and metrics["status"] == "complete"
    assert 0.0 <= metrics["test/dice"] <= 1.0


@pytest.mark.parametrize(("backbone", "pretraining"), INVALID)
def test_invalid_pairs_are_rejected_before_reading_data(tmp_path, backbone, pretraining):
    cfg = compose_config(
        [f"backbone={backbone}", f"pretraining={pretraining}", f"dataset.root={tmp_path / 'does-not-exist'}"],
        tmp_path / "run",
    )
    with pytest.raises(ConfigError, match=f"pretraining={pretraining} exists for backbone") as err:
        execute(cfg)
    assert f"valid pretraining for backbone={backbone}" in str(err.value)
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_missing_weights_file_names_it_and_where_to_put_it(tmp_path, kvasir_tiny):
    cfg = compose_config(
        segmentation_overrides(kvasir_tiny, tmp_path, "pretraining=imagenet_mae", "backbone=vit_b"),
        tmp_path / "run",
    )
    with pytest.raises(ConfigError, match="mae_pretrain_vit_base.pth") as err:
        execute(cfg)
    assert "https://dl.fbaipublicfiles.com/mae/pretrain/mae_pretrain_vit_base.pth" in str(err.value)
    assert "pretraining.checkpoint=PATH" in str(err.value)


def test_hub_unreachable_error_names_the_file(tmp_path, kvasir_tiny, monkeypatch):
    import timm

    def offline(
        *args, pretrained=False, **kwargs
    ):  # what timm raises without network, without waiting for it
        if pretrained:
            raise ConnectionError("Failed to establish a new connection: [Errno 101] Network is unreachable")
        return create_model(*args, **kwargs)

    create_model = timm.create_model
    monkeypatch.setattr(timm, "create_model", offline)
    cfg = compose_config(
        segmentation_overrides(
            kvasir_tiny, tmp_path, "pretraining=imagenet_supervised", f"paths.weights_dir={tmp_path / 'none'}"
        ),
        tmp_path / "run",
    )
    with pytest.raises(ConfigError, match="resnet50.tv_in1k") as err:
        execute(cfg)
    assert str(tmp_path / "none" / "resnet50-19c8e357.pth") in str(err.value)
    assert "https://download.pytorch.org/models/resnet50-19c8e357.pth" in str(err.value)


def test_frozen_backbone_stays_bit_identical(tmp_path, kvasir_tiny):
    cfg = compose_config(
        segmentation_overrides(kvasir_tiny, tmp_path, "frozen=true", "trainer.epochs=2"), tmp_path / "run"
    )
    task = SegmentationTask(**{k: v for k, v in cfg.task.items() if k != "_target_"})
    torch.manual_seed(cfg.seed)
    before = task.build_model(cfg.backbone, cfg.pretraining, True, cfg.paths.weights_dir).encoder.state_dict()
    execute(cfg)
    after = torch.load(tmp_path / "run" / "best.pt", weights_only=True)["model"]
    for key, value in before.items():
        assert torch.equal(after[f"encoder.{key}"], value), key  # weights and BN statistics unchanged
    decoder_before = task.build_model(cfg.backbone, cfg.pretraining, True, cfg.paths.weights_dir)
    changed = [
        k for k, v in decoder_before.decoder.state_dict().items() if not torch.equal(after[f"decoder.{k}"], v)
    ]
    assert changed  # ...while the decoder trained


@pytest.mark.slow  # a command line
def test_receipt_line_in_run_log(tmp_path, kvasir_tiny):
    extra, _ = write_row_file(tmp_path, "resnet50", "imagenet_mocov3", mocov3, in_weights_dir=False)
    args = [
        *segmentation_overrides(kvasir_tiny, tmp_path, "pretraining=imagenet_mocov3", *extra),
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    result = run_cli(args)
    assert result.returncode == 0, result.stderr[-2000:]
    log = (tmp_path / "run" / "run.log").read_text()
    assert "backbone tensors from mocov3 file weights.pth" in log
    assert "momentum encoder" in log and "projector" in log and "predictor" in log


def test_eval_needs_no_pretrained_weights_file(tmp_path, kvasir_tiny):
    """mode=eval|predict takes every tensor from the checkpoint: the row's weights file may be gone."""
    source = random_like(tiny_backbone("vit", img_size=64).state_dict())
    weights = tmp_path / "mae.pth"
    torch.save(mae_encoder("vit", source)[0], weights)
    row = ["backbone=vit_b", "pretraining=imagenet_mae"]
    execute(
        compose_config(
            segmentation_overrides(kvasir_tiny, tmp_path, *row, f"pretraining.checkpoint={weights}"),
            tmp_path / "train",
        )
    )
    weights.unlink()  # neither pretraining.checkpoint nor paths.weights_dir holds the MAE file now
    ckpt = f"ckpt={tmp_path / 'train' / 'best.pt'}"
    for mode in ("eval", "predict"):
        execute(
            compose_config(
                segmentation_overrides(kvasir_tiny, tmp_path, *row, f"mode={mode}", ckpt), tmp_path / mode
            )
        )
    trained, evaluated = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("train", "eval"))
    assert evaluated["test/dice"] == trained["test/dice"]
