"""The ``ckpt`` of ``mode=eval|predict``: an ssl4gie run checkpoint (``best.pt``) or one of the study's finetuned
files, read safely and checked against the model the config builds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ssl4gie.engine.checkpoint import read_run_checkpoint
from ssl4gie.errors import ConfigError, Ssl4gieError
from ssl4gie.models.checkpoints import study


def read_model_checkpoint(path: str | Path, task: str, family: str) -> dict[str, Any]:
    """What eval/predict load: an ssl4gie run checkpoint (``best.pt``), or one of the study's finetuned files
    converted for ``task`` and the backbone ``family`` (``model_config`` None; ``receipt`` says what was loaded
    and what was dropped by rule)."""
    path = Path(path)
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
    return {"model": state, "model_config": None, "epoch": epoch, "best_epoch": epoch, "receipt": receipt}


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
