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


def resolve_switch(value: bool | str, option: str, device: torch.device) -> bool:
    """A GPU speed switch (``trainer.channels_last``, ``gpu_augment``, ``fused_optimizer``): ``auto`` = on CUDA
    only; ``true`` / ``false`` force it, so that the GPU code path can also run (and be tested) on a CPU."""
    if value == "auto":
        return device.type == "cuda"
    if isinstance(value, bool):
        return value
    raise ConfigError(f"trainer.{option}={value!r} is not valid; valid: auto, true, false")


def resolve_eval_precision(name: str, train_dtype: torch.dtype) -> torch.dtype:
    """Autocast dtype of validation, test, eval and predict: fp32 unless asked otherwise.

    The study evaluated in fp32; under a bf16 autocast torchvision's box decoding returns bf16 boxes (a 4–8 px grid
    at 1024–2048 px) and depth maps are quantised, which changes mAP@.75 and checkpoint selection.
    ``train`` reuses the training precision (faster, for a quick look).
    """
    if name == "fp32":
        return torch.float32
    if name == "train":
        return train_dtype
    raise ConfigError(f"trainer.eval_precision={name} is not valid; valid: fp32, train")


def resolve_accumulation(
    batch_size: int, accum_steps: int | str, micro_batch: int, world_size: int
) -> tuple[int, int]:
    """``(accum_steps, per-GPU micro-batch)`` for an effective batch of ``batch_size`` over ``world_size`` processes.

    ``accum_steps=auto`` takes the fewest accumulation steps whose micro-batch is at most ``micro_batch`` (the
    task's per-GPU ceiling, sized to fit a 40–80 GB GPU) and divides the per-process batch exactly; an explicit
    count is used as given.
    """
    if batch_size % world_size:
        raise ConfigError(
            f"trainer.batch_size={batch_size} must be divisible by the {world_size} processes (GPUs) of the run"
        )
    per_rank = batch_size // world_size
    if accum_steps == "auto":
        if int(micro_batch) < 1:
            raise ConfigError(f"trainer.micro_batch={micro_batch} must be at least 1")
        accum = next(a for a in range(-(-per_rank // int(micro_batch)), per_rank + 1) if per_rank % a == 0)
    else:
        accum = int(accum_steps)
        if accum < 1:
            raise ConfigError(f"trainer.accum_steps={accum_steps} must be at least 1 (or auto)")
        if per_rank % accum:
            raise ConfigError(
                f"trainer.batch_size={batch_size} must be divisible by trainer.accum_steps={accum} × "
                f"{world_size} processes"
            )
    return accum, per_rank // accum
