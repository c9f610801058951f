"""The study's 80/10/10 split (SPEC 2.3), reproduced without scikit-learn.

The study calls ``train_test_split(indices, test_size=round(0.1 N), random_state=42)`` twice: the first "test"
part is the test split, the second call's "test" part (over the remaining indices) is validation. scikit-learn's
shuffle split draws ``RandomState(42).permutation(n)`` and takes the first ``test_size`` items as test, so the same
lists (in the same order) come from two NumPy permutations.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ssl4gie.errors import DatasetError

SPLITS = ("train", "val", "test")


def study_split(n: int, seed: int = 42, fraction: float = 0.1) -> dict[str, list[int]]:
    """Indices of the train/val/test splits of ``n`` sorted items, in the study's order.

    ``round`` is Python's (banker's) rounding, as in the study; e.g. n=1000 gives 800/100/100 and n=612 gives
    490/61/61.
    """
    if n < 3:
        raise ValueError(f"the 80/10/10 split needs at least 3 items, got {n}")
    t = max(1, round(fraction * n))
    first = np.random.RandomState(seed).permutation(n)
    test, rest = first[:t], first[t:]
    second = np.random.RandomState(seed).permutation(n - t)
    val, train = rest[second[:t]], rest[second[t:]]
    return {"train": train.tolist(), "val": val.tolist(), "test": test.tolist()}


#: ``dataset.split`` values every reader of a sorted image list understands (C3VD also takes a split-table path).
#: study: the study's split; test: the same lists (an eval that says it scores the test split); all: every item
#: in "test" and nothing in train/val, for evaluating a checkpoint on a whole (usually external) dataset.
SPLIT_CHOICES = ("study", "test", "all")


def choose_split(split: str, n: int, study: Callable[[int], dict[str, list[int]]] = study_split) -> dict:
    """Index lists into ``n`` sorted items for ``dataset.split=split``.

    ``study`` gives the study's split (for ``study`` and ``test``, which are the same lists); ``all`` puts every
    index, in order, in ``test`` and leaves ``train`` and ``val`` empty (training on it is refused by the config
    checks). Any other value is a DatasetError naming the option and the valid values.
    """
    if split == "all":
        return {"train": [], "val": [], "test": list(range(n))}
    if split in ("study", "test"):
        return study(n)
    raise DatasetError(f"unknown split '{split}' (option dataset.split); valid: {', '.join(SPLIT_CHOICES)}")


def identity_split(split: str) -> str:
    """The value of ``dataset.split`` that names what it computes: ``test`` is the study's split, so ``study``."""
    return "study" if split == "test" else split
