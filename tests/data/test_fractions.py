"""Label fractions (``dataset.train_fraction``) for every reader kind, on synthetic data in the real layouts:
subset sizes, nesting, stratification, whole videos, untouched val/test, the splits.json listing, bad options."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest
from helpers import compose_config
from helpers.splits import ANATOMICAL, KINDS, SplitDatasets, videos_of
from omegaconf import OmegaConf

from ssl4gie.data.detection import DetectionDataset
from ssl4gie.data.splits import SPLITS, identity_dataset, split_facts, split_files, train_subset
from ssl4gie.errors import ConfigError
from ssl4gie.run.identity import fingerprint
from ssl4gie.utils.conf import instantiate_checked

FRACTIONS = (0.01, 0.1, 0.25, 0.5, 1.0)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> SplitDatasets:
    return SplitDatasets(tmp_path_factory.mktemp("split-data"))


def half_up(x: float) -> int:
    return math.floor(x + 0.5)


@pytest.mark.parametrize("kind", KINDS)
def test_fractions_nest_and_leave_val_and_test_alone(data, kind):
    full = data.reader(kind).splits()
    subsets = {f: data.reader(kind, train_fraction=f, fraction_seed=7).splits() for f in FRACTIONS}
    assert subsets[1.0] == full  # 100 % is the study's split, list for list
    previous: set[int] = set()
    for f in FRACTIONS:
        splits = subsets[f]
        assert splits["val"] == full["val"] and splits["test"] == full["test"]
        train = set(splits["train"])
        assert train <= set(full["train"]) and previous <= train  # inside the split, and nested
        assert splits["train"] == [i for i in full["train"] if i in train]  # in the split's order
        previous = train
    assert len(subsets[0.01]["train"]) >= 1


@pytest.mark.parametrize("kind", ["kvasir_seg", "cvc_clinicdb", "kvasir_det"])
def test_image_datasets_take_the_rounded_share(data, kind):
    n = len(data.reader(kind).splits()["train"])
    for f in FRACTIONS:
        got = len(data.reader(kind, train_fraction=f).splits()["train"])
        assert got == max(1, half_up(f * n)), (f, n)


def test_classification_is_stratified_with_one_image_per_class_at_least(data):
    full = data.reader("hyperkvasir")
    per_class = Counter(full.labels[i] for i in full.splits()["train"])
    assert len(per_class) == len(ANATOMICAL)  # every class is in the study split's train part
    for f in FRACTIONS:
        reader = data.reader("hyperkvasir", train_fraction=f)
        got = Counter(reader.labels[i] for i in reader.splits()["train"])
        assert got == {c: min(n, max(1, half_up(f * n))) for c, n in per_class.items()}, f


def test_a_fraction_that_empties_a_class_is_refused_unless_a_minimum_keeps_it(data):
    # ileum has 4 images in all, 2-3 of them in the training split: 10 % of them rounds to none
    with pytest.raises(
        ConfigError, match=r"train_fraction=0.1 leaves class\(es\) ileum \(\d training images\)"
    ):
        data.reader("hyperkvasir", train_fraction=0.1, fraction_min_per_class=0).splits()
    reader = data.reader("hyperkvasir", train_fraction=0.1)  # the default minimum: one image per class
    assert {reader.class_names[reader.labels[i]] for i in reader.splits()["train"]} == set(ANATOMICAL)


def test_c3vd_takes_whole_videos_and_at_least_the_share_of_frames(data):
    full = data.reader("c3vd")
    videos = videos_of(full)
    train_frames = Counter(videos[i] for i in full.splits()["train"])
    previous: set[str] = set()
    for f in FRACTIONS:
        reader = data.reader("c3vd", train_fraction=f, fraction_seed=3)
        taken = Counter(videos[i] for i in reader.splits()["train"])
        assert all(taken[v] == train_frames[v] for v in taken)  # whole videos only
        assert sum(taken.values()) >= f * sum(train_frames.values())
        assert previous <= set(taken)
        previous = set(taken)
    # every video holds more than 1 % of the training frames: 1 % is exactly one whole video
    one = data.reader("c3vd", train_fraction=0.01).splits()["train"]
    assert len({videos[i] for i in one}) == 1


def test_seeds_decide_the_subset_and_rows_share_it(data):
    a = data.reader("kvasir_seg", train_fraction=0.25, fraction_seed=1).splits()["train"]
    assert a == data.reader("kvasir_seg", train_fraction=0.25, fraction_seed=1).splits()["train"]
    assert a != data.reader("kvasir_seg", train_fraction=0.25, fraction_seed=2).splits()["train"]
    # the default fraction seed is the run's: every row of one seed trains on the same images
    cells = [
        compose_config([f"row={row}", "column=kvasir_seg", "seed=43"]) for row in ("rn_in_mc", "vt_na_na")
    ]
    assert [c.dataset.fraction_seed for c in cells] == [43, 43]
    assert compose_config(["seed=44"]).dataset.fraction_seed == 44


def test_kvasir_det_and_kvasir_seg_share_the_subset(data):
    seg = data.reader("kvasir_seg", train_fraction=0.25, fraction_seed=5)
    det = data.reader("kvasir_det", train_fraction=0.25, fraction_seed=5)
    assert split_files(seg) == split_files(det)


def test_train_subset_reference_cases():
    # 10 items, no classes: 25 % is round_half_up(2.5) = 3 of them, inside the 50 % ones (5)
    quarter, half = (set(train_subset(list(range(10)), f, seed=0)) for f in (0.25, 0.5))
    assert len(quarter) == 3 and len(half) == 5 and quarter <= half
    # two groups of 9 and 1 items: any share takes whole groups; 1 % still takes one group
    groups = ["a"] * 9 + ["b"]
    for f in (0.01, 0.5, 1.0):
        subset = train_subset(list(range(10)), f, 0, groups=groups)
        chosen = {groups[i] for i in subset}
        assert subset == [i for i in range(10) if groups[i] in chosen] and chosen
    assert train_subset([4, 2, 9], 1.0, 0) == [4, 2, 9]


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.5, "ten", True])
def test_fraction_outside_zero_one_is_a_config_error(data, bad):
    with pytest.raises(ConfigError, match="dataset.train_fraction"):
        data.reader("kvasir_seg", train_fraction=bad)


def test_fraction_of_split_all_is_refused(data):
    with pytest.raises(ConfigError, match="dataset.split=all.*no training split"):
        data.reader("cvc_clinicdb", split="all", train_fraction=0.5)


def _dataset_items(kind, reader, tmp_path):
    """The items each split's torch Dataset holds, built as a run builds them."""
    if kind == "kvasir_det":  # the detection task's datasets need a built detector; the same class it uses
        return {
            s: DetectionDataset(reader, reader.splits()[s], train=False, canvas_size=None).items
            for s in SPLITS
        }
    task_name = {"hyperkvasir": "classification", "c3vd": "depth"}.get(kind, "segmentation")
    cfg = compose_config([f"task={task_name}", "task.input_size=32"], tmp_path)
    task = instantiate_checked(cfg.task, _recursive_=False)
    built = task.build_datasets(reader, list(SPLITS), None, False)
    return {s: built[s].items for s in SPLITS}


@pytest.mark.parametrize("kind", KINDS)
def test_split_files_list_the_files_the_datasets_use(data, kind, tmp_path):
    reader = data.reader(kind, train_fraction=0.25, fraction_seed=1)
    listing = split_files(reader)
    items = _dataset_items(kind, reader, tmp_path)
    for s in SPLITS:
        assert listing[s] == [Path(it.image).relative_to(reader.root).as_posix() for it in items[s]]
        assert all((Path(reader.root) / p).is_file() and not Path(p).is_absolute() for p in listing[s])
    assert json.loads(json.dumps(listing)) == listing  # ready for splits.json
    assert not set(listing["train"]) & (set(listing["val"]) | set(listing["test"]))
    facts = split_facts(reader)
    assert facts["train_fraction"] == 0.25 and facts["fraction_seed"] == 1 and facts["folds"] is None
    assert facts["n_train"] == len(listing["train"]) and facts["n_val"] == len(listing["val"])


def test_fraction_is_part_of_the_identity_and_the_run_folder(tmp_path):
    def cell(*extra):
        overrides = ["column=kvasir_seg", *extra]
        run_dir = OmegaConf.select(compose_config(overrides, hydra=True), "hydra.run.dir")
        return fingerprint(compose_config(overrides, tmp_path)), Path(run_dir).parts[-3]

    full, tenth, tenth_again, other_seed = (
        cell(),
        cell("dataset.train_fraction=0.1"),
        cell("dataset.train_fraction=0.1"),
        cell("dataset.train_fraction=0.1", "dataset.fraction_seed=7"),
    )
    assert full[1] == "kvasir_seg" and tenth[1] == "kvasir_seg-f0.1" and other_seed[1] == "kvasir_seg-f0.1s7"
    assert full[0] != tenth[0] == tenth_again[0] != other_seed[0]


def test_study_split_is_unchanged_by_the_new_options(data):
    # the default options reproduce the study's index lists (split_ids in its Data/dataloaders.py) for an image
    # dataset
    from ssl4gie.data.splits import study_split

    assert data.reader("kvasir_seg").splits() == study_split(40)
    assert data.reader("hyperkvasir").splits() == study_split(sum(ANATOMICAL.values()))


@pytest.mark.parametrize("dataset", ["kvasir_seg", "hyperkvasir_anatomical", "c3vd", "cvc_300"])
def test_identity_drops_the_split_options_only_where_they_do_not_act(dataset):
    def ident(*extra):
        cfg = compose_config([f"dataset={dataset}", *extra])
        return identity_dataset(OmegaConf.to_container(cfg.dataset, resolve=True))

    new_keys = {"train_fraction", "fraction_seed", "fraction_min_per_class", "folds", "fold", "fold_seed"}
    new_keys |= {"official_split_file", "official_split_columns", "official_split_delimiter"}
    plain = ident()
    assert not new_keys & set(plain)  # a study-split run keeps the fingerprint it had before these options
    assert ident("seed=7") == plain  # the fraction seed follows the run's seed but acts only below 1
    tenth = ident("dataset.train_fraction=0.1")
    assert tenth["train_fraction"] == 0.1 and "fraction_seed" in tenth and "folds" not in tenth
    folded = ident("dataset.folds=3", "dataset.fold=2")
    assert (folded["folds"], folded["fold"], folded["fold_seed"]) == (
        3,
        2,
        42,
    ) and "train_fraction" not in folded
