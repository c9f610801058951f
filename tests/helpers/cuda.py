"""Shared pieces of the CUDA tests: the device they run on, the cases, and trainers built as a run builds them.

The tests run on ``cuda`` and are skipped without a GPU. ``SSL4GIE_GPU_TESTS_DEVICE=cpu`` runs their logic on
the CPU instead (every GPU code path has a CPU fallback that the switches can force; the NCCL test still needs a
GPU), which is how they are checked on machines without one.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from helpers import compose_config, task_overrides
from ssl4gie.engine.trainer import Trainer
from ssl4gie.utils.conf import instantiate_checked
from ssl4gie.utils.seed import seed_everything

DEVICE = os.environ.get("SSL4GIE_GPU_TESTS_DEVICE", "cuda")
ON_GPU = DEVICE.startswith("cuda")
needs_device = pytest.mark.skipif(
    ON_GPU and not torch.cuda.is_available(),
    reason="needs a CUDA GPU (SSL4GIE_GPU_TESTS_DEVICE=cpu runs the logic on the CPU)",
)
#: Markers of every CUDA test module: ``pytest -m gpu tests/gpu`` selects them.
GPU_TESTS = [pytest.mark.gpu, needs_device]

TASKS = ("segmentation", "classification", "detection", "depth")
BACKBONES = ("resnet50", "vit_b")
CASES = [pytest.param(t, b, id=f"{t}-{b}") for t in TASKS for b in BACKBONES]
# The GPU path on any device: switches forced rather than auto (auto means "on CUDA only").
DEVICE_PATH = [f"trainer.device={DEVICE}", "trainer.gpu_augment=true", "trainer.num_workers=0"]
# The plain path the speed switches are compared with.
PLAIN = ["precision=fp32", "channels_last=false", "fused_optimizer=false", "compile=false"]
if not ON_GPU:
    PLAIN.append("compile_backend=aot_eager")  # inductor needs a C++ toolchain on a CPU; same tracing


@contextlib.contextmanager
def exact_kernels() -> Iterator[None]:
    """fp32 without TF32 and with deterministic cuDNN algorithms, so that two paths compare tightly."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, matmul.allow_tf32)
    cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, matmul.allow_tf32 = False, True, False, False
    try:
        yield
    finally:
        cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, matmul.allow_tf32 = saved


def paths_under(root: Path) -> list[str]:
    """Data, cache and output paths under ``root``: a module's tests share them, so that each synthetic
    dataset is written once."""
    return [f"paths.{name}_dir={root / name}" for name in ("data", "cache", "weights")] + [
        f"paths.output_root={root / 'outputs'}"
    ]


@dataclass
class Case:
    """A task with its reader and one randomly initialised model (copied into every trainer)."""

    cfg: DictConfig
    task: Any
    reader: Any
    model: torch.nn.Module

    def trainer(self, out: Path, *trainer_overrides: str, dist_env=None) -> Trainer:
        """A Trainer on a copy of the model, with ``trainer_overrides`` (``key=value`` under ``trainer``)."""
        cfg = OmegaConf.merge(self.cfg.trainer, OmegaConf.from_dotlist(list(trainer_overrides)))
        trainer = Trainer(
            cfg, self.task, copy.deepcopy(self.model), out, self.cfg.seed, "gpu-test", {}, dist_env
        )
        self.task.augment_on_device = trainer.augment_on_device  # as ssl4gie.run.pipeline does
        return trainer

    def datasets(self, *splits: str) -> dict:
        return self.task.build_datasets(self.reader, list(splits), str(Path(self.cfg.paths.cache_dir)), False)


def build_case(task: str, backbone: str, paths: list[str], *overrides: str) -> Case:
    """The real composed config of a tiny run of ``task`` on the test device, and its model (seed 0)."""
    cfg = compose_config(task_overrides(task, paths, f"backbone={backbone}", *DEVICE_PATH, *overrides))
    task_obj = instantiate_checked(cfg.task, _recursive_=False)
    reader = instantiate_checked(cfg.dataset)
    torch.manual_seed(0)
    model = task_obj.build_model(cfg.backbone, cfg.pretraining, cfg.frozen, cfg.paths.weights_dir)
    return Case(cfg, task_obj, reader, model)


def first_batch(trainer: Trainer, dataset) -> dict:
    """The first training micro-batch of ``dataset`` (on the CPU, as the loader hands it over)."""
    return next(iter(trainer.loader(dataset, train=True)))


def step_losses(trainer: Trainer, batch: dict, steps: int = 1) -> list[float]:
    """The loss of ``steps`` training steps on ``batch``, each with the same random draws (augmentation,
    detection's proposal sampling). With one micro-batch per step each call is one optimiser step."""
    losses = []
    for _ in range(steps):
        seed_everything(0)
        losses.append(trainer.train_epoch([batch], 1)["train/loss"])
    return losses
