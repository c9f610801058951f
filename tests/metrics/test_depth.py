"""Hand-computed depth metrics, the accumulator's two alignments, and the study protocol
(the study's ``Depth_estimation/eval_depth.py``)."""

import math

import numpy as np
import pytest
import torch
from helpers.depth_reference import study_reference

from ssl4gie.errors import ConfigError
from ssl4gie.metrics.depth import (
    METRIC_NAMES,
    STUDY_METRIC_NAMES,
    DepthMetricAccumulator,
    depth_metrics,
    study_crop_offsets,
    study_depth_maps,
    study_depth_metrics,
)
from ssl4gie.tasks.depth import DepthEvaluator


def test_depth_metrics_by_hand():
    target = torch.tensor([1.0, 2.0, 4.0, 5.0])
    pred = torch.tensor([1.0, 3.0, 3.0, 10.0])
    metrics = depth_metrics(pred, target, torch.ones(4, dtype=torch.bool))
    # errors 0, 1, −1, 5; relative 0, 1/2, 1/4, 1; ratios 1, 1.5, 4/3, 2 -> one of four within 1.25
    assert metrics["rmse"] == pytest.approx(math.sqrt(27 / 4))
    assert metrics["abs_rel"] == pytest.approx(1.75 / 4)
    assert metrics["med_rel"] == pytest.approx((0.25 + 0.5) / 2)  # true median of an even count
    assert metrics["mae"] == pytest.approx(7 / 4)
    assert metrics["delta1"] == pytest.approx(1 / 4)


def test_invalid_and_zero_target_pixels_are_not_scored():
    target = torch.tensor([[2.0, 0.0], [4.0, 8.0]])
    pred = torch.tensor([[2.0, 50.0], [4.0, -3.0]])
    valid = torch.tensor([[True, True], [True, False]])  # the zero-target pixel is dropped too
    metrics = depth_metrics(pred, target, valid)
    assert metrics == {"rmse": 0.0, "abs_rel": 0.0, "med_rel": 0.0, "mae": 0.0, "delta1": 1.0}


def test_non_positive_prediction_is_never_within_delta1():
    metrics = depth_metrics(
        torch.tensor([0.0, -1.0, 1.1]), torch.tensor([1.0, 1.0, 1.0]), torch.ones(3).bool()
    )
    assert metrics["delta1"] == pytest.approx(1 / 3)


def test_empty_valid_set_gives_nan():
    metrics = depth_metrics(torch.ones(2, 2), torch.ones(2, 2), torch.zeros(2, 2, dtype=torch.bool))
    assert set(metrics) == set(METRIC_NAMES)
    assert all(math.isnan(v) for v in metrics.values())


def _batch():
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(2, 1, 6, 6, generator=generator) * 80 + 10  # 10-90 mm, inside the clamp
    valid = torch.ones_like(target, dtype=torch.bool)
    valid[:, :, 0, :] = False
    return target, valid


def test_accumulator_exact_after_both_alignments_for_scaled_prediction():
    target, valid = _batch()
    pred = 2 * target
    pred[~valid] = 1e4  # invalid pixels must not affect the fits
    accumulator = DepthMetricAccumulator()
    accumulator.update(pred, target, valid, ["a", "b"])
    metrics, rows = accumulator.compute()
    for key in ("rmse", "abs_rel", "med_rel", "mae", "rmse_median", "abs_rel_median", "mae_median"):
        assert metrics[key] == pytest.approx(0.0, abs=1e-4), key
    assert metrics["delta1"] == 1.0 and metrics["delta1_median"] == 1.0
    assert [row["name"] for row in rows] == ["a", "b"]
    assert rows[0]["scale"] == pytest.approx(0.5) and rows[0]["scale_median"] == pytest.approx(0.5)
    assert rows[0]["n_valid"] == 30
    assert {f"{k}_median" for k in METRIC_NAMES} <= set(rows[0])


def test_shifted_prediction_is_exact_only_with_scale_and_shift():
    target, valid = _batch()
    accumulator = DepthMetricAccumulator()
    accumulator.update(2 * target + 30, target, valid, ["a", "b"])
    metrics, _ = accumulator.compute()
    assert metrics["rmse"] == pytest.approx(0.0, abs=1e-4)
    assert metrics["rmse_median"] > 1.0


def test_scale_shift_aligned_prediction_is_clamped_to_max_depth():
    target = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    accumulator = DepthMetricAccumulator(max_depth_mm=3.0)
    accumulator.update(target.clone(), target, torch.ones_like(target).bool(), ["x"])
    metrics, _ = accumulator.compute()
    # aligned [1, 2, 3, 4] clamped to [1, 2, 3, 3]: one error of 1 over 4 pixels
    assert metrics["rmse"] == pytest.approx(0.5)
    assert metrics["mae"] == pytest.approx(0.25)
    assert metrics["rmse_median"] == pytest.approx(0.0)  # median scaling is not clamped


def test_accumulator_means_over_images_skipping_empty_ones():
    target = torch.tensor([[[1.0, 2.0]], [[1.0, 2.0]], [[1.0, 1.0]]])  # B×H×W = 3×1×2
    pred = torch.tensor([[[1.0, 2.0]], [[1.0, 2.0]], [[5.0, 5.0]]])
    valid = torch.tensor([[[True, True]], [[True, True]], [[False, False]]])
    accumulator = DepthMetricAccumulator(max_depth_mm=10.0)
    accumulator.update(pred[:2], target[:2], valid[:2], ["a", "b"])
    accumulator.update(pred[2:], target[2:], valid[2:], ["empty"])
    metrics, rows = accumulator.compute()
    assert len(rows) == 3 and math.isnan(rows[2]["rmse"])
    assert metrics["rmse"] == pytest.approx(0.0, abs=1e-6)
    accumulator.reset()
    with pytest.raises(RuntimeError, match="before any update"):
        accumulator.compute()


def test_update_checks_names():
    target, valid = _batch()
    with pytest.raises(ValueError, match="names has 1"):
        DepthMetricAccumulator().update(target, target, valid, ["only-one"])


# ----------------------------------------------------------------- protocol=study (the study's eval_depth.py)
def _study(output: np.ndarray, target: np.ndarray, native: np.ndarray) -> dict[str, float]:
    t = [torch.from_numpy(a.astype(np.float32)) for a in (output, target, native)]
    return study_depth_metrics(*study_depth_maps(*t))


def test_study_protocol_by_hand():
    # target constant over its valid pixels: the fit is s = 0, t = 0.5, so every scored prediction is 0.5 × 10
    output = np.array([[0.1, 0.2, 0.3, 0.4]] * 4)
    target = np.full((4, 4), 0.5)
    target[0, 0] = 0.0
    native = np.array([[0.0, 0.4, 0.5, 0.0], [0.8, 1.0, 0.0, 0.0]])  # 4×2 frame in a 4×4 square, top 1
    metrics = _study(output, target, native)
    # d = 4, 5, 8, 10: errors 1, 0, 3, 5; relative 1/4, 0, 3/8, 1/2
    assert metrics["rmse"] == pytest.approx(math.sqrt(35 / 4), rel=1e-6)
    assert metrics["med_rel"] == pytest.approx(0.25, rel=1e-6)  # lower middle value, not (1/4 + 3/8) / 2
    assert metrics["mae"] == pytest.approx(9 / 4, rel=1e-6)
    # a constant output is singular: s = t = 0, the prediction is 0 and every relative error is 1
    flat = _study(np.full((4, 4), 0.3), target, native)
    assert flat["med_rel"] == 1.0 and flat["mae"] == pytest.approx(27 / 4, rel=1e-6)


@pytest.mark.parametrize(
    ("size", "height", "width"),
    [(32, 32, 40), (64, 32, 40), (32, 40, 32), (24, 1080, 1350)],  # synthetic C3VD frames, C3VD's real frames
)
def test_study_protocol_equals_an_independent_computation(size: int, height: int, width: int):
    rng = np.random.default_rng(size + height)
    output = rng.uniform(0.05, 0.95, (size, size))
    target = rng.uniform(0.0, 1.0, (size, size)) * (rng.uniform(size=(size, size)) > 0.2)
    codes = rng.integers(1, 65535, (height, width)) * (rng.uniform(size=(height, width)) > 0.1)
    native = codes / 65536  # the study's native scale
    expected = study_reference(output, target, native)
    got = _study(output, target, native)
    for key in STUDY_METRIC_NAMES:
        assert got[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-6), key


def test_study_crop_offsets_follow_torchvision_center_crop():
    assert study_crop_offsets(1080, 1350) == (135, 0)  # = C3VD's square-padding offset
    assert study_crop_offsets(32, 40) == (4, 0) and study_crop_offsets(40, 32) == (0, 4)
    assert study_crop_offsets(1, 10) == (4, 0) and study_crop_offsets(10, 7) == (0, 2)  # round half to even


def test_study_protocol_evaluator_keys_rows_and_bad_protocol():
    torch.manual_seed(0)
    outputs = torch.rand(2, 1, 16, 16) * 0.8 + 0.1
    target = torch.rand(2, 1, 16, 16)
    natives = [torch.rand(8, 16), torch.rand(16, 12)]  # code / 65535, as the dataset gives it
    meta = [{"name": f"f{i}", "video": "t2v2"} for i in range(2)]
    evaluator = DepthEvaluator(100.0, keep=1, protocol="study")
    evaluator.process({"target": target, "target_native": natives, "meta": meta}, outputs)
    metrics, rows = evaluator.compute()
    assert set(metrics) == {"rmse", "med_rel", "mae", "ssi_mse"}
    assert set(rows[0]) == {"name", "n_valid", "rmse", "med_rel", "mae", "video"}
    for i, row in enumerate(rows):
        expected = study_reference(
            outputs[i, 0].double().numpy(),
            target[i, 0].double().numpy(),
            natives[i].double().numpy() * 65535 / 65536,
        )
        assert {k: row[k] for k in STUDY_METRIC_NAMES} == pytest.approx(expected, rel=1e-5)
    assert metrics["rmse"] == pytest.approx((rows[0]["rmse"] + rows[1]["rmse"]) / 2)
    assert evaluator.kept[0]["where"] == "study protocol" and evaluator.kept[0]["pred"].shape == (8, 16)
    with pytest.raises(ConfigError, match=r"task.protocol must be one of ssl4gie, study, got 'paper'"):
        DepthEvaluator(100.0, protocol="paper")
