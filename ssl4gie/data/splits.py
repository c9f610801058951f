"""Which items of a dataset a run trains, validates and tests on.

Three layers, applied in this order by :meth:`SplitOptions.apply`:

1. **The base split** of ``dataset.split``: the study's seeded 80/10/10 split (``split_ids`` in its
   ``Data/dataloaders.py``; :func:`study_split`),
   ``all`` (every item in test), C3VD's split table, or HyperKvasir's official fold file (``official``).
2. **k-fold cross-validation** (``dataset.folds=K dataset.fold=i``): the items are dealt into K seeded folds
   (stratified by class for classification, whole videos for C3VD); fold ``i`` is the test split and a seeded
   validation split of the study's size, round(0.1 N), is drawn from the other folds (:func:`kfold_split`).
3. **A label fraction** (``dataset.train_fraction=F``): a seeded subset of the training split only
   (:func:`train_subset`), nested across fractions for one seed, stratified by class, whole videos for C3VD.

The study's split is reproduced without scikit-learn: it calls ``train_test_split(indices, test_size=round(0.1 N),
random_state=42)`` twice; the first "test" part is the test split, the second call's "test" part (over the
remaining indices) is validation. scikit-learn's shuffle split draws ``RandomState(42).permutation(n)`` and takes
the first ``test_size`` items as test, so the same lists (in the same order) come from two NumPy permutations.

Every draw here uses NumPy's legacy ``RandomState``, whose streams are frozen across NumPy versions (the
``Generator`` streams are not guaranteed to be), so a seed names the same subset on any installation.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ssl4gie.errors import ConfigError, DatasetError

SPLITS = ("train", "val", "test")
#: The seed of the fold assignment unless ``dataset.fold_seed`` says otherwise: fixed (not the run's seed), so
#: that fold i holds the same items for every training seed and row, and fold means compare like with like.
DEFAULT_FOLD_SEED = 42
#: The validation share of k-fold and official-split runs: the study's round(0.1 N) validation size.
VAL_SHARE = 0.1
# Independent streams for the three draws, so that e.g. the fraction subset does not change when the fold
# assignment's seed does (a seed is mixed with its purpose's salt: RandomState([salt, seed])).
_FRACTION_SALT, _FOLD_SALT, _VAL_SALT = 1, 2, 3


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


#: ``dataset.split`` values every reader of a sorted image list understands (C3VD also takes a split-table path,
#: HyperKvasir also ``official``). study: the study's split; test: the same lists (an eval that says it scores
#: the test split); all: every item in "test" and nothing in train/val, for evaluating a checkpoint on a whole
#: (usually external) dataset.
SPLIT_CHOICES = ("study", "test", "all")
OFFICIAL = "official"
#: ``dataset.official_split_file`` by default (relative to ``dataset.root``): HyperKvasir's official 2-fold split.
OFFICIAL_SPLIT_FILE = "official_splits/2_fold_split.csv"


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
    if split == OFFICIAL:
        raise DatasetError(
            "dataset.split=official: this dataset has no official split (HyperKvasir's labelled images have one: "
            f"dataset=hyperkvasir_anatomical or hyperkvasir_pathological); valid here: {', '.join(SPLIT_CHOICES)}"
        )
    raise DatasetError(f"unknown split '{split}' (option dataset.split); valid: {', '.join(SPLIT_CHOICES)}")


def identity_split(split: str) -> str:
    """The value of ``dataset.split`` that names what it computes: ``test`` is the study's split, so ``study``."""
    return "study" if split == "test" else split


# ------------------------------------------------------------------------------------------------ the draws
def _rng(salt: int, seed: int) -> np.random.RandomState:
    return np.random.RandomState([salt, seed])


def _round_half_up(x: float) -> int:
    # not Python's banker's round: a count must never shrink when the fraction grows (nesting), and half-up is
    # the rounding a reader expects from "10 % of 25 images = 3"
    return math.floor(x + 0.5)


def _groups_in_order(indices: Sequence[int], groups: Sequence[Hashable]) -> list[Hashable]:
    """The distinct groups of ``indices`` in order of first appearance."""
    return list(dict.fromkeys(groups[i] for i in indices))


def _take_groups(
    indices: Sequence[int], groups: Sequence[Hashable], share: float, rng: np.random.RandomState
) -> set[Hashable]:
    """Whole groups in a seeded order, the shortest prefix holding at least ``share`` of the items (>= 1 group).

    The ranking does not depend on ``share``, so a larger share takes a prefix that contains the smaller one.
    """
    names = _groups_in_order(indices, groups)
    sizes: dict[Hashable, int] = {}
    for i in indices:
        sizes[groups[i]] = sizes.get(groups[i], 0) + 1
    target = share * len(indices) - 1e-9  # 1e-9: a share of exactly k/n must not need one more group
    chosen: set[Hashable] = set()
    count = 0
    for g in (names[j] for j in rng.permutation(len(names))):
        if chosen and count >= target:
            break
        chosen.add(g)
        count += sizes[g]
    return chosen


def _draw(
    indices: Sequence[int],
    share: float,
    rng: np.random.RandomState,
    labels: Sequence[int] | None,
    groups: Sequence[Hashable] | None,
    min_per_class: int,
) -> list[int]:
    """A seeded ``share`` of ``indices``, in their order (see :func:`train_subset` for the rules)."""
    if groups is not None:
        chosen = _take_groups(indices, groups, share, rng)
        return [i for i in indices if groups[i] in chosen]
    ranked = [indices[j] for j in rng.permutation(len(indices))]
    if labels is None:
        keep = set(ranked[: min(len(ranked), max(1, _round_half_up(share * len(ranked))))])
    else:
        by_class: dict[int, list[int]] = {}
        for i in ranked:  # each class's members in the seeded order
            by_class.setdefault(labels[i], []).append(i)
        keep = set()
        for members in by_class.values():
            k = max(min_per_class, _round_half_up(share * len(members)))
            keep.update(members[: min(k, len(members))])
        if not keep and ranked:
            keep = {ranked[0]}
    return [i for i in indices if i in keep]


def train_subset(
    train: Sequence[int],
    fraction: float,
    seed: int,
    labels: Sequence[int] | None = None,
    groups: Sequence[Hashable] | None = None,
    min_per_class: int = 1,
    class_names: Sequence[str] | None = None,
) -> list[int]:
    """The items of the training split a run with ``dataset.train_fraction=fraction`` trains on, in train order.

    Contract: the result is a subset of ``train``; for one ``seed`` (and the same ``train``) the subset of a
    smaller fraction lies inside the subset of a larger one; ``fraction=1`` returns ``train`` unchanged.

    * ``labels`` (one per item of the dataset; classification): stratified: each class keeps
      ``max(min_per_class, round_half_up(fraction · n_c))`` of its ``n_c`` training items, the first ones in a
      seeded order of the split. Per-class counts only grow with the fraction, so the subsets nest (a
      largest-remainder apportionment to hit round(F N) exactly would not: it can take an item away from a
      class when the total grows). A class of the split left without items is a ConfigError.
    * ``groups`` (one per item; C3VD's video codes): whole groups in a seeded order, the shortest prefix that
      holds at least ``fraction`` of the training items (at least one group); so the share taken is >= F.
    * neither: ``max(1, round_half_up(fraction · n))`` items, the first in a seeded order.
    """
    fraction = check_fraction(fraction)
    if fraction == 1.0:
        return list(train)
    subset = _draw(train, fraction, _rng(_FRACTION_SALT, seed), labels, groups, min_per_class)
    if labels is not None:
        present = dict.fromkeys(labels[i] for i in train)
        kept = {labels[i] for i in subset}
        empty = [c for c in present if c not in kept]
        if empty:
            counts = {c: sum(1 for i in train if labels[i] == c) for c in empty}
            named = [f"{class_names[c] if class_names else c} ({counts[c]} training images)" for c in empty]
            need = max(0.5 / n for n in counts.values())  # the smallest fraction whose count rounds to 1
            raise ConfigError(
                f"dataset.train_fraction={fraction:g} leaves class(es) {', '.join(named)} without a training "
                f"image: use dataset.train_fraction >= {need:.3g} or dataset.fraction_min_per_class=1 (at "
                "least one image per class)"
            )
    return subset


def assign_folds(
    indices: Sequence[int],
    folds: int,
    seed: int,
    labels: Sequence[int] | None = None,
    groups: Sequence[Hashable] | None = None,
) -> dict[int, int]:
    """Item -> fold id in ``0..folds-1`` for a seeded k-fold partition of ``indices``.

    ``groups``: whole groups (C3VD videos) are dealt round-robin in a seeded order, so fold sizes in items vary
    with the groups' sizes. ``labels``: the items are ordered class by class (each class in a seeded order) and
    dealt round-robin, so every class is spread over the folds as evenly as its size allows (per-class counts
    differ by at most one between folds) and fold sizes differ by at most one. Neither: a seeded permutation
    dealt round-robin. Raises ConfigError if there are fewer items (groups) than folds.
    """
    rng = _rng(_FOLD_SALT, seed)
    if groups is not None:
        names = _groups_in_order(indices, groups)
        if len(names) < folds:
            raise ConfigError(
                f"dataset.folds={folds} needs at least {folds} videos, but the split has {len(names)}"
            )
        fold_of = {names[j]: k % folds for k, j in enumerate(rng.permutation(len(names)))}
        return {i: fold_of[groups[i]] for i in indices}
    if len(indices) < folds:
        raise ConfigError(
            f"dataset.folds={folds} needs at least {folds} items, but the split has {len(indices)}"
        )
    ranked = [indices[j] for j in rng.permutation(len(indices))]
    if labels is not None:
        ranked.sort(key=lambda i: labels[i])  # stable: each class keeps its seeded order
    return {i: k % folds for k, i in enumerate(ranked)}


def holdout_split(
    test: Sequence[int],
    pool: Sequence[int],
    n_total: int,
    seed: int,
    labels: Sequence[int] | None = None,
    groups: Sequence[Hashable] | None = None,
) -> dict[str, list[int]]:
    """``{"train", "val", "test"}`` for a given test split: validation is a seeded draw of about
    ``round_half_up(VAL_SHARE · n_total)`` items from ``pool`` (stratified by ``labels``, whole ``groups``), the
    rest of ``pool`` is train. All three keep the order of their input lists."""
    if groups is not None and len(_groups_in_order(pool, groups)) < 2:
        raise ConfigError(
            "the folds leave fewer than 2 videos outside the test fold: too few for a validation and a "
            "training video; use fewer dataset.folds"
        )
    if len(pool) < 2:
        raise ConfigError("the folds leave fewer than 2 items outside the test fold; use fewer dataset.folds")
    n_val = max(1, _round_half_up(VAL_SHARE * n_total))
    share = min(n_val / len(pool), 0.5)  # never more than half of what is left for training
    val = _draw(pool, share, _rng(_VAL_SALT, seed), labels, groups, min_per_class=0)
    taken = set(val)
    return {"train": [i for i in pool if i not in taken], "val": val, "test": list(test)}


def kfold_split(
    indices: Sequence[int],
    folds: int,
    fold: int,
    seed: int = DEFAULT_FOLD_SEED,
    labels: Sequence[int] | None = None,
    groups: Sequence[Hashable] | None = None,
) -> dict[str, list[int]]:
    """Fold ``fold`` of a seeded ``folds``-fold partition of ``indices`` (:func:`assign_folds`) as the test split;
    validation and train from the other folds (:func:`holdout_split`). The K test splits of one seed partition
    ``indices``; every list keeps the order of ``indices``."""
    fold_of = assign_folds(indices, folds, seed, labels, groups)
    test = [i for i in indices if fold_of[i] == fold]
    pool = [i for i in indices if fold_of[i] != fold]
    return holdout_split(test, pool, len(indices), seed, labels, groups)


# ---------------------------------------------------------------------------------------------- the options
def check_fraction(value: Any, option: str = "dataset.train_fraction") -> float:
    """``value`` as a float in (0, 1], else a ConfigError naming ``option``."""
    try:
        if isinstance(value, bool):
            raise TypeError
        fraction = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{option}={value!r} must be a number in (0, 1], e.g. 0.1 for 10 %") from None
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"{option}={value} must lie in (0, 1] (1 = the whole training split; 0.1 = 10 %)")
    return fraction


def _check_int(value: Any, option: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{option}={value!r} must be an integer >= {minimum}")
    return int(value)


@dataclass(frozen=True)
class SplitOptions:
    """The dataset options that choose a run's items, checked when the reader is built (before data is read).

    ``split``: ``dataset.split``; ``train_fraction``, ``fraction_seed``, ``fraction_min_per_class``: the label
    fraction (:func:`train_subset`); ``folds``, ``fold``, ``fold_seed``: k-fold cross-validation
    (:func:`kfold_split`), or with ``split=official`` the fold of the official file (``folds`` must then be
    unset: the file fixes it). ``official``: whether the reader has an official split; ``dataset``: its name,
    for messages.
    """

    split: str = "study"
    train_fraction: float = 1.0
    fraction_seed: int = 0
    fraction_min_per_class: int = 1
    folds: int | None = None
    fold: int = 0
    fold_seed: int = DEFAULT_FOLD_SEED
    official: bool = False
    dataset: str = ""

    def __post_init__(self) -> None:
        where = f" (dataset={self.dataset})" if self.dataset else ""
        object.__setattr__(self, "train_fraction", check_fraction(self.train_fraction))
        _check_int(self.fraction_seed, "dataset.fraction_seed", 0)
        _check_int(self.fraction_min_per_class, "dataset.fraction_min_per_class", 0)
        _check_int(self.fold_seed, "dataset.fold_seed", 0)
        _check_int(self.fold, "dataset.fold", 0)
        split = str(self.split)
        if split == OFFICIAL and not self.official:
            raise ConfigError(
                f"dataset.split=official{where}: this dataset has no official split; HyperKvasir's labelled "
                "images have one (dataset=hyperkvasir_anatomical or hyperkvasir_pathological)"
            )
        if split == "all" and (self.train_fraction < 1 or self.folds is not None):
            raise ConfigError(
                f"dataset.split=all{where} has no training split to take a fraction or folds of: use "
                "dataset.split=study with dataset.train_fraction / dataset.folds"
            )
        if self.folds is not None:
            folds = _check_int(self.folds, "dataset.folds", 2)
            if split == OFFICIAL:
                raise ConfigError(
                    f"dataset.folds={folds} with dataset.split=official{where}: the official file fixes the "
                    "folds; leave dataset.folds unset and choose one with dataset.fold"
                )
            if self.fold >= folds:
                raise ConfigError(
                    f"dataset.fold={self.fold} with dataset.folds={folds}{where}: folds are numbered 0..{folds - 1}"
                )
        elif self.fold != 0 and split != OFFICIAL:
            raise ConfigError(
                f"dataset.fold={self.fold}{where} needs dataset.folds=K (k-fold cross-validation) or "
                "dataset.split=official"
            )

    def apply(
        self,
        base: Callable[[], dict[str, list[int]]],
        labels: Sequence[int] | None = None,
        groups: Sequence[Hashable] | None = None,
        class_names: Sequence[str] | None = None,
    ) -> dict[str, list[int]]:
        """The run's index lists: ``base()`` (the reader's split of ``dataset.split``), re-partitioned into
        folds when ``folds`` is set (over every item of the base split's three lists, in index order), then the
        training list cut to ``train_fraction``. ``labels`` / ``groups`` as in :func:`train_subset`."""
        splits = base()
        if self.folds is not None:
            everything = sorted(i for s in SPLITS for i in splits[s])
            splits = kfold_split(everything, int(self.folds), self.fold, self.fold_seed, labels, groups)
        if self.train_fraction < 1:
            train = train_subset(
                splits["train"],
                self.train_fraction,
                self.fraction_seed,
                labels,
                groups,
                self.fraction_min_per_class,
                class_names,
            )
            splits = {**splits, "train": train}
        return splits

    def facts(self) -> dict[str, Any]:
        """What ``metrics.json`` records about the split: ``split`` (its identity name), ``train_fraction``,
        ``fraction_seed``, ``folds`` / ``fold`` / ``fold_seed`` (None without folds; an official split: its
        fold, ``folds`` from the reader)."""
        kfold = self.folds is not None
        official = self.split == OFFICIAL
        return {
            "split": identity_split(str(self.split)),
            "train_fraction": self.train_fraction,
            "fraction_seed": int(self.fraction_seed) if self.train_fraction < 1 else None,
            "folds": int(self.folds) if kfold else None,
            "fold": int(self.fold) if kfold or official else None,
            "fold_seed": int(self.fold_seed) if kfold or official else None,
        }


#: The dataset options of this module, each with the value that leaves the study's split as it was.
_FRACTION_KEYS = ("train_fraction", "fraction_seed", "fraction_min_per_class")
_FOLD_KEYS = ("folds", "fold", "fold_seed")
_OFFICIAL_KEYS = ("official_split_file", "official_split_columns", "official_split_delimiter")


def identity_dataset(dataset: dict[str, Any]) -> dict[str, Any]:
    """The resolved ``dataset`` config without the split options that do not change which items a run uses, for
    the run's fingerprint (a new dict; the input is not changed).

    A run with the whole training split (``train_fraction`` 1) and no folds has the fingerprint it had before
    these options existed: the fraction's seed and minimum, the fold options and the official file's location
    and format count only where they act (a fraction below 1; ``folds`` set or ``split=official``).
    """
    out = dict(dataset)
    fraction = out.get("train_fraction", 1.0)
    if isinstance(fraction, (int, float)) and not isinstance(fraction, bool) and float(fraction) == 1.0:
        for key in _FRACTION_KEYS:
            out.pop(key, None)
    official = out.get("split") == OFFICIAL
    if out.get("folds") is None and not official:
        for key in _FOLD_KEYS:
            out.pop(key, None)
    if not official:
        for key in _OFFICIAL_KEYS:
            out.pop(key, None)
    return out


# ---------------------------------------------------------------------------------------------- the listing
def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:  # a path reached through a link or another spelling of the root
        return Path(os.path.relpath(path, root)).as_posix()


def split_files(reader: Any) -> dict[str, list[str]]:
    """``{"train": [...], "val": [...], "test": [...]}``: the file of every item each split of ``reader`` uses
    (``reader.splits()``), as POSIX paths relative to ``reader.root`` (``dataset.root``), in split order.

    The file of an item is its image (segmentation and detection: the image, not the mask; C3VD: the colour
    frame). Ready for ``splits.json``; works for every reader with ``root``, ``items`` (with ``.image``) and
    ``splits()`` (a split the reader does not name is an empty list, e.g. val/test of pretraining frames).
    """
    indices = reader.splits()
    items = reader.items  # once: some readers build the list on access
    root = Path(reader.root)
    return {s: [_relative(Path(items[i].image), root) for i in indices.get(s, [])] for s in SPLITS}


def split_facts(reader: Any) -> dict[str, Any]:
    """The ``metrics.json`` facts of ``reader``'s split (:meth:`SplitOptions.facts`) plus ``n_train`` and
    ``n_val`` (the counts used; a fraction's actual share is ``n_train`` over the full training split)."""
    indices = reader.splits()  # first: an official split learns its number of folds when it reads the file
    options = getattr(reader, "split_options", None)
    # a reader without these options (pretraining frames): no fraction, no folds, no named split
    facts = options.facts() if options is not None else {**SplitOptions().facts(), "split": None}
    if facts["fold"] is not None and facts["folds"] is None:
        facts["folds"] = getattr(reader, "official_folds", None)
    return {**facts, "n_train": len(indices.get("train", [])), "n_val": len(indices.get("val", []))}
