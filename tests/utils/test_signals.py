"""Loader workers leave the stop signals to the main process: a signal to the whole process group (SLURM, `timeout`,
Ctrl-C) does not kill them, and the loader goes on."""

from __future__ import annotations

import os
import signal

import torch
from torch.utils.data import DataLoader, Dataset

from ssl4gie.utils.seed import seed_worker
from ssl4gie.utils.signals import STOP_SIGNALS, held


class Pids(Dataset):
    """Item i: (i, the pid of the process that read it)."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor([i, os.getpid()])


def test_loader_workers_ignore_every_stop_signal_and_the_loader_goes_on():
    loader = DataLoader(Pids(), batch_size=2, num_workers=2, worker_init_fn=seed_worker)
    with held():
        batches = iter(loader)
    first = next(batches)  # the workers have run their worker_init_fn
    workers = sorted({int(pid) for pid in first[:, 1]} | {int(pid) for pid in next(batches)[:, 1]})
    assert len(workers) == 2 and os.getpid() not in workers
    for signum in STOP_SIGNALS:
        for pid in workers:
            os.kill(pid, signum)
    rest = list(batches)
    assert [int(i) for b in rest for i in b[:, 0]] == [4, 5, 6, 7]  # both workers still serve
    assert {int(pid) for b in rest for pid in b[:, 1]} == set(workers)


def test_held_blocks_the_stop_signals_in_the_block_only():
    with held():
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    assert set(STOP_SIGNALS) <= blocked
    assert not set(STOP_SIGNALS) & signal.pthread_sigmask(signal.SIG_BLOCK, [])
