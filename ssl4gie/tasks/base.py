"""The contract between the engine and a task."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import Dataset

from ssl4gie.errors import ConfigError


class Evaluator(ABC):
    """Accumulates one split's metrics: ``process`` each batch, then ``compute``.

    ``keep`` items are retained for figures; if ``save_dir`` is given, predictions are written there as files.
    """

    def __init__(self, keep: int = 0, save_dir: Path | None = None) -> None:
        self.keep, self.save_dir, self.kept = keep, save_dir, []

    @abstractmethod
    def process(self, batch: dict[str, Any], outputs: Any) -> None: ...

    @abstractmethod
    def compute(self) -> tuple[dict[str, float], list[dict]]:
        """(metric name -> value without split prefix, per-image rows for a CSV)."""


class Task(ABC):
    """A finetuning or pretraining task: what the run layer and the engine need to train, evaluate, draw and
    finish. Every attribute they read is declared here, with its default."""

    name: str
    # The validation metric that selects best.pt and drives ReduceLROnPlateau, e.g. "val/dice"; None: no model
    # selection (pretraining keeps its last epoch, as the reference codebases do)
    monitor: str | None
    monitor_mode: str  # "max" or "min"
    # Network input side (square), where the task has one (detection sizes its inputs itself: None)
    input_size: int | None = None
    # Whether the task has a test split: a finetuning run ends by evaluating its best checkpoint on it; pretraining
    # ends with its export instead (:meth:`finish`)
    tests: bool = True
    # The formulas of the task's metrics: "ssl4gie" or the study's ("study"), where the task has both
    protocol: str = "ssl4gie"
    # Classification's macro average: the classes its means run over (results --ci recomputes them); None elsewhere
    macro_over: str | None = None
    # Whether splitting a batch into accumulated micro-batches computes the same gradient (no coupling between a
    # batch's images but BatchNorm's). False: the engine refuses accumulation and gives accumulation_note.
    exact_accumulation: bool = True
    accumulation_note: str = ""
    # Whether the task can augment a training batch on the device (:meth:`augment_batch`), and whether it should
    # (set by the run from trainer.gpu_augment): the loader workers then leave the augmentation to the device
    augments_on_device: bool = False
    augment_on_device: bool = False

    @classmethod
    def check_config(cls, cfg: DictConfig) -> None:
        """Checks of the whole run config that only this task needs, done first, before anything is built (e.g. the
        modes it runs in); raise :class:`~ssl4gie.errors.ConfigError` naming the option. Nothing by default."""
        return None

    @abstractmethod
    def build_model(
        self, backbone: DictConfig, pretraining: DictConfig, frozen: bool, weights_dir: str
    ) -> nn.Module:
        """The full model, backbone weights loaded."""

    @abstractmethod
    def build_datasets(
        self, reader: Any, splits: list[str], cache_dir: str | None, progress: bool
    ) -> dict[str, Dataset]:
        """torch Datasets of the requested splits ("train" gets training augmentation)."""

    def augment_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Training augmentation of a batch already on the device (``trainer.gpu_augment``); identity by default.

        The engine calls it outside autocast, so sampling grids and colour operations run in fp32."""
        return batch

    @abstractmethod
    def training_step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Forward + loss; the dict must hold ``"loss"``. Other 0-dim tensors (loss terms, monitors) are averaged
        per epoch into the history as ``train/<name>``."""

    def on_step(self, step: int, total_steps: int) -> dict[str, float]:
        """Called before each optimiser step (``step`` of ``total_steps``, counting from 0) to update per-step
        state, e.g. a momentum schedule; returns values to show and log. Nothing by default."""
        return {}

    @abstractmethod
    def predict(self, model: nn.Module, batch: dict[str, Any]) -> Any:
        """Model outputs for a batch in eval mode (no loss)."""

    @abstractmethod
    def evaluator(self, keep: int = 0, save_dir: Path | None = None) -> Evaluator: ...

    @abstractmethod
    def draw(self, kept: list[dict], folder: Path) -> list[Path]:
        """Write figures of retained evaluation items into ``folder``; return their paths."""

    def frame_dataset(self, paths: list[Path]) -> Dataset:
        """Frames of ``mode=predict input=DIR`` (:func:`ssl4gie.data.frames.list_frames`) as a Dataset with this
        task's evaluation preprocessing; samples carry ``image`` and ``meta`` only (no ground truth).

        Call after :meth:`build_model` (a detector's input frame depends on the backbone)."""
        raise ConfigError(f"task={self.name} cannot predict on a folder of frames (option input)")

    def frame_predictor(self, save_dir: Path, keep: int = 0) -> Evaluator:
        """An evaluator of :meth:`frame_dataset` batches that computes no metrics: it writes one output per frame
        (named after the frame's file stem, at its native resolution) or one file for the folder into
        ``save_dir``; ``compute`` returns ``({}, one row per frame)``; ``kept`` feeds :meth:`draw_frames`."""
        raise ConfigError(f"task={self.name} cannot predict on a folder of frames (option input)")

    def draw_frames(self, kept: list[dict], folder: Path) -> list[Path]:
        """Figures of the frames a :meth:`frame_predictor` kept into ``folder`` (``<stem>.png`` per frame, or one
        grid); return their paths. None by default."""
        return []

    def baseline_model(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The model ``trainer.val_at_start`` evaluates as the initial weights' baseline; ``model`` itself by
        default."""
        return model

    def use_study_model(self) -> None:
        """Build the study's variant of this task's model where ssl4gie's deliberately differs (called before
        :meth:`build_model` when ``ckpt`` is one of the study's files); nothing by default."""
        return None

    def structure(self) -> dict:
        """Options (after :meth:`build_model`) that change the model's structure beyond backbone and decoder
        config: a checkpoint is only loaded into a model built with the same (checked in eval/predict mode)."""
        return {}

    def extra_state(self) -> dict:
        """Anything besides the weights that eval/predict need from a checkpoint (e.g. class names)."""
        return {}

    def input_label(self) -> str:
        """What the network sees, for tables (call after :meth:`build_model`): ``224²`` by default."""
        return f"{self.input_size}²"

    def trainable_parameters(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        """The ``(name, parameter)`` pairs the optimiser updates: every parameter that requires a gradient."""
        return [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    def facts(self) -> dict[str, Any]:
        """What ``metrics.json`` records about the task beside its metrics (the results tables read them)."""
        return {"protocol": self.protocol, "macro_over": self.macro_over}

    def finish(self, model: nn.Module, output_dir: Path, device: torch.device) -> dict[str, Any]:
        """After training (rank 0): write what the task produces besides the checkpoints (e.g. pretraining's
        exported backbone) and return facts for ``metrics.json``; ``"figures"`` lists figure files. Nothing by
        default."""
        return {}
