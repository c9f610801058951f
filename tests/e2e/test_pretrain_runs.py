"""``task=pretrain`` as users run it: recipes composed from config, every (method, backbone) pair pretrained on
synthetic unlabelled frames in HyperKvasir's layout, exported, and finetuned from through the public commands;
resume after SIGKILL; bad input."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import ROOT, compose_config, run_cli, task_overrides
from helpers.pretrain import PAIRS, pretrain_overrides
from PIL import Image

from ssl4gie.errors import ConfigError, DatasetError
from ssl4gie.run.pipeline import execute

# what each method adds to history.csv besides loss, lr and the monitors
METHOD_COLUMNS = {
    "mocov3": {"train/contrastive_acc", "train/momentum", "train/embedding_std"},
    "barlowtwins": {"train/on_diag", "train/off_diag", "train/embedding_std"},
    "mae": set(),
}


@pytest.mark.parametrize(("ssl", "backbone"), [("barlowtwins", "vit_b"), ("mae", "resnet50")])
def test_a_pair_without_a_recipe_is_refused_before_any_data_is_read(ssl, backbone, tmp_path):
    cfg = compose_config(pretrain_overrides(tmp_path, ssl, backbone), tmp_path / "run")
    with pytest.raises(
        ConfigError, match=f"ssl={ssl} has no recipe for backbone={backbone}; valid pairs"
    ) as e:
        execute(cfg)
    assert "ssl=mocov3 with backbone=resnet50|vit_b" in str(e.value)
    assert "ssl=barlowtwins with backbone=resnet50" in str(e.value) and "ssl=mae with backbone=vit_b" in str(
        e.value
    )
    assert not (tmp_path / "data").exists()  # no synthetic frames written, nothing read


@pytest.mark.parametrize(
    ("ssl", "backbone", "epochs", "batch", "lr", "optimizer", "warmup"),
    [
        ("mocov3", "resnet50", 100, 1536, 3.6, "lars", 10),
        ("mocov3", "vit_b", 300, 768, 4.5e-4, "adamw", 40),
        ("barlowtwins", "resnet50", 1000, 1536, 1.2, "lars", 10),
        ("mae", "vit_b", 800, 768, 4.5e-4, "adamw", 40),
    ],
)
def test_recipes_at_the_study_batch_sizes_with_the_codebases_lr_scaling(
    ssl, backbone, epochs, batch, lr, optimizer, warmup
):
    cfg = compose_config(["task=pretrain", f"ssl={ssl}", f"backbone={backbone}"])
    t = cfg.trainer
    assert (t.epochs, t.batch_size, t.optimizer.name, t.scheduler.name) == (
        epochs,
        batch,
        optimizer,
        "warmup_cosine",
    )
    assert t.lr == pytest.approx(lr) and t.scheduler.warmup_epochs == warmup
    assert cfg.dataset.name == "hyperkvasir_unlabelled" and cfg.task.monitor is None
    # a smaller batch lowers the learning rate by the same rule
    small = compose_config(["task=pretrain", f"ssl={ssl}", f"backbone={backbone}", "trainer.batch_size=256"])
    assert small.trainer.lr == pytest.approx(lr * 256 / batch)


def test_barlow_twins_biases_get_their_own_learning_rate_and_the_schedule_ends_at_a_thousandth():
    cfg = compose_config(["task=pretrain", "ssl=barlowtwins"])
    assert cfg.trainer.optimizer.one_d_lr_scale == pytest.approx(0.0048 / 0.2)
    assert cfg.trainer.scheduler.final_lr_ratio == 0.001


@pytest.mark.parametrize(
    ("row", "ssl", "backbone"), [("rn_hk_mc", "mocov3", "resnet50"), ("vt_hk_ma", "mae", "vit_b")]
)
def test_ssl_row_selects_the_pretraining_of_a_study_row(row, ssl, backbone):
    cfg = compose_config([f"ssl_row={row}"])
    assert (cfg.task.name, cfg.ssl.name, cfg.backbone.name) == ("pretrain", ssl, backbone)


@pytest.mark.slow  # command lines
@pytest.mark.parametrize(("ssl", "backbone"), PAIRS)
def test_pretrain_exports_what_the_finetuning_row_loads(ssl, backbone, tmp_path, caplog):
    run = tmp_path / "pretrain"
    result = run_cli([*pretrain_overrides(tmp_path, ssl, backbone), f"hydra.run.dir={run}"])
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "complete" and metrics["ssl"] == ssl and metrics["epochs"] == 2
    assert metrics["steps"] == 2 * 3  # 24 frames / batch 8, per epoch
    history = pd.read_csv(run / "history.csv")
    assert list(history["epoch"]) == [0, 1, 2]  # epoch 0: the monitors of the initial weights
    expected = {"train/loss", "lr", "val/rankme", "val/feature_std", "val/knn_top1"} | METHOD_COLUMNS[ssl]
    assert expected <= set(history.columns)
    assert history["lr"].iloc[1:].notna().all() and (history["val/rankme"] >= 1).all()
    assert not (run / "last.pt").exists()
    name = {"resnet50": f"hyperkvasir_{ssl}_resnet50.pth", "vit_b": f"hyperkvasir_{ssl}_vit_b.pth"}[backbone]
    export = run / "export" / name
    assert export.is_file() and metrics["export"] == str(export)
    if ssl == "mae":
        assert (run / "figures" / "mae_reconstructions.png").is_file()
        assert set(torch.load(export, weights_only=True)) == {"model"}  # MAE's own layout, decoder included

    # Finetune from it as a study row does: the row's file name in paths.weights_dir, every tensor loaded
    finetune = tmp_path / "finetune"
    overrides = task_overrides(
        "classification",
        [f"paths.data_dir={tmp_path / 'data'}", f"paths.cache_dir={tmp_path / 'cache'}"],
        f"backbone={backbone}",
        f"pretraining=hyperkvasir_{ssl}",
        f"paths.weights_dir={run / 'export'}",
        f"paths.output_root={tmp_path / 'outputs'}",
        f"dataset.root={tmp_path / 'hk-labelled'}",
    )
    caplog.set_level("INFO")
    execute(compose_config(overrides, finetune))
    receipt = next(r.getMessage() for r in caplog.records if "backbone tensors from" in r.getMessage())
    expected_tensors = metrics["export_tensors"]
    assert f"loaded {expected_tensors} backbone tensors" in receipt, receipt
    finetuned = json.loads((finetune / "metrics.json").read_text())
    assert finetuned["status"] == "complete" and finetuned["weights_file"] == str(export)


@pytest.mark.slow
@pytest.mark.parametrize(("ssl", "backbone"), PAIRS)
def test_a_one_epoch_trial_inside_the_recipes_warmup_runs_and_exports(ssl, backbone, tmp_path, caplog):
    """``task=pretrain trainer.epochs=1`` with the recipe's own warmup (10 or 40 epochs): the official code runs
    it (the lr is still warming up when it ends), so does ssl4gie, with one warning."""
    overrides = [o for o in pretrain_overrides(tmp_path, ssl, backbone) if "warmup_epochs" not in o]
    cfg = compose_config([*overrides, "trainer.epochs=1"], tmp_path / "run")
    warmup = cfg.trainer.scheduler.warmup_epochs
    assert warmup >= 10
    caplog.set_level("INFO")
    execute(cfg)
    warnings = [r.getMessage() for r in caplog.records if "never leaves its warmup" in r.getMessage()]
    assert len(warnings) == 1 and f"warmup_epochs={warmup:g} is longer than the run (1 epochs)" in warnings[0]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "complete" and metrics["epochs"] == 1 and Path(metrics["export"]).is_file()
    lr = pd.read_csv(tmp_path / "run" / "history.csv")["lr"].iloc[-1]
    steps = metrics["steps"]
    assert lr == pytest.approx(cfg.trainer.lr * (steps - 1) / (warmup * steps))  # still warming up


@pytest.mark.slow
@pytest.mark.parametrize(
    ("ssl", "backbone", "decode_size"),
    [*((ssl, backbone, "null") for ssl, backbone in PAIRS), ("mocov3", "resnet50", "64")],
)
def test_views_made_on_the_device_train_and_export(ssl, backbone, decode_size, tmp_path, caplog):
    """``trainer.gpu_augment=true`` (the default on CUDA) on the CPU: the workers hand over the JPEG bytes (or the
    cached frames, with a decode size) and the views' parameters, the device decodes and augments."""
    cfg = compose_config(
        [
            *pretrain_overrides(tmp_path, ssl, backbone),
            "trainer.gpu_augment=true",
            f"dataset.decode_size={decode_size}",
        ],
        tmp_path / "run",
    )
    caplog.set_level("INFO")
    execute(cfg)
    assert "training views: decoded and augmented on the device" in caplog.text
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "complete" and Path(metrics["export"]).is_file()
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert history["train/loss"].iloc[1:].notna().all()


@pytest.mark.slow  # fp16 kernels are slow on a CPU (minutes)
def test_fp16_autocast_trains_with_the_official_grad_scaler(tmp_path, caplog, monkeypatch):
    """``trainer.precision=fp16`` (CUDA; on a CPU only with the refusal lifted, as here) restores the official
    codebases' mixed precision: fp16 autocast and a GradScaler that scales every loss and steps the optimiser."""
    import ssl4gie.engine.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "resolve_precision", lambda name, device: torch.float16)
    cfg = compose_config(
        [
            *pretrain_overrides(tmp_path, "mocov3", "resnet50"),
            "trainer.precision=fp16",
            "trainer.keep_last=true",
        ],
        tmp_path / "run",
    )
    caplog.set_level("INFO")
    execute(cfg)
    assert "fp16 autocast with dynamic loss scaling (torch.amp.GradScaler)" in caplog.text
    scaler = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["scaler"]  # {} when disabled
    # starts at 2^16 and halves at every step whose scaled gradients overflow (that step is skipped)
    assert scaler and scaler["scale"] <= 2.0**16 and math.log2(scaler["scale"]).is_integer()
    assert pd.read_csv(tmp_path / "run" / "history.csv")["train/loss"].iloc[1:].notna().all()


def test_two_step_pipeline_writes_the_four_backbones_into_one_weights_folder(tmp_path):
    """`sweep=pretrain_hyperkvasir` puts every export in one folder that paths.weights_dir can point at."""
    cfg = compose_config(["sweep=pretrain_hyperkvasir"], hydra=True)
    assert cfg.hydra.sweeper.params.ssl_row == "rn_hk_mc,vt_hk_mc,rn_hk_bt,vt_hk_ma"
    assert cfg.task.export_dir.endswith("sweeps/pretrain_hyperkvasir/export")


def popen(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.slow  # three command lines
def test_resume_after_sigkill_continues_the_schedule_at_the_right_step(tmp_path):
    args = pretrain_overrides(tmp_path, "mocov3", "resnet50", "trainer.epochs=4", "task.probe.every=2")
    straight = tmp_path / "straight"
    assert run_cli([*args, f"hydra.run.dir={straight}"]).returncode == 0

    killed = tmp_path / "killed"
    proc = popen([*args, f"hydra.run.dir={killed}"])
    deadline = time.monotonic() + 300
    while not (killed / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # no handler runs: the last epoch-end last.pt is all there is
    proc.communicate()
    assert not (killed / "metrics.json").exists(), "the run finished before it was killed"
    result = run_cli([*args, f"hydra.run.dir={killed}"])
    assert result.returncode == 0, result.stderr[-3000:]
    log = (killed / "run.log").read_text()
    assert "resumed from" in log and "optimiser step" in log
    columns = ["epoch", "step", "train/loss", "lr", "train/momentum", "val/knn_top1"]
    pd.testing.assert_frame_equal(
        pd.read_csv(killed / "history.csv")[columns], pd.read_csv(straight / "history.csv")[columns]
    )


@pytest.mark.parametrize("ssl", ["mocov3", "barlowtwins"])
def test_accumulation_is_refused_where_it_is_not_exact(ssl, tmp_path):
    cfg = compose_config(
        pretrain_overrides(tmp_path, ssl, "resnet50", "trainer.accum_steps=2"), tmp_path / "run"
    )
    with pytest.raises(ConfigError, match="trainer.accum_steps=2: .* batch"):
        execute(cfg)
    # the study's 1536 on one process is more than a GPU holds: what to do instead
    cfg = compose_config(
        pretrain_overrides(tmp_path, ssl, "resnet50", "trainer.batch_size=1536"), tmp_path / "r2"
    )
    with pytest.raises(ConfigError, match="1536 images per forward pass, above trainer.micro_batch=256"):
        execute(cfg)


@pytest.mark.slow
def test_mae_accumulates_gradients(tmp_path, caplog):
    run = tmp_path / "run"
    caplog.set_level("INFO")
    execute(compose_config(pretrain_overrides(tmp_path, "mae", "vit_b", "trainer.micro_batch=4"), run))
    assert "batch 8 = 4 per process × 2 accumulation steps × 1 processes" in caplog.text
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["status"] == "complete"


def _folder_args(tmp_path: Path, folder: Path, *extra: str) -> list[str]:
    return pretrain_overrides(
        tmp_path, "mocov3", "resnet50", "dataset=image_folder", f"dataset.root={folder}", *extra
    )


def _folder_run(tmp_path: Path, folder: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_cli([*_folder_args(tmp_path, folder), f"hydra.run.dir={tmp_path / 'run'}", *extra])


def test_an_empty_folder_and_a_folder_smaller_than_a_batch_are_clear_errors(tmp_path):
    # input problems (the command line prints the message as one line and exits 2)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no images") as raised:
        execute(compose_config(_folder_args(tmp_path, empty), tmp_path / "run"))
    assert str(empty) in str(raised.value)

    three = tmp_path / "three"
    three.mkdir()
    for i in range(3):
        Image.new("RGB", (40, 30), (50 * i, 80, 90)).save(three / f"f{i}.jpg")
    with pytest.raises(ConfigError) as raised:
        execute(compose_config(_folder_args(tmp_path, three, "trainer.batch_size=256"), tmp_path / "run"))
    assert "the train split has 3 samples: too few for trainer.batch_size=256" in str(raised.value)
    assert not (tmp_path / "run" / "metrics.json").exists() and not (tmp_path / "run" / "export").exists()


@pytest.mark.slow  # a command line
def test_corrupt_greyscale_and_alpha_frames_in_a_folder(tmp_path):
    folder = tmp_path / "frames"
    (folder / "sub").mkdir(parents=True)
    for i in range(8):
        Image.new("RGB", (64, 48), (20 * i, 90, 60)).save(folder / f"rgb{i}.jpg")
    Image.new("L", (64, 64), 120).save(folder / "sub" / "grey.jpg")
    Image.new("RGBA", (50, 70), (200, 10, 10, 128)).save(folder / "sub" / "alpha.png")
    (folder / "sub" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    result = _folder_run(tmp_path, folder)
    assert result.returncode == 0, result.stderr[-3000:]
    log = (tmp_path / "run" / "run.log").read_text()
    assert "broken.jpg" in log  # left out, named once
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["n_frames"] == 10


@pytest.mark.slow
def test_pretraining_without_the_labelled_set_runs_without_the_probe_and_says_so(tmp_path, caplog):
    run = tmp_path / "run"
    overrides = pretrain_overrides(tmp_path, "barlowtwins", "resnet50", "task.probe.data.synthetic=null")
    execute(compose_config(overrides, run))
    history = pd.read_csv(run / "history.csv")
    assert "val/knn_top1" not in history.columns and "val/rankme" in history.columns
    assert "kNN probe off" in caplog.text and str(tmp_path / "hk-labelled") in caplog.text


def test_image_folder_needs_a_root(tmp_path):
    cfg = compose_config(
        [*pretrain_overrides(tmp_path, "mae", "vit_b"), "dataset=image_folder"], tmp_path / "run"
    )
    with pytest.raises(ConfigError, match=r"dataset\.root"):
        execute(cfg)


def test_the_epoch_0_baseline_of_a_resnet_has_batchnorm_statistics_of_real_frames(tmp_path):
    """At initialisation BatchNorm's running statistics are 0 / 1; a baseline evaluated with them would be beaten
    by any training just through the statistics. The baseline is a copy with statistics of the monitor frames;
    the model that trains is left as it is."""
    from ssl4gie.utils.conf import instantiate_checked

    cfg = compose_config(pretrain_overrides(tmp_path, "barlowtwins", "resnet50"), tmp_path / "run")
    task = instantiate_checked(cfg.task, _recursive_=False)
    model = task.build_model(cfg.backbone, cfg.pretraining, False, cfg.paths.weights_dir)
    task.build_datasets(instantiate_checked(cfg.dataset), ["val"], None, False)
    baseline = task.baseline_model(model, torch.device("cpu"))
    bn, bn0 = baseline.encoder.bn1, model.encoder.bn1
    assert baseline is not model and not baseline.training
    assert torch.all(bn0.running_mean == 0) and torch.all(bn0.running_var == 1)  # untouched
    assert bn.running_mean.abs().sum() > 0 and not torch.allclose(
        bn.running_var, torch.ones_like(bn.running_var)
    )
    vit_cfg = compose_config(pretrain_overrides(tmp_path, "mae", "vit_b"), tmp_path / "run2")
    vit_task = instantiate_checked(vit_cfg.task, _recursive_=False)
    vit = vit_task.build_model(vit_cfg.backbone, vit_cfg.pretraining, False, vit_cfg.paths.weights_dir)
    assert vit_task.baseline_model(vit, torch.device("cpu")) is vit  # no BatchNorm: nothing to estimate


@pytest.mark.parametrize(("ssl", "backbone"), [("mocov3", "resnet50"), ("mae", "vit_b")])
def test_continued_pretraining_starts_from_a_rows_weights(ssl, backbone, tmp_path, caplog):
    """pretraining=<row> with task=pretrain: e.g. ImageNet weights further pretrained on HyperKvasir. The loaded
    weights are what training starts from (MoCo's momentum copy included; MAE's construction does not undo
    them)."""
    from helpers.checkpoints import random_like, tiny_backbone

    from ssl4gie.utils.conf import instantiate_checked
    from ssl4gie.utils.io import save_torch

    family = "resnet" if backbone == "resnet50" else "vit"
    weights = random_like(tiny_backbone(family).state_dict())
    weights = {k: v.abs() + 0.5 if k.endswith("running_var") else v for k, v in weights.items()}
    save_torch(tmp_path / "start.pth", weights)
    overrides = pretrain_overrides(
        tmp_path,
        ssl,
        backbone,
        "pretraining=imagenet_supervised",
        f"pretraining.checkpoint={tmp_path / 'start.pth'}",
    )
    cfg = compose_config(overrides, tmp_path / "run")
    task = instantiate_checked(cfg.task, _recursive_=False)
    model = task.build_model(cfg.backbone, cfg.pretraining, False, cfg.paths.weights_dir)
    state = model.encoder.state_dict()
    assert all(torch.equal(state[k], v) for k, v in weights.items())
    if ssl == "mocov3":
        momentum = model.momentum_encoder.state_dict()
        assert all(torch.equal(momentum[k], v) for k, v in weights.items())
    caplog.set_level("INFO")
    execute(cfg)
    assert "from pretraining=imagenet_supervised" in caplog.text
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "complete"


def test_non_finite_features_make_the_monitors_nan_not_a_crash(caplog):
    from ssl4gie.tasks.pretrain import BANK, MONITOR, QUERY, PretrainEvaluator

    evaluator = PretrainEvaluator(k=2, temperature=0.07, num_classes=2)
    feats = torch.randn(6, 4)
    feats[1, 2] = float("nan")
    evaluator.process(
        {
            "role": torch.tensor([MONITOR, MONITOR, BANK, BANK, QUERY, QUERY]),
            "label": torch.tensor([-1, -1, 0, 1, 0, 1]),
        },
        feats,
    )
    metrics, rows = evaluator.compute()
    assert rows == []
    assert all(v != v for v in metrics.values()) and set(metrics) == {"rankme", "feature_std", "knn_top1"}
    assert "1 of 6 images give non-finite backbone features" in caplog.text
