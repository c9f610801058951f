"""Classification: train → eval → predict with the real config; loss weights, model contracts, drawing."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from helpers import FAST, TINY, compose_config
from hydra.utils import instantiate
from omegaconf import open_dict

from ssl4gie.data.hyperkvasir import HyperKvasir, write_synthetic
from ssl4gie.errors import ConfigError
from ssl4gie.run.checks import validate
from ssl4gie.run.pipeline import execute
from ssl4gie.tasks.classification import ClassificationTask, Classifier
from ssl4gie.tasks.losses import class_weights

ANATOMICAL = ["cecum", "ileum", "retroflex-rectum", "pylorus", "retroflex-stomach", "z-line"]
METRICS = ("accuracy", "f1", "precision", "recall")


def run(overrides: list[str], output_dir: Path) -> dict:
    execute(compose_config(overrides, output_dir))
    return json.loads((output_dir / "metrics.json").read_text())


@pytest.mark.parametrize(
    "backbone,dataset,other",
    [
        ("resnet50", "hyperkvasir_anatomical", "hyperkvasir_pathological"),
        pytest.param(  # 7 s on 2 cores; the ResNet-50 case stays in the fast lane
            "vit_b", "hyperkvasir_pathological", "hyperkvasir_anatomical", marks=pytest.mark.slow
        ),
    ],
)
def test_train_eval_predict(tmp_path, tmp_paths, backbone, dataset, other):
    data = [f"dataset.root={tmp_path / 'hk'}", "dataset.synthetic={per_class: 5, seed: 0}"]
    base = [
        "task=classification",
        f"dataset={dataset}",
        f"backbone={backbone}",
        *TINY,
        *FAST,
        *tmp_paths,
        *data,
    ]
    n_class = len(compose_config(base).task.classes)

    train_dir = tmp_path / "train"
    metrics = run(base, train_dir)
    assert metrics["status"] == "complete" and metrics["task"] == "classification"
    for key in [f"{s}/{m}" for s in ("val", "test") for m in METRICS]:
        assert 0.0 <= metrics[key] <= 1.0, key
    rows = pd.read_csv(train_dir / "per_image_test.csv")
    assert len(rows) == metrics["n_test"] == round(0.1 * 5 * n_class)
    assert {"name", "class", "predicted", "correct", "confidence"} <= set(rows.columns)
    probs = rows[[c for c in rows.columns if c.startswith("p_")]].to_numpy()
    assert probs.shape[1] == n_class and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert metrics["test/accuracy"] == pytest.approx(rows["correct"].mean())
    per_class = pd.read_csv(train_dir / "per_class_test.csv")
    assert len(per_class) == n_class and per_class["support"].sum() == len(rows)
    assert (train_dir / "figures" / "confusion_matrix.png").stat().st_size > 0
    assert (train_dir / "figures" / "examples.png").exists()
    ckpt = torch.load(train_dir / "best.pt", weights_only=True)
    assert ckpt["task_state"]["classes"] == list(compose_config(base).task.classes)
    assert len(ckpt["task_state"]["class_weights"]) == n_class

    best = f"ckpt={train_dir / 'best.pt'}"
    evaluated = run([*base, "mode=eval", best], tmp_path / "eval")
    for m in METRICS:  # same checkpoint, same test split, deterministic evaluation
        assert evaluated[f"test/{m}"] == pytest.approx(metrics[f"test/{m}"])
    predicted = run([*base, "mode=predict", best], tmp_path / "predict")
    assert predicted["test/f1"] == pytest.approx(metrics["test/f1"])
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "predict" / "per_image_test.csv"), rows)
    predictions = pd.read_csv(tmp_path / "predict" / "predictions" / "predictions.csv")
    assert predictions["predicted"].tolist() == rows["predicted"].tolist()
    assert all(Path(p).is_file() for p in predictions["image_path"])

    # a checkpoint of the other dataset's classes is refused with a message, not a tensor-shape dump
    base_other = [*[o for o in base if not o.startswith("dataset=")], f"dataset={other}"]
    with pytest.raises(ConfigError, match="does not match the config: classes="):
        execute(compose_config([*base_other, "mode=eval", best], tmp_path / "wrong"))


def test_segmentation_rejects_hyperkvasir_and_classification_rejects_kvasir_seg():
    with pytest.raises(
        ConfigError,
        match="hyperkvasir_pathological is a classification dataset.*"
        "valid datasets for task=segmentation: .*kvasir_seg",
    ):
        validate(compose_config(["task=segmentation", "dataset=hyperkvasir_pathological", "ckpt=x"]))
    with pytest.raises(
        ConfigError,
        match="valid datasets for task=classification: hyperkvasir_anatomical, hyperkvasir_pathological",
    ):
        validate(compose_config(["task=classification", "dataset=kvasir_seg"]))
    validate(compose_config(["task=classification", "dataset=hyperkvasir_pathological"]))  # the valid pairing


def make_task(**kwargs) -> ClassificationTask:
    args = {
        "name": "classification",
        "input_size": 32,
        "monitor": "val/f1",
        "monitor_mode": "max",
        "augment": False,
        "classes": ANATOMICAL[:3],
        **kwargs,
    }
    return ClassificationTask(**args)


@pytest.fixture
def unbalanced(tmp_path) -> HyperKvasir:
    root = write_synthetic(
        tmp_path / "hk", classes={"cecum": 20, "ileum": 3, "retroflex-rectum": 7}, size=(40, 32)
    )
    return HyperKvasir(str(root), "hk", "anatomical-landmarks", classes=ANATOMICAL[:3])


def test_loss_weights_come_from_the_training_split_only(unbalanced):
    task = make_task()
    data = task.build_datasets(unbalanced, ["train", "val", "test"], None, progress=False)
    train = unbalanced.splits()["train"]
    assert len(data["train"]) == len(train)
    labels = np.array(unbalanced.labels)
    torch.testing.assert_close(task.weights, class_weights(labels[train], 3))
    assert not torch.allclose(task.weights, class_weights(labels, 3))  # the split changes the weights here
    assert task.extra_state()["class_weights"] == pytest.approx(task.weights.tolist())

    study = make_task(class_weights="all")
    study.build_datasets(unbalanced, ["train"], None, progress=False)
    torch.testing.assert_close(study.weights, class_weights(labels, 3))
    plain = make_task(class_weights="none")
    plain.build_datasets(unbalanced, ["train"], None, progress=False)
    assert plain.weights is None

    evaluating = make_task()
    evaluating.build_datasets(unbalanced, ["test"], None, progress=False)
    assert evaluating.weights is None  # eval/predict never need (or compute) loss weights
    with pytest.raises(RuntimeError, match="build_datasets"):
        evaluating.training_step(None, {})


def test_weighted_loss_in_training_step(unbalanced):
    task = make_task()
    data = task.build_datasets(unbalanced, ["train"], None, progress=False)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 3))
    batch = {
        "image": torch.stack([data["train"][i]["image"] for i in range(4)]),
        "target": torch.stack([data["train"][i]["target"] for i in range(4)]),
    }
    loss = task.training_step(model, batch)["loss"]
    logits = model(batch["image"])
    expected = torch.nn.functional.cross_entropy(logits, batch["target"], weight=task.weights)
    assert loss.dtype == torch.float32 and torch.allclose(loss, expected)


def test_device_augmentation_path(unbalanced):
    task = make_task(augment=True)
    task.augment_on_device = True  # the CLI sets it on CUDA; the same code path runs on the CPU here
    train = task.build_datasets(unbalanced, ["train"], None, progress=False)["train"]
    samples = [train[i] for i in range(4)]
    assert all(s["image"].dtype == torch.uint8 for s in samples)  # left to the task's augment_batch
    batch = {
        "image": torch.stack([s["image"] for s in samples]),
        "target": torch.stack([s["target"] for s in samples]),
    }
    seen = []
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 3))
    model.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    loss = task.training_step(model, task.augment_batch(batch))["loss"]  # as the engine: augment, then step
    assert torch.isfinite(loss) and seen[0].dtype == torch.float32 and seen[0].shape == (4, 3, 32, 32)
    assert seen[0].min() < -1  # normalised: black corners of the rotation are far below 0


def test_task_options_are_checked():
    with pytest.raises(ConfigError, match="class_weights=test is not valid; valid: train, all, none"):
        make_task(class_weights="test")
    with pytest.raises(ConfigError, match="macro_over"):
        make_task(macro_over="some")
    with pytest.raises(ConfigError, match="dataset.classes"):
        make_task(classes=None)


def tiny_backbone(name: str):
    return compose_config([f"backbone={name}", *TINY]).backbone


def test_features_are_the_cls_token_after_the_final_norm_and_the_resnet_average_pool():
    task = make_task()
    vit = task.build_model(tiny_backbone("vit_b"), compose_config([]).pretraining, False, "weights").eval()
    assert vit.encoder.global_pool == "token"
    x = torch.randn(2, 3, 32, 32)
    tokens = vit.encoder.forward_features(x)  # blocks then the final LayerNorm
    torch.testing.assert_close(vit(x), vit.head(tokens[:, 0]))
    resnet = task.build_model(
        tiny_backbone("resnet50"), compose_config([]).pretraining, False, "weights"
    ).eval()
    torch.testing.assert_close(resnet(x), resnet.head(resnet.encoder.forward_features(x).mean(dim=(2, 3))))


def test_frozen_encoder_stays_unchanged_and_only_the_head_learns():
    encoder = timm.create_model("resnet50", num_classes=0, layers=[1, 1, 1, 1], channels=[8, 16, 32, 64])
    model = Classifier(encoder, 3, frozen=True).train()
    assert not encoder.training and model.head.training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    assert len(optimizer.param_groups[0]["params"]) == 2  # head weight and bias only
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 0]))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("encoder."))  # BN stats too
    assert not torch.equal(before["head.weight"], after["head.weight"])


@pytest.mark.parametrize("backbone,features", [("resnet50", 2048), ("vit_b", 768)])
def test_real_size_models_at_224(backbone, features):
    task = make_task(input_size=224, classes=ANATOMICAL)
    cfg = compose_config([f"backbone={backbone}"])
    model = task.build_model(cfg.backbone, cfg.pretraining, False, "weights").eval()
    assert model.head.in_features == features and model.head.out_features == 6
    with torch.no_grad():
        assert model(torch.randn(2, 3, 224, 224)).shape == (2, 6)


def test_evaluator_rows_metrics_kept_items_and_drawing(unbalanced, tmp_path):
    task = make_task()
    data = task.build_datasets(unbalanced, ["test"], None, progress=False)["test"]
    samples = [data[i] for i in range(len(data))]
    targets = torch.stack([s["target"] for s in samples])
    logits = torch.nn.functional.one_hot(targets, 3).float() * 4
    logits[0] = (
        torch.tensor([0.0, 0.0, 0.0]) if targets[0] else torch.tensor([0.0, 5.0, 0.0])
    )  # first one wrong
    evaluator = task.evaluator(keep=2)
    evaluator.process({"target": targets, "meta": [s["meta"] for s in samples]}, logits)
    metrics, rows = evaluator.compute()
    assert metrics["accuracy"] == pytest.approx((len(samples) - 1) / len(samples))
    assert [r["name"] for r in rows] == [s["meta"]["name"] for s in samples]
    assert rows[0]["correct"] is False and all(r["correct"] for r in rows[1:])
    assert rows[1]["confidence"] == pytest.approx(np.exp(4) / (np.exp(4) + 2))
    examples = [k for k in evaluator.kept if k["kind"] == "example"]
    assert [e["row"]["correct"] for e in examples] == [False, True]  # misclassified first
    summary = evaluator.kept[-1]
    assert summary["kind"] == "summary" and summary["confusion"].sum() == len(samples)

    figures = task.draw(evaluator.kept, tmp_path / "run" / "figures")
    assert sorted(p.name for p in figures) == ["confusion_matrix.png", "examples.png"]
    assert all(p.exists() for p in figures)
    table = pd.read_csv(tmp_path / "run" / "per_class_test.csv")
    assert (
        table["class"].tolist() == ANATOMICAL[:3]
        and table["support"].tolist() == np.bincount(targets, minlength=3).tolist()
    )


def test_demo_experiment_composes_a_small_cpu_run():
    cfg = compose_config(["experiment=demo_classification"])
    validate(cfg)
    assert cfg.task.name == "classification" and cfg.dataset.name == "hyperkvasir_anatomical"
    assert cfg.dataset.synthetic.per_class > 0 and cfg.trainer.device == "cpu" and cfg.task.input_size <= 128
    assert cfg.dataset.root.endswith("synthetic/hyper-kvasir") and not cfg.backbone.tiny
    with open_dict(cfg):
        cfg.dataset.root = "unused"
    task = instantiate(cfg.task, _recursive_=False)
    assert task.classes == ANATOMICAL and task.monitor == "val/f1" and task.monitor_mode == "max"
