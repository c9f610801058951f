"""Pieces of the GPU benchmark (:mod:`ssl4gie.bench.gpu`): its synthetic data, peak FLOP/s per GPU, the FLOPs of
one training step, model FLOP utilisation, out-of-memory detection and loader images/s per worker.

Everything here goes through the engine's public interface (``trainer.loader``, ``trainer.train_epoch``,
``trainer.model`` / ``trainer.train_model``, ``trainer.micro_batch``), so what is measured is what a run does.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset
from torch.utils.flop_counter import FlopCounterMode

from ssl4gie.bench.finetune import BatchFeed
from ssl4gie.data import synthetic

log = logging.getLogger("ssl4gie.bench")

ANATOMICAL = [c for c, (_, cat) in synthetic.HYPERKVASIR_CLASSES.items() if cat == "anatomical-landmarks"]
TRAIN_VIDEOS = synthetic.C3VD_VIDEOS[4:]  # the first 4 are the test and validation videos

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


def is_oom(error: BaseException) -> bool:
    """Whether ``error`` means the GPU ran out of memory (PyTorch's allocator, cuBLAS or cuDNN)."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and (
        "out of memory" in text or "CUBLAS_STATUS_ALLOC_FAILED" in text or "CUDNN_STATUS_ALLOC_FAILED" in text
    )


def repeated(dataset: Dataset, length: int) -> Dataset:
    """``dataset`` cycled to ``length`` samples, so that a few distinct files feed a long benchmark epoch
    without restarting the loader (each restart pays worker start-up, which a real epoch pays once)."""
    return Subset(dataset, [i % len(dataset) for i in range(max(length, len(dataset)))])


def loader_rates(trainer, dataset: Dataset, workers: Sequence[int], batches: int) -> dict[int, float]:
    """Images/s of ``trainer.loader(dataset, train=True)`` with each worker count, over ``batches`` batches.

    Each count gets a fresh loader; its first ``w`` batches (one per worker: start-up and first decode) are not
    timed. The worker count is set on the trainer for the measurement and restored afterwards.
    """
    rates: dict[int, float] = {}
    saved = trainer.num_workers
    try:
        for w in workers:
            trainer.num_workers = w
            data = repeated(dataset, (batches + w + 1) * trainer.micro_batch)
            feed = BatchFeed(trainer.loader(data, train=True))
            for _ in feed.take(w):
                pass
            start = time.perf_counter()
            for _ in feed.take(batches):
                pass
            rates[w] = feed.images / (time.perf_counter() - start)
            feed.iterator = None  # ends the workers before the next count starts its own
    finally:
        trainer.num_workers = saved
    return rates


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def dataset_rates(
    datasets: dict[str, Dataset], workers: int, batch_size: int, batches: int, rounds: int
) -> dict[str, list[float]]:
    """Samples/s per worker of each dataset through a DataLoader (``workers`` workers, the engine's collate and
    worker seeding), per round: the datasets take turns ``rounds`` times, each turn a fresh loader whose first
    batch per worker (start-up) is not timed, so that a change in the machine's load hits every dataset alike.
    ``workers=0`` measures the main process (reported per worker as one)."""
    from torch.utils.data import DataLoader

    from ssl4gie.data.collate import collate
    from ssl4gie.utils.seed import seed_worker

    rates: dict[str, list[float]] = {name: [] for name in datasets}
    for _ in range(rounds):
        for name, dataset in datasets.items():
            data = repeated(dataset, (batches + max(workers, 1)) * batch_size)
            loader = DataLoader(
                data,
                batch_size=batch_size,
                num_workers=workers,
                collate_fn=collate,
                worker_init_fn=seed_worker,
            )
            feed = BatchFeed(loader)
            for _ in feed.take(max(workers, 1)):
                pass
            start = time.perf_counter()
            for _ in feed.take(batches):
                pass
            rates[name].append(feed.images / (time.perf_counter() - start) / max(workers, 1))
            feed.iterator = None  # ends the workers before the next turn
    return rates


def data_specs(tiny: bool) -> dict[str, tuple]:
    """Synthetic datasets per data folder: (writer, its keyword arguments).

    Few distinct files (about 48 training samples each), cycled by the benchmark. Kvasir-SEG-sized images (500–1350
    px) matter for detection, which decodes them at native size in every step; the others are decoded once into
    the 224² cache, so their source size only changes the one-time cache build (C3VD frames are written at half
    the real 1350×1080 to save time).
    """
    if tiny:
        return {
            "kvasir": (synthetic.write_kvasir_seg, {"n": 16, "size_range": (64, 112)}),
            "hyperkvasir": (synthetic.write_hyperkvasir, {"classes": dict.fromkeys(ANATOMICAL, 3)}),
            "c3vd": (synthetic.write_c3vd, {"videos": dict.fromkeys(TRAIN_VIDEOS[:2], 4), "size": (40, 32)}),
        }
    return {
        "kvasir": (synthetic.write_kvasir_seg, {"n": 60, "size_range": (500, 1350)}),
        "hyperkvasir": (
            synthetic.write_hyperkvasir,
            {"classes": dict.fromkeys(ANATOMICAL, 10), "size": (720, 576)},
        ),
        "c3vd": (synthetic.write_c3vd, {"videos": dict.fromkeys(TRAIN_VIDEOS[:4], 12), "size": (675, 540)}),
    }


def write_data(work: Path, names: set[str], tiny: bool) -> dict[str, Path]:
    """The folder of each synthetic dataset in ``names`` under ``work``, written (in parallel) where missing."""
    specs = data_specs(tiny)
    roots = {name: work / f"{name}{'-tiny' if tiny else ''}" for name in names}
    missing = [name for name, root in roots.items() if not root.exists()]
    if missing:
        log.info("writing synthetic data once: %s (under %s)", ", ".join(missing), work)
        work.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with ProcessPoolExecutor(max_workers=min(len(missing), os.cpu_count() or 1)) as pool:
            futures = [pool.submit(specs[n][0], roots[n], seed=0, **specs[n][1]) for n in missing]
            for future in futures:
                future.result()
        log.info("synthetic data written in %.1f s", time.perf_counter() - start)
    return roots
