"""A short pretraining learns: kNN accuracy on labelled images rises above the same network's at initialisation.

The synthetic world is built so that the outcome depends on learning. Each image's class is its hue (6 hues, 60°
apart, ±14° spread), shaded by a soft band, plus pixel noise whose strength is drawn per image (σ up to 2 on the
0–1 scale, clipped: grain that differs from frame to frame). A randomly initialised network's features mix hue
and grain: kNN accuracy is well above chance (1/6) but far from 1 (0.52–0.78 measured). The two-view recipes blur
view 1 always and view 2 rarely, so matching the views means ignoring the grain and keeping the colour, which
survives every augmentation; MAE cannot predict the grain either. The unlabelled frames come from the same world,
without labels, as any folder of images (``dataset=image_folder``); the labelled images are the kNN probe's bank
(train split) and queries (val split) in HyperKvasir's labelled layout, as the real probe reads them.

The baseline is the task's own epoch-0 row of ``history.csv``, whose ResNet BatchNorm statistics are estimated on
the frames (:meth:`PretrainTask.baseline_model`). A control run with learning rate 0 (BatchNorm statistics still
follow the training views, weights stay) shows that statistics alone do not give the gain.

What a 96-step run needs that the recipes' tens of thousands of steps do not:

* a higher peak learning rate. The recipes scale theirs by batch / 256, so at batch 32 LARS would move each weight
  by lr × trust coefficient = 0.0075 % a step (no gain measured); 2.0 here, where the recipes at the study's batch
  use 3.6 (MoCo v3) and 1.2 (Barlow Twins); the ViTs 2e-3 / 1e-3 for the recipes' 4.5e-4;
* for the tiny ResNet, heads as wide as its 256 features (the real heads are 2–4× wider than ResNet-50's 2048):
  with the 64-wide tiny default the gain depended on the seed (Barlow Twins +0.03 … +0.27 over 7 seeds);
* for MoCo v3's tiny ViT, a trainable patch projection. Frozen (the recipe's stability fix), its random 768 → 32
  projection mixes colour and grain for good (gain −0.01 … +0.12 over 3 seeds, against +0.26 … +0.28 with it
  trainable); ViT-B's projection keeps 768 dimensions.

Measured over seeds 0–5 and 42 (the default; this test), kNN top-1 gain from epoch 0 to 12, smallest … largest:
MoCo v3 ResNet +0.22 … +0.39 (seed 42: 0.58 → 0.91); Barlow Twins +0.125 … +0.39 (0.58 → 0.95); MoCo v3 ViT
+0.20 … +0.37 (0.66 → 0.93); MAE +0.14 … +0.39 (0.78 → 0.93). Learning rate 0: +0.00 … +0.04 (3 seeds).
"""

from __future__ import annotations

import colorsys
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import TINY, compose_config
from PIL import Image

from ssl4gie.data.synthetic import HYPERKVASIR_CLASSES
from ssl4gie.run.pipeline import execute

pytestmark = pytest.mark.slow  # 96 optimiser steps per pair: 20-50 s each on 2 cores

PROBE_CLASSES = ["cecum", "ileum", "retroflex-rectum", "pylorus", "retroflex-stomach", "z-line"]
SIDE = 64
EPOCHS = 12  # 256 frames / batch 32 = 8 steps an epoch: 96 steps
MARGIN = 0.1  # the smallest gain measured is 0.125 (Barlow Twins, seed 0); this test's seed 42 gains 0.14+

# per (method, backbone): what a 96-step schedule needs (module docstring)
WIDE_HEADS = ["ssl.tiny.hidden_dim=256", "ssl.tiny.out_dim=256"]  # as wide as the tiny ResNet's 256 features
PAIRS = {
    ("mocov3", "resnet50"): ["trainer.lr=2.0", *WIDE_HEADS],
    ("barlowtwins", "resnet50"): ["trainer.lr=2.0", *WIDE_HEADS],
    ("mocov3", "vit_b"): ["trainer.lr=2e-3", "ssl.recipes.vit_b.stop_grad_patch_embed=false"],
    ("mae", "vit_b"): ["trainer.lr=1e-3"],
}


def hue_image(rng: np.random.Generator, label: int, noise: float) -> Image.Image:
    """A SIDE × SIDE image of class ``label``: its hue, a soft band of shading, grain of random strength."""
    xx = np.mgrid[0:SIDE, 0:SIDE][1] / SIDE  # column position, 0 … 1
    hue = (label / len(PROBE_CLASSES) + rng.uniform(-0.04, 0.04)) % 1.0
    base = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.4, 0.8), rng.uniform(0.5, 0.8)))
    band = 0.8 + 0.4 * np.sin(2 * np.pi * (rng.uniform(0.5, 1.5) * xx + rng.uniform(0, 1)))
    rgb = base * band[..., None] + rng.uniform(0, noise) * rng.standard_normal((SIDE, SIDE, 3))
    return Image.fromarray((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8))


def write_world(
    root: Path, frames: int, per_class: int, noise: float = 2.0, seed: int = 0
) -> tuple[Path, Path]:
    """``root/frames``: unlabelled frames of random classes; ``root/labelled``: HyperKvasir's labelled layout with
    ``per_class`` images of each probe class. One world, different draws."""
    rng = np.random.default_rng(seed)
    unlabelled = root / "frames"
    unlabelled.mkdir(parents=True)
    for i in range(frames):
        image = hue_image(rng, int(rng.integers(len(PROBE_CLASSES))), noise)
        image.save(unlabelled / f"{i:04d}.jpg", quality=95)
    labelled = root / "labelled"
    for label, name in enumerate(PROBE_CLASSES):
        tract, category = HYPERKVASIR_CLASSES[name]
        folder = labelled / "labeled-images" / tract / category / name
        folder.mkdir(parents=True)
        for _ in range(per_class):
            file = folder / f"{uuid.UUID(bytes=rng.bytes(16), version=4)}.jpg"
            hue_image(rng, label, noise).save(file, quality=95)
    return unlabelled, labelled


def knn_by_epoch(tmp_path: Path, ssl: str, backbone: str, *extra: str) -> pd.Series:
    """The probe's kNN top-1 by epoch (0: the initial network) of a pretraining through the public config."""
    frames, labelled = write_world(tmp_path / "world", frames=256, per_class=200)
    run = tmp_path / "run"
    cfg = compose_config(
        [
            "task=pretrain",
            f"ssl={ssl}",
            f"backbone={backbone}",
            *TINY,
            "dataset=image_folder",
            f"dataset.root={frames}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            f"paths.output_root={tmp_path / 'outputs'}",
            f"task.probe.data.root={labelled}",
            "task.probe.monitor_frames=64",
            "task.input_size=48",
            "trainer.batch_size=32",
            f"trainer.epochs={EPOCHS}",
            f"task.probe.every={EPOCHS}",
            "trainer.scheduler.warmup_epochs=1",
            "trainer.device=cpu",
            "trainer.num_workers=0",
            "trainer.progress=false",
            *PAIRS[ssl, backbone],
            *extra,
        ],
        run,
    )
    execute(cfg)
    history = pd.read_csv(run / "history.csv")
    knn = history.dropna(subset=["val/knn_top1"]).set_index("epoch")["val/knn_top1"]
    assert list(knn.index) == [0, EPOCHS], knn.to_dict()  # the initial network's probe, then the last epoch's
    return knn


@pytest.mark.parametrize(("ssl", "backbone"), PAIRS)
def test_a_short_pretraining_raises_knn_accuracy_above_the_initial_network(ssl, backbone, tmp_path):
    knn = knn_by_epoch(tmp_path, ssl, backbone)
    assert 0.3 < knn[0] < 0.85, f"the initial network should be above chance and below the ceiling: {knn[0]}"
    assert knn[EPOCHS] >= knn[0] + MARGIN, f"kNN top-1 by epoch: {knn.to_dict()}"


def test_the_gain_is_learned_not_batchnorm_statistics(tmp_path):
    """Learning rate 0: the BatchNorm statistics follow the training views for 96 steps, the weights stay. The
    statistics alone stay below the margin the test above asks of learning (+0.04 measured at seed 42)."""
    knn = knn_by_epoch(tmp_path, "mocov3", "resnet50", "trainer.lr=0")
    assert abs(knn[EPOCHS] - knn[0]) < MARGIN, f"kNN top-1 by epoch: {knn.to_dict()}"
