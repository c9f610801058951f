"""The trainer's contract for gradient accumulation: one optimiser step over micro-batches is the step of the whole
batch.

What holds, and where:

* A model without BatchNorm (a ViT: LayerNorm only) and a loss that is a mean over the batch's images (plain
  cross-entropy, soft Dice, MAE's reconstruction loss): the accumulated gradient, Σ_k ∇(loss_k / K) over K equal
  micro-batches, is the whole batch's gradient, so the step is the same up to float rounding (checked below).
* A model with BatchNorm (the ResNet-50 rows): each micro-batch is normalised with its own statistics and the
  running statistics are updated once per micro-batch, so the accumulated step is *not* the whole-batch step (checked
  below); the trainer says so in its log ("BatchNorm normalises over N images per forward pass"). The same holds for
  a loss that normalises by a batch sum: a class-weighted cross-entropy divides by the micro-batch's Σ w_y, the SSI
  depth loss by its valid-pixel count. Pretraining methods whose loss couples a batch's images (MoCo v3's
  negatives, Barlow Twins' cross-correlation) refuse accumulation (``Task.exact_accumulation``).
"""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import FAST, TINY, compose_config
from torch.utils.data import Subset

from ssl4gie.engine.trainer import Trainer
from ssl4gie.utils.conf import instantiate_checked

BATCH = 8


def one_step(cfg, task, model, train_set, micro_batch: int, out_dir):
    """The model after one ``train_epoch`` over ``train_set`` (one batch: ``trainer.batch_size`` is its size) in
    micro-batches of ``micro_batch``, and the gradient the optimiser stepped with."""
    cfg = copy.deepcopy(cfg)
    cfg.trainer.batch_size, cfg.trainer.micro_batch = len(train_set), micro_batch
    trainer = Trainer(cfg.trainer, task, copy.deepcopy(model), out_dir, cfg.seed, "fp", {}, None)
    assert (trainer.micro_batch, trainer.accum_steps) == (micro_batch, len(train_set) // micro_batch)
    stepped: list[dict[str, torch.Tensor]] = []
    step = trainer.optimizer.step

    def recording_step(*args, **kwargs):
        stepped.append({n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None})
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    trainer.train_epoch(trainer.loader(train_set, train=True), epoch=1)
    assert len(stepped) == 1 and trainer.global_step == 1  # one optimiser step, whatever the micro-batch
    return trainer.model, stepped[0]


@pytest.mark.parametrize("backbone", ["vit_b", "resnet50"])
def test_one_accumulated_step_equals_the_whole_batch_step_without_batchnorm(backbone, tmp_path):
    cfg = compose_config(
        [
            "task=classification",
            f"backbone={backbone}",
            *TINY,
            *FAST,
            f"paths.data_dir={tmp_path / 'data'}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            "dataset.synthetic={per_class: 3, seed: 0}",
            "task.augment=false",  # the same images in both runs
            "task.class_weights=none",  # a plain mean over the batch's images
            "trainer.accum_steps=auto",  # batch_size / micro_batch
            # LARS: an update that is a smooth function of the gradient (AdamW's first step is ≈ lr·sign(g), which
            # would turn rounding noise on a near-zero gradient into a full step)
            "trainer/optimizer=lars",
            "trainer.lr=0.5",
        ]
    )
    task = instantiate_checked(cfg.task, _recursive_=False)
    torch.manual_seed(0)
    model = task.build_model(cfg.backbone, cfg.pretraining, False, str(tmp_path / "weights"))
    train = task.build_datasets(instantiate_checked(cfg.dataset), ["train"], None, False)["train"]
    train_set = Subset(train, range(BATCH))  # exactly one batch: one optimiser step per epoch

    whole, whole_grad = one_step(cfg, task, model, train_set, BATCH, tmp_path / "whole")
    accumulated, accumulated_grad = one_step(
        cfg, task, model, train_set, BATCH // 2, tmp_path / "accumulated"
    )
    first_half, _ = one_step(
        cfg, task, model, Subset(train, range(BATCH // 2)), BATCH // 2, tmp_path / "half"
    )

    before, after = model.state_dict(), whole.state_dict()
    moved = max((after[k] - v).abs().max().item() for k, v in before.items() if v.is_floating_point())
    assert moved > 1e-3  # the step is large next to the tolerance below
    assert whole_grad.keys() == accumulated_grad.keys()
    weights = accumulated.state_dict()
    if backbone == "vit_b":
        for name, grad in whole_grad.items():
            torch.testing.assert_close(accumulated_grad[name], grad, rtol=0, atol=1e-6, msg=name)
        for name, value in after.items():
            torch.testing.assert_close(weights[name], value, rtol=0, atol=1e-6, msg=name)
    else:  # BatchNorm: micro-batch statistics, and two running-statistics updates instead of one
        assert any(m.__class__.__name__.startswith("BatchNorm") for m in model.modules())
        differs = max((weights[k] - v).abs().max().item() for k, v in after.items() if v.is_floating_point())
        assert differs > 1e-4
    # half of the batch is another step: the comparison above sees the difference a missing micro-batch makes
    half = first_half.state_dict()
    assert max((half[k] - v).abs().max().item() for k, v in after.items() if v.is_floating_point()) > 1e-4
