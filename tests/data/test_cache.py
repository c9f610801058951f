"""The decode-once cache: rebuilt when an input or a setting changes, reused otherwise, safe under concurrent builds."""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ssl4gie.data import cache
from ssl4gie.data.segmentation import KvasirSeg, SegmentationDataset

FIELDS = {"x": ((4, 4), "uint8")}


def _files(folder: Path, n: int = 3) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        f = folder / f"{i}.bin"
        f.write_bytes(bytes([i]) * 10)
        files.append(f)
    return files


def _decode_from_files(files: list[Path], i: int) -> dict[str, np.ndarray]:
    """The first byte of file i, as a 4×4 array: the cached content follows the file's content."""
    return {"x": np.full((4, 4), files[i].read_bytes()[0], np.uint8)}


def _never(i: int) -> dict[str, np.ndarray]:
    raise AssertionError(f"decode({i}) called: the cache should have been reused")


def _build(cache_dir: Path, files: list[Path], decode, settings: dict | None = None) -> dict[str, np.ndarray]:
    return cache.load_or_build(
        cache_dir, "toy", files, settings or {"size": 4}, FIELDS, len(files), decode, progress=False
    )


def _entries(cache_dir: Path) -> list[Path]:
    """Cache folders (complete or temporary) in ``cache_dir``; lock files are not entries."""
    return sorted(p for p in cache_dir.iterdir() if p.is_dir())


def test_reused_when_nothing_changed(tmp_path):
    files = _files(tmp_path / "src")
    first = _build(tmp_path / "cache", files, functools.partial(_decode_from_files, files))
    again = _build(tmp_path / "cache", files, _never)
    assert [int(a[0, 0]) for a in again["x"]] == [0, 1, 2]
    np.testing.assert_array_equal(first["x"], again["x"])
    assert len(_entries(tmp_path / "cache")) == 1
    with pytest.raises(ValueError, match="read-only"):
        again["x"][0, 0, 0] = 9  # readers share the arrays: they must not be writable


@pytest.mark.parametrize("change", ["content", "mtime"])
def test_rebuilt_when_an_input_file_changes(tmp_path, change):
    files = _files(tmp_path / "src")
    decode = functools.partial(_decode_from_files, files)
    _build(tmp_path / "cache", files, decode)
    (old,) = _entries(tmp_path / "cache")
    st = os.stat(files[1])
    if change == "content":
        files[1].write_bytes(bytes([7]) * 12)
    # a later modification time (explicit: two writes within the clock's resolution can share one)
    os.utime(files[1], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    rebuilt = _build(tmp_path / "cache", files, decode)
    entries = _entries(tmp_path / "cache")
    assert len(entries) == 2 and old in entries, "a changed input must give a new cache folder"
    expected = [0, 7 if change == "content" else 1, 2]
    assert [int(a[0, 0]) for a in rebuilt["x"]] == expected
    assert (next(e for e in entries if e != old) / "meta.json").exists()


def test_rebuilt_when_a_setting_changes(tmp_path):
    files = _files(tmp_path / "src")
    decode = functools.partial(_decode_from_files, files)
    _build(tmp_path / "cache", files, decode, {"size": 4})
    _build(tmp_path / "cache", files, decode, {"size": 5})
    assert len(_entries(tmp_path / "cache")) == 2
    _build(tmp_path / "cache", files, _never, {"size": 5})  # and each is reused afterwards
    _build(tmp_path / "cache", files, _never, {"size": 4})


def test_segmentation_dataset_rebuilds_for_another_input_size(tmp_path, kvasir_tiny, monkeypatch):
    reader = KvasirSeg(str(kvasir_tiny), "kvasir_seg")
    n = len(reader.items)
    small = SegmentationDataset(reader, [0, 1], 32, train=False, cache_dir=str(tmp_path), progress=False)
    large = SegmentationDataset(reader, [0, 1], 48, train=False, cache_dir=str(tmp_path), progress=False)
    assert small.samples.arrays["image"].shape == (n, 32, 32, 3) and large.samples.arrays["mask"].shape == (
        n,
        48,
        48,
    )
    assert small[0]["image"].shape == (3, 32, 32) and large[1]["target"].shape == (1, 48, 48)
    assert len(_entries(tmp_path)) == 2

    def fail(*args, **kwargs):
        raise AssertionError("decode_pair called: the cache for this size exists")

    monkeypatch.setattr("ssl4gie.data.segmentation.decode_pair", fail)
    again = SegmentationDataset(reader, [2], 32, train=True, cache_dir=str(tmp_path), progress=False)
    np.testing.assert_array_equal(again.samples.arrays["image"], small.samples.arrays["image"])
    assert len(_entries(tmp_path)) == 2


def _slow_decode(log_dir: str, i: int) -> dict[str, np.ndarray]:
    time.sleep(0.1)
    Path(log_dir, f"decode-{os.getpid()}-{i}").touch()  # who decoded what
    return {"x": np.full((4, 4), 10 + i, np.uint8)}


def _build_in_process(cache_dir: str, files: list[Path], log_dir: str, barrier, out: str) -> None:
    barrier.wait()  # both processes ask for the cache at the same moment
    arrays = cache.load_or_build(
        cache_dir, "toy", files, {"size": 4}, FIELDS, len(files),
        functools.partial(_slow_decode, log_dir), workers=1, progress=False,
    )  # fmt: skip
    Path(out).write_text(json.dumps([int(a[0, 0]) for a in arrays["x"]]))


def test_two_processes_building_at_once_make_one_cache(tmp_path):
    files = _files(tmp_path / "src", n=4)
    cache_dir, log_dir = tmp_path / "cache", tmp_path / "log"
    log_dir.mkdir()
    # fork starts in milliseconds (spawn would re-import torch in each child); the children use no torch
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    barrier = ctx.Barrier(2)
    procs = [
        ctx.Process(
            target=_build_in_process,
            args=(str(cache_dir), files, str(log_dir), barrier, str(tmp_path / f"out{k}.json")),
        )
        for k in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    (entry,) = _entries(cache_dir)  # one folder, and no temporary folder left behind
    assert ".tmp" not in entry.name and (entry / "meta.json").exists()
    assert json.loads((entry / "meta.json").read_text())["n"] == 4
    for k in range(2):
        assert json.loads((tmp_path / f"out{k}.json").read_text()) == [10, 11, 12, 13]
    decoded = sorted(p.name.rsplit("-", 1)[1] for p in log_dir.iterdir())
    assert decoded == ["0", "1", "2", "3"], "each sample decoded once, by one process"


def _broken(i: int) -> dict[str, np.ndarray]:
    if i == 2:
        raise OSError("cannot read image 2.jpg")
    return {"x": np.zeros((4, 4), np.uint8)}


def test_a_decode_error_leaves_no_cache_folder(tmp_path):
    files = _files(tmp_path / "src", n=4)
    with pytest.raises(OSError, match="2.jpg"):
        _build(tmp_path / "cache", files, _broken)
    assert _entries(tmp_path / "cache") == []
    # and the next attempt builds normally
    arrays = _build(tmp_path / "cache", files, functools.partial(_decode_from_files, files))
    assert [int(a[0, 0]) for a in arrays["x"]] == [0, 1, 2, 3]


def test_without_cache_samples_are_decoded_on_access_and_equal_the_cached_ones(tmp_path, kvasir_tiny):
    reader = KvasirSeg(str(kvasir_tiny), "kvasir_seg")
    cached = SegmentationDataset(reader, [0, 3], 32, train=False, cache_dir=str(tmp_path), progress=False)
    direct = SegmentationDataset(reader, [0, 3], 32, train=False, cache_dir=None, progress=False)
    assert direct.samples.arrays is None
    for i in range(2):
        assert torch.equal(cached[i]["image"], direct[i]["image"])
        assert torch.equal(cached[i]["target"], direct[i]["target"])
