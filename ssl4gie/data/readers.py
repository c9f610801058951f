"""Shared pieces of the dataset readers: root checks, image decoding with clear errors, synthetic fallback."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock
from PIL import Image, UnidentifiedImageError

from ssl4gie.errors import DatasetError, DatasetMissing

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")


def open_image(path: Path, mode: str) -> Image.Image:
    """Decode ``path`` fully and convert it to ``mode``; a corrupt or unreadable file is a DatasetError naming it."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert(mode) if mode and image.mode != mode else image.copy()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise DatasetError(f"cannot read image {path}: {e}. Replace or remove the file.") from e


def is_hidden(path: Path) -> bool:
    """The one rule, for every reader, for files and folders that are never data: a name starting with ".".

    Such are macOS AppleDouble resource forks (``._<name>.jpg`` beside every file of a zip made on a Mac, a few
    bytes that are no image), ``.DS_Store`` and sync/editor files. The study's globs (``*``) never match them.
    """
    return path.name.startswith(".")


def visible_files(folder: Path, hidden: list[Path] | None = None) -> list[Path]:
    """Regular files directly in ``folder`` that are not :func:`is_hidden`, unsorted.

    The hidden files skipped are appended to ``hidden`` when it is given, so that a reader scanning many folders
    can report them all in one line with :func:`log_hidden`.
    """
    files = []
    for p in folder.iterdir():
        if not p.is_file():
            continue
        if is_hidden(p):
            if hidden is not None:
                hidden.append(p)
        else:
            files.append(p)
    return files


def log_hidden(hidden: list[Path], where: Path | str) -> None:
    """One log line for the hidden files a reader skipped under ``where`` (none: no line)."""
    if hidden:
        log.info(
            "%s: skipped %d hidden file(s) (names starting with '.', e.g. macOS '._*' resource forks): %s",
            where,
            len(hidden),
            hidden[0].name if len(hidden) == 1 else f"{hidden[0].name}, ...",
        )


def list_images(folder: Path, hidden: list[Path] | None = None) -> list[Path]:
    """Image files in ``folder`` (by suffix, case-insensitive), sorted by name as the study sorts them.

    Hidden files (:func:`is_hidden`) are skipped, and appended to ``hidden`` when it is given.
    """
    return sorted(
        (p for p in visible_files(folder, hidden) if p.suffix.lower() in IMAGE_SUFFIXES), key=lambda p: p.name
    )


def ensure_root(
    root: str | Path,
    title: str,
    layout: str,
    download: str | None,
    synthetic: dict | None,
    writer: Callable[..., Path] | None,
    demo: str = "demo",
    source: str | None = None,
) -> Path:
    """Return ``root`` as a Path, writing synthetic data there first if asked and it is missing.

    A missing root is a DatasetError that says where we looked, the layout expected, the command that fetches it
    (``source``: its name for ``python -m ssl4gie.fetch``), where to download it and how to run the demo
    (``experiment=<demo>``) instead.
    """
    root = Path(root).expanduser()
    if synthetic and writer is not None and not root.exists():
        root.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(root) + ".lock"):  # concurrent sweep jobs: one writes, the others wait
            if not root.exists():
                log.info("writing synthetic %s data to %s", title, root)
                writer(root, **dict(synthetic))
    if not root.is_dir():
        where = f" Download it from {download}, unpack it and" if download else " Put it there or"
        if source:
            where = f" Fetch it with `python -m ssl4gie.fetch {source}`, or{where[1:].replace('Put', 'put')}"
        raise DatasetMissing(
            f"{title} not found: {root} does not exist (option dataset.root). Expected layout: {layout}.{where} "
            f"pass dataset.root=PATH (or set paths.data_dir). To try ssl4gie without data: python run.py experiment={demo}"
        )
    return root


def require_dir(root: Path, sub: str, title: str, layout: str) -> Path:
    """``root/sub`` must be a folder; otherwise the root has the wrong layout."""
    folder = root / sub
    if not folder.is_dir():
        found = sorted(p.name for p in root.iterdir())[:8]
        raise DatasetError(
            f"{root} does not look like {title}: it has no '{sub}/' folder (found: {found}). Expected layout: {layout}"
        )
    return folder
