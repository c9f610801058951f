"""Every reader skips hidden files (macOS "._*" resource forks of a zip made on a Mac), with one log line."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from ssl4gie.data.c3vd import C3VD
from ssl4gie.data.detection import KvasirDetection
from ssl4gie.data.hyperkvasir import HyperKvasir, write_synthetic
from ssl4gie.data.segmentation import CVCClinicDB, KvasirSeg
from ssl4gie.data.synthetic import C3VD_VIDEOS, write_c3vd, write_cvc_clinicdb, write_kvasir_seg

APPLEDOUBLE = (
    b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        "  # the header of a resource fork, not an image
)

# reader kind: (write the dataset at a root, read it, the folders whose files the reader lists)
KINDS: dict[str, tuple[Callable, Callable, Callable]] = {
    "kvasir_seg": (
        lambda root: write_kvasir_seg(root, n=4, seed=0, size_range=(32, 40)),
        lambda root: KvasirSeg(str(root), "kvasir_seg"),
        lambda root: [root / "images", root / "masks"],
    ),
    "cvc_clinicdb": (
        lambda root: write_cvc_clinicdb(root, n=4, seed=0, size=(32, 32)),
        lambda root: CVCClinicDB(str(root), "cvc_clinicdb"),
        lambda root: [root / "Original", root / "Ground Truth"],
    ),
    "kvasir_boxes": (
        lambda root: write_kvasir_seg(root, n=4, seed=0, size_range=(32, 40)),
        lambda root: KvasirDetection(str(root), "kvasir_det"),
        lambda root: [root / "images"],
    ),
    "hyperkvasir": (
        lambda root: write_synthetic(root, per_class=1, size=(32, 32)),
        lambda root: HyperKvasir(str(root), "hk", "anatomical-landmarks"),
        lambda root: sorted((root / "labeled-images").glob("*/anatomical-landmarks/*"))[:2],
    ),
    "c3vd": (
        lambda root: write_c3vd(root, dict.fromkeys(C3VD_VIDEOS, 1), seed=0, size=(20, 16)),
        lambda root: C3VD(str(root)),
        lambda root: [root / key for key in C3VD_VIDEOS[:2]],
    ),
}


def _snapshot(reader) -> tuple:
    # repr: detection items hold box arrays, which == does not compare as a whole
    return [repr(item) for item in reader.items], reader.splits(), getattr(reader, "class_names", None)


@pytest.mark.parametrize("kind", list(KINDS))
def test_appledouble_files_are_skipped_and_logged_once(kind, tmp_path, caplog):
    write, read, folders = KINDS[kind]
    root = write(tmp_path / kind)
    clean = _snapshot(read(root))
    junk = []
    for folder in folders(root):
        # A resource fork beside each of two data files, named after it ("._<name>.jpg" for "<name>.jpg").
        for path in sorted(p for p in folder.iterdir() if p.is_file())[:2]:
            junk.append(folder / f"._{path.name}")
            junk[-1].write_bytes(APPLEDOUBLE)
        (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
        (folder.parent / f"._{folder.name}").write_bytes(APPLEDOUBLE)  # the folder's own fork, beside it
    n_hidden = len(junk) + len(folders(root))

    with caplog.at_level(logging.INFO, logger="ssl4gie.data"):
        assert _snapshot(read(root)) == clean
    lines = [r.getMessage() for r in caplog.records if "hidden file" in r.getMessage()]
    assert len(lines) == 1 and f"skipped {n_hidden} hidden file(s)" in lines[0], lines
