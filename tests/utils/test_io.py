"""Atomic writes honour the umask: results, checkpoints, figures, exports and the decode cache are as readable as any
file the user writes (0644 under umask 022, 0664 under 002), never private (0600) whatever the umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ssl4gie.data.cache import load_or_build
from ssl4gie.ssl.export import write_export
from ssl4gie.utils.figures import save_figure, segmentation_panels
from ssl4gie.utils.io import atomic_path, save_dataframe_csv, save_torch, write_json, write_text


@pytest.fixture(params=[0o022, 0o002], ids=["umask022", "umask002"])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_atomic_writer_gives_the_umask_mode(tmp_path, umask):
    expected = 0o666 & ~umask  # what open(path, "w") gives
    image = np.zeros((8, 8, 3), np.uint8)
    mask = np.zeros((8, 8), bool)
    written = [
        write_json(tmp_path / "metrics.json", {"a": 1}),
        write_text(tmp_path / "table.md", "| a |\n"),
        save_torch(tmp_path / "last.pt", {"w": torch.zeros(2)}),
        save_dataframe_csv(tmp_path / "history.csv", pd.DataFrame({"epoch": [1]})),
        save_figure(segmentation_panels(image, mask, mask), tmp_path / "figures" / "0.png"),
        write_export({"model": {"w": torch.zeros(2)}}, tmp_path / "export" / "backbone.pth"),
    ]
    assert {p.name: oct(mode(p)) for p in written} == {p.name: oct(expected) for p in written}
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted(p.name for p in written)


def test_replacing_a_file_keeps_no_temporary_and_a_failed_write_leaves_the_old_file(tmp_path, umask):
    path = write_json(tmp_path / "metrics.json", {"v": 1})
    write_json(path, {"v": 2})
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == '{\n  "v": 2\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    assert mode(path) == 0o666 & ~umask


def test_the_decode_cache_gives_the_umask_mode(tmp_path, umask):
    fields = {"image": ((4, 4, 3), "uint8")}
    source = tmp_path / "a.png"
    source.write_bytes(b"x")
    decode = lambda i: {"image": np.full((4, 4, 3), i)}  # noqa: E731
    load_or_build(tmp_path / "cache", "demo", [source], {}, fields, 2, decode, workers=1, progress=False)
    (built,) = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert mode(built) == 0o777 & ~umask
    files = {p.name: mode(p) for p in built.iterdir()}
    assert files == {"image.npy": 0o666 & ~umask, "meta.json": 0o666 & ~umask}
