"""The training sampler: a fresh permutation per epoch from (seed, epoch), split across ranks, resumable mid-epoch."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler[int]):
    """Shuffles ``n`` indices with a generator seeded by ``(seed, epoch)``; rank ``r`` of ``w`` takes every w-th one.

    The order depends only on the seed and the epoch, so a resumed run sees the same batches as an uninterrupted one,
    and ``skip`` drops the first samples of this rank when resuming in the middle of an epoch. With ``drop_last`` the
    permutation is cut to a multiple of ``world_size · batch_size`` so every rank runs the same number of steps.
    """

    def __init__(
        self,
        n: int,
        seed: int,
        world_size: int = 1,
        rank: int = 0,
        batch_size: int = 1,
        drop_last: bool = True,
    ) -> None:
        self.n, self.seed, self.world_size, self.rank = n, seed, world_size, rank
        self.batch_size, self.drop_last = batch_size, drop_last
        self.epoch, self.skip = 1, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def _indices(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.n, generator=generator).tolist()
        chunk = self.world_size * self.batch_size
        if self.drop_last and len(order) >= chunk:
            order = order[: len(order) // chunk * chunk]
        else:  # pad by repeating so that ranks stay in step
            order += order[: (-len(order)) % self.world_size]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices()[self.skip :])

    def __len__(self) -> int:
        return max(len(self._indices()) - self.skip, 0)
