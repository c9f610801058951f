"""The study's 80/10/10 split (SPEC 2.3), reproduced without scikit-learn.

The study calls ``train_test_split(indices, test_size=round(0.1 N), random_state=42)`` twice: the first "test"
part is the test split, the second call's "test" part (over the remaining indices) is validation. scikit-learn's
shuffle split draws ``RandomState(42).permutation(n)`` and takes the first ``test_size`` items as test, so the same
lists (in the same order) come from two NumPy permutations.
"""

from __future__ import annotations

import numpy as np

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
