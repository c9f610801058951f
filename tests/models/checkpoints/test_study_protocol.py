"""``task.protocol=study`` end to end: one of the study's finetuned files (classification, segmentation)
evaluated with ``mode=eval task.protocol=study`` gives the numbers of the study's eval_*.py (classification,
segmentation), computed here from predictions of an independent implementation of the study's model and the
study's formulas in numpy."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from helpers import compose_config, task_overrides
from helpers.checkpoints import random_like, study_file, tiny_backbone
from helpers.study import (
    SIZE,
    SMP_NAMES,
    independent_probabilities,
    smp_deeplab_forward,
    study_classifier_state,
)
from PIL import Image

from ssl4gie.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ssl4gie.errors import ConfigError
from ssl4gie.run.pipeline import execute
from ssl4gie.utils.conf import instantiate_checked

S = 1e-8  # the study's smoothing


def study_classification_scores(true: np.ndarray, pred: np.ndarray, n_class: int) -> dict[str, float]:
    """Classification/Metrics of the study: macro over all n_class classes, (TP + s) / (count + s)."""
    f1, precision, recall = [], [], []
    for c in range(n_class):
        tp, n_pred, n_true = np.sum((pred == c) & (true == c)), np.sum(pred == c), np.sum(true == c)
        f1.append(2 * (tp + S) / (n_pred + n_true + S))
        precision.append((tp + S) / (n_pred + S))
        recall.append((tp + S) / (n_true + S))
    return {
        "test/f1": float(np.mean(f1)),
        "test/precision": float(np.mean(precision)),
        "test/recall": float(np.mean(recall)),
        "test/accuracy": float(np.mean(true == pred)),
    }


def test_study_classification_file_scores_as_the_studys_eval(tmp_paths, tmp_path):
    overrides = task_overrides("classification", tmp_paths)
    classes = list(compose_config(overrides).dataset.classes)
    state = study_classifier_state("resnet", len(classes))
    path = tmp_path / "Classification_resnet50.pt"
    study_file(path, state)
    out = tmp_path / "eval"
    execute(compose_config([*overrides, "mode=eval", f"ckpt={path}", "task.protocol=study"], out))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["protocol"] == "study"

    reader = instantiate_checked(compose_config(overrides).dataset)
    test = reader.splits()["test"]
    probs = independent_probabilities("resnet", state, [str(reader.items[i].image) for i in test])
    true = np.array([reader.labels[i] for i in test])
    expected = study_classification_scores(true, probs.argmax(axis=1), len(classes))
    assert len(set(true)) < len(classes)  # the case the smoothing changes: an absent class
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=1e-6), key
    assert metrics["test/n_classes_scored"] == len(classes)


def study_segmentation_file(tmp_path, overrides: list[str]) -> tuple[dict, object]:
    """A study-format ResNet-50 DeepLabV3+ file (smp 0.3.2 names) with random weights: (its state, its path)."""
    cfg = compose_config(overrides)
    model = instantiate_checked(cfg.task, _recursive_=False).build_model(
        cfg.backbone, cfg.pretraining, False, str(tmp_path)
    )
    torch.manual_seed(5)
    study = {}
    for key, value in random_like(model.state_dict()).items():
        old, new = next((o, n) for o, n in SMP_NAMES if key.startswith(o))
        study[new + key.removeprefix(old)] = value.abs() + 0.5 if key.endswith("running_var") else value
    # The head's bias sets the fraction of polyp pixels: near 0 the masks are partly right, partly wrong.
    study["segmentation_head.0.bias"] = torch.zeros_like(study["segmentation_head.0.bias"])
    path = tmp_path / "segmentation_resnet.pt"
    study_file(path, study)
    return study, path


def study_segmentation_logits(study: dict, image_path: str) -> torch.Tensor:
    """The study's eval input (PIL bicubic to SIZE², ToTensor, ImageNet normalisation) through smp's ResNet-50
    (output stride 16: every layer4 conv at stride 1, dilation 2) and DeepLabV3+: 1×1×SIZE×SIZE logits."""
    encoder = tiny_backbone("resnet")
    for conv in encoder.layer4.modules():
        if isinstance(conv, torch.nn.Conv2d):
            k = conv.kernel_size[0]
            conv.stride, conv.dilation, conv.padding = (1, 1), (2, 2), ((k // 2) * 2, (k // 2) * 2)
    encoder.load_state_dict(
        {k.removeprefix("encoder."): v for k, v in study.items() if k.startswith("encoder.")}
    )
    encoder.eval()
    image = Image.open(image_path).convert("RGB").resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    x = TF.normalize(TF.to_tensor(image), IMAGENET_MEAN, IMAGENET_STD)[None]
    with torch.no_grad():
        layer1, layer4 = encoder.forward_intermediates(x, indices=[1, 4], intermediates_only=True)
        return smp_deeplab_forward(study, layer1, layer4)


def study_segmentation_scores(logits: torch.Tensor, mask_path: str) -> dict[str, float]:
    """eval_segmentation.py on one image: logits resized bilinearly to the native mask, sigmoid > 0.5; the mask as
    ToTensor + Grayscale > 0.5; the smoothed per-image ratios of Binary_segmentation/Metrics."""
    target = TF.rgb_to_grayscale(TF.to_tensor(Image.open(mask_path).convert("RGB")))[0].numpy() > 0.5
    resized = F.interpolate(logits, size=target.shape, mode="bilinear", align_corners=False)
    pred = (torch.sigmoid(resized)[0, 0] > 0.5).numpy()
    inter, n_pred, n_true = np.sum(pred & target), np.sum(pred), np.sum(target)
    return {
        "test/dice": 2 * (inter + S) / (n_pred + n_true + S),
        "test/iou": (inter + S) / (n_pred + n_true - inter + S),
        "test/precision": (inter + S) / (n_pred + S),
        "test/recall": (inter + S) / (n_true + S),
    }


def test_study_segmentation_file_scores_as_the_studys_eval(tmp_paths, tmp_path):
    overrides = task_overrides("segmentation", tmp_paths, "backbone=resnet50")
    study, path = study_segmentation_file(tmp_path, overrides)
    out = tmp_path / "eval"
    execute(compose_config([*overrides, "mode=eval", f"ckpt={path}", "task.protocol=study"], out))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["protocol"] == "study"

    reader = instantiate_checked(compose_config(overrides).dataset)
    per_image = []
    for i in reader.splits()["test"]:
        item = reader.items[i]
        per_image.append(
            study_segmentation_scores(study_segmentation_logits(study, str(item.image)), str(item.mask))
        )
    for key in per_image[0]:
        assert metrics[key] == pytest.approx(np.mean([row[key] for row in per_image]), abs=1e-6), key
    assert 0.05 < metrics["test/dice"] < 0.95  # neither trivial answer: the comparison sees real masks


def test_protocol_errors_name_the_option_and_the_valid_values(tmp_paths):
    seg = task_overrides("segmentation", tmp_paths)
    with pytest.raises(ConfigError, match=r"task.protocol=sklearn is not valid; valid: ssl4gie, study"):
        instantiate_checked(compose_config([*seg, "task.protocol=sklearn"]).task, _recursive_=False)
    with pytest.raises(ConfigError, match=r"task.threshold=0.4 contradicts task.protocol=study"):
        instantiate_checked(
            compose_config([*seg, "task.protocol=study", "task.threshold=0.4"]).task, _recursive_=False
        )
    cls = task_overrides("classification", tmp_paths)
    with pytest.raises(ConfigError, match=r"task.macro_over=present contradicts task.protocol=study"):
        instantiate_checked(compose_config([*cls, "task.protocol=study", "task.macro_over=present"]).task)
    task = instantiate_checked(compose_config([*cls, "task.protocol=study"]).task)
    assert task.macro_over == "all"
    assert instantiate_checked(compose_config(cls).task).macro_over == "present"


def test_the_protocol_is_part_of_the_run_identity_and_macro_over_null_is_its_default(tmp_paths, tmp_path):
    from ssl4gie.run.identity import fingerprint

    for task in ("classification", "segmentation"):
        base = task_overrides(task, tmp_paths)
        default = fingerprint(compose_config(base, tmp_path))
        assert default == fingerprint(compose_config([*base, "task.protocol=ssl4gie"], tmp_path))
        assert default != fingerprint(compose_config([*base, "task.protocol=study"], tmp_path))
    cls = task_overrides("classification", tmp_paths)
    assert fingerprint(compose_config(cls, tmp_path)) == fingerprint(
        compose_config([*cls, "task.macro_over=present"], tmp_path)
    )


def test_study_mask_rule_is_torchvisions_luma_where_pils_l_rounds_otherwise(tmp_path):
    from ssl4gie.data.segmentation import SegmentationItem, native_mask

    # Colours whose luma lies within rounding of half intensity: PIL's integer "L" says polyp, the study's float
    # ToTensor + Grayscale says background; plus plain white, black and mid-grey pixels.
    pixels = np.array(
        [[[128, 126, 134], [112, 119, 212], [255, 255, 255]], [[161, 95, 207], [0, 0, 0], [128, 128, 128]]],
        dtype=np.uint8,
    )
    path = tmp_path / "mask.png"
    Image.fromarray(pixels).save(path)
    item = SegmentationItem("mask", path, path)
    study = native_mask(item, "study").numpy()
    expected = TF.rgb_to_grayscale(TF.to_tensor(Image.open(path).convert("RGB")))[0].numpy() > 0.5
    np.testing.assert_array_equal(study, expected)
    ours = native_mask(item).numpy()
    assert ours[0, 0] and not study[0, 0]  # the two rules differ on exactly such pixels
    np.testing.assert_array_equal(ours[[0, 1, 1], [2, 1, 2]], study[[0, 1, 1], [2, 1, 2]])
