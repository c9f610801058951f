"""Unpack a verified archive into a temporary folder, find the layout the configs read, rename it into place.

The staging folder lies beside the destination (same file system), so the final step is one rename: an
interrupted fetch leaves a staging folder (removed by the next run), never a half-filled dataset folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from ssl4gie.data import layouts
from ssl4gie.fetch.errors import FetchError
from ssl4gie.fetch.verify import CHUNK

log = logging.getLogger(__name__)

IGNORED_TOP = ("__MACOSX",)  # macOS zip resource forks: never data


def _safe_member(name: str, archive: Path) -> PurePosixPath | None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts:
        raise FetchError(
            f"{archive}: member {name!r} would be written outside the folder; refusing this archive"
        )
    if not path.parts or path.parts[0] in IGNORED_TOP:
        return None
    return path


def extract(archive: Path, staging: Path) -> dict[str, str]:
    """Extract a zip or tar archive into ``staging`` (created), hashing every file as it is written.
    Returns {path relative to staging: sha256}. Raises FetchError for an unreadable archive or a full disk."""
    staging.mkdir(parents=True)
    hashes: dict[str, str] = {}
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    rel = _safe_member(info.filename, archive)
                    if rel is None:
                        continue
                    target = staging.joinpath(*rel.parts)
                    if info.is_dir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    digest = hashlib.sha256()
                    with zf.open(info) as src, open(target, "wb") as dst:
                        while chunk := src.read(CHUNK):
                            dst.write(chunk)
                            digest.update(chunk)
                    hashes[rel.as_posix()] = digest.hexdigest()
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                members = [m for m in tf.getmembers() if _safe_member(m.name, archive) is not None]
                tf.extractall(staging, members=members, filter="data")
        else:
            raise FetchError(
                f"{archive} is neither a zip nor a tar archive (an HTML error page saved as a file?)"
            )
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as e:
        raise FetchError(f"{archive} cannot be unpacked ({e}); delete it and fetch again") from None
    except OSError as e:
        raise FetchError(f"cannot unpack {archive} into {staging}: {e.strerror or e} (disk full?)") from None
    return hashes


def find_layout(staging: Path, name: str, archive: Path, max_depth: int = 3) -> Path:
    """The shallowest folder under ``staging`` (itself included, ``max_depth`` levels down) that holds layout
    ``name``. Several at one depth: their common parent when the layout ranks them all (Kaggle's CVC-ClinicDB:
    PNG/ and TIF/), else an error naming them."""
    spec = layouts.layout(name)
    level = [staging]
    for _ in range(max_depth + 1):
        hits = [folder for folder in level if spec.holds(folder)]
        if len(hits) == 1:
            return hits[0]
        if hits:
            parents = {h.parent for h in hits}
            if len(parents) == 1 and all(h.name in spec.prefer for h in hits):
                return hits[0].parent
            names = ", ".join(str(h.relative_to(staging)) for h in hits)
            raise FetchError(f"{archive}: several folders hold {spec.describe} ({names}); unpack it by hand")
        level = [
            sub
            for folder in level
            for sub in sorted(folder.iterdir())
            if sub.is_dir() and not sub.name.startswith(".") and sub.name not in IGNORED_TOP
        ]
    raise FetchError(
        f"{archive} does not hold {spec.describe} within {max_depth} folder levels: not the expected archive "
        "(some READMEs swap PraNet's TestDataset and TrainDataset links); delete it and check the source"
    )


def place(
    staging: Path, layout: str, move: str | None, target: Path, archive: Path, hashes: dict[str, str]
) -> dict[str, str]:
    """Rename the folder of ``staging`` that holds ``layout`` (or its sub-folder ``move``) to ``target``.
    Returns the sha256s of the files placed, relative to ``target``."""
    found = find_layout(staging, layout, archive)
    moved = found / move if move else found
    if not moved.is_dir():
        raise FetchError(f"{archive}: {found.relative_to(staging)} has no {move}/ folder")
    if target.exists():
        raise FetchError(f"{target} appeared while unpacking {archive}; move it away and fetch again")
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = moved.relative_to(staging).as_posix()
    prefix = "" if prefix == "." else prefix + "/"
    placed = {rel[len(prefix) :]: sha for rel, sha in hashes.items() if rel.startswith(prefix)}
    os.rename(moved, target)
    if moved != staging:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("unpacked %s into %s", archive.name, target)
    return placed


def remove_stale(folder: Path, prefix: str) -> None:
    """Remove staging folders an interrupted run left in ``folder`` (``<prefix>*.unpacking``)."""
    if folder.is_dir():
        for stale in folder.glob(f"{prefix}*.unpacking"):
            shutil.rmtree(stale, ignore_errors=True)
