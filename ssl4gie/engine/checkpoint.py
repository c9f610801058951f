"""Checkpoints: written atomically, read with ``weights_only=True`` (a checkpoint is data, never code)."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from ssl4gie.errors import ConfigError, Ssl4gieError


def read_run_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load an ssl4gie checkpoint (``best.pt`` / ``last.pt``) safely; clear errors for missing/corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise Ssl4gieError(f"checkpoint {path} does not exist (option ckpt)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise Ssl4gieError(
            f"checkpoint {path} holds pickled Python objects, which are refused (loaded with "
            f"weights_only=True): {str(e).splitlines()[0]}"
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise Ssl4gieError(f"checkpoint {path} is truncated or not a PyTorch checkpoint: {e}") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
        raise Ssl4gieError(
            f"{path} is not an ssl4gie run checkpoint (expected keys 'model' and 'model_config', "
            f"found {sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__}). "
            f"Pretrained backbone files go in pretraining.checkpoint, not ckpt."
        )
    return ckpt


def read_model_checkpoint(path: str | Path, task: str, family: str) -> dict[str, Any]:
    """What eval/predict load: an ssl4gie run checkpoint (``best.pt``), or one of the study's finetuned files
    converted for ``task`` and the backbone ``family`` (``model_config`` None; ``receipt`` says what was loaded
    and what was dropped by rule)."""
    from ssl4gie.models.checkpoints import study

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
