"""Segmentation end to end through the real composed config: train -> eval -> predict, resume, reproducibility."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from helpers import compose_config, run_cli, segmentation_overrides
from PIL import Image

from ssl4gie.engine.trainer import Trainer
from ssl4gie.run.pipeline import execute

KEYS = ("test/dice", "test/iou", "test/precision", "test/recall", "val/dice")


def test_default_config_composes_with_task_default_dataset():
    cfg = compose_config([])
    assert (cfg.task.name, cfg.dataset.name, cfg.backbone.name, cfg.pretraining.name) == (
        "segmentation",
        "kvasir_seg",
        "resnet50",
        "random",
    )
    assert cfg.trainer.epochs == 200 and cfg.trainer.lr == 1e-4 and cfg.trainer.weight_decay == 0.01
    assert compose_config(["dataset=cvc_clinicdb"]).dataset.name == "cvc_clinicdb"


def test_help_and_cfg_job_work():
    result = run_cli(["--help"])
    assert result.returncode == 0 and "backbone: resnet50, vit_b" in result.stdout
    result = run_cli(["--cfg", "job", "backbone=vit_b", "dataset=cvc_clinicdb"])
    assert result.returncode == 0 and "timm_name: vit_base_patch16_224" in result.stdout
    assert "name: cvc_clinicdb" in result.stdout


@pytest.mark.parametrize("backbone", ["resnet50", "vit_b"])
def test_train_eval_predict(tmp_path, kvasir_tiny, backbone):
    run = tmp_path / "train"
    execute(compose_config(segmentation_overrides(kvasir_tiny, tmp_path, f"backbone={backbone}"), run))
    metrics = json.loads((run / "metrics.json").read_text())
    for key in KEYS:
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["test/dice_all_background"] == 0.0  # every synthetic image has a polyp
    assert (metrics["task"], metrics["backbone"], metrics["row"], metrics["epochs"]) == (
        "segmentation",
        backbone,
        f"{'RN' if backbone == 'resnet50' else 'VT'}-NA-NA",
        1,
    )
    files = {p.name for p in run.iterdir()}
    assert {"best.pt", "per_image_test.csv", "history.csv"} <= files
    assert "last.pt" not in files  # removed once the run completed (trainer.keep_last=false)
    best = torch.load(run / "best.pt", weights_only=True)
    assert {"model", "model_config", "best_epoch", "history"} <= set(best)  # what eval/predict need...
    assert not {"optimizer", "scheduler", "scaler", "rng"} & set(best)  # ...and no training state
    per_image = pd.read_csv(run / "per_image_test.csv")
    assert list(per_image.columns) == ["name", "dice", "iou", "precision", "recall"] and len(per_image) == 1
    assert per_image["dice"].mean() == pytest.approx(metrics["test/dice"])
    assert len(list((run / "figures").glob("*.png"))) == 1

    ckpt = run / "best.pt"
    evaluation = tmp_path / "eval"
    execute(
        compose_config(
            segmentation_overrides(
                kvasir_tiny, tmp_path, f"backbone={backbone}", "mode=eval", f"ckpt={ckpt}"
            ),
            evaluation,
        )
    )
    assert json.loads((evaluation / "metrics.json").read_text())["test/dice"] == pytest.approx(
        metrics["test/dice"]
    )

    prediction = tmp_path / "predict"
    execute(
        compose_config(
            segmentation_overrides(
                kvasir_tiny, tmp_path, f"backbone={backbone}", "mode=predict", f"ckpt={ckpt}"
            ),
            prediction,
        )
    )
    masks = list((prediction / "predictions").glob("*.png"))
    assert len(masks) == 1
    name = masks[0].stem
    with Image.open(masks[0]) as mask, Image.open(kvasir_tiny / "masks" / f"{name}.jpg") as target:
        assert mask.size == target.size  # native resolution
        assert set(mask.getdata()) <= {0, 255}


def test_checkpoint_of_another_backbone_is_refused(tmp_path, kvasir_tiny):
    run = tmp_path / "train"
    execute(compose_config(segmentation_overrides(kvasir_tiny, tmp_path), run))
    from ssl4gie.errors import ConfigError

    with pytest.raises(ConfigError, match="backbone='resnet50' \\(checkpoint\\) vs 'vit_b'"):
        execute(
            compose_config(
                segmentation_overrides(
                    kvasir_tiny, tmp_path, "backbone=vit_b", "mode=eval", f"ckpt={run / 'best.pt'}"
                ),
                tmp_path / "eval",
            )
        )


@pytest.mark.slow
def test_resume_continues_from_last_epoch_and_matches_an_uninterrupted_run(
    tmp_path, kvasir_tiny, monkeypatch, caplog
):
    overrides = segmentation_overrides(kvasir_tiny, tmp_path, "trainer.epochs=3")
    execute(compose_config(overrides, tmp_path / "straight"))
    straight = json.loads((tmp_path / "straight" / "metrics.json").read_text())

    # Interrupt the second run during its third epoch: last.pt holds epoch 2, no metrics.json.
    original = Trainer.train_epoch

    def interrupted(self, loader, epoch):
        if epoch == 3:
            raise KeyboardInterrupt
        return original(self, loader, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        execute(compose_config(overrides, tmp_path / "resumed"))
    assert not (tmp_path / "resumed" / "metrics.json").exists()
    monkeypatch.setattr(Trainer, "train_epoch", original)

    with caplog.at_level("INFO"):
        execute(compose_config(overrides, tmp_path / "resumed"))
    assert "resumed from" in caplog.text and "after epoch 2/3" in caplog.text
    resumed = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    history = pd.read_csv(tmp_path / "resumed" / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3]
    # Same seed and config on CPU -> same metrics, also across an interruption.
    for key in KEYS:
        assert resumed[key] == pytest.approx(straight[key], abs=1e-6), key


def test_completed_run_is_not_redone_and_a_changed_config_is_not_resumed(tmp_path, kvasir_tiny, caplog):
    overrides = segmentation_overrides(kvasir_tiny, tmp_path, "trainer.keep_last=true")
    execute(compose_config(overrides, tmp_path / "run"))
    assert {"optimizer", "rng"} <= set(torch.load(tmp_path / "run" / "last.pt", weights_only=True))
    stamp = (tmp_path / "run" / "metrics.json").stat().st_mtime_ns
    with caplog.at_level("INFO"):
        execute(compose_config(overrides, tmp_path / "run"))
    assert "already holds a complete run" in caplog.text
    assert (tmp_path / "run" / "metrics.json").stat().st_mtime_ns == stamp
    (tmp_path / "run" / "metrics.json").unlink()
    from ssl4gie.errors import Ssl4gieError

    with pytest.raises(
        Ssl4gieError, match=r"interrupted run of another configuration \(trainer.lr 0.0001 → 0.001\)"
    ):
        execute(compose_config([*overrides, "trainer.lr=0.001"], tmp_path / "run"))


def test_gradient_accumulation_runs(tmp_path, kvasir_tiny):
    run = tmp_path / "run"
    execute(compose_config(segmentation_overrides(kvasir_tiny, tmp_path, "trainer.accum_steps=2"), run))
    assert json.loads((run / "metrics.json").read_text())["status"] == "complete"
