"""Hashes, the lock file that records them, and the state of a fetched source on disk.

``fetch.lock.json`` lies in ``paths.data_dir`` and ``paths.weights_dir``. It records the sha256 and size of every
file fetched (``files``: published, pinned with ``--sha256``, or trusted on first use where nothing is published)
and, for everything placed where runs read it (``placed``: an unpacked folder or a weights file), the manifest of
what was placed: every file's size, modification time and sha256 (kept in ``.fetch-manifests/`` beside it, so the
lock file stays small). The state of a placement is then:

* ``verified``: every file of the manifest is there and unchanged, and nothing was added. A file whose size and
  modification time are as recorded counts as unchanged (as ``make`` and ``git status`` decide); any other is
  hashed again;
* ``changed``: a file differs, is missing, or a new one appeared (named in the detail);
* ``present``: the folder or file is there but was not placed by ``ssl4gie.fetch`` (nothing to verify it against);
* ``missing``: it is not there.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from ssl4gie.fetch.errors import FetchError

LOCK_NAME = "fetch.lock.json"
MANIFESTS = ".fetch-manifests"
STATES = ("verified", "present", "missing", "changed")
CHUNK = 1 << 22


def sha256_file(path: Path, also: hashlib._Hash | None = None) -> str:
    """Hex sha256 of a file's bytes (``also``, e.g. an md5, is fed the same bytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            if also is not None:
                also.update(chunk)
    return digest.hexdigest()


def matches(expected: str, actual: str) -> bool:
    """A published hash may be a prefix (torch hub file names carry the first hex digits of the sha256)."""
    return actual.startswith(expected.lower())


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` to a temporary name beside ``path`` and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class Lock:
    """The lock file of one store folder (``paths.data_dir`` or ``paths.weights_dir``).

    Every change re-reads the file under a file lock and writes it atomically, so two fetches into one folder
    (two shells, two cluster nodes) keep each other's entries.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME

    def _read(self) -> dict:
        if not self.path.is_file():
            return {"version": 1, "files": {}, "placed": {}}
        try:
            data = json.loads(self.path.read_text())
        except json.JSONDecodeError as e:
            raise FetchError(
                f"{self.path} is not valid JSON ({e}): restore it or delete it to re-record"
            ) from None
        data.setdefault("files", {})
        data.setdefault("placed", {})
        return data

    def file(self, key: str) -> dict | None:
        return self._read()["files"].get(key)

    def placement(self, into: str) -> dict | None:
        return self._read()["placed"].get(into)

    def placements_of(self, source: str) -> dict[str, dict]:
        return {k: v for k, v in self._read()["placed"].items() if v.get("source") == source}

    def _update(self, change) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path) + ".lock"):
            data = self._read()
            change(data)
            write_json(self.path, data)

    def record_file(self, key: str, sha256: str, size: int, trust: str, origin: str) -> None:
        entry = {"sha256": sha256, "size": size, "trust": trust, "from": origin, "recorded": _now()}
        self._update(lambda data: data["files"].__setitem__(key, entry))

    def record_placement(self, into: str, source: str, files: list[str], manifest: dict) -> None:
        """Record that ``into`` (relative to the folder) was placed from ``files`` (lock keys), with its manifest."""
        manifest_path = self.folder / MANIFESTS / (into.replace("/", "__") + ".json")
        write_json(manifest_path, manifest)
        entry = {
            "source": source,
            "from": files,
            "manifest": manifest_path.relative_to(self.folder).as_posix(),
            "placed": _now(),
        }
        self._update(lambda data: data["placed"].__setitem__(into, entry))

    def forget_placement(self, into: str) -> None:
        def drop(data):
            entry = data["placed"].pop(into, None)
            if entry:
                (self.folder / entry["manifest"]).unlink(missing_ok=True)

        self._update(drop)

    def manifest(self, into: str) -> dict | None:
        entry = self.placement(into)
        if not entry:
            return None
        path = self.folder / entry["manifest"]
        return json.loads(path.read_text()) if path.is_file() else None


def _visible_files(target: Path) -> Iterable[Path]:
    if target.is_file():
        yield target
        return
    for dirpath, dirnames, filenames in os.walk(target):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


def manifest_of(target: Path, hashes: dict[str, str] | None = None) -> dict[str, list]:
    """{path relative to ``target`` ("" for a file): [size, mtime_ns, sha256]} of every visible file (names
    starting with "." are skipped, as the readers skip them). ``hashes`` gives sha256s already computed."""
    hashes = hashes or {}
    out = {}
    for path in _visible_files(target):
        rel = "" if path == target else path.relative_to(target).as_posix()
        st = path.stat()
        out[rel] = [st.st_size, st.st_mtime_ns, hashes.get(rel) or sha256_file(path)]
    return out


@dataclass(frozen=True)
class Placement:
    """The state of one placed folder or file: ``state`` one of :data:`STATES`, ``detail`` for the user."""

    where: Path
    state: str
    detail: str = ""
    count: int = 0  # files verified


def check_placement(target: Path, manifest: dict | None) -> Placement:
    """Compare what is at ``target`` with its manifest (see the module docstring)."""
    if not target.exists():
        return Placement(target, "missing")
    if manifest is None:
        return Placement(target, "present", "not placed by ssl4gie.fetch: nothing to verify it against")
    on_disk = {("" if p == target else p.relative_to(target).as_posix()): p for p in _visible_files(target)}
    changed, gone = [], [rel for rel in manifest if rel not in on_disk]
    added = sorted(rel for rel in on_disk if rel not in manifest)
    for rel, (size, mtime_ns, sha) in manifest.items():
        path = on_disk.get(rel)
        if path is None:
            continue
        st = path.stat()
        if st.st_size != size or (st.st_mtime_ns != mtime_ns and sha256_file(path) != sha):
            changed.append(rel or path.name)
    if changed or gone or added:
        parts = [
            f"{len(items)} {what} (e.g. {items[0] or target.name})"
            for items, what in ((changed, "changed"), (gone, "missing"), (added, "added"))
            if items
        ]
        return Placement(target, "changed", ", ".join(parts))
    return Placement(target, "verified", f"{len(manifest)} file(s) as fetched", len(manifest))
