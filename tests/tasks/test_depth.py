"""The depth task end to end through the real composed config, its evaluator, and the real-size models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import FAST, TINY, compose_config
from hydra.utils import instantiate
from PIL import Image

from ssl4gie.data.c3vd import PadGeometry
from ssl4gie.data.collate import collate
from ssl4gie.run.pipeline import execute
from ssl4gie.tasks.depth import DepthEvaluator

# Small depth decoders, so CPU loops stay fast; the real widths are checked in test_real_size_models_forward.
DEPTH_DECODERS = [
    "task.decoder.vit.head.reassemble_channels=[8,8,16,16]",
    "task.decoder.vit.head.features=16",
    "task.decoder.resnet.head.head_channels=[8,8]",
]
SYNTHETIC = ["dataset.synthetic={seed:0,size:[40,32]}"]  # 22 videos × 3 frames of 40×32 under paths.data_dir
SMALL_INPUT = ["task.input_size=32"]  # after FAST (64): the network sees 32², metrics are still native 40×32
METRICS = ("rmse", "abs_rel", "med_rel", "mae", "delta1")
KEYS = [f"{split}/{m}{suffix}" for split in ("val", "test") for m in METRICS for suffix in ("", "_median")]


def _run(overrides: list[str], output_dir: Path) -> dict:
    execute(compose_config(overrides, output_dir))
    return json.loads((output_dir / "metrics.json").read_text())


@pytest.mark.slow  # 5-7 s each on 2 cores; the study protocol's eval (test_depth_study_protocol) stays fast
@pytest.mark.parametrize("backbone", ["resnet50", "vit_b"])
def test_train_eval_predict(backbone: str, tmp_paths: list[str], tmp_path: Path) -> None:
    base = [
        "task=depth",
        f"backbone={backbone}",
        *TINY,
        *DEPTH_DECODERS,
        *FAST,
        *SMALL_INPUT,
        *SYNTHETIC,
        *tmp_paths,
    ]
    train = _run(base, tmp_path / "train")
    assert set(KEYS) <= set(train) and {"val/ssi_mse", "test/ssi_mse"} <= set(train)
    assert train["monitor"] == "val/ssi_mse" and train["n_test"] == 6 and train["status"] == "complete"
    assert all(np.isfinite(train[k]) for k in KEYS) and 0 <= train["test/delta1"] <= 1
    figures = sorted((tmp_path / "train" / "figures").glob("*.png"))
    assert [f.name for f in figures] == ["t2v2_0000.png", "t2v2_0001.png"]  # num_figures=2, test order
    rows = (tmp_path / "train" / "per_image_test.csv").read_text().splitlines()
    assert len(rows) == 7 and "video" in rows[0] and rows[-1].startswith("c4v3_0002,")

    ckpt = tmp_path / "train" / "best.pt"
    evaluated = _run([*base, "mode=eval", f"ckpt={ckpt}"], tmp_path / "eval")
    for key in (k for k in KEYS if k.startswith("test/")):
        assert evaluated[key] == pytest.approx(train[key], rel=1e-5), key

    _run([*base, "mode=predict", f"ckpt={ckpt}"], tmp_path / "predict")
    files = sorted((tmp_path / "predict" / "predictions").glob("*_depth.tiff"))
    assert len(files) == 6 and files[0].name == "c4v3_0000_depth.tiff"
    with Image.open(files[0]) as written:
        assert (written.mode, written.size) == ("I;16", (40, 32))
        assert np.asarray(written).max() > 0


def _batch(outputs: torch.Tensor, natives: list[torch.Tensor], geometries: list[PadGeometry]) -> dict:
    size = outputs.shape[-1]
    target = torch.nn.functional.interpolate(outputs, size=(size, size), mode="nearest") * 0.5 + 0.1
    return {
        "target": target,
        "target_native": natives,
        "meta": [{"name": f"f{i}", "video": "t2v2", "geometry": g} for i, g in enumerate(geometries)],
    }


def test_evaluator_scores_at_native_resolution_after_crop(tmp_path: Path) -> None:
    torch.manual_seed(0)
    outputs = torch.rand(2, 1, 8, 8) * 0.8 + 0.1
    geometries = [PadGeometry(10, 6), PadGeometry(6, 10)]
    # targets that are an exact affine map of the upsampled, cropped output: the oracle fit must find it
    natives = []
    for out, g in zip(outputs, geometries, strict=True):
        native = g.to_native(out[0]) * 0.6 + 0.05
        native[0, 0] = 0  # an invalid pixel
        natives.append(native)
    evaluator = DepthEvaluator(100.0, keep=1, save_dir=tmp_path)
    evaluator.process(_batch(outputs, natives, geometries), outputs)
    metrics, rows = evaluator.compute()
    assert metrics["rmse"] < 1e-3 and metrics["delta1"] == 1.0
    assert (
        [r["name"] for r in rows] == ["f0", "f1"] and rows[0]["n_valid"] == 59 and rows[0]["video"] == "t2v2"
    )
    assert rows[0]["scale"] == pytest.approx(0.6, rel=1e-4)
    # a geometry off by one row would score a shifted map: no longer exact
    shifted = DepthEvaluator(100.0)
    shifted.process(_batch(outputs, [n.roll(1, 0) for n in natives], geometries), outputs)
    assert shifted.compute()[0]["rmse"] > 0.1
    # the written prediction is the aligned depth in C3VD's 16-bit code
    code = np.asarray(Image.open(tmp_path / "f0_depth.tiff")).astype(np.float64)
    assert code.shape == (6, 10)
    assert np.allclose(code[natives[0] > 0] / 65535, natives[0][natives[0] > 0].numpy(), atol=2e-5)
    assert evaluator.kept[0]["pred"].shape == (6, 10) and evaluator.kept[0]["where"] == "native resolution"


def test_validation_ssi_mse_does_not_depend_on_the_batch_size() -> None:
    torch.manual_seed(0)
    outputs = torch.rand(4, 1, 8, 8)
    target = torch.rand(4, 1, 8, 8) * (torch.rand(4, 1, 8, 8) > 0.3)
    target[3] = target[3] * (torch.arange(8) < 2)  # one image with few valid pixels weighs less
    meta = [{"name": f"f{i}", "video": "t4v1"} for i in range(4)]
    whole = DepthEvaluator(100.0)
    whole.process({"target": target, "meta": meta}, outputs)
    split = DepthEvaluator(100.0)
    split.process({"target": target[:3], "meta": meta[:3]}, outputs[:3])
    split.process({"target": target[3:], "meta": meta[3:]}, outputs[3:])
    assert whole.compute()[0]["ssi_mse"] == pytest.approx(split.compute()[0]["ssi_mse"], rel=1e-6)
    assert whole.compute()[0]["ssi_mse"] > 0 and whole.kept == []


def test_device_augmentation_path_trains(tmp_paths: list[str], tmp_path: Path) -> None:
    # On CUDA the CLI sets augment_on_device: samples stay uint8 and the engine has augment_batch augment them.
    cfg = compose_config(["task=depth", *TINY, *DEPTH_DECODERS, *FAST, *SMALL_INPUT, *SYNTHETIC, *tmp_paths])
    task = instantiate(cfg.task, _recursive_=False)
    task.augment_on_device = True
    reader = instantiate(cfg.dataset)
    data = task.build_datasets(reader, ["train", "val"], None, progress=False)
    assert data["train"][0]["image"].dtype == torch.uint8 and data["val"][0]["image"].dtype == torch.float32
    model = task.build_model(cfg.backbone, cfg.pretraining, cfg.frozen, cfg.paths.weights_dir)
    batch = task.augment_batch(collate([data["train"][i] for i in range(3)]))
    assert batch["image"].dtype == torch.float32
    loss = task.training_step(model, batch)["loss"]
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert all(p.grad is not None for p in model.decoder.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["resnet50", "vit_b"])
def test_real_size_models_forward(backbone: str, tmp_paths: list[str]) -> None:
    cfg = compose_config(["task=depth", f"backbone={backbone}", *tmp_paths])
    task = instantiate(cfg.task, _recursive_=False)
    model = task.build_model(cfg.backbone, cfg.pretraining, cfg.frozen, cfg.paths.weights_dir).eval()
    kind = {"resnet50": "ResNetDepthDecoder", "vit_b": "DPT"}[backbone]
    assert type(model.decoder).__name__ == kind
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 1, 224, 224)
    assert out.min() > 0 and out.max() < 1
