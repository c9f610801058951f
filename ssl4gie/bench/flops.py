"""FLOPs of the benchmarks: the GPUs' dense bf16 peaks, the FLOPs of one training step and model FLOP utilisation
(MFU)."""

from __future__ import annotations

import logging

import torch
from torch.utils.flop_counter import FlopCounterMode

log = logging.getLogger("ssl4gie.bench")


#: Dense bf16 tensor-core peaks in TFLOP/s (no sparsity), by a substring of ``torch.cuda.get_device_name``.
#: Checked in order, so the more specific names come first.
BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM
    ("H200", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
)


def peak_tflops(device: torch.device, override: float | None = None) -> tuple[float | None, str | None]:
    """(bf16 dense peak in TFLOP/s, where the number came from) for ``device``.

    ``override`` (``--peak-tflops``) wins on a GPU. On a CPU, or on a GPU missing from :data:`BF16_PEAK_TFLOPS`
    without an override, the peak is unknown: ``(None, None)``, and MFU is reported as n/a.
    """
    if device.type != "cuda":
        return None, None
    if override is not None:
        return float(override), "--peak-tflops"
    name = torch.cuda.get_device_name(device)
    for key, tflops in BF16_PEAK_TFLOPS:
        if key in name:
            return tflops, f"table: {key}"
    log.warning("no bf16 peak known for GPU %r: pass --peak-tflops to get MFU", name)
    return None, None


def mfu(flops_per_image: float | None, images_per_s: float | None, peak: float | None) -> float | None:
    """Model FLOP utilisation: model FLOPs per second / peak FLOP/s (``peak`` in TFLOP/s); None if unknown."""
    if flops_per_image is None or images_per_s is None or not peak:
        return None
    return flops_per_image * images_per_s / (peak * 1e12)


def step_flops(trainer, batch: dict) -> int:
    """FLOPs of one training micro-step on ``batch`` — forward and backward, counted by ``FlopCounterMode``.

    The step runs through ``trainer.train_epoch`` (same preparation, autocast and loss as training) on the bare
    model: a compiled wrapper hides its kernels from the counter. Only the operators FlopCounterMode knows (matmul,
    convolution, attention) count; the optimiser's element-wise update and detection's NMS/RoIAlign do not, as
    usual for MFU. Gradients are cleared afterwards, so the next step starts clean.
    """
    wrapped = trainer.train_model
    trainer.train_model = trainer.model
    try:
        with FlopCounterMode(display=False) as counter:
            trainer.train_epoch([batch], 0)
    finally:
        trainer.train_model = wrapped
    trainer.model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())
