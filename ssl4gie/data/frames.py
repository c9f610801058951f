"""Frames of your own for ``mode=predict input=DIR``: a folder of images, no dataset layout, no ground truth.

:func:`list_frames` decides which files are frames; each task turns them into a Dataset with the preprocessing
of its evaluation (``Task.frame_dataset``) and writes one output per frame (``Task.frame_predictor``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ssl4gie.data.readers import IMAGE_SUFFIXES, is_hidden, log_hidden, open_image
from ssl4gie.errors import ConfigError

log = logging.getLogger(__name__)


def _readable(path: Path) -> str | None:
    """None if ``path`` decodes fully as an image, else why not (one short phrase)."""
    try:
        with Image.open(path) as image:
            image.load()  # the header alone does not catch a truncated or damaged body
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        return str(e) or type(e).__name__
    return None


def _names(paths: list[Path]) -> str:
    shown = ", ".join(p.name for p in paths[:5])
    return shown + (f", ... ({len(paths)} in all)" if len(paths) > 5 else "")


def list_frames(folder: str | Path) -> list[Path]:
    """The image files directly in ``folder`` (option ``input``), sorted by name.

    A frame is a regular, non-hidden file (:func:`ssl4gie.data.readers.is_hidden`) with an image suffix
    (JPEG/PNG/TIFF/BMP, case-insensitive) that decodes fully. Other files, and images that do not decode, are
    skipped with one log line each naming them; sub-folders are not searched. Outputs are named by file stem, so
    two frames whose stems differ only in suffix or case (``a.png``, ``a.JPG``) are refused: they would
    overwrite each other's outputs (on a case-insensitive file system, also when only the case differs).

    Raises ConfigError naming ``input`` when the folder is missing, not a folder, or holds no readable image.
    """
    root = Path(str(folder)).expanduser()
    if not root.exists():
        raise ConfigError(
            f"input={folder}: the folder does not exist; expected a folder of JPEG/PNG/TIFF/BMP frames"
        )
    if not root.is_dir():
        raise ConfigError(f"input={folder} is a file; expected a folder of JPEG/PNG/TIFF/BMP frames")
    hidden, other, broken, frames = [], [], [], []
    for path in sorted(p for p in root.iterdir() if p.is_file()):
        if is_hidden(path):
            hidden.append(path)
        elif path.suffix.lower() not in IMAGE_SUFFIXES:
            other.append(path)
        elif (why := _readable(path)) is not None:
            broken.append(path)
            log.warning("input: skipped %s: not a readable image (%s)", path, why)
        else:
            frames.append(path)
    log_hidden(hidden, root)
    if other:
        log.info(
            "input: skipped %d file(s) without an image suffix (%s): %s",
            len(other),
            "/".join(IMAGE_SUFFIXES),
            _names(other),
        )
    if not frames:
        raise ConfigError(
            f"input={folder} holds no readable image (suffixes {', '.join(IMAGE_SUFFIXES)}, any case; "
            f"{len(other)} other, {len(broken)} unreadable, {len(hidden)} hidden file(s))"
        )
    seen: dict[str, Path] = {}
    for path in frames:
        key = path.stem.casefold()
        if key in seen:
            raise ConfigError(
                f"input={folder}: {seen[key].name} and {path.name} share the file stem '{path.stem}', so their "
                f"outputs would overwrite each other; rename one of them"
            )
        seen[key] = path
    log.info("input: %d frame(s) in %s", len(frames), root)
    return frames


class FrameDataset(Dataset):
    """Base of the tasks' frame datasets: frame ``i`` decoded as RGB, handed to :meth:`sample` with its meta.

    ``meta``: ``name`` (file stem: the output's name), ``file`` (file name), ``index``, ``image_path`` and
    ``orig_size`` (H, W). Subclasses apply their task's evaluation preprocessing and return a sample with at
    least ``image`` and ``meta`` (no ``target``: there is no ground truth).
    """

    def __init__(self, paths: list[Path]) -> None:
        self.paths = [Path(p) for p in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        path = self.paths[i]
        image = open_image(path, "RGB")
        meta = {
            "name": path.stem,
            "file": path.name,
            "index": i,
            "image_path": str(path),
            "orig_size": (image.height, image.width),
        }
        return self.sample(image, meta)

    def sample(self, image: Image.Image, meta: dict) -> dict:
        raise NotImplementedError
