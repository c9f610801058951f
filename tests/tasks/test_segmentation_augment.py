"""Augmentation in loader workers (CPU) and on the batch's device (the GPU path, exercised here on the CPU)."""

from __future__ import annotations

import torch
from conftest import FAST, SMALL_DECODERS, TINY, compose_config

from ssl4gie.config import instantiate_checked
from ssl4gie.data.collate import collate


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
