"""k-fold cross-validation (``dataset.folds=K dataset.fold=i``) for every reader kind and HyperKvasir's official
split (``dataset.split=official``), on synthetic data in the real layouts; the options' errors; the run folder."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest
from helpers import compose_config
from helpers.splits import KINDS, SplitDatasets, videos_of
from omegaconf import OmegaConf

from ssl4gie.data.hyperkvasir import OFFICIAL_SPLIT_FILE
from ssl4gie.data.splits import SPLITS, VAL_SHARE, assign_folds, kfold_split, split_facts, split_files
from ssl4gie.errors import ConfigError, DatasetError
from ssl4gie.run.identity import fingerprint


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> SplitDatasets:
    return SplitDatasets(tmp_path_factory.mktemp("fold-data"))


@pytest.mark.parametrize("kind", KINDS)
def test_test_folds_partition_the_dataset_and_splits_are_disjoint(data, kind):
    folds = 3
    n = len(data.reader(kind).items)
    tests = []
    for fold in range(folds):
        splits = data.reader(kind, folds=folds, fold=fold).splits()
        parts = [set(splits[s]) for s in SPLITS]
        assert sum(map(len, parts)) == n and set().union(*parts) == set(range(n))  # disjoint, complete
        assert splits["val"] and splits["train"] and splits["test"]
        tests.append(parts[2])
    assert sorted(i for t in tests for i in t) == list(range(n))  # every item is tested exactly once


@pytest.mark.parametrize("kind", ["kvasir_seg", "cvc_clinicdb", "hyperkvasir"])
def test_fold_and_validation_sizes(data, kind):
    n = len(data.reader(kind).items)
    sizes = [len(data.reader(kind, folds=4, fold=f).splits()["test"]) for f in range(4)]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == n
    val = len(data.reader(kind, folds=4, fold=0).splits()["val"])
    # about the study's validation size, round(0.1 N); stratified rounding may differ by a few images
    assert abs(val - round(VAL_SHARE * n)) <= (6 if kind == "hyperkvasir" else 1)


def test_classification_folds_are_stratified(data):
    reader = data.reader("hyperkvasir")
    per_class = Counter(reader.labels)
    by_fold = [
        Counter(reader.labels[i] for i in data.reader("hyperkvasir", folds=3, fold=f).splits()["test"])
        for f in range(3)
    ]
    for c, n in per_class.items():
        counts = [fold[c] for fold in by_fold]
        assert max(counts) - min(counts) <= 1 and sum(counts) == n  # each class spread evenly


def test_c3vd_folds_keep_videos_whole(data):
    reader = data.reader("c3vd", folds=5, fold=2)
    videos = videos_of(reader)
    owner: dict[str, str] = {}
    for s, indices in reader.splits().items():
        for i in indices:
            assert owner.setdefault(videos[i], s) == s  # a video's frames all lie in one split
    assert len(owner) == 22


def test_fold_assignment_is_seeded_and_shared_across_run_seeds(data):
    a = data.reader("kvasir_seg", folds=5, fold=1).splits()
    assert a == data.reader("kvasir_seg", folds=5, fold=1).splits()
    assert a["test"] != data.reader("kvasir_seg", folds=5, fold=1, fold_seed=7).splits()["test"]
    # fold_seed is fixed, not the run's seed: fold i is the same images for every seed and row
    assert {compose_config([f"seed={s}"]).dataset.fold_seed for s in (1, 2)} == {42}
    # the same folder read as segmentation and as detection data gives the same folds
    seg, det = (data.reader(k, folds=5, fold=3) for k in ("kvasir_seg", "kvasir_det"))
    assert split_files(seg) == split_files(det)


def test_fraction_inside_a_fold_touches_only_its_training_part(data):
    fold = data.reader("hyperkvasir", folds=3, fold=1).splits()
    tenth = data.reader("hyperkvasir", folds=3, fold=1, train_fraction=0.25).splits()
    assert tenth["val"] == fold["val"] and tenth["test"] == fold["test"]
    assert set(tenth["train"]) < set(fold["train"])
    facts = split_facts(data.reader("hyperkvasir", folds=3, fold=1, train_fraction=0.25))
    assert (facts["folds"], facts["fold"], facts["train_fraction"], facts["split"]) == (3, 1, 0.25, "study")


def test_kfold_reference_cases():
    # 7 items in 3 folds: sizes 3/2/2 in some seeded order; the test folds partition the items
    fold_of = assign_folds(list(range(7)), 3, seed=0)
    assert sorted(Counter(fold_of.values()).values()) == [2, 2, 3]
    # stratified: 6 of class 0 and 3 of class 1 over 3 folds: 2 + 1 in every fold
    labels = [0] * 6 + [1] * 3
    fold_of = assign_folds(list(range(9)), 3, 0, labels=labels)
    assert all(Counter(labels[i] for i in fold_of if fold_of[i] == f) == {0: 2, 1: 1} for f in range(3))
    splits = kfold_split(list(range(20)), 4, 0, seed=0)
    assert len(splits["test"]) == 5 and len(splits["val"]) == 2 and len(splits["train"]) == 13


@pytest.mark.parametrize(
    "options,message",
    [
        ({"folds": 5, "fold": 5}, r"dataset.fold=5 with dataset.folds=5.*0..4"),
        ({"folds": 1}, r"dataset.folds=1 must be an integer >= 2"),
        ({"folds": 2.5}, r"dataset.folds=2.5 must be an integer"),
        ({"fold": 1}, r"dataset.fold=1.*needs dataset.folds=K"),
        ({"fold": -1, "folds": 3}, r"dataset.fold=-1 must be an integer >= 0"),
        ({"folds": 3, "split": "all"}, r"dataset.split=all.*no training split"),
        ({"split": "official"}, r"dataset.split=official.*has no official split"),
        ({"folds": 50}, r"dataset.folds=50 needs at least 50 items"),
    ],
)
def test_bad_fold_options_are_config_errors(data, options, message):
    with pytest.raises(ConfigError, match=message):
        data.reader("kvasir_seg", **options).splits()


def test_more_folds_than_videos_is_an_error(data):
    with pytest.raises(ConfigError, match="dataset.folds=23 needs at least 23 videos, but the split has 22"):
        data.reader("c3vd", folds=23).splits()


# ------------------------------------------------------------------------------------------ official split
def official_rows(root: Path) -> dict[str, int]:
    """The official-format file, read independently of the reader: file name -> fold."""
    with (root / OFFICIAL_SPLIT_FILE).open(newline="") as f:
        return {row["file-name"]: int(row["split-index"]) for row in csv.DictReader(f, delimiter=";")}


def test_official_split_tests_on_the_files_fold(data):
    rows = official_rows(data.base / "hk")
    assert set(rows.values()) == {0, 1} and len(rows) > 74  # the file covers the other categories too
    tested = []
    for fold in (0, 1):
        reader = data.reader("hyperkvasir", split="official", fold=fold)
        splits = reader.splits()
        test_files = {reader.items[i].image.name for i in splits["test"]}
        assert test_files == {reader.items[i].image.name for i in range(len(reader.items))} & {
            name for name, f in rows.items() if f == fold
        }
        assert not set(splits["val"]) & set(splits["train"]) and splits["val"]
        tested += splits["test"]
        facts = split_facts(reader)
        assert (facts["split"], facts["fold"], facts["folds"]) == ("official", fold, 2)
    assert sorted(tested) == list(range(len(reader.items)))
    val_classes = Counter(reader.labels[i] for i in reader.splits()["val"])
    assert len(val_classes) >= 4  # validation drawn per class, not from one end of the list


def test_fraction_of_an_official_fold(data):
    fold = data.reader("hyperkvasir", split="official", fold=1).splits()
    half = data.reader("hyperkvasir", split="official", fold=1, train_fraction=0.5).splits()
    assert half["val"] == fold["val"] and half["test"] == fold["test"]
    assert set(half["train"]) < set(fold["train"])


def test_official_split_errors(data, tmp_path):
    with pytest.raises(ConfigError, match="dataset.fold=2: the official split file .* has 2 folds"):
        data.reader("hyperkvasir", split="official", fold=2).splits()
    with pytest.raises(ConfigError, match="dataset.folds=2 with dataset.split=official"):
        data.reader("hyperkvasir", split="official", folds=2)
    with pytest.raises(
        DatasetError, match="official split file .*missing.csv not found.*simula/hyper-kvasir"
    ):
        data.reader("hyperkvasir", split="official", official_split_file="missing.csv").splits()
    renamed = tmp_path / "renamed.csv"
    text = (data.base / "hk" / OFFICIAL_SPLIT_FILE).read_text()
    renamed.write_text(text.replace("file-name;class-name;split-index", "image,label,fold").replace(";", ","))
    with pytest.raises(
        DatasetError, match=r"expected \['file-name', 'split-index'\].*official_split_columns"
    ):
        data.reader("hyperkvasir", split="official", official_split_file=str(renamed)).splits()
    # the column names and the delimiter are options: the renamed file gives the same split
    custom = data.reader(
        "hyperkvasir",
        split="official",
        official_split_file=str(renamed),
        official_split_columns={"file": "image", "fold": "fold"},
        official_split_delimiter=",",
    )
    assert custom.splits() == data.reader("hyperkvasir", split="official").splits()
    partial = tmp_path / "partial.csv"
    partial.write_text("\n".join(text.splitlines()[:-30]) + "\n")
    with pytest.raises(DatasetError, match=r"image\(s\) of hyperkvasir_anatomical are not in the official"):
        data.reader("hyperkvasir", split="official", official_split_file=str(partial)).splits()


# -------------------------------------------------------------------------------------- identity and folder
@pytest.mark.parametrize(
    "overrides,tag",
    [
        ([], "kvasir_seg"),
        (["dataset.folds=5", "dataset.fold=2"], "kvasir_seg-fold2of5"),
        (["dataset.folds=5", "dataset.fold=2", "dataset.fold_seed=3"], "kvasir_seg-fold2of5s3"),
        (["dataset.folds=5", "dataset.train_fraction=0.25"], "kvasir_seg-fold0of5-f0.25"),
        (["column=hyperkvasir_anatomical", "dataset.split=official", "dataset.fold=1"],
         "hyperkvasir_anatomical-official-fold1"),
        (["column=hyperkvasir_anatomical", "dataset.split=official", "dataset.fold=3",
          "dataset.official_split_file=official_splits/5_fold_split.csv"],
         "hyperkvasir_anatomical-official-5_fold_split-fold3"),
        (["dataset.split=all"], "kvasir_seg-all"),
    ],
)  # fmt: skip
def test_folds_name_the_run_folder(overrides, tag):
    run_dir = OmegaConf.select(compose_config(overrides, hydra=True), "hydra.run.dir")
    assert Path(run_dir).parts[-3] == tag


def test_fold_is_part_of_the_identity(tmp_path):
    fp = [
        fingerprint(compose_config(o, tmp_path))
        for o in ([], ["dataset.folds=5"], ["dataset.folds=5", "dataset.fold=1"], ["dataset.folds=5"])
    ]
    assert fp[0] != fp[1] != fp[2] and fp[1] == fp[3]
