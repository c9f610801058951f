"""Hand-computed checks of the classification weights/loss and the scale-and-shift-invariant depth loss."""

import pytest
import torch
import torch.nn.functional as F

from ssl4gie.tasks.losses import (
    align_median,
    align_scale_shift,
    class_weights,
    ssi_loss,
    ssi_mse,
    weighted_cross_entropy,
)


def test_class_weights_inverse_frequency_with_zero_for_missing_class():
    weights = class_weights(torch.tensor([0, 0, 0, 1]), num_classes=3)
    # N = 4: w_0 = 4 / (3·3), w_1 = 4 / (3·1), class 2 never occurs -> 0
    torch.testing.assert_close(weights, torch.tensor([4 / 9, 4 / 3, 0.0]))
    assert weights.dtype == torch.float32


def test_class_weights_rejects_bad_labels():
    with pytest.raises(ValueError, match="num_classes=2"):
        class_weights([0, 2], num_classes=2)
    with pytest.raises(ValueError, match="no labels"):
        class_weights([], num_classes=2)


def test_weighted_cross_entropy_matches_manual_weighted_mean():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 3, generator=generator)
    target = torch.tensor([0, 2, 1, 2, 0])
    weights = torch.tensor([0.5, 2.0, 1.5])
    per_sample = -torch.log_softmax(logits, dim=1)[torch.arange(5), target]
    expected = (weights[target] * per_sample).sum() / weights[target].sum()
    torch.testing.assert_close(weighted_cross_entropy(logits, target, weights), expected)
    # bf16 logits are cast up to fp32 (no bf16 arithmetic): same as the manual value on the rounded logits
    rounded = logits.to(torch.bfloat16)
    per_sample = -torch.log_softmax(rounded.float(), dim=1)[torch.arange(5), target]
    expected = (weights[target] * per_sample).sum() / weights[target].sum()
    loss = weighted_cross_entropy(rounded, target, weights)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(weighted_cross_entropy(logits, target, None), F.cross_entropy(logits, target))


# A 2×2 case solved by hand: p = [0, 1, 2, 3], d = [1, 1, 2, 4]
#   Σp = 6, Σp² = 14, Σd = 8, Σpd = 17, n = 4, det = 14·4 − 36 = 20
#   s = (4·17 − 6·8) / 20 = 1, t = (−6·17 + 14·8) / 20 = 0.5, q = [0.5, 1.5, 2.5, 3.5]
#   q − d = [−.5, .5, .5, −.5] -> data = 1 / (2·4) = 0.125
#   gradient, scale 1: |r| steps are all 1 -> (2 horizontal + 2 vertical) / 4 = 1; coarser scales are 1×1 -> 0
P = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
D = torch.tensor([[1.0, 1.0], [2.0, 4.0]])


def test_scale_shift_fit_and_data_term_by_hand():
    aligned, scale, shift = align_scale_shift(P[None], D[None], None)
    torch.testing.assert_close(scale, torch.tensor([1.0]))
    torch.testing.assert_close(shift, torch.tensor([0.5]))
    torch.testing.assert_close(aligned[0], torch.tensor([[0.5, 1.5], [2.5, 3.5]]))
    torch.testing.assert_close(ssi_mse(P[None], D[None]), torch.tensor(0.125))
    torch.testing.assert_close(ssi_loss(P[None], D[None]), torch.tensor(0.125 + 0.1 * 1.0))
    # B×1×H×W gives the same as B×H×W
    torch.testing.assert_close(ssi_loss(P[None, None], D[None, None]), torch.tensor(0.225))


def test_perfect_prediction_up_to_scale_and_shift_gives_zero_loss():
    target = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(1)) + 0.5
    pred = (target - 3.0) / 2.0
    assert float(ssi_mse(pred, target)) == pytest.approx(0.0, abs=1e-10)
    assert float(ssi_loss(pred, target)) == pytest.approx(0.0, abs=1e-5)


def test_masked_pixels_are_ignored():
    # Third column has target 0 (invalid by default); its prediction must not matter, at any scale.
    pred = torch.tensor([[[0.0, 1.0, 100.0], [2.0, 3.0, -50.0]]])
    target = torch.tensor([[[1.0, 1.0, 0.0], [2.0, 4.0, 0.0]]])
    torch.testing.assert_close(ssi_mse(pred, target), torch.tensor(0.125))
    torch.testing.assert_close(ssi_loss(pred, target), torch.tensor(0.225))
    # An explicit mask works the same way
    mask = torch.tensor([[[True, True, False], [True, True, False]]])
    target_filled = target.clone()
    target_filled[mask.logical_not()] = 7.0
    torch.testing.assert_close(ssi_loss(pred, target_filled, mask), torch.tensor(0.225))


def test_batch_reduction_pools_pixels_over_images():
    pred = torch.stack([P, D * 2])  # the second image is perfect up to scale
    target = torch.stack([D, D])
    # Σ (q − d)² = 1 + 0 over 8 valid pixels -> 1 / 16, not the mean of per-image values (0.125 + 0) / 2
    torch.testing.assert_close(ssi_mse(pred, target), torch.tensor(1 / 16))


def test_singular_system_gives_zero_scale_and_shift():
    pred = torch.full((1, 2, 2), 0.5)  # constant over the mask -> det = 0
    aligned, scale, shift = align_scale_shift(pred, D[None], None)
    assert float(scale) == 0.0 and float(shift) == 0.0
    assert torch.equal(aligned, torch.zeros_like(aligned))
    # q = 0, so data = Σ d² / (2·4) = (1 + 1 + 4 + 16) / 8
    torch.testing.assert_close(ssi_mse(pred, D[None]), torch.tensor(22 / 8))


@pytest.mark.parametrize("value", [0.1, 0.3, 0.7123])
def test_constant_prediction_on_a_large_image_is_singular(value):
    # With fp32 sums, n·Σp² − (Σp)² leaves a rounding residue here (e.g. 96 instead of 0) and the "fit"
    # returns an arbitrary scale; the float64 solve must see the singular system.
    target = torch.rand(1, 224, 224, generator=torch.Generator().manual_seed(4)) + 0.1
    _, scale, shift = align_scale_shift(torch.full((1, 224, 224), value), target, None)
    assert float(scale) == 0.0 and float(shift) == 0.0


def test_empty_mask_gives_zero_loss_and_finite_gradients():
    pred = torch.rand(2, 1, 4, 4, requires_grad=True)
    loss = ssi_loss(pred, torch.zeros(2, 1, 4, 4))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(pred.grad).all()


def test_loss_is_fp32_for_low_precision_inputs_and_differentiable():
    target = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(2)) + 0.1
    pred = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16).requires_grad_()
    loss = ssi_loss(pred, target)
    assert loss.dtype == torch.float32
    loss.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad.float()).all() and pred.grad.abs().sum() > 0


def test_align_median_scales_by_ratio_of_medians():
    target = torch.tensor([[[1.0, 2.0], [4.0, 0.0]]])
    pred = torch.tensor([[[0.5, 1.0], [2.0, 9.0]]])
    aligned, scale = align_median(pred, target, target > 0)
    # medians over the 3 valid pixels: target 2, pred 1 -> s = 2
    torch.testing.assert_close(scale, torch.tensor([2.0]))
    torch.testing.assert_close(aligned, torch.tensor([[[1.0, 2.0], [4.0, 18.0]]]))
    _, scale = align_median(pred, target, torch.zeros_like(target, dtype=torch.bool))
    assert float(scale) == 0.0


def test_soft_dice_loss_hand_computed():
    from ssl4gie.tasks.losses import soft_dice_loss

    logits = torch.tensor([[[[0.0, 0.0]]]])  # p = 0.5, 0.5
    target = torch.tensor([[[[1.0, 0.0]]]])
    # 2·0.5 / (0.25 + 0.25 + 1) = 2/3
    assert soft_dice_loss(logits, target).item() == pytest.approx(1 - 2 / 3, abs=1e-6)
    perfect = torch.tensor([[[[50.0, -50.0]]]])
    assert soft_dice_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
