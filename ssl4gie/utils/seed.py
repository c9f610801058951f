"""Seeding every source of randomness, in every process and data-loader worker."""

from __future__ import annotations

import os
import random

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from ssl4gie.utils.signals import ignore_stop_signals


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and all CUDA devices) in this process."""
    os.environ["PYTHONHASHSEED"] = str(seed % 2**32)  # child processes refuse a larger value
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """``DataLoader(worker_init_fn=...)``: derive Python/NumPy seeds from the worker's torch seed, and leave the
    stop signals to the main process.

    torch seeds each worker with ``base_seed + worker_id``, where ``base_seed`` comes from the loader's generator;
    Python's and NumPy's generators are not covered by that, so random augmentations would repeat across workers.
    """
    worker_seed = torch.initial_seed() % 2**32
    random.seed(worker_seed)
    np.random.seed(worker_seed)
    # A signal to the whole process group (SLURM, `timeout`, Ctrl-C) is the main process's to act on: it saves at
    # the next step and ends the workers; a worker dying of it first would fail the run instead.
    ignore_stop_signals()


class SeedPerItem(Dataset):
    """``dataset`` whose item ``i``, read in a loader worker, draws its augmentation from a seed of (the loader's
    base seed, ``i``) instead of from the worker's running stream.

    A worker's stream depends on which items that worker read before, i.e. on the worker count and, after a
    mid-epoch resume, on where the epoch was resumed; a seed per item makes the draws of an epoch depend on the
    epoch's base seed alone (the trainer seeds the loader per epoch and rank), so a run resumed at any step draws
    what an uninterrupted one draws, with any number of workers (``num_workers=0`` keeps the main process's own
    stream, restored from ``last.pt``).
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        info = get_worker_info()
        if info is not None:
            base = info.seed - info.id  # torch seeds worker k with base_seed + k
            seed = int(np.random.SeedSequence([base % 2**64, int(index)]).generate_state(1, np.uint64)[0])
            random.seed(seed)
            np.random.seed(seed % 2**32)
            torch.manual_seed(seed)
        return self.dataset[index]


def rng_state() -> dict:
    """All generator states of this process, as tensors and plain types (loadable with ``weights_only=True``)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(state["python"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
