"""Atomic writes: a result file either exists complete or not at all.

Every file is written to a temporary name in the same folder and renamed into place (``os.replace`` is atomic
on POSIX), so a crash or a SIGKILL never leaves a half-written ``metrics.json`` or checkpoint that looks complete.
The temporary file is created as ``open(path, "w")`` would create it (mode 0666 less the umask, default ACLs
applied), so results are as readable by colleagues as any other file the user writes: 0644 under umask 022,
0664 under 002 (``tempfile.mkstemp`` would make every result private, 0600).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to ``path``; rename it to ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_file_beside(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _new_file_beside(path: Path) -> Path:
    """Create an empty, uniquely named hidden file next to ``path``, with the umask's mode, and return its path."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            # O_EXCL: never reuse a name another writer holds; 0o666: the kernel applies the umask
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp


def _write(path: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as pretty JSON, atomically."""
    return _write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n"))


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text``, atomically."""
    return _write(path, lambda tmp: tmp.write_text(text))


def save_torch(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save`` atomically (checkpoints survive a kill mid-write)."""
    return _write(path, lambda tmp: torch.save(obj, tmp))


def save_dataframe_csv(path: str | os.PathLike, frame) -> Path:
    """Write a pandas DataFrame as CSV, atomically."""
    return _write(path, lambda tmp: frame.to_csv(tmp, index=False))
