"""One source from start to end against a real server on 127.0.0.1 (and a stub at gdown's boundary for Google
Drive): download, verify the hash before unpacking, place, record; a second fetch downloads nothing; wrong hashes,
changed files, cut downloads, login sources, full disks."""

from __future__ import annotations

import dataclasses
import errno
import json
import shutil
from pathlib import Path

import gdown
import pytest
from gdown.download import GoogleDriveFileToDownload
from helpers.fetch_server import serve, sha256, zip_folder

from ssl4gie.data.synthetic import (
    write_c3vd,
    write_cvc_clinicdb,
    write_kvasir_seg,
    write_pranet_set,
)
from ssl4gie.fetch import Options, Paths, check, fetch, registry
from ssl4gie.fetch import download as download_module
from ssl4gie.fetch.errors import FetchError
from ssl4gie.fetch.verify import LOCK_NAME

KVASIR_PUBLISHED = "03b30e21d584e04facf49397a2576738fd626815771afbbf788f74a7153478f7"


@pytest.fixture
def paths(tmp_path) -> Paths:
    return Paths(tmp_path / "data", tmp_path / "weights")


@pytest.fixture
def mirror(tmp_path):
    """A mirror folder holding archives in their real layouts (not the real bytes)."""
    root = tmp_path / "mirror"
    zip_folder(write_kvasir_seg(tmp_path / "src" / "kvasir", n=4, size_range=(40, 56)), root / "kvasir-seg.zip",
               top="Kvasir-SEG")  # fmt: skip
    tests = tmp_path / "src" / "TestDataset"
    for name in ("CVC-300", "CVC-ColonDB", "ETIS-LaribPolypDB"):  # large enough (~0.4 MB) to be cut halfway
        write_pranet_set(tests / name, n=3, size_range=(160, 200))
    zip_folder(tests, root / "TestDataset.zip", top="TestDataset")
    return root


def lock(folder: Path) -> dict:
    return json.loads((folder / LOCK_NAME).read_text())


def nothing_a_run_reads(paths: Paths) -> bool:
    """Only the lock, downloads/ (partial files) and nothing else in the data folder."""
    present = {p.name for p in paths.data.iterdir()} if paths.data.exists() else set()
    return present <= {LOCK_NAME, f"{LOCK_NAME}.lock", "downloads", ".fetch-manifests"} and not any(
        p.name.endswith(".unpacking") for p in (paths.data / "downloads").glob("*")
    )


def test_the_registry_holds_kvasir_segs_published_hash_and_size():
    file = registry()["kvasir_seg"].files[0]
    assert (file.name, file.sha256, file.size) == ("kvasir-seg.zip", KVASIR_PUBLISHED, 46_227_172)
    assert file.url == "https://datasets.simula.no/downloads/kvasir-seg.zip"


def test_a_wrong_hash_is_refused_naming_both_and_nothing_is_placed(mirror, paths):
    source = registry()["kvasir_seg"]
    actual = sha256(mirror / "kvasir-seg.zip")
    with serve(mirror) as server, pytest.raises(FetchError) as err:
        fetch(source, paths, Options(mirror=server.url, progress=False))
    message = str(err.value)
    assert actual in message and KVASIR_PUBLISHED in message and "\n" not in message
    assert nothing_a_run_reads(paths) and not (paths.data / "downloads" / "kvasir-seg.zip").exists()
    assert check(source, paths).state == "missing"


def test_fetch_verify_unpack_then_a_second_fetch_downloads_nothing(mirror, paths):
    source = registry()["kvasir_seg"]
    pin = sha256(mirror / "kvasir-seg.zip")
    with serve(mirror) as server:
        outcome = fetch(
            source, paths, Options(mirror=server.url, pins={"kvasir-seg.zip": pin}, progress=False)
        )
        assert outcome.action == "fetched" and server.state.downloads("/kvasir-seg.zip") == 1
        again = fetch(source, paths, Options(mirror=server.url, pins={"kvasir-seg.zip": pin}, progress=False))
        assert again.action == "nothing" and server.state.downloads("/kvasir-seg.zip") == 1
    root = paths.data / "Kvasir-SEG"
    assert sorted(p.name for p in root.iterdir()) == ["images", "kavsir_bboxes.json", "masks"]
    assert not (paths.data / "downloads" / "kvasir-seg.zip").exists()  # the archive is not kept
    entry = lock(paths.data)["files"]["kvasir_seg/kvasir-seg.zip"]
    assert entry["sha256"] == pin and entry["trust"] == "pinned with --sha256"
    status = check(source, paths)
    assert status.state == "verified" and "9 file(s)" in status.detail


def test_data_placed_by_hand_is_present_and_left_alone(mirror, paths):
    write_kvasir_seg(paths.data / "Kvasir-SEG", n=2, size_range=(40, 48))
    source = registry()["kvasir_seg"]
    status = check(source, paths)
    assert status.state == "present" and status.ready and "not placed by ssl4gie.fetch" in status.detail
    with serve(mirror) as server:
        assert fetch(source, paths, Options(mirror=server.url, progress=False)).action == "kept"
        assert server.state.requests == []
    assert len(list((paths.data / "Kvasir-SEG" / "images").iterdir())) == 2


def test_check_reports_a_changed_added_or_missing_file(mirror, paths):
    source = registry()["kvasir_seg"]
    pin = {"kvasir-seg.zip": sha256(mirror / "kvasir-seg.zip")}
    with serve(mirror) as server:
        fetch(source, paths, Options(mirror=server.url, pins=pin, progress=False))
    mask = sorted((paths.data / "Kvasir-SEG" / "masks").iterdir())[0]
    mask.write_bytes(mask.read_bytes()[::-1])  # same size, other bytes
    status = check(source, paths)
    assert status.state == "changed" and f"1 changed (e.g. masks/{mask.name})" in status.detail
    with pytest.raises(FetchError, match=r"not as fetched"):
        fetch(source, paths, Options(mirror="http://127.0.0.1:9", progress=False))  # nothing is downloaded
    mask.unlink()
    (paths.data / "Kvasir-SEG" / "images" / "extra.jpg").write_bytes(b"x")
    detail = check(source, paths).detail
    assert "1 missing" in detail and "1 added (e.g. images/extra.jpg)" in detail
    (paths.data / "Kvasir-SEG" / "images" / ".DS_Store").write_bytes(b"x")  # hidden files are never data
    assert "added (e.g. images/extra.jpg)" in check(source, paths).detail


def test_a_download_cut_halfway_completes_on_the_next_fetch(mirror, paths):
    source = registry()["pranet_test"]
    with serve(mirror, cut={"/TestDataset.zip"}) as server:
        with pytest.raises(FetchError, match=r"stopped at .*run the same command again"):
            fetch(source, paths, Options(mirror=server.url, progress=False))
        assert nothing_a_run_reads(paths) and (paths.data / "downloads" / "TestDataset.zip.part").is_file()
        fetch(source, paths, Options(mirror=server.url, progress=False))
        ranges = [r for p, r in server.state.requests if p == "/TestDataset.zip"]
    assert ranges[0] is None and ranges[1].startswith("bytes=") and ranges[1] != "bytes=0-"
    assert (paths.data / "TestDataset" / "CVC-300" / "masks" / "3.png").is_file()
    assert lock(paths.data)["files"]["pranet_test/TestDataset.zip"]["trust"] == "first use"


def test_a_hash_recorded_on_first_use_is_checked_from_then_on(mirror, paths, tmp_path):
    source = registry()["pranet_test"]
    with serve(mirror) as server:
        fetch(source, paths, Options(mirror=server.url, progress=False))
        first = lock(paths.data)["files"]["pranet_test/TestDataset.zip"]["sha256"]
        shutil.rmtree(paths.data / "TestDataset")  # the data is lost; the archive on the server changed
        other = tmp_path / "other"
        write_pranet_set(other / "CVC-300", n=2, size_range=(40, 48))
        zip_folder(other, mirror / "TestDataset.zip", top="TestDataset")
        with pytest.raises(FetchError) as err:
            fetch(source, paths, Options(mirror=server.url, progress=False))
        assert first in str(err.value) and sha256(mirror / "TestDataset.zip") in str(err.value)
        assert "recorded on first use" in str(err.value) and "--sha256" in str(err.value)
        assert not (paths.data / "TestDataset").exists()
        new = sha256(mirror / "TestDataset.zip")
        fetch(source, paths, Options(mirror=server.url, pins={"TestDataset.zip": new}, progress=False))
    assert sorted(p.name for p in (paths.data / "TestDataset").iterdir()) == ["CVC-300"]
    assert lock(paths.data)["files"]["pranet_test/TestDataset.zip"]["sha256"] == new


def test_a_login_source_is_never_attempted_then_placed_from_the_users_file(paths, tmp_path, caplog):
    source = registry()["cvc_clinicdb"]
    outcome = fetch(source, paths, Options(progress=False))
    saved_as = paths.data / "downloads" / "cvcclinicdb.zip"
    assert outcome.action == "needs login"
    assert (
        source.page in outcome.detail
        and str(saved_as) in outcome.detail
        and "Kaggle account" in outcome.detail
    )
    kaggle = tmp_path / "kaggle"
    write_cvc_clinicdb(kaggle / "PNG", n=4, ext="png", size=(40, 32))
    write_cvc_clinicdb(kaggle / "TIF", n=4, ext="tif", size=(40, 32))
    zip_folder(kaggle, saved_as)
    outcome = fetch(source, paths, Options(progress=False))
    assert outcome.action == "fetched"
    root = paths.data / "CVC-ClinicDB"
    assert sorted(p.name for p in root.iterdir()) == ["PNG", "TIF"]
    assert check(source, paths).state == "verified"

    from ssl4gie.data.segmentation import CVCClinicDB

    assert CVCClinicDB(str(root), "cvc_clinicdb").root == root / "TIF"


def test_weights_from_a_mirror_and_a_torch_hub_hash_prefix(paths, tmp_path):
    served = tmp_path / "w"
    served.mkdir()
    (served / "r-50-100ep.pth.tar").write_bytes(b"moco v3 weights")
    (served / "resnet50-19c8e357.pth").write_bytes(b"not torchvision's file")
    with serve(served) as server:
        options = Options(mirror=server.url, progress=False)
        fetch(registry()["imagenet_mocov3:resnet50"], paths, options)
        assert (paths.weights / "r-50-100ep.pth.tar").read_bytes() == b"moco v3 weights"
        assert check(registry()["imagenet_mocov3:resnet50"], paths).state == "verified"
        with pytest.raises(FetchError, match=r"expected 19c8e357 \(published\)"):
            fetch(registry()["imagenet_supervised:resnet50"], paths, options)
    assert not (paths.weights / "resnet50-19c8e357.pth").exists()
    assert [p.suffix for p in (paths.weights / "downloads").iterdir()] == [".lock"] * 2  # no partial file


def test_a_gated_weights_file_placed_by_hand_is_recorded(paths):
    source = registry()["gastronet5m_dinov1:resnet50"]
    target = paths.weights / "gastronet5m_dinov1_resnet50.pth"
    outcome = fetch(source, paths, Options(progress=False))
    assert (
        outcome.action == "needs login" and str(target) in outcome.detail and "Hugging Face" in outcome.detail
    )
    assert check(source, paths).state == "missing"
    target.write_bytes(b"gated weights")
    assert check(source, paths).state == "present"
    assert fetch(source, paths, Options(progress=False)).action == "recorded"
    assert check(source, paths).state == "verified"
    target.write_bytes(b"other weights")
    assert check(source, paths).state == "changed"


def test_a_full_disk_is_one_line_and_places_nothing(mirror, paths, monkeypatch):
    real_open = open

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def full_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return Full(f) if "a" in mode or "w" in mode else f

    monkeypatch.setattr(download_module, "open", full_open, raising=False)
    with serve(mirror) as server, pytest.raises(FetchError, match=r"No space left on device \(disk full\?\)"):
        fetch(registry()["pranet_test"], paths, Options(mirror=server.url, progress=False))
    assert nothing_a_run_reads(paths)


# ------------------------------------------------------------------------------ Google Drive (gdown's boundary)


class FakeDrive:
    """gdown's two entry points as ssl4gie calls them: a folder listing without download, and a file download
    to a path. ``files`` maps Drive ids to (path in the folder, local file with the bytes)."""

    def __init__(self, files: dict[str, tuple[str, Path]]) -> None:
        self.files, self.calls = files, []

    def download_folder(self, id=None, output=None, quiet=False, skip_download=False, verify=True, **kw):
        self.calls.append(("folder", id, skip_download))
        assert skip_download, "ssl4gie lists folders, then downloads file by file"
        return [
            GoogleDriveFileToDownload(id=i, path=p, local_path=output + p) for i, (p, _) in self.files.items()
        ]

    def download(self, id=None, output=None, quiet=False, resume=False, verify=True, **kw):
        self.calls.append(("file", id, resume))
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.files[id][1], output)
        return output


@pytest.fixture
def drive(monkeypatch, tmp_path):
    def install(files: dict[str, tuple[str, Path]]) -> FakeDrive:
        fake = FakeDrive(files)
        monkeypatch.setattr(gdown, "download_folder", fake.download_folder)
        monkeypatch.setattr(gdown, "download", fake.download)
        return fake

    return install


def test_a_drive_file_archive(drive, paths, tmp_path):
    train = write_pranet_set(tmp_path / "src" / "TrainDataset", n=3, size_range=(40, 48))
    (train / "images").rename(train / "image")  # the singular names many copies have
    (train / "masks").rename(train / "mask")
    archive = zip_folder(train, tmp_path / "TrainDataset.zip", top="TrainDataset")
    source = registry()["pranet_train"]
    fake = drive({source.files[0].drive: ("TrainDataset.zip", archive)})
    fetch(source, paths, Options(progress=False))
    assert fake.calls == [("file", "1lODorfB33jbd-im-qrtUgWnZXxB94F55", True)]
    assert sorted(p.name for p in (paths.data / "TrainDataset").iterdir()) == ["image", "mask"]


def test_the_released_folder_is_listed_then_fetched_file_by_file(drive, paths, tmp_path):
    files = {}
    for i, path in enumerate(
        ["Classification/resnet50-random_init-frozen_False-dataset_C3VD.pth", "readme.txt"]
    ):
        local = tmp_path / f"f{i}"
        local.write_bytes(f"file {i}".encode())
        files[f"id{i}"] = (path, local)
    fake = drive(files)
    source = registry()["released"]
    outcome = fetch(source, paths, Options(progress=False))
    assert outcome.detail.startswith("2 of 2 file(s) saved")
    assert (paths.weights / "study" / files["id0"][0]).read_bytes() == b"file 0"
    assert check(source, paths).state == "verified"
    assert fake.calls == [("folder", "151BWqsjTV4PuGFxS20L0TpmUQ4DhhpU4", True), ("file", "id0", True),
                          ("file", "id1", True)]  # fmt: skip
    fake.calls.clear()
    assert fetch(source, paths, Options(progress=False)).action == "nothing"
    assert fake.calls == []  # every recorded file verified: not even listed


def test_a_study_row_takes_its_file_from_the_study_folder(drive, paths, tmp_path):
    names = ["mocov3_resnet50.pth", "mocov3_vit_b.pth", "barlowtwins_resnet50.pth", "mae_vit_b.pth"]
    files = {}
    for i, name in enumerate(names):
        (tmp_path / name).write_bytes(name.encode())
        files[f"id{i}"] = (name, tmp_path / name)
    drive(files)
    from ssl4gie.fetch.registry import resolve

    for row, name in [
        ("rn_hk_mc", names[0]),
        ("vt_hk_mc", names[1]),
        ("rn_hk_bt", names[2]),
        ("vt_hk_ma", names[3]),
    ]:
        (source,) = resolve(f"row={row}")
        fetch(source, paths, Options(progress=False))
        assert (paths.weights / source.into).read_bytes() == name.encode()
    ambiguous = dataclasses.replace(registry()["hyperkvasir_mocov3:resnet50"], match=("moco",), into="x.pth")
    with pytest.raises(
        FetchError, match=r"2 files of .* expected one; the folder holds: mocov3_resnet50.pth"
    ):
        fetch(ambiguous, paths, Options(progress=False))


# ------------------------------------------------------------------------------ Dataverse


def test_c3vd_from_a_dataverse_listing(paths, tmp_path):
    served = tmp_path / "dv"
    picked = registry()["c3vd"].files[:2]  # c1_cecum_t1_v1.zip, c1_cecum_t1_v3.zip
    for file, code in zip(picked, ("c1v1", "c1v3"), strict=True):
        stem = file.name.removesuffix(".zip")
        video = write_c3vd(tmp_path / "src" / stem, {f"x/{code}": 2}, size=(20, 16)) / "x" / code
        zip_folder(video, served / file.name, top=stem)
    listing = {"10.7281/T1/JC64MK": [{"id": 7, "path": picked[0].name}, {"id": 8, "path": picked[1].name}]}
    with serve(served, dataverse=listing) as server:
        source = dataclasses.replace(
            registry()["c3vd"], files=picked, dataverse=(server.url, "10.7281/T1/JC64MK")
        )
        fetch(source, paths, Options(progress=False))
        assert server.state.downloads("/api/access/datafile/7") == 1
    assert check(source, paths).state == "verified"

    from ssl4gie.data.c3vd import C3VD

    reader = C3VD(str(paths.data / "C3VD"))
    assert sorted(e.code for e in reader.videos) == ["c1v1", "c1v3"] and len(reader.items) == 4


def test_a_dataverse_md5_mismatch_is_refused(paths, tmp_path):
    served = tmp_path / "dv"
    served.mkdir()
    (served / "c1_cecum_t1_v1.zip").write_bytes(b"corrupted in transit")
    listing = {"10.7281/T1/JC64MK": [{"id": 7, "path": "c1_cecum_t1_v1.zip", "md5": "0" * 32}]}
    with serve(served, dataverse=listing) as server:
        source = dataclasses.replace(
            registry()["c3vd"],
            files=registry()["c3vd"].files[:1],
            dataverse=(server.url, "10.7281/T1/JC64MK"),
        )
        with pytest.raises(FetchError, match=r"md5 .* the Dataverse listing says 0{32}"):
            fetch(source, paths, Options(progress=False))
    assert nothing_a_run_reads(paths)
