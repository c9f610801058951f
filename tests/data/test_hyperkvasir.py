"""HyperKvasir reader and dataset: the study's class order and split, layout errors, samples, augmentation."""

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from ssl4gie.data.hyperkvasir import (
    ClassificationTrainTransform,
    HyperKvasir,
    HyperKvasirDataset,
    decode,
    study_order,
    write_synthetic,
)
from ssl4gie.data.transforms import normalize
from ssl4gie.errors import ConfigError, DatasetError

CONF = Path(__file__).resolve().parents[2] / "conf" / "dataset"
REFERENCE = json.loads(Path(__file__).with_name("study_split_indices.json").read_text())
DOWNLOAD = "https://datasets.simula.no/downloads/hyper-kvasir/hyper-kvasir-labeled-images.zip"

# Image counts of the HyperKvasir release and the per-split class composition the study's split gives them.
ANATOMICAL = {  # class: (tract, count, (train, val, test))
    "cecum": ("lower-gi-tract", 1009, (794, 109, 106)),
    "ileum": ("lower-gi-tract", 9, (6, 2, 1)),
    "retroflex-rectum": ("lower-gi-tract", 391, (308, 32, 51)),
    "pylorus": ("upper-gi-tract", 999, (816, 87, 96)),
    "retroflex-stomach": ("upper-gi-tract", 764, (610, 82, 72)),
    "z-line": ("upper-gi-tract", 932, (750, 98, 84)),
}
PATHOLOGICAL = {
    "hemorrhoids": ("lower-gi-tract", 6, (3, 3, 0)),
    "polyps": ("lower-gi-tract", 1028, (825, 100, 103)),
    "ulcerative-colitis-grade-0-1": ("lower-gi-tract", 35, (28, 4, 3)),
    "ulcerative-colitis-grade-1-2": ("lower-gi-tract", 11, (7, 2, 2)),
    "ulcerative-colitis-grade-1": ("lower-gi-tract", 201, (160, 17, 24)),
    "ulcerative-colitis-grade-2-3": ("lower-gi-tract", 28, (23, 2, 3)),
    "ulcerative-colitis-grade-2": ("lower-gi-tract", 443, (347, 53, 43)),
    "ulcerative-colitis-grade-3": ("lower-gi-tract", 133, (109, 13, 11)),
    "barretts-short-segment": ("upper-gi-tract", 53, (44, 5, 4)),
    "barretts": ("upper-gi-tract", 41, (32, 4, 5)),
    "esophagitis-a": ("upper-gi-tract", 403, (333, 33, 37)),
    "esophagitis-b-d": ("upper-gi-tract", 260, (203, 28, 29)),
}
CATEGORY = {
    "hyperkvasir_anatomical": "anatomical-landmarks",
    "hyperkvasir_pathological": "pathological-findings",
}


def dataset_yaml(name: str) -> dict:
    return yaml.safe_load((CONF / f"{name}.yaml").read_text())


def touch_tree(root: Path, category: str, classes: dict[str, tuple[str, int]], seed: int = 0) -> None:
    """Empty ``.jpg`` files with random UUID names (the reader lists files; only the Dataset decodes)."""
    rng = np.random.default_rng(seed)
    for name, (tract, count) in classes.items():
        folder = root / "labeled-images" / tract / category / name
        folder.mkdir(parents=True, exist_ok=True)
        for _ in range(count):
            (folder / f"{uuid.UUID(bytes=rng.bytes(16), version=4)}.jpg").touch()


def reader(root: Path, category: str = "anatomical-landmarks", **kwargs) -> HyperKvasir:
    return HyperKvasir(str(root), name="hk", category=category, download=DOWNLOAD, **kwargs)


def test_class_order_is_the_study_sort_of_paths_ending_with_slash(tmp_path):
    names = ["x-1", "x-1-2", "barretts", "barretts-short-segment"]
    assert sorted(names) != study_order(names)  # the rule matters for these names
    touch_tree(tmp_path, "pathological-findings", {n: ("upper-gi-tract", 2) for n in names})
    touch_tree(tmp_path, "pathological-findings", {"zz": ("lower-gi-tract", 1), "b": ("lower-gi-tract", 1)})
    hk = reader(tmp_path, "pathological-findings")
    # tracts in order (lower before upper), then classes by "<name>/"
    assert hk.class_names == ["b", "zz", "barretts-short-segment", "barretts", "x-1-2", "x-1"]
    assert [it.class_id for it in hk.items] == [0, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    for class_id, name in enumerate(hk.class_names):
        files = [it.image.name for it in hk.items if it.class_id == class_id]
        assert files == sorted(files) and all(
            it.class_name == name for it in hk.items if it.class_id == class_id
        )
        assert all(p.parent.name == name for p in (it.image for it in hk.items if it.class_id == class_id))


def test_only_visible_lower_case_jpg_files_are_collected(tmp_path, caplog):
    folder = tmp_path / "labeled-images" / "lower-gi-tract" / "anatomical-landmarks" / "cecum"
    folder.mkdir(parents=True)
    for name in ("b.jpg", "a.jpg", "c.JPG", "d.jpeg", "e.png", ".hidden.jpg"):
        (folder / name).touch()
    (folder / "sub.jpg").mkdir()  # a folder is not an image
    hk = reader(tmp_path)
    assert [it.name for it in hk.items] == ["a", "b"]
    assert "c.JPG" in caplog.text  # skipped files are reported


@pytest.mark.parametrize(
    "dataset,counts", [("hyperkvasir_anatomical", ANATOMICAL), ("hyperkvasir_pathological", PATHOLOGICAL)]
)
def test_release_sized_tree_gives_the_studys_split_and_class_composition(tmp_path, dataset, counts):
    cfg = dataset_yaml(dataset)
    touch_tree(tmp_path, cfg["category"], {c: (tract, n) for c, (tract, n, _) in counts.items()})
    hk = reader(tmp_path, cfg["category"], classes=cfg["classes"], study_size=cfg["study_size"])
    assert hk.class_names == list(counts) == cfg["classes"]
    assert len(hk.items) == cfg["study_size"]
    splits = hk.splits()
    assert splits == REFERENCE[f"{dataset.replace('hyperkvasir', 'Hyperkvasir')} (N={cfg['study_size']})"]
    labels = np.array(hk.labels)
    for s, split in enumerate(("train", "val", "test")):
        found = np.bincount(labels[splits[split]], minlength=len(counts)).tolist()
        assert found == [comp[s] for _, _, comp in counts.values()], split


def test_synthetic_tree_serves_both_datasets(tmp_path):
    root = tmp_path / "hk"
    for dataset in CATEGORY:
        cfg = dataset_yaml(dataset)
        hk = HyperKvasir(
            str(root),
            dataset,
            cfg["category"],
            synthetic={"per_class": 3, "seed": 1, "size": [40, 32]},
            classes=cfg["classes"],
            study_size=cfg["study_size"],
        )
        assert hk.class_names == cfg["classes"] and len(hk.items) == 3 * len(cfg["classes"])
        assert Image.open(hk.items[0].image).size == (40, 32)
    assert (
        root / "labeled-images" / "lower-gi-tract" / "quality-of-mucosal-views"
    ).is_dir()  # ignored categories too


def test_missing_root_names_it_and_the_download(tmp_path):
    with pytest.raises(DatasetError, match=r"does not exist.*dataset\.root") as err:
        reader(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(err.value) and DOWNLOAD in str(err.value)


def test_root_without_labeled_images_folder(tmp_path):
    (tmp_path / "unlabeled-images").mkdir()
    with pytest.raises(DatasetError, match="no 'labeled-images/' folder"):
        reader(tmp_path)


def test_missing_category_folder(tmp_path):
    touch_tree(tmp_path, "anatomical-landmarks", {"cecum": ("lower-gi-tract", 2)})
    with pytest.raises(
        DatasetError, match=r"no 'pathological-findings/' folder in any tract folder of .*labeled-images"
    ):
        reader(tmp_path, "pathological-findings")


def test_empty_class_folder_is_an_error_naming_it(tmp_path):
    touch_tree(tmp_path, "anatomical-landmarks", {"cecum": ("lower-gi-tract", 2)})
    empty = tmp_path / "labeled-images" / "lower-gi-tract" / "anatomical-landmarks" / "ileum"
    empty.mkdir()
    (empty / "only-upper-case.JPG").touch()  # the study's glob would not collect it either
    with pytest.raises(DatasetError, match="has no .jpg images") as err:
        reader(tmp_path)
    assert str(empty) in str(err.value)


def test_class_list_mismatch_names_missing_and_unexpected_folders(tmp_path):
    touch_tree(
        tmp_path, "anatomical-landmarks", {"cecum": ("lower-gi-tract", 1), "colon": ("lower-gi-tract", 1)}
    )
    with pytest.raises(DatasetError, match=r"missing \['ileum'\], unexpected \['colon'\]"):
        reader(tmp_path, classes=["cecum", "ileum"])
    with pytest.raises(DatasetError, match="study's order"):
        reader(tmp_path, classes=["colon", "cecum"])
    assert reader(tmp_path, classes=["cecum", "colon"]).class_names == ["cecum", "colon"]


def test_bad_category_and_split_options(tmp_path):
    with pytest.raises(ConfigError, match="dataset.category=colon"):
        reader(tmp_path, "colon")
    touch_tree(tmp_path, "anatomical-landmarks", {"cecum": ("lower-gi-tract", 3)})
    with pytest.raises(DatasetError, match="unknown split 'kfold'"):
        reader(tmp_path, split="kfold").splits()


def test_release_size_mismatch_warns(tmp_path, caplog):
    touch_tree(tmp_path, "anatomical-landmarks", {"cecum": ("lower-gi-tract", 3)})
    reader(tmp_path, study_size=4104)
    assert "found 3 images" in caplog.text and "4104" in caplog.text


@pytest.fixture
def small_tree(tmp_path) -> HyperKvasir:
    root = write_synthetic(tmp_path / "hk", classes={"cecum": 4, "ileum": 3, "pylorus": 3}, size=(50, 40))
    return reader(root)


@pytest.mark.parametrize("cached", [False, True])
def test_eval_samples_are_the_resized_normalised_image(small_tree, tmp_path, cached):
    indices = [5, 0, 9]
    cache_dir = str(tmp_path / "cache") if cached else None
    data = HyperKvasirDataset(small_tree, indices, 32, train=False, cache_dir=cache_dir, progress=False)
    assert len(data) == 3
    sample = data[0]
    item = small_tree.items[5]
    assert sample["image"].shape == (3, 32, 32) and sample["image"].dtype == torch.float32
    assert (
        sample["target"].dtype == torch.int64
        and sample["target"].shape == ()
        and int(sample["target"]) == item.class_id
    )
    assert sample["meta"] == {
        "name": item.name,
        "index": 5,
        "image_path": str(item.image),
        "class_name": item.class_name,
    }
    expected = normalize(torch.from_numpy(decode(item.image, 32).copy()).permute(2, 0, 1))
    torch.testing.assert_close(sample["image"], expected)
    # bicubic, aspect ratio ignored: the same as PIL's resize of the 50x40 file to 32x32
    pil = np.asarray(Image.open(item.image).convert("RGB").resize((32, 32), Image.Resampling.BICUBIC))
    assert np.array_equal(decode(item.image, 32), pil)


def test_train_samples_are_augmented(small_tree):
    data = HyperKvasirDataset(small_tree, [0, 1], 32, train=True, cache_dir=None, progress=False)
    torch.manual_seed(0)
    a, b = data[0]["image"], data[0]["image"]
    assert a.shape == b.shape == (3, 32, 32) and not torch.equal(a, b)


def test_rotation_fills_black_before_normalisation():
    torch.manual_seed(0)
    white = torch.full((3, 33, 33), 255, dtype=torch.uint8)
    black = normalize(torch.zeros(3, 1, 1, dtype=torch.uint8))[:, 0, 0]
    transform = ClassificationTrainTransform()
    for _ in range(10):
        out = transform(white)
        # a corner stays inside the rotated square only for angles within a pixel of a multiple of 90°
        assert torch.allclose(out[:, 0, 0], black)
        assert (out[:, 16, 16] > 0).all()  # the centre keeps the (jittered) white image
