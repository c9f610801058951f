"""The ``ckpt`` of ``mode=eval|predict``: an ssl4gie run checkpoint (``best.pt``) or one of the study's finetuned
files, read safely; its model structure adopted by the config, and checked against the model the config builds."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from ssl4gie.engine.checkpoint import read_run_checkpoint
from ssl4gie.errors import ConfigError, Ssl4gieError
from ssl4gie.models.checkpoints import study

log = logging.getLogger("ssl4gie")


def read_model_checkpoint(path: str | Path, task: str, family: str) -> dict[str, Any]:
    """What eval/predict load: an ssl4gie run checkpoint (``best.pt``), or one of the study's finetuned files
    converted for ``task`` and the backbone ``family`` (``model_config`` None; ``receipt`` says what was loaded
    and what was dropped by rule; ``stored``: the file's own ``epoch``, ``val_perf``, ``test_perf``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise Ssl4gieError(f"checkpoint {path} does not exist (option ckpt)")
    # The study's files first, memory-mapped: a 2.7 GB detector file is then never read into memory in full only
    # to be refused for its numpy RNG state (an ssl4gie checkpoint is read again below; mapping it is cheap).
    try:
        obj = study.read_study_file(path)
    except study.CheckpointError:
        return read_run_checkpoint(path)
    state, dropped = study.to_ssl4gie(obj, task, family, path)
    rules = ", ".join(f"{len(keys)} {reason}" for reason, keys in dropped.items() if keys)
    receipt = f"loaded {len(state)} tensors from {study.describe(task, family)} file {path.name}; dropped by rule: {rules}"
    epoch = int(obj["epoch"])
    # the authors' own numbers at the epoch they kept, for metrics.json (stored/*) beside ours
    stored = study.stored_numbers(obj)
    return {
        "model": state,
        "model_config": None,
        "epoch": epoch,
        "best_epoch": epoch,
        "receipt": receipt,
        "stored": stored,
    }


# model_config keys added later, with the value every earlier checkpoint had
MODEL_CONFIG_DEFAULTS = {"registers": 0}


def check_model_config(ckpt: dict, expected: dict, path: str | Path) -> None:
    """The checkpoint must come from the same task/backbone/decoder as the current config."""
    found = {**MODEL_CONFIG_DEFAULTS, **ckpt["model_config"]}  # checkpoints written before a key existed
    diffs = [
        f"{k}={found.get(k)!r} (checkpoint) vs {v!r} (config)"
        for k, v in expected.items()
        if found.get(k) != v
    ]
    if diffs:
        raise ConfigError(f"checkpoint {path} does not match the config: " + "; ".join(diffs))


# model_config entries -> the option that builds them; the task's own structure (a dict under one key, e.g. the
# detector's) maps to task.<key>. The others (task, backbone, timm_name, classes) are checked, not adopted: they are
# the config groups and the dataset, which the command line names.
STRUCTURE_OPTIONS = {
    "tiny": "backbone.tiny",
    "input_size": "task.input_size",
    "decoder": "task.decoder",
    "registers": "backbone.registers",
}
CHECKED = ("task", "backbone", "timm_name", "classes")


def explicit_options() -> set[str]:
    """The options the command line sets (Hydra's task overrides), without their ``+``/``~`` prefixes; none
    outside a Hydra run."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return set()
    return {o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task}


def _structure(model_config: dict) -> dict[str, Any]:
    """The options that build a checkpoint's model, by config path."""
    options = {path: model_config[key] for key, path in STRUCTURE_OPTIONS.items() if key in model_config}
    for key, value in model_config.items():
        if key not in STRUCTURE_OPTIONS and key not in CHECKED and isinstance(value, dict):
            options.update({f"task.{name}": v for name, v in value.items()})
    return options


def with_checkpoint_structure(cfg: DictConfig, ckpt: dict, explicit: set[str]) -> DictConfig:
    """``cfg`` with the model structure of ``ckpt`` (tiny backbone, input size, decoder, detector options,
    registers), so that eval and predict build exactly the model that was trained without the options typed
    again. An option the command line sets (``explicit``) that contradicts the checkpoint is refused, naming both
    values. A study file (no ``model_config``) is checked against the model later, by its keys and shapes."""
    if ckpt["model_config"] is None:
        return cfg
    found = {**MODEL_CONFIG_DEFAULTS, **ckpt["model_config"]}
    adopted = copy.deepcopy(cfg)
    changes = []
    for path, value in _structure(found).items():
        current = OmegaConf.select(cfg, path, default=None)
        current = (
            OmegaConf.to_container(current, resolve=True) if isinstance(current, DictConfig) else current
        )
        if current == value:
            continue
        if path in explicit or any(path.startswith(f"{o}.") for o in explicit):
            raise ConfigError(
                f"{path}={current} contradicts checkpoint {cfg.ckpt}, whose model was built with {path}={value}: "
                f"drop the option (eval and predict build the checkpoint's model)"
            )
        with open_dict(adopted):
            OmegaConf.update(adopted, path, value, merge=False)
        changes.append(f"{path}={value}")
    if changes:
        log.info("the model of %s: %s (from the checkpoint)", cfg.ckpt, ", ".join(changes))
    return adopted
