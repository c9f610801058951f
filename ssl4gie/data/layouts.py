"""The on-disk layouts of the public datasets as their archives really unpack, and finding a reader's root in them.

A reader is given ``dataset.root``; users point it at whatever folder the archive made. This module recognises
each layout by the folders it must hold (data, not code: :data:`LAYOUTS`) and moves the root to where the layout
really is, logging every move:

* the root itself has the layout: it is used as is;
* the root is one level above it (an archive's top folder, e.g. ``hyper-kvasir-labeled-images/labeled-images``):
  the one sub-folder that has it is used; two such sub-folders are an error naming both and the option that
  chooses, unless the layout ranks them (Kaggle's CVC-ClinicDB holds ``PNG/`` and ``TIF/``: TIF is read, and the
  log says how to read PNG instead);
* the root does not exist but the archive unpacked doubly nested (``TestDataset/TestDataset/CVC-300`` where
  ``TestDataset/CVC-300`` is expected): the nested folder is used.

Anything else is left to the reader, whose own error names the layout it expected. ``ssl4gie.fetch`` uses the same
layouts to find the folder it moves into place after unpacking an archive.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssl4gie.errors import DatasetError

log = logging.getLogger(__name__)

COLOR_FRAME = "_color.png"  # a C3VD colour frame: NNNN_color.png (zero-padded since May 2023) or N_color.png
EARLY_RELEASE_SUFFIX = "_under_review"  # C3VD's folder names until October 2023


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _has_dirs(*names: str) -> Callable[[Path], bool]:
    return lambda folder: all((folder / n).is_dir() for n in names)


def _any_of(*tests: Callable[[Path], bool]) -> Callable[[Path], bool]:
    return lambda folder: any(t(folder) for t in tests)


def _holds_c3vd_frames(folder: Path) -> bool:
    return any(p.name.endswith(COLOR_FRAME) and not p.name.startswith(".") for p in folder.iterdir())


def _holds_c3vd_videos(folder: Path) -> bool:
    """Video folders (with colour frames) at depth 1 or 2, as the C3VD reader looks for them."""
    for sub in _visible_dirs(folder):
        if _holds_c3vd_frames(sub) or any(_holds_c3vd_frames(q) for q in _visible_dirs(sub)):
            return True
    return False


_PRANET_SETS = ("CVC-300", "CVC-ClinicDB", "CVC-ColonDB", "ETIS-LaribPolypDB", "Kvasir")
#: A PraNet set's image and mask folders: plural as PraNet's own scripts read them, singular as many copies have.
PRANET_PAIRS = (("images", "masks"), ("image", "mask"))
_pranet_set = _any_of(*(_has_dirs(*pair) for pair in PRANET_PAIRS))


@dataclass(frozen=True)
class Layout:
    """A layout: ``holds(folder)`` says whether ``folder`` is its root; ``prefer`` ranks sub-folder names when
    more than one sub-folder holds it (the first present is taken, and the log names the others)."""

    name: str
    describe: str
    holds: Callable[[Path], bool]
    prefer: tuple[str, ...] = ()


LAYOUTS = {
    layout.name: layout
    for layout in (
        Layout("kvasir_seg", "images/ and masks/", _has_dirs("images", "masks")),
        Layout("kvasir_det", "images/ and kavsir_bboxes.json", _has_dirs("images")),
        # Kaggle's copy (balraj98/cvcclinicdb) holds PNG/ and TIF/, each with Original/ and Ground Truth/; the
        # original release is TIF, so TIF is read when both are there.
        Layout(
            "cvc_clinicdb",
            "Original/ and Ground Truth/",
            _has_dirs("Original", "Ground Truth"),
            ("TIF", "PNG"),
        ),
        Layout("pranet_set", "images/ and masks/ (or image/ and mask/)", _pranet_set),
        Layout(
            "pranet_test",
            f"one or more of {', '.join(_PRANET_SETS)}, each with images/ and masks/",
            lambda f: any(_pranet_set(f / s) for s in _PRANET_SETS if (f / s).is_dir()),
        ),
        Layout("hyperkvasir_labelled", "labeled-images/", _has_dirs("labeled-images")),
        Layout("hyperkvasir_unlabelled", "unlabeled-images/images/", _has_dirs("unlabeled-images/images")),
        Layout("c3vd", "video folders with NNNN_color.png frames at depth 1 or 2", _holds_c3vd_videos),
        Layout("c3vd_video", "NNNN_color.png + NNNN_depth.tiff frames", _holds_c3vd_frames),
    )
}


def layout(name: str) -> Layout:
    try:
        return LAYOUTS[name]
    except KeyError:
        raise ValueError(f"unknown layout {name!r}; known: {', '.join(LAYOUTS)}") from None


def find_root(root: str | Path, name: str, title: str, option: str = "dataset.root") -> Path:
    """Where layout ``name`` really is, starting from ``root`` (see the module docstring); ``root`` unchanged when
    the layout is found nowhere near it, so that the caller's own checks report what is wrong.

    Raises :class:`DatasetError` when two sub-folders of ``root`` both hold the layout and the layout does not rank
    them: the message names both and ``option``, which chooses.
    """
    root = Path(root).expanduser()
    spec = layout(name)
    if not root.exists():
        nested = root.parent / root.parent.name / root.name
        if nested.is_dir() and spec.holds(nested):
            log.info(
                "%s: %s does not exist; reading %s (the archive unpacked doubly nested)", title, root, nested
            )
            return nested
        return root
    if not root.is_dir() or spec.holds(root):
        return root
    found = [sub for sub in _visible_dirs(root) if spec.holds(sub)]
    if len(found) == 1:
        log.info("%s: reading %s, the folder inside %s that holds %s", title, found[0], root, spec.describe)
        return found[0]
    if len(found) > 1:
        ranked = [sub for p in spec.prefer for sub in found if sub.name == p]
        if len(ranked) == len(found):
            others = ", ".join(f"{option}={sub}" for sub in ranked[1:])
            log.info(
                "%s: %s holds %s; reading %s (pass %s to read the other)",
                title, root, " and ".join(f"{sub.name}/" for sub in ranked), ranked[0], others,
            )  # fmt: skip
            return ranked[0]
        raise DatasetError(
            f"{title}: both {found[0]} and {found[1]} hold {spec.describe}; choose one with {option}=<folder>"
        )
    return root


def pair_dirs(root: Path, title: str) -> tuple[str, str]:
    """The image and mask folder names of a PraNet-layout set (:data:`PRANET_PAIRS`); the plural pair when the
    folder has neither (the reader's error then names it)."""
    for images, masks in PRANET_PAIRS:
        if (root / images).is_dir() and (root / masks).is_dir():
            if images != PRANET_PAIRS[0][0]:
                log.info("%s: reading %s/ and %s/ (the singular names some copies use)", title, images, masks)
            return images, masks
    return PRANET_PAIRS[0]


_DATAVERSE_VIDEO = re.compile(r"^([a-z]\d)_([a-z]+_t\d)_(v\d)$")


def c3vd_video_keys(folder_name: str) -> set[str]:
    """The names a C3VD video folder can be identified by in the split table: its name, lower-case, without the
    early release's ``_under_review``; for the Dataverse release's names (``c1_cecum_t1_v1``) also the video
    code (``c1v1``)."""
    name = folder_name.lower().removesuffix(EARLY_RELEASE_SUFFIX)
    keys = {name}
    match = _DATAVERSE_VIDEO.match(name)
    if match:
        keys.add(match.group(1) + match.group(3))
    return keys


def c3vd_video_folders(root: Path) -> list[Path]:
    """The folders at depth 1 (first) or 2 under ``root`` that hold C3VD colour frames, each level sorted: the
    candidate video folders, as the C3VD reader and the sweep preflight look for them."""
    subfolders = _visible_dirs(root)
    found = [p for p in subfolders if _holds_c3vd_frames(p)]
    return found + [q for p in subfolders for q in _visible_dirs(p) if _holds_c3vd_frames(q)]


def identify_c3vd_video(folder: Path, root: Path, table: list) -> Any:
    """The row of the split ``table`` (entries with ``sequence`` and ``code``) that ``folder`` is, by any part of
    its path below ``root`` that is a sequence name or a video code (:func:`c3vd_video_keys`); None unless
    exactly one row matches."""
    keys = {}
    for entry in table:
        keys[entry.sequence], keys[entry.code] = entry, entry
    names = {key for part in folder.relative_to(root).parts for key in c3vd_video_keys(part)}
    found = {keys[n] for n in names if n in keys}
    return found.pop() if len(found) == 1 else None


def c3vd_dataverse_name(sequence: str, code: str) -> str:
    """The Dataverse release's name of a video (``cecum_t1_a``, ``c1v1`` -> ``c1_cecum_t1_v1``)."""
    return f"{code[:2]}_{sequence.rsplit('_', 1)[0]}_{code[2:]}"
