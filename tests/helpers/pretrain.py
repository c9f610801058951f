"""Pretraining runs of the tests: the method x backbone pairs and a tiny pretraining's overrides."""

from __future__ import annotations

from pathlib import Path

from helpers import TINY

PAIRS = [("mocov3", "resnet50"), ("mocov3", "vit_b"), ("barlowtwins", "resnet50"), ("mae", "vit_b")]


def pretrain_overrides(tmp_path: Path, ssl: str, backbone: str, *extra: str) -> list[str]:
    """A 2-epoch tiny pretraining on 24 synthetic frames, the kNN probe on a synthetic labelled set."""
    return [
        "task=pretrain",
        f"ssl={ssl}",
        f"backbone={backbone}",
        *TINY,
        f"paths.data_dir={tmp_path / 'data'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"paths.output_root={tmp_path / 'outputs'}",
        f"paths.weights_dir={tmp_path / 'weights'}",
        "dataset.synthetic={count: 24, seed: 0, size_range: [48, 96]}",
        f"task.probe.data.root={tmp_path / 'hk-labelled'}",
        "task.probe.data.synthetic={per_class: 3, seed: 0}",
        "task.probe.every=1",
        "task.probe.monitor_frames=8",
        "task.reconstructions=2",
        "task.input_size=64",
        "trainer.batch_size=8",
        "trainer.epochs=2",
        "trainer.scheduler.warmup_epochs=1",
        "trainer.device=cpu",
        "trainer.num_workers=0",
        "trainer.progress=false",
        *extra,
    ]
