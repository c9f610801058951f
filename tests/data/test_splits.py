import json
from pathlib import Path

import pytest

from ssl4gie.data.splits import choose_split, identity_split, study_split
from ssl4gie.errors import DatasetError

# A copy of the study's exact index lists (shared/reference/ssl4gie_split_indices.json).
REFERENCE = Path(__file__).with_name("study_split_indices.json")


@pytest.mark.parametrize(
    "key,n",
    [
        ("Kvasir-SEG (N=1000)", 1000),
        ("CVC-ClinicDB (N=612)", 612),
        ("Hyperkvasir_anatomical (N=4104)", 4104),
        ("Hyperkvasir_pathological (N=2642)", 2642),
    ],
)
def test_study_split_matches_reference_indices(key, n):
    reference = json.loads(REFERENCE.read_text())[key]
    assert study_split(n) == reference  # same indices in the same order


def test_split_sizes_and_disjointness():
    splits = study_split(612)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [490, 61, 61]
    assert sorted(splits["train"] + splits["val"] + splits["test"]) == list(range(612))
    assert study_split(1000)["test"][:12] == [521, 737, 740, 660, 411, 678, 626, 513, 859, 136, 811, 76]


def test_choose_split_study_test_all_and_unknown():
    assert choose_split("study", 612) == choose_split("test", 612) == study_split(612)
    assert choose_split("all", 5) == {"train": [], "val": [], "test": [0, 1, 2, 3, 4]}
    with pytest.raises(DatasetError, match="dataset.split.*valid: study, test, all"):
        choose_split("val", 10)
    assert [identity_split(s) for s in ("study", "test", "all")] == ["study", "study", "all"]
