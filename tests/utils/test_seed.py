"""Each training item's random draws come from (the loader's base seed, the item's index): the same with any number
of workers and from any starting point, so a run resumed mid-epoch draws what an uninterrupted one draws."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ssl4gie.utils.seed import SeedPerItem, seed_everything, seed_worker


class Draws(Dataset):
    """Item i: one draw from each of torch's, NumPy's and Python's global generators (as augmentations use them)."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor(
            [i, torch.rand(()).item(), np.random.rand(), random.random()], dtype=torch.float64
        )


def draws(workers: int, indices: list[int], seed: int = 7) -> dict[int, list[float]]:
    loader = DataLoader(
        SeedPerItem(Draws()),
        batch_size=2,
        sampler=indices,
        num_workers=workers,
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(seed),
    )
    return {int(row[0]): row[1:].tolist() for batch in loader for row in batch}


def test_draws_depend_on_the_seed_and_the_index_only():
    order = [5, 3, 11, 0, 7, 2, 9, 1, 4, 10, 6, 8]
    one, two = draws(1, order), draws(2, order)
    assert one == two  # any worker count
    resumed = draws(2, order[6:])  # a resume after 3 steps: the sampler skips what was trained
    assert resumed == {i: one[i] for i in order[6:]}
    assert len({tuple(v) for v in one.values()}) == 12  # every item draws differently
    assert draws(2, order, seed=8) != one  # another epoch (another base seed): other draws


def test_without_workers_the_main_process_keeps_its_own_stream():
    seed_everything(0)
    first = draws(0, [0, 1])
    seed_everything(0)
    assert draws(0, [0, 1]) == first and first[0] != first[1]
