"""Every layout the public archives really unpack to, written here and read by its reader through the real config:
Kaggle's CVC-ClinicDB (PNG/ and TIF/), PraNet's singular image/ + mask/ and doubly nested TestDataset, C3VD's
releases (with and without `_under_review`, the Dataverse names, padded and unpadded frame names), HyperKvasir's
zips with their top folders, a root one level above its layout, and two candidates (an error naming both)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from helpers import compose_config

from ssl4gie.data import layouts
from ssl4gie.data.c3vd import C3VD
from ssl4gie.data.synthetic import (
    C3VD_VIDEOS,
    write_c3vd,
    write_cvc_clinicdb,
    write_hyperkvasir,
    write_hyperkvasir_unlabelled,
    write_kvasir_seg,
    write_pranet_set,
)
from ssl4gie.errors import DatasetError
from ssl4gie.utils.conf import instantiate_checked


def read(dataset: str, data_dir: Path, *extra: str):
    cfg = compose_config([f"dataset={dataset}", f"paths.data_dir={data_dir}", *extra])
    return instantiate_checked(cfg.dataset)


def test_kaggle_cvc_clinicdb_reads_tif_and_says_how_to_read_png(tmp_path, caplog):
    root = tmp_path / "CVC-ClinicDB"
    write_cvc_clinicdb(root / "PNG", n=6, ext="png", size=(40, 32))
    write_cvc_clinicdb(root / "TIF", n=6, ext="tif", size=(40, 32))
    with caplog.at_level(logging.INFO, logger="ssl4gie.data.layouts"):
        reader = read("cvc_clinicdb", tmp_path)
    assert reader.root == root / "TIF" and {it.image.suffix for it in reader.items} == {".tif"}
    assert f"reading {root / 'TIF'}" in caplog.text and f"dataset.root={root / 'PNG'}" in caplog.text
    png = read("cvc_clinicdb", tmp_path, f"dataset.root={root / 'PNG'}")
    assert [it.name for it in png.items] == [it.name for it in reader.items]
    assert {it.image.suffix for it in png.items} == {".png"}


def test_pranet_singular_image_and_mask_folders(tmp_path, caplog):
    root = write_pranet_set(tmp_path / "TrainDataset", n=5, size_range=(40, 48))
    (root / "images").rename(root / "image")
    (root / "masks").rename(root / "mask")
    with caplog.at_level(logging.INFO, logger="ssl4gie.data.layouts"):
        reader = read("pranet_train", tmp_path)
    assert len(reader.items) == 5 and all(it.image.parent.name == "image" for it in reader.items)
    assert all(it.mask.parent.name == "mask" and it.mask.name == it.image.name for it in reader.items)
    assert "image/ and mask/" in caplog.text


@pytest.mark.parametrize(
    "dataset,folder", [("cvc_300", "CVC-300"), ("etis_laribpolypdb", "ETIS-LaribPolypDB")]
)
def test_pranet_test_archive_unpacked_doubly_nested(tmp_path, caplog, dataset, folder):
    nested = write_pranet_set(tmp_path / "TestDataset" / "TestDataset" / folder, n=4, size_range=(40, 48))
    with caplog.at_level(logging.INFO, logger="ssl4gie.data.layouts"):
        reader = read(dataset, tmp_path)
    assert reader.root == nested and len(reader.items) == 4
    assert "doubly nested" in caplog.text


def test_a_root_one_level_above_the_layout_is_found_and_logged(tmp_path, caplog):
    """`unzip kvasir-seg.zip -d data/Kvasir-SEG` gives data/Kvasir-SEG/Kvasir-SEG/: both readers of it find it."""
    inner = write_kvasir_seg(tmp_path / "Kvasir-SEG" / "Kvasir-SEG", n=4, size_range=(40, 56))
    with caplog.at_level(logging.INFO, logger="ssl4gie.data.layouts"):
        seg = read("kvasir_seg", tmp_path)
        det = read("kvasir_det", tmp_path)
    assert seg.root == det.root == inner and len(seg.items) == len(det.items) == 4
    assert f"reading {inner}, the folder inside {tmp_path / 'Kvasir-SEG'}" in caplog.text


def test_two_candidates_are_an_error_naming_both_and_the_option(tmp_path):
    write_kvasir_seg(tmp_path / "Kvasir-SEG" / "copy-a", n=2, size_range=(40, 48))
    write_kvasir_seg(tmp_path / "Kvasir-SEG" / "copy-b", n=2, size_range=(40, 48))
    with pytest.raises(DatasetError) as err:
        read("kvasir_seg", tmp_path)
    message = str(err.value)
    assert "copy-a" in message and "copy-b" in message and "dataset.root=" in message
    assert "\n" not in message


def test_hyperkvasir_zips_with_their_top_folders(tmp_path, caplog):
    """Unzipped by a file manager into a folder named after each zip, under data/hyper-kvasir/."""
    root = tmp_path / "hyper-kvasir"
    classes = {c: 1 for c in ("cecum", "ileum", "retroflex-rectum", "pylorus", "retroflex-stomach", "z-line")}
    write_hyperkvasir(root / "hyper-kvasir-labeled-images", classes=classes)
    write_hyperkvasir_unlabelled(root / "hyper-kvasir-unlabeled-images", count=3)
    with caplog.at_level(logging.INFO, logger="ssl4gie.data.layouts"):
        labelled = read("hyperkvasir_anatomical", tmp_path, "dataset.study_size=null")
        unlabelled = read("hyperkvasir_unlabelled", tmp_path, "dataset.expected_count=null")
    assert labelled.root == root / "hyper-kvasir-labeled-images" and len(labelled.items) == 6
    assert unlabelled.root == root / "hyper-kvasir-unlabeled-images" and len(unlabelled) == 3
    assert caplog.text.count("the folder inside") == 2


def _c3vd_release(tmp_path: Path) -> Path:
    """One C3VD folder mixing every release's names: the study's `<seq>_under_review/<code>/`, the October 2023
    names without the suffix (`<seq>/`), the Dataverse names (`c1_cecum_t1_v1/`), unpadded frame names."""
    staging = write_c3vd(tmp_path / "staging", dict.fromkeys(C3VD_VIDEOS, 2), size=(20, 16))
    root = tmp_path / "C3VD"
    root.mkdir()
    for i, key in enumerate(C3VD_VIDEOS):
        seq, code = key.split("/")
        seq = seq.removesuffix("_under_review")
        if i % 3 == 0:
            shutil.move(staging / key, root / seq)  # current names, frames at depth 1
        elif i % 3 == 1:
            shutil.move(staging / key, root / layouts.c3vd_dataverse_name(seq, code))  # Dataverse names
        else:
            (root / f"{seq}_under_review").mkdir()
            shutil.move(staging / key, root / f"{seq}_under_review" / code)  # the study's release
    for frame in root.glob("c1_cecum_t1_v1/*_color.png"):  # frame names before May 2023: not zero-padded
        number = int(frame.name.split("_")[0])
        frame.rename(frame.with_name(f"{number}_color.png"))
        depth = frame.with_name(frame.name.replace("_color.png", "_depth.tiff"))
        depth.rename(depth.with_name(f"{number}_depth.tiff"))
    return root


def test_c3vd_every_release_naming_in_one_folder(tmp_path):
    root = _c3vd_release(tmp_path)
    reader = read("c3vd", tmp_path, "dataset.unknown_videos=error")
    assert len(reader.videos) == 22 and len(reader.items) == 44
    assert {f.video for f in reader.items if f.image.parent.name == "c1_cecum_t1_v1"} == {"c1v1"}
    assert [f.name for f in reader.items if f.video == "c1v1"] == ["c1v1_0000", "c1v1_0001"]
    assert reader.root == root
    splits = reader.splits()
    test_videos = list(dict.fromkeys(reader.items[i].video for i in splits["test"]))
    assert test_videos == ["t2v2", "c4v3"]


def test_c3vd_dataverse_names_identify_the_video_code():
    assert layouts.c3vd_dataverse_name("cecum_t1_a", "c1v1") == "c1_cecum_t1_v1"
    assert layouts.c3vd_video_keys("c1_cecum_t1_v1") == {"c1_cecum_t1_v1", "c1v1"}
    assert layouts.c3vd_video_keys("Trans_T2_B_under_review") == {"trans_t2_b"}


def test_c3vd_root_one_level_above(tmp_path, caplog):
    """A release folder inside C3VD/ (`C3VD/release/<sequence>_under_review/<code>/`): found, logged."""
    staging = write_c3vd(tmp_path / "staging", {"trans_t2_b_under_review/t2v2": 1}, size=(20, 16))
    (tmp_path / "C3VD").mkdir()
    shutil.move(staging, tmp_path / "C3VD" / "release")
    with caplog.at_level(logging.INFO, logger="ssl4gie.data.layouts"):
        reader = C3VD(str(tmp_path / "C3VD"))
    assert reader.root == tmp_path / "C3VD" / "release" and len(reader.items) == 1
    assert "the folder inside" in caplog.text


def test_a_missing_dataset_names_the_fetch_command(tmp_path):
    with pytest.raises(DatasetError, match=r"Fetch it with `python -m ssl4gie.fetch kvasir_seg`"):
        read("kvasir_det", tmp_path)
    with pytest.raises(DatasetError, match=r"python -m ssl4gie.fetch pranet_test"):
        read("cvc_300", tmp_path)
