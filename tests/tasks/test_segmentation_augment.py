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
