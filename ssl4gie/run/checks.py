"""Config checks done once, first, before any data is read: invalid values and combinations are refused with the
valid choices in the message. Compatibility is data (a dataset's ``task``, a row's ``backbones``); what only one
task needs to check, its class checks (:meth:`ssl4gie.tasks.base.Task.check_config`)."""

from __future__ import annotations

from hydra.utils import get_class
from omegaconf import DictConfig

from ssl4gie.errors import ConfigError
from ssl4gie.utils.conf import group_options

MODES = ("train", "eval", "predict")


def validate(cfg: DictConfig) -> None:
    """Reject invalid combinations with the valid choices in the message."""
    if cfg.mode not in MODES:
        raise ConfigError(f"mode={cfg.mode} is not valid; valid: {', '.join(MODES)}")
    if cfg.mode != "train" and not cfg.ckpt:
        raise ConfigError(f"mode={cfg.mode} needs a checkpoint of a finished run: add ckpt=PATH/TO/best.pt")
    if cfg.get("input") and cfg.mode != "predict":
        raise ConfigError(
            f"input={cfg.input} is read by mode=predict only (predict on a folder of frames), not mode={cfg.mode}"
        )
    if cfg.dataset.task != cfg.task.name:
        fitting = [n for n, o in group_options("dataset").items() if o.get("task") == cfg.task.name]
        raise ConfigError(
            f"dataset={cfg.dataset.name} is a {cfg.dataset.task} dataset, not for task={cfg.task.name}; "
            f"valid datasets for task={cfg.task.name}: {', '.join(fitting)}"
        )
    if cfg.backbone.name not in cfg.pretraining.backbones:
        fitting = [
            n for n, o in group_options("pretraining").items() if cfg.backbone.name in o.get("backbones", [])
        ]
        raise ConfigError(
            f"pretraining={cfg.pretraining.name} exists for backbone {', '.join(cfg.pretraining.backbones)}, not "
            f"backbone={cfg.backbone.name}; valid pretraining for backbone={cfg.backbone.name}: {', '.join(fitting)}"
        )
    get_class(cfg.task._target_).check_config(cfg)
    if cfg.mode == "train" and cfg.dataset.get("split") == "all":
        raise ConfigError(
            f"dataset.split=all (dataset={cfg.dataset.name}) leaves no train/val split for mode=train: train with "
            "dataset.split=study, evaluate every image with mode=eval ckpt=PATH dataset.split=all"
        )
    t = cfg.trainer
    for key in ("epochs", "batch_size", "accum_steps", "micro_batch"):
        if t[key] != "auto" and int(t[key]) < 1:
            raise ConfigError(f"trainer.{key}={t[key]} must be at least 1")
