"""Decode once: resized samples of a dataset stored as memory-mapped ``.npy`` arrays.

The study opens and resizes every JPEG on every epoch; here each dataset is decoded and resized once, on first use,
into ``<cache_dir>/<dataset>-<key>/<field>.npy``. The key hashes the source files' names, sizes and modification
times and the preprocessing settings, so a changed file or a changed input size gives a new cache. Concurrent jobs
(a sweep on one node) build under a file lock into a temporary folder that is renamed into place when complete, so
a reader never sees a half-built cache. Data-loader workers share the arrays through the page cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from filelock import FileLock
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

CACHE_VERSION = 1
Fields = dict[str, tuple[tuple[int, ...], str]]  # field name -> (per-sample shape, dtype)


def cache_key(files: Sequence[Path], settings: dict, fields: Fields) -> str:
    """A hash of what the cached arrays depend on: file names, sizes, mtimes, settings, array layout."""
    digest = hashlib.sha256()
    digest.update(
        json.dumps(
            {"version": CACHE_VERSION, "settings": settings, "fields": fields}, sort_keys=True, default=str
        ).encode()
    )
    for f in files:
        st = os.stat(f)
        digest.update(f"{Path(f).name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def load_or_build(
    cache_dir: str | os.PathLike,
    dataset: str,
    files: Sequence[Path],
    settings: dict,
    fields: Fields,
    n: int,
    decode: Callable[[int], dict[str, np.ndarray]],
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Return read-only memory-mapped arrays ``{field: N×shape}``, building them with ``decode(i)`` if needed."""
    path = Path(cache_dir) / f"{dataset}-{cache_key(files, settings, fields)}"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if not (path / "meta.json").exists():
            _build(path, fields, n, decode, workers, progress)
        else:
            log.info("using decoded-sample cache %s", path)
    return {name: np.load(path / f"{name}.npy", mmap_mode="r") for name in fields}


def _build(path: Path, fields: Fields, n: int, decode, workers: int | None, progress: bool) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        arrays = {
            name: np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=dtype, shape=(n, *shape))
            for name, (shape, dtype) in fields.items()
        }
        # PIL releases the GIL while decoding and resizing, so threads use every core without pickling.
        workers = workers or min(8, len(os.sched_getaffinity(0)))
        with ThreadPoolExecutor(workers) as pool:
            done = pool.map(decode, range(n))
            for i, sample in enumerate(
                tqdm(done, total=n, desc=f"decoding {path.name}", disable=None if progress else True)
            ):
                for name, value in sample.items():
                    arrays[name][i] = value
        for array in arrays.values():
            array.flush()
        (tmp / "meta.json").write_text(json.dumps({"n": n, "fields": fields}, indent=2))
        os.replace(tmp, path)
        log.info("built decoded-sample cache %s (%d samples)", path, n)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class DecodedSamples:
    """The decoded, resized arrays of every item of a dataset, by index into ``items``.

    With a ``cache_dir`` they come from the decode-once cache (built on first use); without one (``cache=false``)
    each access decodes the files again, as the study does. ``decode(item, size)`` must be a module-level function
    returning ``{field: array}`` as declared in ``fields``.
    """

    def __init__(
        self,
        items: Sequence,
        size: int,
        decode: Callable[[object, int], dict[str, np.ndarray]],
        cache_dir: str | os.PathLike | None,
        dataset: str,
        files: Sequence[Path],
        settings: dict,
        fields: Fields,
        progress: bool = True,
    ) -> None:
        self.items, self.size, self.decode = items, size, decode
        self.arrays = None
        if cache_dir is not None:
            self.arrays = load_or_build(
                cache_dir,
                dataset,
                files,
                settings,
                fields,
                len(items),
                lambda i: decode(items[i], size),
                progress=progress,
            )

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if self.arrays is None:
            return self.decode(self.items[index], self.size)
        return {name: array[index] for name, array in self.arrays.items()}
