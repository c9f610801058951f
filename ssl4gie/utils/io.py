"""Atomic writes: a result file either exists complete or not at all.

Every file is written to a temporary name in the same folder and renamed into place (``os.replace`` is atomic
on POSIX), so a crash or a SIGKILL never leaves a half-written ``metrics.json`` or checkpoint that looks complete.
"""

from __future__ import annotations

import json
import os
import tempfile
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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
