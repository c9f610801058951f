"""What the leakage check reads: a folder of images, or a dataset config (``conf/dataset/<name>.yaml``) with splits.

A folder is searched recursively for image files (hidden files skipped, as the readers do); its images have no
split. A dataset name is composed with the real config (``conf/``, Hydra's compose API) and its reader
instantiated: every item's ``image`` file, with its split from the reader's ``splits()``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ssl4gie.data.readers import IMAGE_SUFFIXES, is_hidden
from ssl4gie.errors import ConfigError, DatasetError
from ssl4gie.utils.conf import CONF_DIR, compose, instantiate_checked

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """``label`` (what the user passed), ``root`` (names are relative to it), ``files`` and their ``splits``
    ("" where unknown), in the same order."""

    label: str
    root: Path
    files: tuple[Path, ...]
    splits: tuple[str, ...]

    def name(self, i: int) -> str:
        """File ``i`` relative to ``root`` (POSIX separators)."""
        try:
            return self.files[i].relative_to(self.root).as_posix()
        except ValueError:
            return self.files[i].as_posix()


def dataset_names() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "dataset").glob("*.yaml"))


def folder_source(folder: Path) -> Source:
    """Every visible image file under ``folder`` (recursively, sorted by relative path)."""
    files = []
    for parent, subdirs, names in os.walk(folder):
        subdirs[:] = sorted(d for d in subdirs if not is_hidden(Path(d)))
        files += [
            Path(parent) / n
            for n in names
            if not is_hidden(Path(n)) and Path(n).suffix.lower() in IMAGE_SUFFIXES
        ]
    files.sort(key=lambda p: p.relative_to(folder).as_posix())
    if not files:
        raise DatasetError(
            f"{folder} holds no image file ({', '.join(IMAGE_SUFFIXES)}, searched recursively)"
        )
    return Source(str(folder), folder, tuple(files), ("",) * len(files))


def dataset_source(name: str, overrides: Sequence[str] = ()) -> Source:
    """The images of dataset config ``name`` with their splits (``dataset.split`` and other ``overrides``, e.g.
    ``paths.data_dir=/data``, as on the ``run.py`` command line)."""
    cfg = compose([f"dataset={name}", *overrides], what=f"dataset={name} with {list(overrides)}")
    reader = instantiate_checked(cfg.dataset)
    files = [Path(item.image) for item in reader.items]
    splits = [""] * len(files)
    for split, indices in reader.splits().items():
        for i in indices:
            splits[i] = split
    return Source(name, Path(reader.root), tuple(files), tuple(splits))


def open_source(spec: str, overrides: Sequence[str] = ()) -> Source:
    """A folder when ``spec`` is one, else a dataset config name; anything else is a ConfigError."""
    path = Path(spec)
    if path.is_dir():
        return folder_source(path)
    if spec in dataset_names():
        return dataset_source(spec, overrides)
    raise ConfigError(
        f"{spec!r} is neither a folder nor a dataset config; valid dataset names: {', '.join(dataset_names())}"
    )
