"""bf16 on CUDA: training steps close to fp32, augmentation in fp32, evaluation in fp32 whatever the training
precision. Tiny backbones, the real composed config and the real Trainer (``pytest -m gpu tests/gpu``)."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from helpers.cuda import (
    CASES,
    DEVICE,
    GPU_TESTS,
    build_case,
    exact_kernels,
    first_batch,
    paths_under,
    step_losses,
)

pytestmark = GPU_TESTS

# First-step loss, bf16 autocast against fp32 from the same weights and batch. Detection samples its proposals
# from bf16 RPN scores, so a few different boxes reach the box head: a looser bound.
BF16_RTOL = {"segmentation": 0.02, "classification": 0.02, "depth": 0.05, "detection": 0.1}


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> list[str]:
    return paths_under(tmp_path_factory.mktemp("gpu-precision"))


@pytest.mark.parametrize("task, backbone", CASES)
def test_bf16_training_step_is_finite_and_close_to_fp32(task, backbone, paths, tmp_path):
    case = build_case(task, backbone, paths)
    losses, dtypes = {}, {}
    for precision in ("fp32", "bf16"):
        trainer = case.trainer(tmp_path / precision, f"precision={precision}")
        dtypes[precision] = trainer.dtype
        if precision == "fp32":
            batch = first_batch(trainer, case.datasets("train")["train"])
        (losses[precision],) = step_losses(trainer, batch)
    assert dtypes == {"fp32": torch.float32, "bf16": torch.bfloat16}
    assert math.isfinite(losses["bf16"]), losses
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=BF16_RTOL[task]), losses


@pytest.mark.parametrize("task", ["segmentation", "classification", "depth"])
def test_device_augmentation_gives_fp32_inside_the_bf16_autocast(task, paths, tmp_path):
    """The batch the model sees: augmented on the device, in fp32 although the step runs under bf16 autocast,
    and equal to the same augmentation (same draws) run without any autocast."""
    case = build_case(task, "resnet50", paths)
    trainer = case.trainer(tmp_path, "precision=bf16")
    assert trainer.augment_on_device and trainer.dtype == torch.bfloat16
    batch = first_batch(trainer, case.datasets("train")["train"])
    assert batch["image"].dtype == torch.uint8  # the workers left augmentation to the device
    torch.manual_seed(0)
    with trainer.autocast():
        augmented = trainer._prepare(dict(batch), train=True)
    torch.manual_seed(0)
    reference = case.task.augment_batch(
        {k: v.to(DEVICE) if torch.is_tensor(v) else v for k, v in batch.items()}
    )
    assert augmented["image"].device.type == torch.device(DEVICE).type
    assert augmented["image"].dtype == torch.float32
    torch.testing.assert_close(augmented["image"], reference["image"], rtol=0, atol=1e-5)
    if augmented["target"].is_floating_point():  # masks and depth maps (class ids are integers)
        assert augmented["target"].dtype == torch.float32
        torch.testing.assert_close(augmented["target"], reference["target"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("task, backbone", CASES)
def test_evaluation_under_bf16_training_equals_fp32(task, backbone, paths, tmp_path):
    """trainer.precision=bf16 trains in bf16 but evaluates in fp32 (trainer.eval_precision): the per-image metrics
    of the same weights are identical to those of an fp32 trainer."""
    case = build_case(task, backbone, paths)
    results = {}
    with exact_kernels():
        for precision in ("fp32", "bf16"):
            trainer = case.trainer(tmp_path / precision, f"precision={precision}")
            test = case.datasets("test")["test"]
            metrics, rows, _ = trainer.evaluate(test, "test")
            results[precision] = (metrics, pd.DataFrame(rows))
    assert results["bf16"][0] == pytest.approx(results["fp32"][0], rel=0, abs=0, nan_ok=True)
    pd.testing.assert_frame_equal(results["bf16"][1], results["fp32"][1], check_exact=True)
