"""Detection end to end through the real composed config (tiny backbones, synthetic Kvasir-SEG), and the task's
contracts: predictions in the original image frame, option checks."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
from helpers import FAST, TINY, compose_config
from helpers.checkpoints import mae_encoder, plain, random_like, tiny_backbone
from omegaconf import OmegaConf
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from ssl4gie.data.detection import DetectionDataset, KvasirDetection
from ssl4gie.data.synthetic import write_kvasir_seg
from ssl4gie.errors import ConfigError
from ssl4gie.run.pipeline import execute
from ssl4gie.tasks.detection import PREDICTIONS_FILE, DetectionTask, resolve_frozen_bn

# 16 images -> 12/2/2; sides up to 160 px so the ViT's 128² canvas both pads and shrinks.
SYNTHETIC = "dataset.synthetic={n: 16, seed: 0, size_range: [48, 160]}"
# detection has no fixed input size; a narrow pyramid and few sampled RoIs keep CPU steps short
FAST_DET = [o for o in FAST if not o.startswith("task.input_size")] + [
    "task.fpn_channels=16",
    "task.rois_per_image=64",
]
PER_BACKBONE = {
    "resnet50": ["task.min_size=64", "task.max_size=128"],
    # 8×8 tokens in 4×4 windows; block 3 global, blocks 0-2 windowed (the tiny ViT has 4 blocks)
    "vit_b": ["task.canvas_size=128", "task.window_size=4", "task.global_blocks=[3]"],
}
MAP_KEYS = ("test/map", "test/map_50", "test/map_75")


def _config(backbone, tmp_paths, output_dir, *extra):
    overrides = ["task=detection", f"backbone={backbone}", *TINY, *FAST_DET, *tmp_paths, SYNTHETIC]
    return compose_config([*overrides, *PER_BACKBONE[backbone], *extra], output_dir)


@pytest.mark.parametrize("backbone", sorted(PER_BACKBONE))
def test_train_eval_predict(backbone, tmp_paths, tmp_path):
    train_dir = tmp_path / "train"
    execute(_config(backbone, tmp_paths, train_dir))
    metrics = json.loads((train_dir / "metrics.json").read_text())
    assert metrics["status"] == "complete" and metrics["monitor"] == "val/map"
    for key in ("val/map", *MAP_KEYS):
        assert 0.0 <= metrics[key] <= 1.0, key  # NaN would mean no ground truth reached the metric
    assert metrics["n_test"] == 2
    assert sorted(p.suffix for p in (train_dir / "figures").iterdir()) == [".png", ".png"]

    ckpt = f"ckpt={train_dir / 'best.pt'}"
    execute(_config(backbone, tmp_paths, tmp_path / "eval", "mode=eval", ckpt))
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for key in MAP_KEYS:  # the same weights on the same images give the same numbers
        assert evaluated[key] == pytest.approx(metrics[key], abs=1e-6), key

    predict_dir = tmp_path / "predict"
    execute(_config(backbone, tmp_paths, predict_dir, "mode=predict", ckpt))
    predicted = json.loads((predict_dir / "predictions" / PREDICTIONS_FILE).read_text())
    reader = KvasirDetection(str(tmp_path / "data" / "Kvasir-SEG"), "kvasir_det")
    test_items = [reader.items[i] for i in reader.splits()["test"]]
    assert sorted(predicted) == sorted(item.name for item in test_items)
    for item in test_items:  # boxes in the original image frame, not the canvas
        entry = predicted[item.name]
        assert (entry["height"], entry["width"]) == item.size
        for box in entry["bbox"]:
            assert 0 <= box["xmin"] <= box["xmax"] <= item.size[1]
            assert 0 <= box["ymin"] <= box["ymax"] <= item.size[0]
            assert box["label"] == "polyp" and 0.05 < box["score"] <= 1
    assert len(list((predict_dir / "figures").glob("*.png"))) == 2


@pytest.mark.slow
@pytest.mark.parametrize("backbone", sorted(PER_BACKBONE))
def test_training_with_decoding_and_augmentation_on_the_device(backbone, tmp_paths, tmp_path, caplog):
    """``trainer.gpu_augment=true`` (the default on CUDA) on the CPU: the training workers hand over JPEG bytes,
    the study's parameters and the moved boxes; the device decodes and augments; evaluation is unchanged."""
    caplog.set_level("INFO")
    execute(_config(backbone, tmp_paths, tmp_path / "train", "trainer.gpu_augment=true"))
    metrics = json.loads((tmp_path / "train" / "metrics.json").read_text())
    assert metrics["status"] == "complete" and all(0.0 <= metrics[key] <= 1.0 for key in MAP_KEYS)


class EchoDetector(torch.nn.Module):
    """Stands in for a perfect detector: returns each image's own (canvas-frame) ground truth with score 1."""

    def __init__(self, targets):
        super().__init__()
        self.targets = targets

    def forward(self, images):
        return [
            {"boxes": t["boxes"], "scores": torch.ones(len(t["boxes"])), "labels": t["labels"]}
            for t in self.targets
        ]


@pytest.mark.parametrize("canvas", [None, 64, 256])  # native size; shrink + pad; pad only
def test_predictions_are_mapped_back_to_the_original_frame(canvas, tmp_path):
    reader = KvasirDetection(
        str(write_kvasir_seg(tmp_path / "kvasir", n=4, seed=1, size_range=(80, 150))), "k"
    )
    dataset = DetectionDataset(reader, [0, 1, 2, 3], train=False, canvas_size=canvas)
    samples = [dataset[i] for i in range(4)]
    batch = {
        "image": [s["image"] for s in samples],
        "meta": [s["meta"] for s in samples],
        "target_native": [s["target_native"] for s in samples],
    }
    task = DetectionTask(**{**_task_options(), "canvas_size": canvas or 1024})
    outputs = task.predict(EchoDetector([s["target"] for s in samples]), batch)
    for out, sample in zip(outputs, samples, strict=True):
        torch.testing.assert_close(out["boxes"], sample["target_native"]["boxes"], atol=1e-3, rtol=0)
    evaluator = task.evaluator(keep=1, save_dir=tmp_path / "predictions")
    evaluator.process(batch, outputs)
    metrics, rows = evaluator.compute()
    assert metrics["map"] == pytest.approx(1.0) and [r["mean_best_iou"] for r in rows] == pytest.approx(
        [1.0] * 4
    )
    saved = json.loads((tmp_path / "predictions" / PREDICTIONS_FILE).read_text())
    assert set(saved) == {item.name for item in reader.items}
    figures = task.draw(evaluator.kept, tmp_path / "figures")
    assert [p.name for p in figures] == [f"{reader.items[0].name}.png"] and figures[0].stat().st_size > 0


def _task_options(**changes):
    cfg = compose_config(["task=detection"]).task
    options = {k: v for k, v in OmegaConf.to_container(cfg).items() if k != "_target_"}
    return {**options, **changes}


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"frozen_bn": "sometimes"}, "task.frozen_bn"),
        ({"input_size": 224}, "task.input_size"),
        ({"min_size": 900, "max_size": 800}, "task.max_size"),
        ({"canvas_size": 0}, "task.canvas_size"),
        ({"pyramid_norm": "batch"}, "task.pyramid_norm='batch' is not valid; valid: channel, study"),
        ({"pos_embed": "rope"}, "task.pos_embed='rope' is not valid; valid: resample, study"),
    ],
)
def test_invalid_options_are_rejected(changes, message):
    with pytest.raises(ConfigError, match=message):
        DetectionTask(**_task_options(**changes))


def test_frozen_bn_rule():
    assert resolve_frozen_bn("auto", pretrained=False) is False  # random init: trainable BatchNorm
    assert resolve_frozen_bn("auto", pretrained=True) is True
    assert resolve_frozen_bn(True, pretrained=False) is True  # the study's behaviour
    assert resolve_frozen_bn(False, pretrained=True) is False


def test_unknown_backbone_family_is_rejected(tmp_path):
    task = DetectionTask(**_task_options())
    backbone = OmegaConf.create({"name": "convnext", "family": "convnext"})
    with pytest.raises(ConfigError, match="known families: \\['resnet', 'vit'\\]"):
        task.build_model(
            backbone, OmegaConf.create({"name": "random", "pretrained": False}), False, str(tmp_path)
        )
    assert not math.isnan(task.figure_threshold)


@pytest.mark.parametrize(
    "backbone,family,pretraining,layout",
    [("resnet50", "resnet", "imagenet_barlowtwins", plain), ("vit_b", "vit", "imagenet_mae", mae_encoder)],
)
def test_pretrained_rows_load_into_the_detectors(backbone, family, pretraining, layout, tmp_path):
    source = random_like(tiny_backbone(family, img_size=224).state_dict())  # as published: 224 inputs
    torch.save(layout(family, source)[0], tmp_path / "weights.pth")
    overrides = ["task=detection", f"backbone={backbone}", f"pretraining={pretraining}", *TINY]
    overrides += [f"pretraining.checkpoint={tmp_path / 'weights.pth'}", *PER_BACKBONE[backbone]]
    cfg = compose_config(overrides)
    task = DetectionTask(**{k: v for k, v in cfg.task.items() if k != "_target_"})
    model = task.build_model(cfg.backbone, cfg.pretraining, False, str(tmp_path))
    if family == "resnet":
        encoder = model.backbone.body
        assert not any(isinstance(m, nn.BatchNorm2d) for m in encoder.modules())  # frozen_bn=auto, pretrained
        assert any(isinstance(m, FrozenBatchNorm2d) for m in encoder.modules())
        weight = "layer4.0.conv2.weight"
    else:
        encoder = model.backbone.encoder
        assert encoder.cls_token is None and encoder.pos_embed.shape[1] == 64  # 8×8 patch tokens only
        assert not encoder.pos_embed.requires_grad  # MAE's sin-cos table stays frozen
        weight = "blocks.0.attn.qkv.weight"
    assert torch.equal(encoder.state_dict()[weight], source[weight])


def test_the_study_position_table_keeps_the_pretrained_grid(tmp_path):
    """task.pos_embed=study: the published 1×(1+14²)×C table loads as it is (CLS slot included, no resampling)
    and is interpolated to the canvas grid (8×8 here) in every forward, as the study's detector."""
    source = random_like(tiny_backbone("vit", img_size=224).state_dict())
    torch.save(mae_encoder("vit", source)[0], tmp_path / "weights.pth")
    overrides = [
        "task=detection",
        "backbone=vit_b",
        "pretraining=imagenet_mae",
        *TINY,
        *PER_BACKBONE["vit_b"],
    ]
    overrides += [f"pretraining.checkpoint={tmp_path / 'weights.pth'}", "task.pos_embed=study"]
    cfg = compose_config(overrides)
    task = DetectionTask(**{k: v for k, v in cfg.task.items() if k != "_target_"})
    model = task.build_model(cfg.backbone, cfg.pretraining, False, str(tmp_path))
    encoder = model.backbone.encoder
    assert encoder.cls_token is None and torch.equal(encoder.pos_embed.detach(), source["pos_embed"])
    assert task.structure()["detector"]["pos_embed"] == "study"
    model.eval()
    with torch.no_grad():
        assert model([torch.rand(3, 128, 128)])[0]["boxes"].shape[1] == 4


@pytest.mark.parametrize(
    "backbone, change, option",
    [
        ("vit_b", "task.window_size=2", "window_size"),
        ("vit_b", "task.global_blocks=[1,3]", "global_blocks"),
        ("vit_b", "task.canvas_size=64", "canvas_size"),
        ("vit_b", "task.pyramid_norm=study", "pyramid_norm"),
        ("resnet50", "task.frozen_bn=true", "frozen_bn"),
        ("resnet50", "task.fpn_channels=8", "fpn_channels"),
    ],
)
def test_eval_builds_the_checkpoints_detector_and_refuses_a_typed_contradiction(
    backbone, change, option, tmp_paths, tmp_path, monkeypatch, caplog
):
    """Eval builds the detector the checkpoint was trained with: another structure in the config is replaced by the
    checkpoint's (and logged) unless the command line typed it, which is refused naming the option."""
    execute(_config(backbone, tmp_paths, tmp_path / "train"))
    ckpt = f"ckpt={tmp_path / 'train' / 'best.pt'}"
    with caplog.at_level(logging.INFO):
        execute(_config(backbone, tmp_paths, tmp_path / "eval", "mode=eval", ckpt, change))
    assert f"task.{option}=" in caplog.text and "(from the checkpoint)" in caplog.text
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["status"] == "complete"
    monkeypatch.setattr("ssl4gie.run.prepare.explicit_options", lambda: {change.split("=")[0]})
    with pytest.raises(ConfigError, match=rf"task\.{option}=.* contradicts checkpoint .*task\.{option}="):
        execute(_config(backbone, tmp_paths, tmp_path / "eval2", "mode=eval", ckpt, change))


@pytest.mark.parametrize("backbone", sorted(PER_BACKBONE))
def test_metrics_do_not_depend_on_the_training_batch_size(backbone, tmp_paths, tmp_path):
    """Evaluation goes one image at a time (trainer.eval_batch_size=1, as the study): a batched ResNet input is
    padded to the largest image of the batch, which would make each image's detections depend on its neighbours."""
    execute(_config(backbone, tmp_paths, tmp_path / "train"))
    ckpt = f"ckpt={tmp_path / 'train' / 'best.pt'}"
    rows = []
    for batch_size in (1, 2):
        out = tmp_path / f"eval{batch_size}"
        execute(_config(backbone, tmp_paths, out, "mode=eval", ckpt, f"trainer.batch_size={batch_size}"))
        rows.append(json.loads((out / "metrics.json").read_text()))
    for key in MAP_KEYS:
        assert rows[0][key] == rows[1][key], key


def test_frozen_batchnorm_on_a_random_init_detector_is_explained(tmp_path, caplog):
    cfg = compose_config(["task=detection", *TINY, "task.frozen_bn=true", *PER_BACKBONE["resnet50"]])
    task = DetectionTask(**{k: v for k, v in cfg.task.items() if k != "_target_"})
    with caplog.at_level("WARNING"):
        model = task.build_model(cfg.backbone, cfg.pretraining, False, str(tmp_path))
    assert "trains without normalisation, as the study's random-init detector" in caplog.text
    body = model.backbone.body
    # torchvision's initialisation: the last BatchNorm of every block is 1, so residual branches are on
    assert all(
        torch.all(block.bn3.weight == 1) for layer in ("layer1", "layer4") for block in getattr(body, layer)
    )


def test_study_canvas_halves_large_images_after_padding_odd_sides():
    """As the study's ``Object_detection/Data/dataset.py``: a side > canvas -> one zero row/column on odd
    sides, halve (bicubic, antialias), centre-pad."""
    from torchvision import tv_tensors

    from ssl4gie.data.detection import to_canvas

    image = tv_tensors.Image(torch.randint(0, 255, (3, 81, 70), dtype=torch.uint8))
    boxes = tv_tensors.BoundingBoxes(
        torch.tensor([[10.0, 20.0, 30.0, 40.0]]), format="XYXY", canvas_size=(81, 70)
    )
    out, moved, canvas = to_canvas(image, boxes, 64, rule="study")
    assert out.shape == (3, 64, 64) and canvas == {"scale": (0.5, 0.5), "offset": (14, 11)}  # 82×70 -> 41×35
    assert moved.as_subclass(torch.Tensor).tolist() == [[19.0, 21.0, 29.0, 31.0]]
    padded = torch.cat([image.as_subclass(torch.Tensor), torch.zeros(3, 1, 70, dtype=torch.uint8)], dim=1)
    from torchvision.transforms.v2 import functional as TF

    halved = TF.resize(padded, [41, 35], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    assert torch.equal(out.as_subclass(torch.Tensor)[:, 11:52, 14:49], halved)
    assert (
        out.as_subclass(torch.Tensor)[:, :11].sum() == 0
        and out.as_subclass(torch.Tensor)[:, :, :14].sum() == 0
    )
    small = tv_tensors.Image(torch.zeros(3, 40, 50, dtype=torch.uint8))  # fits: only padded, as ours
    assert to_canvas(small, boxes, 64, rule="study")[2] == to_canvas(small, boxes, 64)[2]
    with pytest.raises(Exception, match="does not fit task.canvas_size=32 after the study's halving"):
        to_canvas(image, boxes, 32, rule="study")


def test_study_protocol_scores_a_vit_in_its_canvas_frame(tmp_paths, tmp_path):
    execute(_config("vit_b", tmp_paths, tmp_path / "train"))
    ckpt = f"ckpt={tmp_path / 'train' / 'best.pt'}"
    cfg = _config("vit_b", tmp_paths, tmp_path / "eval", "mode=eval", ckpt, "task.protocol=study")
    task = DetectionTask(**{k: v for k, v in cfg.task.items() if k != "_target_"})
    task.canvas = 128
    evaluator = task.evaluator()
    seen = []
    evaluator.metrics.update = lambda preds, targets, names: seen.append((preds, targets))
    canvas_target = {"boxes": torch.tensor([[1.0, 2.0, 3.0, 4.0]]), "labels": torch.tensor([1])}
    native_target = {"boxes": torch.tensor([[9.0, 9.0, 20.0, 20.0]]), "labels": torch.tensor([1])}
    meta = {"name": "x", "orig_size": (40, 40), "canvas": {"scale": (1.0, 1.0), "offset": (44, 44)}}
    output = {
        "boxes": torch.tensor([[0.0, 0, 5, 5]]),
        "input_boxes": torch.tensor([[44.0, 44, 49, 49]]),
        "scores": torch.tensor([0.9]),
        "labels": torch.tensor([1]),
    }
    evaluator.process({"meta": [meta], "target": [canvas_target], "target_native": [native_target]}, [output])
    ((preds, targets),) = seen
    assert torch.equal(preds[0]["boxes"], output["input_boxes"]) and targets[0] is canvas_target
    execute(cfg)  # and end to end
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["protocol"] == "study" and 0.0 <= metrics["test/map"] <= 1.0
