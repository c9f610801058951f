"""Device and precision choices from ``trainer.device`` / ``trainer.precision``."""

from __future__ import annotations

import os

import torch

from ssl4gie.errors import ConfigError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """auto -> cuda if available else cpu; an explicit cuda without a GPU is an error, not a silent CPU run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name} but no CUDA GPU is visible; use trainer.device=cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"trainer.device={name} is not a device; valid: auto, cpu, cuda, cuda:N") from e


def resolve_precision(name: str, device: torch.device) -> torch.dtype:
    """Autocast dtype: fp32 on CPU; on CUDA bf16 where supported, else fp16 (with a GradScaler)."""
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name not in DTYPES:
        raise ConfigError(f"trainer.precision={name} is not valid; valid: auto, {', '.join(DTYPES)}")
    if device.type == "cpu" and name == "fp16":
        raise ConfigError("trainer.precision=fp16 needs a CUDA device; use fp32 or bf16 on CPU")
    return DTYPES[name]


def resolve_workers(value: int | str) -> int:
    """``auto``: one worker per available core, at most 8 (the study's per-GPU count)."""
    if value == "auto":
        return min(8, len(os.sched_getaffinity(0)))
    return int(value)
