"""backbone=vit_s and backbone=vit_b14 (registers 0 or 4): every task finetunes one epoch on synthetic data through
the real config (tiny variants with the production key structure), decoders are built from the encoder's shapes
and token grid, and the real-size models construct and run at 224²."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from helpers import compose_config, task_overrides
from helpers.checkpoints import dinov2_hub, random_like
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ssl4gie.errors import ConfigError
from ssl4gie.models.backbone import create_backbone, evenly_spaced_indices, feature_channels
from ssl4gie.models.detection import vit_detector
from ssl4gie.run.pipeline import execute

METRIC = {
    "segmentation": "test/dice",
    "classification": "test/f1",
    "detection": "test/map",
    "depth": "test/rmse",
}
# (cell name, backbone, pretraining row, register tokens of its tiny weights file). The new backbones exist for these
# rows only (pretraining=random lists resnet50 and vit_b), so each run also loads a tiny file of the row's layout.
BACKBONES = [
    ("vit_s", "vit_s", "imagenet_dino", None),
    ("vit_b14", "vit_b14", "imagenet_dinov2", 0),
    ("vit_b14-reg4", "vit_b14", "imagenet_dinov2_reg4", 4),
]


def tiny_weights(backbone: str, registers: int | None) -> dict[str, torch.Tensor]:
    """A tiny file in the row's published layout: DINO's plain ViT-S/16, DINOv2's hub file (518², CLS slot)."""
    torch.manual_seed(0)
    kwargs = {"embed_dim": 32, "depth": 4, "num_heads": 2, "num_classes": 0}
    if backbone == "vit_s":
        return random_like(timm.create_model("vit_small_patch16_224", **kwargs).state_dict())
    return dinov2_hub(
        random_like(timm.create_model("vit_base_patch14_dinov2", **kwargs).state_dict()), registers
    )


# registers: the detector, which removes them (the dense path with registers: test_real_size_forward_at_224)
CELLS = [
    (*cell, task) for cell in BACKBONES for task in METRIC if cell[0] != "vit_b14-reg4" or task == "detection"
]


@pytest.mark.parametrize(
    ("name", "backbone", "row", "registers", "task"),
    # depth: about 5 s a cell on 2 cores (the other tasks 1-3 s)
    [pytest.param(*c, marks=pytest.mark.slow) if c[-1] == "depth" else c for c in CELLS],
    ids=[f"{c[0]}-{c[-1]}" for c in CELLS],
)
def test_one_epoch_finetune(tmp_path, tmp_paths, name, backbone, row, registers, task):
    weights = tmp_path / "weights.pth"
    torch.save(tiny_weights(backbone, registers), weights)
    # vit_b14 runs at 56 px, a multiple of its 14-px patch (4×4 tokens)
    size = ["task.input_size=56"] if backbone == "vit_b14" and task != "detection" else []
    extra = [f"backbone={backbone}", f"pretraining={row}", f"pretraining.checkpoint={weights}", *size]
    cfg = compose_config(task_overrides(task, tmp_paths, *extra), tmp_path / "run")
    execute(cfg)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "complete" and metrics["backbone"] == backbone
    assert metrics["weights_file"] == str(weights)
    value = metrics[METRIC[task]]
    assert value == value and value >= 0.0  # finite (NaN fails), and a score/error is non-negative
    if task != "depth":
        assert value <= 1.0


@pytest.mark.parametrize("registers", [0, 4])
def test_vit_b14_detector_keeps_a_stride_16_pyramid(registers):
    """A 14-px patch: the canvas is resized so that one token covers 16 canvas px; the pyramid levels are the
    canvas over 4, 8, 16, 32 and 64, and register tokens are removed with the class token."""
    cfg = OmegaConf.merge(
        compose_config(["backbone=vit_b14"]).backbone, {"tiny": True, "registers": registers}
    )
    vit = create_backbone(cfg, 8 * 14)  # canvas 128 -> 8×8 tokens at 112 px
    detector = vit_detector(vit, canvas_size=128, window_size=4, global_blocks=[3], fpn_channels=8)
    backbone = detector.backbone
    assert backbone.encoder.reg_token is None and backbone.encoder.num_prefix_tokens == 0
    assert backbone.input_size == (112, 112) and backbone.grid == (8, 8)
    levels = backbone(torch.rand(1, 3, 128, 128))
    assert {k: tuple(v.shape[-2:]) for k, v in levels.items()} == {
        "0": (32, 32),
        "1": (16, 16),
        "2": (8, 8),
        "3": (4, 4),
        "pool": (2, 2),
    }
    detector.eval()
    with torch.no_grad():
        out = detector([torch.rand(3, 128, 128)])
    assert out[0]["boxes"].shape[-1] == 4


def test_canvas_not_a_multiple_of_16_is_refused():
    vit = create_backbone(
        compose_config(["backbone=vit_b14", "backbone.tiny=true", "backbone.registers=0"]).backbone, 112
    )
    with pytest.raises(ConfigError, match="multiple of 16"):
        vit_detector(vit, canvas_size=120, window_size=4)


@pytest.mark.parametrize("value", ["3.5", "-1", "many"])
def test_invalid_register_count_is_refused(value):
    cfg = compose_config(["backbone=vit_b14", "backbone.tiny=true", f"backbone.registers={value}"])
    with pytest.raises(ConfigError, match=f"backbone.registers={value} is not valid; valid: auto, 0, 4"):
        create_backbone(cfg.backbone, 56)


# (backbone, registers, tokens after the patch grid's prefix, width, grid at 224)
REAL = [("vit_s", None, 1, 384, 14), ("vit_b14", 0, 1, 768, 16), ("vit_b14", 4, 5, 768, 16)]


@pytest.mark.slow  # real-size ViT-B construction (timm initialisation) takes a few seconds each on 2 cores
@pytest.mark.parametrize(
    ("name", "registers", "prefix", "width", "grid"), REAL, ids=["vit_s", "vit_b14", "vit_b14-reg4"]
)
def test_real_size_forward_at_224(name, registers, prefix, width, grid):
    overrides = [
        f"backbone={name}",
        "pretraining=imagenet_dino" if name == "vit_s" else "pretraining=imagenet_dinov2",
    ]
    overrides += [] if registers is None else [f"backbone.registers={registers}"]
    cfg = compose_config(overrides).backbone
    encoder = create_backbone(cfg, 224).eval()
    with torch.no_grad():
        tokens = encoder.forward_features(torch.rand(1, 3, 224, 224))
    assert tokens.shape == (1, prefix + grid * grid, width)
    indices = evenly_spaced_indices(encoder)
    assert indices == [2, 5, 8, 11]
    assert feature_channels(encoder, indices, 224) == [width] * 4


@pytest.mark.slow
def test_real_size_vit_b14_segmentation_model_at_224(tmp_paths):
    """The study's DPT widths on ViT-B/14's 16×16 grid: logits at the input size (random initialisation)."""
    cfg = compose_config(
        [
            "task=segmentation",
            "backbone=vit_b14",
            "pretraining=imagenet_dinov2",
            "+pretraining.load=false",
            *tmp_paths,
        ]
    )
    task = instantiate(cfg.task, _recursive_=False)
    model = task.build_model(cfg.backbone, cfg.pretraining, False, cfg.paths.weights_dir).eval()
    assert model.encoder.reg_token is None  # registers=auto without a file: the row's declared 0
    with torch.no_grad():
        assert model(torch.rand(1, 3, 224, 224)).shape == (1, 1, 224, 224)
