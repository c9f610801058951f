"""Unpacking: the folder that holds the layout is found however the archive nests it, and moved into place whole;
unsafe, wrong or broken archives are refused with one line and leave nothing in place."""

from __future__ import annotations

import zipfile

import pytest
from helpers.fetch_server import sha256, zip_folder

from ssl4gie.data.synthetic import write_cvc_clinicdb, write_kvasir_seg, write_pranet_set
from ssl4gie.fetch.errors import FetchError
from ssl4gie.fetch.unpack import extract, find_layout, place


def test_extract_hashes_every_file_and_skips_macos_forks(tmp_path):
    src = write_kvasir_seg(tmp_path / "src", n=3, size_range=(40, 48))
    archive = zip_folder(src, tmp_path / "kvasir-seg.zip", top="Kvasir-SEG", macos=True)
    hashes = extract(archive, tmp_path / "staging")
    files = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
    assert sorted(hashes) == [f"Kvasir-SEG/{f}" for f in files]
    assert all(hashes[f"Kvasir-SEG/{f}"] == sha256(src / f) for f in files)
    assert not (tmp_path / "staging" / "__MACOSX").exists()


def test_place_moves_the_layout_folder_however_deep(tmp_path):
    src = write_pranet_set(tmp_path / "src" / "CVC-300", n=2, size_range=(40, 48))
    archive = zip_folder(src.parent, tmp_path / "TestDataset.zip", top="TestDataset/TestDataset")
    hashes = extract(archive, tmp_path / "staging")
    target = tmp_path / "data" / "TestDataset"
    placed = place(tmp_path / "staging", "pranet_test", None, target, archive, hashes)
    assert sorted(placed) == sorted(
        p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()
    )
    assert (target / "CVC-300" / "images" / "1.png").is_file() and not (tmp_path / "staging").exists()


def test_kaggle_cvc_clinicdb_keeps_png_and_tif_together(tmp_path):
    src = tmp_path / "src"
    write_cvc_clinicdb(src / "PNG", n=2, ext="png", size=(40, 32))
    write_cvc_clinicdb(src / "TIF", n=2, ext="tif", size=(40, 32))
    archive = zip_folder(src, tmp_path / "cvcclinicdb.zip")
    extract(archive, tmp_path / "staging")
    assert find_layout(tmp_path / "staging", "cvc_clinicdb", archive) == tmp_path / "staging"


def test_a_swapped_or_wrong_archive_is_refused(tmp_path):
    """Some READMEs swap PraNet's test and train links: the train archive holds no test sets."""
    src = write_pranet_set(tmp_path / "src", n=2, size_range=(40, 48))
    archive = zip_folder(src, tmp_path / "TestDataset.zip", top="TrainDataset")
    extract(archive, tmp_path / "staging")
    with pytest.raises(FetchError, match=r"does not hold one or more of CVC-300.*swap"):
        find_layout(tmp_path / "staging", "pranet_test", archive)


def test_unsafe_and_broken_archives(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../outside.txt", b"x")
    with pytest.raises(FetchError, match=r"outside the folder"):
        extract(evil, tmp_path / "s1")
    assert not (tmp_path / "outside.txt").exists()
    page = tmp_path / "page.zip"
    page.write_text("<html>quota exceeded</html>")
    with pytest.raises(FetchError, match=r"neither a zip nor a tar archive"):
        extract(page, tmp_path / "s2")
    truncated = tmp_path / "cut.zip"
    good = zip_folder(write_kvasir_seg(tmp_path / "k", n=2, size_range=(40, 48)), tmp_path / "good.zip")
    truncated.write_bytes(good.read_bytes()[:-200])
    with pytest.raises(FetchError):
        extract(truncated, tmp_path / "s3")
