"""Augmentation in loader workers (CPU) and on the batch's device (the GPU path, exercised here on the CPU)."""

from __future__ import annotations

import pytest
import torch
from helpers import FAST, SMALL_DECODERS, TINY, compose_config

from ssl4gie.data.collate import collate
from ssl4gie.utils.conf import instantiate_checked


def test_device_augmentation_path(tmp_path, kvasir_tiny):
    cfg = compose_config([f"dataset.root={kvasir_tiny}", *TINY, *SMALL_DECODERS, *FAST])
    task = instantiate_checked(cfg.task, _recursive_=False)
    reader = instantiate_checked(cfg.dataset)
    model = task.build_model(cfg.backbone, cfg.pretraining, False, str(tmp_path))

    worker = task.build_datasets(reader, ["train"], str(tmp_path / "cache"), False)["train"]
    sample = worker[0]
    assert sample["image"].dtype == torch.float32  # augmented + normalised in the worker

    task.augment_on_device = True
    deferred = task.build_datasets(reader, ["train"], str(tmp_path / "cache"), False)["train"]
    batch = collate([deferred[i] for i in range(4)])
    assert batch["image"].dtype == torch.uint8  # left for the device
    torch.manual_seed(0)
    batch = task.augment_batch(batch)  # what the trainer does before training_step
    assert batch["image"].dtype == torch.float32 and batch["target"].shape == (4, 1, 64, 64)
    out = task.training_step(model, batch)
    assert out["loss"].dtype == torch.float32 and 0.0 <= out["loss"].item() <= 1.0
    out["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_training_augmentation_is_random_and_keeps_mask_aligned(tmp_path, kvasir_tiny):
    cfg = compose_config([f"dataset.root={kvasir_tiny}", *TINY, *FAST])
    task = instantiate_checked(cfg.task, _recursive_=False)
    data = task.build_datasets(instantiate_checked(cfg.dataset), ["train"], str(tmp_path / "cache"), False)[
        "train"
    ]
    torch.manual_seed(1)
    a, b = data[0], data[0]
    assert not torch.equal(a["image"], b["image"])  # a fresh draw each time
    for s in (a, b):
        outside = s["image"].eq(-1.0).all(0)  # the affine's fill in the normalised image
        assert s["target"][0][outside].abs().max() == 0  # ...is background in the mask too


def test_separable_blur_equals_torchvision_blur():
    from torchvision.transforms.v2 import functional as F

    from ssl4gie.data.transforms import SeparableGaussianBlur

    image = torch.randint(0, 256, (3, 64, 80), dtype=torch.uint8)
    torch.manual_seed(3)
    ours = SeparableGaussianBlur(25, (0.001, 2.0))(image)
    torch.manual_seed(3)
    sigma = torch.empty(1).uniform_(0.001, 2.0).item()  # the same draw
    reference = F.gaussian_blur(image, [25, 25], [sigma, sigma])
    assert (ours.int() - reference.int()).abs().max() <= 1
    assert ours.dtype == torch.uint8 and ours.shape == image.shape


def test_pil_colour_jitter_matches_the_tensor_jitter_for_the_same_draw():
    from ssl4gie.data.transforms import PILColorJitter

    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    jitter = PILColorJitter(brightness=0.4, contrast=0.5, saturation=0.25, hue=0.01)
    torch.manual_seed(5)
    via_pil = jitter(image)
    torch.manual_seed(5)
    via_tensor = jitter.jitter(image)  # torchvision's tensor kernels, same random parameters
    assert via_pil.shape == image.shape and via_pil.dtype == torch.uint8
    assert (via_pil.float() - via_tensor.float()).abs().mean() < 3.0  # same operation, integer rounding apart


def test_affine_draws_fractional_translations_in_the_studys_ranges():
    from ssl4gie.data.transforms import StudyAffine

    torch.manual_seed(0)
    draws = [StudyAffine().params(224, 224) for _ in range(4000)]
    t = torch.tensor([d["translate"] for d in draws])
    assert t.abs().max() <= 28.0 and t.abs().max() > 27.0  # U(−224/8, 224/8) px on each axis
    # Whole-pixel translations (v2.RandomAffine's rounding) would put every fractional part in the first bin.
    fractions = (t - t.floor()).flatten()
    counts = torch.histc(fractions, bins=10, min=0.0, max=1.0)
    assert counts.min() > 0.7 * len(fractions) / 10, counts
    assert max(abs(d["angle"]) for d in draws) <= 180.0 and all(0.5 <= d["scale"] <= 1.5 for d in draws)
    assert all(abs(d["shear"][0]) <= 22.5 and d["shear"][1] == 0.0 for d in draws)


def test_fractional_translation_moves_image_and_mask_by_the_sub_pixel_amount():
    """At scale 1/4 a shift of f output pixels is 4f input pixels, so fractions of a pixel change what is sampled.

    Expected pixels follow torchvision's convention (pixel centres, origin at the image centre, nearest): output
    pixel x reads input pixel rint((x + ½ − W/2 − tx)/s + W/2 − ½); the shifts are chosen away from rounding ties.
    """
    from ssl4gie.data.transforms import StudyAffine

    size, s = 64, 0.25
    pattern = torch.arange(size * size, dtype=torch.float32).view(1, size, size)  # every pixel distinct
    affine = StudyAffine()
    for tx, ty in [(0.3, -0.6), (2.7, 1.15), (-5.4, 3.8)]:
        params = {"angle": 0.0, "translate": [tx, ty], "scale": s, "shear": [0.0, 0.0]}
        image, mask = affine.apply(pattern.expand(3, -1, -1), pattern, params)
        grid = torch.arange(size, dtype=torch.float64) + 0.5 - size / 2
        cols = torch.round((grid - tx) / s + size / 2 - 0.5).long()
        rows = torch.round((grid - ty) / s + size / 2 - 0.5).long()
        inside = ((rows >= 0) & (rows < size))[:, None] & ((cols >= 0) & (cols < size))[None, :]
        source = pattern[0][rows.clamp(0, size - 1)][:, cols.clamp(0, size - 1)]
        assert torch.equal(image[0], torch.where(inside, source, torch.tensor(-1.0)))
        assert torch.equal(mask[0], torch.where(inside, source, torch.tensor(0.0)))
        # The same warp with the translation rounded to whole pixels samples other pixels.
        rounded = {**params, "translate": [float(round(tx)), float(round(ty))]}
        assert not torch.equal(affine.apply(pattern, pattern, rounded)[1], mask)


def test_train_transform_warps_with_fractional_translations(monkeypatch):
    from ssl4gie.data.transforms import SegmentationTrainTransform

    transform, seen = SegmentationTrainTransform(), []
    apply = transform.affine.apply
    monkeypatch.setattr(transform.affine, "apply", lambda i, m, p: seen.append(p) or apply(i, m, p))
    torch.manual_seed(0)
    image, mask = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8), torch.rand(1, 32, 32)
    for _ in range(20):
        out_image, out_mask = transform(image, mask)
    assert out_image.shape == (3, 32, 32) and out_mask.shape == (1, 32, 32)
    assert out_image.dtype == out_mask.dtype == torch.float32
    assert any(t != round(t) for p in seen for t in p["translate"])


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))],
)
def test_affine_draws_do_not_depend_on_the_device(device):
    from ssl4gie.data.transforms import StudyAffine

    image, mask = torch.randn(3, 48, 48), (torch.rand(1, 48, 48) > 0.5).float()
    torch.manual_seed(7)
    expected = StudyAffine()(image, mask)
    torch.manual_seed(7)
    got = StudyAffine()(image.to(device), mask.to(device))
    for e, g in zip(expected, got, strict=True):
        assert g.device.type == device
        # Nearest sampling: a pixel may round the other way on another device, but almost all agree.
        assert (g.cpu() == e).float().mean() > 0.99
