"""Shared pieces of the dataset readers: root checks, image decoding with clear errors, synthetic fallback."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock
from PIL import Image, UnidentifiedImageError

from ssl4gie.errors import DatasetError

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


def list_images(folder: Path) -> list[Path]:
    """Image files in ``folder`` (by suffix, case-insensitive), sorted by name as the study sorts them."""
    return sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
        key=lambda p: p.name,
    )


def ensure_root(
    root: str | Path,
    title: str,
    layout: str,
    download: str | None,
    synthetic: dict | None,
    writer: Callable[..., Path] | None,
    demo: str = "demo",
) -> Path:
    """Return ``root`` as a Path, writing synthetic data there first if asked and it is missing.

    A missing root is a DatasetError that says where we looked, the layout expected, where to download the data and
    how to run the demo (``experiment=<demo>``) instead.
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
        raise DatasetError(
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
