"""What the benchmarks share: the real config composed and a run's trainer built from it, batches timed as they
arrive, loader and training rates, the machine described, and the command's frame (logging, threads, a user error as
one line, the result table on stdout).

Everything goes through the engine's public interface (``trainer.loader``, ``trainer.train_epoch``,
``trainer.model`` / ``trainer.train_model``, ``trainer.micro_batch``), so what is measured is what a run does.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch.utils.data import Dataset, Subset
from tqdm.auto import tqdm

from ssl4gie.errors import Ssl4gieError
from ssl4gie.utils.conf import compose, instantiate_checked

log = logging.getLogger("ssl4gie.bench")

__all__ = ["compose"]


def build_trainer(cfg: DictConfig, output_dir: Path, fingerprint: str) -> tuple:
    """``(task, reader, trainer)`` built as ``ssl4gie.run.pipeline`` builds a run: seeded, cuDNN autotuning as a run
    sets it, the task's model and the real Trainer (GPU-side augmentation told to the task)."""
    from ssl4gie.engine.trainer import Trainer
    from ssl4gie.utils.seed import seed_everything

    seed_everything(cfg.seed)
    torch.backends.cudnn.benchmark = not cfg.trainer.deterministic
    task = instantiate_checked(cfg.task, _recursive_=False)
    reader = instantiate_checked(cfg.dataset)
    model = task.build_model(cfg.backbone, cfg.pretraining, cfg.frozen, cfg.paths.weights_dir)
    trainer = Trainer(cfg.trainer, task, model, output_dir, cfg.seed, fingerprint, {})
    task.augment_on_device = trainer.augment_on_device
    return task, reader, trainer


class BatchFeed:
    """An iterable of ``n`` batches per pass, drawn from one long-lived iterator over ``source`` (restarted when
    it runs out), that times how long each batch takes to arrive and can keep the batches for a replay."""

    def __init__(self, source: Iterable, keep: bool = False) -> None:
        self.source, self.keep, self.iterator = source, keep, None
        self.n, self.wait_s, self.images, self.kept = 0, 0.0, 0, []

    def take(self, n: int) -> BatchFeed:
        self.n, self.wait_s, self.images = n, 0.0, 0
        return self

    def __len__(self) -> int:
        return self.n

    @staticmethod
    def count(batch: dict) -> int:
        """Images in ``batch`` (what the rates count): one per ``meta`` entry (a batch of encoded frames for the
        device has no ``image`` yet)."""
        return len(batch["meta"] if "meta" in batch else batch["image"])

    def __iter__(self) -> Iterator[dict]:
        for _ in range(self.n):
            tick = time.perf_counter()
            if self.iterator is None:
                self.iterator = iter(self.source)
            try:
                batch = next(self.iterator)
            except StopIteration:  # an epoch ended: start the next (a real run pays this too)
                self.iterator = iter(self.source)
                batch = next(self.iterator)
            self.wait_s += time.perf_counter() - tick
            self.images += self.count(batch)
            if self.keep:
                self.kept.append(batch)
            yield batch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def repeated(dataset: Dataset, length: int) -> Dataset:
    """``dataset`` cycled to ``length`` samples, so that a few distinct files feed a long benchmark epoch
    without restarting the loader (each restart pays worker start-up, which a real epoch pays once)."""
    return Subset(dataset, [i % len(dataset) for i in range(max(length, len(dataset)))])


def loader_throughputs(
    loaders: dict[str, Iterable], batches: int, warmup: int, rounds: int = 3, progress: bool = True
) -> dict[str, float]:
    """Images/s of each loader over ``batches`` timed batches.

    The loaders take turns, ``rounds`` times, each turn on a fresh iterator with ``warmup`` untimed batches first
    (worker start-up), so that a change in the machine's load during the benchmark hits every loader alike.
    """
    images, seconds = dict.fromkeys(loaders, 0), dict.fromkeys(loaders, 0.0)
    per_round = math.ceil(batches / rounds)
    bar = tqdm(total=batches * len(loaders), desc="loaders", leave=False, disable=None if progress else True)
    for done in range(0, batches, per_round):
        for name, loader in loaders.items():
            feed = BatchFeed(loader)
            for _ in feed.take(warmup):
                pass
            start = time.perf_counter()
            for _ in feed.take(min(per_round, batches - done)):
                bar.update()
            seconds[name] += time.perf_counter() - start
            images[name] += feed.images
            feed.iterator = None  # ends its workers before the next loader's turn
    bar.close()
    return {name: images[name] / seconds[name] for name in loaders}


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


def train_throughput(trainer, feed: BatchFeed, steps: int, warmup: int) -> tuple[float, float]:
    """(images/s, fraction of step time spent waiting for batches) of ``steps`` training steps after ``warmup``."""
    if warmup:
        trainer.train_epoch(feed.take(warmup), 1)
    sync(trainer.device)
    start = time.perf_counter()
    trainer.train_epoch(feed.take(steps), 1)
    sync(trainer.device)
    elapsed = time.perf_counter() - start
    return feed.images / elapsed, feed.wait_s / elapsed


def is_oom(error: BaseException) -> bool:
    """Whether ``error`` means the GPU ran out of memory (PyTorch's allocator, cuBLAS or cuDNN)."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and (
        "out of memory" in text or "CUBLAS_STATUS_ALLOC_FAILED" in text or "CUDNN_STATUS_ALLOC_FAILED" in text
    )


def machine_info(device: torch.device) -> dict:
    import timm
    import torchvision

    # not platform.processor(): it forks `uname`, a child process that would count in getrusage
    cpu_model = platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu_model = names[0] if names else cpu_model
    return {
        "cpu_count": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_model": cpu_model,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        # The benchmark shares the machine with whatever else runs: a load above the core count skews the numbers.
        "load_avg_start": round(os.getloadavg()[0], 2),
    }


def run_command(args: argparse.Namespace, run: Callable, format_table: Callable) -> dict:
    """What the benchmark commands share: logging, ``--threads``, ``run(args)`` (a user error exits with status
    2), then ``format_table(results)`` on stdout. Returns the results dict."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"
        )
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        results = run(args)
    except Ssl4gieError as e:
        log.error("%s", e)
        raise SystemExit(2) from None
    finally:
        torch.set_num_threads(threads)  # main() may run inside another program (the tests)
    sys.stdout.write(format_table(results) + "\n")  # the command's result table
    return results


def rounded(value: object) -> object:
    """``value`` for the JSON records: floats to 4 significant digits (a non-finite one as null), inside dicts and
    lists too."""
    if isinstance(value, float):
        return float(f"{value:.4g}") if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


def fmt(value: object, spec: str) -> str:
    """``value`` in a table cell: formatted with ``spec``, or n/a where it is unknown."""
    return "n/a" if value is None else format(value, spec)
