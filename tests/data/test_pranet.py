"""The PraNet-layout polyp sets: synthetic data in that layout loads, pairs by name, splits, and fails clearly."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import compose_config
from PIL import Image

from ssl4gie.data.segmentation import PraNetFolders, native_mask
from ssl4gie.data.splits import study_split
from ssl4gie.data.synthetic import write_pranet_set
from ssl4gie.errors import DatasetError
from ssl4gie.utils.conf import instantiate_checked

PRANET_SETS = {
    "cvc_colondb": "TestDataset/CVC-ColonDB",
    "etis_laribpolypdb": "TestDataset/ETIS-LaribPolypDB",
    "cvc_300": "TestDataset/CVC-300",
    "pranet_kvasir": "TestDataset/Kvasir",
    "pranet_clinicdb": "TestDataset/CVC-ClinicDB",
    "pranet_train": "TrainDataset",
}


@pytest.mark.parametrize("name", sorted(PRANET_SETS))
def test_each_set_writes_and_reads_its_default_root(tmp_path, name):
    cfg = compose_config(
        [
            f"dataset={name}",
            f"paths.data_dir={tmp_path}",
            "dataset.synthetic={n: 5, seed: 0, size_range: [40, 56]}",
        ]
    )
    assert cfg.dataset.task == "segmentation"
    reader = instantiate_checked(cfg.dataset)
    assert reader.root == tmp_path / PRANET_SETS[name]
    assert [it.name for it in reader.items] == ["1", "2", "3", "4", "5"]
    expected = "study" if name == "pranet_train" else "all"  # the test sets are evaluation sets
    assert cfg.dataset.split == expected
    if expected == "all":
        assert reader.splits()["test"] == list(range(5)) and reader.splits()["train"] == []


def test_pairs_by_name_not_position_and_binarises_rgb_masks(tmp_path):
    root = write_pranet_set(tmp_path / "set", n=12, seed=3, size_range=(40, 64), rgb_masks=True)
    reader = PraNetFolders(str(root), "set", "Some set", split="all")
    names = [it.name for it in reader.items]
    assert names == sorted(names) and "10" in names  # sorted by file name, as the study sorts
    for item in reader.items:
        assert item.image.name == item.mask.name and item.image.parent.name == "images"
        with Image.open(item.image) as image, Image.open(item.mask) as mask:
            assert image.size == mask.size and mask.mode == "RGB"
            written = np.asarray(mask)[..., 0] == 255
        native = native_mask(item).numpy()
        assert native.dtype == bool and 0 < native.sum() < native.size
        assert (native == written).all()  # greyscale, then > half intensity
    assert reader.splits() == {"train": [], "val": [], "test": list(range(12))}
    assert PraNetFolders(str(root), "set", "Some set", split="study").splits() == study_split(12)


def test_l_masks_are_exactly_binary(tmp_path):
    root = write_pranet_set(tmp_path / "set", n=3, seed=0, size_range=(40, 48))
    with Image.open(root / "masks" / "1.png") as mask:
        assert mask.mode == "L" and set(np.unique(np.asarray(mask))) <= {0, 255}


def test_missing_partner_is_an_error_naming_the_file(tmp_path):
    root = write_pranet_set(tmp_path / "set", n=4, seed=0, size_range=(40, 48))
    (root / "masks" / "3.png").unlink()
    with pytest.raises(DatasetError, match=r"images/3\.png has no mask"):
        PraNetFolders(str(root), "set", "Some set")
    (root / "images" / "4.png").unlink()
    (root / "images" / "3.png").unlink()
    with pytest.raises(DatasetError, match=r"masks/4\.png has no image"):
        PraNetFolders(str(root), "set", "Some set")


def test_missing_root_names_the_set_option_and_download(tmp_path):
    cfg = compose_config(["dataset=cvc_colondb", f"paths.data_dir={tmp_path}"])
    with pytest.raises(
        DatasetError, match="CVC-ColonDB.*TestDataset/CVC-ColonDB does not exist.*dataset.root.*PraNet"
    ):
        instantiate_checked(cfg.dataset)
