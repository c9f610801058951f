"""Shared pieces of the dataset readers: their base class, root checks, image decoding with clear errors,
synthetic fallback."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock
from PIL import Image, UnidentifiedImageError

from ssl4gie.data import layouts
from ssl4gie.data.splits import DEFAULT_FOLD_SEED, SplitOptions, choose_split
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


class Reader:
    """What every labelled dataset reader shares: the options of its config (``root``, ``name``, ``task``,
    ``split``, ``download``, ``synthetic``, ``source`` and the split options of
    :class:`~ssl4gie.data.splits.SplitOptions`), its root found where the archive really unpacks
    (:func:`ssl4gie.data.layouts.find_root`, for a reader with a ``layout_name``) and checked, or synthetic data
    written there, and :meth:`splits` computed once.

    A subclass sets the class attributes below, reads its ``items`` after calling this constructor, and overrides
    :meth:`base_split` / :meth:`split_groups` where its split is not the study's seeded 80/10/10 over the items.
    """

    title = ""  # the dataset's name in messages
    layout = ""  # the layout expected under the root, in messages
    layout_name = ""  # its entry in ssl4gie.data.layouts (where archives put the root); "" for none
    demo = "demo"  # the experiment that runs on synthetic data instead
    official = False  # whether the dataset has an official split (dataset.split=official)

    def __init__(
        self,
        root: str,
        name: str,
        task: str,
        split: str = "study",
        download: str | None = None,
        synthetic: dict | None = None,
        source: str | None = None,
        train_fraction: float = 1.0,
        fraction_seed: int = 0,
        fraction_min_per_class: int = 1,
        folds: int | None = None,
        fold: int = 0,
        fold_seed: int = DEFAULT_FOLD_SEED,
    ) -> None:
        self.split_options = SplitOptions(
            split,
            train_fraction,
            fraction_seed,
            fraction_min_per_class,
            folds,
            fold,
            fold_seed,
            self.official,
            name,
        )
        self.name, self.task, self.split_name, self.download = name, task, split, download
        self.items: list = []
        self._splits: dict[str, list[int]] | None = None
        if self.layout_name:
            root = layouts.find_root(root, self.layout_name, self.title)
        self.root = ensure_root(
            root, self.title, self.layout, download, synthetic, self.synthetic_writer(), self.demo, source
        )

    @staticmethod
    def synthetic_writer() -> Callable[..., Path] | None:
        """The function that writes synthetic data in this layout (``dataset.synthetic``); None: none."""
        return None

    def splits(self) -> dict[str, list[int]]:
        """Index lists into ``items`` for train/val/test: :meth:`base_split`, folds and label fraction applied
        (:meth:`SplitOptions.apply`, grouped as :meth:`split_groups` says). Computed once per reader."""
        if self._splits is None:
            self._splits = self.split_options.apply(self.base_split, **self.split_groups())
        return self._splits

    def base_split(self) -> dict[str, list[int]]:
        """The split of ``dataset.split`` before folds and fractions: :func:`choose_split` over the items."""
        return choose_split(self.split_name, len(self.items))

    def split_groups(self) -> dict[str, Any]:
        """What folds and fractions keep together (``labels``/``class_names``: stratified by class; ``groups``:
        whole groups, e.g. videos); nothing by default."""
        return {}
