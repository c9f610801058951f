"""Helpers of the tests: compose the *real* Hydra config, shrink it (tiny backbones, few epochs), run it.

Tests exercise the same code path as ``python run.py ...``; only sizes differ. Fixtures live in ``conftest.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"


# Shrunken variants with the production key structure (see conf/backbone/*.yaml: tiny_kwargs).
TINY = ["backbone.tiny=true"]


# Small decoders, so CPU loops stay fast; the real widths are checked in the model tests.
SMALL_DECODERS = [
    "task.decoder.vit.head.reassemble_channels=[8,8,16,16]",
    "task.decoder.vit.head.features=16",
    "task.decoder.resnet.head.channels=16",
    "task.decoder.resnet.head.low_proj_channels=8",
]


FAST = [
    "trainer.epochs=1",
    "trainer.batch_size=4",
    "trainer.num_workers=0",
    "trainer.progress=false",
    "trainer.device=cpu",
    "trainer.num_figures=2",
    "task.input_size=64",
]


# One tiny CPU run of each task on synthetic data in its real layout, written under paths.data_dir (tmp_paths).
TASK_RUNS = {
    "segmentation": [
        "task=segmentation",
        *SMALL_DECODERS,
        "dataset.synthetic={n: 12, seed: 0, size_range: [64, 112]}",
    ],
    "classification": ["task=classification", "dataset.synthetic={per_class: 3, seed: 0}"],
    "detection": [
        "task=detection",
        "task.fpn_channels=16",
        "task.rois_per_image=64",
        "task.min_size=64",
        "task.max_size=128",
        "task.canvas_size=128",  # ViT: 8×8 tokens in 4×4 windows, block 3 global (the tiny ViT has 4 blocks)
        "task.window_size=4",
        "task.global_blocks=[3]",
        "dataset.synthetic={n: 12, seed: 0, size_range: [48, 128]}",
    ],
    "depth": [
        "task=depth",
        "task.decoder.vit.head.reassemble_channels=[8,8,16,16]",
        "task.decoder.vit.head.features=16",
        "task.decoder.resnet.head.head_channels=[8,8]",
        "dataset.synthetic={seed: 0, size: [40, 32]}",
    ],
}


def task_overrides(task: str, paths: list[str], *extra: str) -> list[str]:
    """A one-epoch tiny run of ``task`` with every path in ``paths`` (the ``tmp_paths`` fixture)."""
    fast = [o for o in FAST if task != "detection" or not o.startswith("task.input_size")]
    return [*TASK_RUNS[task], *TINY, *fast, *paths, *extra]


def compose_config(overrides: list[str], output_dir: Path | None = None, hydra: bool = False) -> DictConfig:
    """The real config with ``overrides``; ``paths.output_dir`` set since no Hydra run is active."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=hydra)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
    return cfg


def run_cli(
    args: list[str], cwd: Path = ROOT, timeout: int = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """``python run.py args...`` in a subprocess, as a user would type it."""
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def segmentation_overrides(root: Path, tmp_path: Path, *extra: str) -> list[str]:
    """A one-epoch tiny segmentation run on ``root`` with every path inside ``tmp_path``."""
    return [
        f"dataset.root={root}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"paths.weights_dir={tmp_path / 'w'}",
        f"paths.output_root={tmp_path / 'outputs'}",
        *TINY,
        *SMALL_DECODERS,
        *FAST,
        *extra,
    ]


def expand(name: str) -> list[list[str]]:
    """The cells of ``sweeps/<name>.yaml``, each as its list of overrides."""
    cfg = compose_config([f"sweep={name}"], hydra=True)
    params = cfg.hydra.sweeper.params
    overrides = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    return BasicSweeper.split_arguments(overrides, None)[0]


def optimizer(group: str, named_params, lr: float, weight_decay: float, **options):
    """The optimiser of config group option ``conf/trainer/optimizer/<group>.yaml`` (its ``_partial_`` target, with
    ``options`` replacing the file's values) over ``named_params``, as the trainer builds it."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    node = OmegaConf.merge(OmegaConf.load(CONF / "trainer" / "optimizer" / f"{group}.yaml"), options)
    return instantiate(node)(named_params, lr=lr, weight_decay=weight_decay)
