"""A dataset checked from its directory listings alone, before a sweep starts: its root in the layout its reader
expects (found as the reader finds it, :func:`ssl4gie.data.layouts.find_root`), its image count against the
published one, and for C3VD the videos of its split table. No image is opened, so the six datasets of the study
take well under a second; the readers still check everything else when each run starts.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ssl4gie.data import layouts
from ssl4gie.data.readers import IMAGE_SUFFIXES, is_hidden
from ssl4gie.errors import DatasetError

# The layout each reader expects (its class attribute ``layout_name``; a test checks that the two agree), by the
# class name of the dataset config's ``_target_``: this module must not import the readers (torch, torchvision).
READER_LAYOUTS = {
    "KvasirSeg": "kvasir_seg",
    "CVCClinicDB": "cvc_clinicdb",
    "PraNetFolders": "pranet_set",
    "KvasirDetection": "kvasir_det",
    "HyperKvasir": "hyperkvasir_labelled",
    "HyperKvasirUnlabelled": "hyperkvasir_unlabelled",
    "C3VD": "c3vd",
}
# Images (C3VD: frames of the 22 registered videos) of each public release, as its publisher counts them: the
# Kvasir-SEG, HyperKvasir and C3VD pages, CVC-ClinicDB's (polyp.grand-challenge.org/CVCClinicDB) and PraNet's README
# (its TrainDataset and TestDataset). Another count is a warning, not an error: a partial unzip is the usual cause.
PUBLISHED = {
    "kvasir_seg": 1000,
    "kvasir_det": 1000,
    "cvc_clinicdb": 612,
    "hyperkvasir_anatomical": 4104,
    "hyperkvasir_pathological": 2642,
    "hyperkvasir_unlabelled": 99417,
    "c3vd": 10015,
    "pranet_train": 1450,
    "pranet_kvasir": 100,
    "pranet_clinicdb": 62,
    "cvc_colondb": 380,
    "etis_laribpolypdb": 196,
    "cvc_300": 60,
}
C3VD_STUDY_TABLE = Path(layouts.__file__).with_name(
    "c3vd_splits.yaml"
)  # the split table ssl4gie.data.c3vd reads
BOX_FILES = ("kavsir_bboxes.json", "bounding-boxes.json")  # as ssl4gie.data.detection reads them


@dataclass(frozen=True)
class DataCheck:
    """What a dataset's listing showed: ``problem`` (None: a run can read it; ``missing``: its root does not
    exist, which ``skip_missing_data`` allows), ``count`` of images (None: not counted) and ``warnings``."""

    root: Path
    problem: str | None = None
    missing: bool = False
    count: int | None = None
    warnings: tuple[str, ...] = field(default=())


def _images(folder: Path) -> int:
    with os.scandir(folder) as entries:
        return sum(
            1
            for e in entries
            if not e.name.startswith(".") and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES
        )


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not is_hidden(p))


def _count_hyperkvasir(root: Path, node: dict) -> tuple[int | None, str | None]:
    category = str(node.get("category", ""))
    classes = [c for tract in _subdirs(root / "labeled-images") for c in _subdirs(tract / category)]
    if not classes:
        return None, f"{root / 'labeled-images'} has no <tract>/{category}/ class folders"
    # the study's glob: lower-case *.jpg
    return sum(
        sum(1 for p in c.iterdir() if p.name.endswith(".jpg") and not is_hidden(p)) for c in classes
    ), None


def _count_c3vd(root: Path, node: dict) -> tuple[int | None, str | None]:
    split = str(node.get("split", "study"))
    table_file = C3VD_STUDY_TABLE if split in ("study", "test", "all") else Path(split).expanduser()
    try:
        rows = (yaml.safe_load(table_file.read_text()) or {}).get("videos") or []
        table = [_Video(str(r["sequence"]).lower(), str(r["code"]).lower(), str(r["split"])) for r in rows]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None, None  # the reader reports a bad split table itself
    found = {}
    for folder in layouts.c3vd_video_folders(root):
        entry = layouts.identify_c3vd_video(folder, root, table)
        if entry is not None:
            found.setdefault(entry, folder)
    missing = [f"{e.code} ({e.split})" for e in table if e not in found]
    if missing:
        return None, (
            f"{len(missing)} of the {len(table)} videos of the split table are not under {root}: "
            f"{', '.join(missing[:6])}{', ...' if len(missing) > 6 else ''}"
        )
    frames = sum(sum(1 for p in f.iterdir() if p.name.endswith(layouts.COLOR_FRAME)) for f in found.values())
    return frames, None


@dataclass(frozen=True)
class _Video:
    sequence: str
    code: str
    split: str


def _count(layout: str, root: Path, node: dict) -> tuple[int | None, str | None]:
    """(images, problem) of a root that holds ``layout``."""
    if layout in ("kvasir_seg", "kvasir_det"):
        if layout == "kvasir_det" and not any((root / name).is_file() for name in BOX_FILES):
            return None, f"{root} has no box file ({' or '.join(BOX_FILES)})"
        return _images(root / "images"), None
    if layout == "cvc_clinicdb":
        return _images(root / "Original"), None
    if layout == "pranet_set":
        return _images(root / layouts.pair_dirs(root, str(node.get("name")))[0]), None
    if layout == "hyperkvasir_unlabelled":
        return _images(root / "unlabeled-images" / "images"), None
    if layout == "hyperkvasir_labelled":
        return _count_hyperkvasir(root, node)
    if layout == "c3vd":
        return _count_c3vd(root, node)
    return None, None


def check_dataset(node: dict[str, Any]) -> DataCheck:
    """Check the resolved dataset config ``node`` from listings (see the module docstring). A dataset the run
    writes itself (``synthetic``) needs nothing."""
    root = Path(str(node.get("root"))).expanduser()
    if node.get("synthetic"):
        return DataCheck(root)
    layout = READER_LAYOUTS.get(str(node.get("_target_", "")).rsplit(".", 1)[-1])
    quiet = logging.getLogger(layouts.__name__)
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # where the root really is gets logged by the run itself
    try:
        if layout is not None:
            root = layouts.find_root(root, layout, str(node.get("name")))
        if not root.exists():
            return DataCheck(root, f"{root} does not exist (option dataset.root)", missing=True)
        if layout is None:
            return DataCheck(root)
        spec = layouts.layout(layout)
        if not root.is_dir() or not spec.holds(root):
            return DataCheck(root, f"{root} does not hold {spec.describe} (option dataset.root)")
        count, problem = _count(layout, root, node)
    except (DatasetError, OSError) as e:
        return DataCheck(root, str(e))
    finally:
        quiet.setLevel(level)
    if problem:
        return DataCheck(root, problem, count=count)
    custom_table = layout == "c3vd" and str(node.get("split", "study")) not in ("study", "test", "all")
    published = None if custom_table else PUBLISHED.get(str(node.get("name")))
    warnings = ()
    if count is not None and published is not None and count != published:
        warnings = (
            f"dataset {node.get('name')}: {count} images in {root}, the published release has {published} "
            "(a partial unzip or another release?)",
        )
    return DataCheck(root, count=count, warnings=warnings)
