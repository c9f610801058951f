"""Get one source: check what is on disk, download what is missing, verify it, unpack or move it into place, record.

:func:`check` reads only the disk (no network); :func:`fetch` does the work. Both take a
:class:`~ssl4gie.fetch.registry.Source` and the store folders (:class:`Paths`).
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock

from ssl4gie.fetch import download
from ssl4gie.fetch.errors import FetchError
from ssl4gie.fetch.registry import RemoteFile, Source, registry
from ssl4gie.fetch.unpack import extract, place, remove_stale
from ssl4gie.fetch.verify import Lock, Placement, check_placement, manifest_of, matches, sha256_file

log = logging.getLogger(__name__)

DOWNLOADS = "downloads"  # in each store folder: archives being downloaded, and those a login source needs


@dataclass(frozen=True)
class Paths:
    """Where sources land: ``paths.data_dir`` and ``paths.weights_dir`` as the runs resolve them."""

    data: Path
    weights: Path

    def store(self, source: Source) -> Path:
        return self.data if source.store == "data" else self.weights

    @classmethod
    def from_config(cls, overrides: list[str] | tuple[str, ...] = ()) -> Paths:
        """The run configs' paths (``SSL4GIE_DATA_DIR`` / ``SSL4GIE_WEIGHTS_DIR``, ``conf/local/``, overrides)."""
        from hydra import compose, initialize_config_dir

        from ssl4gie.fetch.registry import CONF

        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(overrides))
        return cls(Path(str(cfg.paths.data_dir)).expanduser(), Path(str(cfg.paths.weights_dir)).expanduser())


@dataclass(frozen=True)
class Options:
    """``mirror``: fetch every file from ``<mirror>/<file name>``; ``pins``: file name -> sha256 (``--sha256``);
    ``progress``: progress bars (on a terminal); ``keep_archives``: keep archives in ``downloads/`` after unpacking."""

    mirror: str | None = None
    pins: dict[str, str] = field(default_factory=dict)
    progress: bool = True
    keep_archives: bool = False


@dataclass(frozen=True)
class Status:
    """What :func:`check` found for a source: ``state`` is verified | present | missing | changed."""

    source: Source
    state: str
    detail: str
    where: Path

    @property
    def command(self) -> str:
        """The command that fetches the source."""
        return self.source.command

    @property
    def ready(self) -> bool:
        """A run can read it (it may not be verified: ``present`` means placed by hand)."""
        return self.state in ("verified", "present")


@dataclass(frozen=True)
class Outcome:
    """What :func:`fetch` did: ``action`` is nothing | fetched | recorded | needs login | kept."""

    source: Source
    action: str
    detail: str


def _placements(source: Source, store: Path, lock: Lock) -> list[str]:
    """Where the source lands, relative to its store folder."""
    if source.drive_folder:
        return sorted(lock.placements_of(source.name)) or [source.into]
    if source.each:
        return [f"{source.into}/{_stem(f.name)}" for f in source.files]
    return [source.into]


def _stem(name: str) -> str:
    for suffix in (".tar.gz", ".tgz", ".zip", ".tar"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def check(source: Source, paths: Paths) -> Status:
    """The state of ``source`` on disk (no network): verified / present / missing / changed, the worst of its
    placements, with a detail naming the first problem (see :mod:`ssl4gie.fetch.verify`)."""
    store = paths.store(source)
    lock = Lock(store)
    found = [check_placement(store / rel, lock.manifest(rel)) for rel in _placements(source, store, lock)]
    return _summary(source, store / source.into, found)


def _summary(source: Source, where: Path, found: list[Placement]) -> Status:
    for state in ("changed", "missing", "present"):
        bad = [p for p in found if p.state == state]
        if bad:
            some = f"{len(bad)} of {len(found)}: " if len(found) > 1 else ""
            detail = f"{some}{bad[0].where}" + (f": {bad[0].detail}" if bad[0].detail else "")
            if state == "missing" and source.login:
                detail += f" (needs {source.login})"
            return Status(source, state, detail, where)
    total = sum(p.count for p in found)
    return Status(source, "verified", f"{where} ({total} file(s) as fetched)", where)


# ------------------------------------------------------------------------------------------------ fetch


def fetch(source: Source, paths: Paths, options: Options | None = None) -> Outcome:
    """Make ``source`` present and verified in its store folder (see the module docstring); raises FetchError
    with one line for anything that stops it, leaving nothing half-written where a run reads."""
    options = options or Options()
    status = check(source, paths)
    if status.state == "verified":
        log.info("%s: present and verified, nothing to do (%s)", source.name, status.detail)
        return Outcome(source, "nothing", status.detail)
    if status.state == "changed":
        raise FetchError(
            f"{source.name}: {status.detail} -- not as fetched; restore it, or move it away and fetch again"
        )
    store = paths.store(source)
    (store / DOWNLOADS).mkdir(parents=True, exist_ok=True)
    # one fetch of a source at a time (two shells, two cluster nodes sharing a disk): the other waits, then finds
    # the source verified
    with FileLock(str(store / DOWNLOADS / f"{source.name.replace(':', '--')}.lock")):
        if check(source, paths).state == "verified":
            return Outcome(source, "nothing", "fetched meanwhile by another process")
        remove_stale(store / DOWNLOADS, source.name)
        return _fetch(source, paths, store, options)


def _fetch(source: Source, paths: Paths, store: Path, options: Options) -> Outcome:
    if source.folder:
        return _from_folder(source, paths, options)
    if source.drive_folder:
        return _drive_folder(source, store, options)
    if source.is_archive:
        return _archives(source, store, options)
    return _weights_file(
        source, store, options, source.files[0], lambda: _locate(source, source.files[0], options)
    )


def _login_needed(source: Source, manual: Path) -> Outcome:
    detail = (
        f"{source.title} needs {source.login}; ssl4gie never logs in. Download it from {source.page} and save it "
        f"as {manual}, then run `{source.command}` again: it is verified (hash recorded on first use) and placed"
    )
    log.warning("%s: %s", source.name, detail)
    return Outcome(source, "needs login", detail)


def _expected(source: Source, file: RemoteFile, lock: Lock, options: Options) -> tuple[str | None, str]:
    """The hash a file must have, and why: pinned (--sha256), published, or recorded on first use."""
    if file.name in options.pins:
        return options.pins[file.name], "pinned with --sha256"
    if file.sha256:
        return file.sha256, "published"
    recorded = lock.file(f"{source.name}/{file.name}")
    if recorded:
        return recorded["sha256"], f"recorded on first use, {recorded.get('recorded', '?')}"
    return None, "first use"


def _verify(
    source: Source,
    file: RemoteFile,
    got: download.Received,
    lock: Lock,
    options: Options,
    origin: str,
    md5: str | None = None,
    by_hand: bool = False,
) -> None:
    """Check sha256, size and md5 (Dataverse); record the hash. A mismatch raises, after deleting the file if
    fetch downloaded it (a file the user put there, ``by_hand``, stays)."""
    expected, why = _expected(source, file, lock, options)
    pinned = file.name in options.pins  # another version: the published size does not apply either
    problem = None
    if expected and not matches(expected, got.sha256):
        problem = f"has sha256 {got.sha256}, expected {expected} ({why})"
    elif file.size is not None and got.size != file.size and not pinned:
        problem = f"is {got.size:,} bytes (sha256 {got.sha256}), the source has {file.size:,}"
    elif md5 and got.md5 and got.md5 != md5:
        problem = f"has md5 {got.md5}, the Dataverse listing says {md5}"
    if problem:
        if not by_hand:
            got.path.unlink(missing_ok=True)
        done = "left it there, placed nothing" if by_hand else "deleted it, nothing was placed"
        hint = (
            f"; if the source published a new version, pin it with --sha256 {got.sha256}" if expected else ""
        )
        raise FetchError(f"{file.name} from {origin} {problem}: {done}{hint}")
    trust = "first use" if expected is None else why.split(",")[0]
    lock.record_file(f"{source.name}/{file.name}", got.sha256, got.size, trust, origin)
    if expected is None:
        log.info(
            "%s: no published hash; recorded sha256 %s on first use (%s)", file.name, got.sha256, lock.path
        )
    else:
        log.info("%s: sha256 verified (%s)", file.name, why)


@dataclass(frozen=True)
class _Where:
    """Where one file comes from: an HTTP(S) URL, a Drive id, or a file the user saved (login sources)."""

    origin: str
    url: str | None = None
    drive: str | None = None
    md5: str | None = None


def _locate(source: Source, file: RemoteFile, options: Options, listing: dict | None = None) -> _Where:
    if options.mirror:
        url = download.mirror_url(options.mirror, file.name)
        return _Where(url, url=url)
    if source.dataverse:
        server, doi = source.dataverse
        entry = (listing or {}).get(file.name)
        if entry is None:
            raise FetchError(
                f"{file.name} is not in the Dataverse listing of doi:{doi} ({server}); it has: "
                f"{', '.join(sorted(listing or {})[:30]) or 'nothing'}"
            )
        return _Where(entry.url(server), url=entry.url(server), md5=entry.md5)
    if file.drive:
        return _Where(f"https://drive.google.com/uc?id={file.drive}", drive=file.drive)
    if file.url:
        return _Where(file.url, url=file.url)
    raise FetchError(f"{source.name}: {file.name} has no URL (ssl4gie/fetch/sources/{source.name}.yaml)")


def _receive(where: _Where, dest: Path, file: RemoteFile, options: Options) -> download.Received:
    log.info("downloading %s from %s", file.name, where.origin)
    if where.drive:
        return download.drive_file(where.drive, dest, options.progress)
    return download.http(where.url, dest, file.size, options.progress, md5=where.md5 is not None)


def _archives(source: Source, store: Path, options: Options) -> Outcome:
    lock = Lock(store)
    downloads = store / DOWNLOADS
    listing = None
    if source.dataverse and not options.mirror and not source.login:
        listing = download.dataverse_list(*source.dataverse)
    done, kept = [], []
    targets = _placements(source, store, lock)
    for file, rel in zip(source.files if source.each else source.files[:1], targets, strict=False):
        target = store / rel
        state = check_placement(target, lock.manifest(rel)).state
        if state == "verified":
            continue
        if state == "present":
            log.warning(
                "%s: %s is there but was not placed by ssl4gie.fetch; left as it is", source.name, target
            )
            kept.append(rel)
            continue
        archive = downloads / file.name
        if not archive.is_file():
            if source.login and not options.mirror:
                return _login_needed(source, archive)
            where = _locate(source, file, options, listing)
            got = _receive(where, archive, file, options)
            _verify(source, file, got, lock, options, where.origin, where.md5)
        else:  # saved by the user (login sources), or kept from an earlier run
            log.info("%s: using %s", source.name, archive)
            got = download.Received(archive, sha256_file(archive), archive.stat().st_size)
            _verify(source, file, got, lock, options, str(archive), by_hand=True)
        staging = downloads / f"{source.name}-{_stem(file.name)}.unpacking"
        try:
            hashes = extract(archive, staging)
            placed = place(staging, source.layout, source.move, target, archive, hashes)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        lock.record_placement(rel, source.name, [f"{source.name}/{file.name}"], manifest_of(target, placed))
        if not options.keep_archives:
            archive.unlink()
        done.append(rel)
    if kept and not done:
        return Outcome(source, "kept", f"{', '.join(kept)} placed by hand: not verified")
    return Outcome(source, "fetched", f"placed {', '.join(done) or 'nothing new'} in {store}")


def _weights_file(source: Source, store: Path, options: Options, file: RemoteFile, locate) -> Outcome:
    """A single file saved as ``store/into`` (a weights file): downloaded beside it, verified, then renamed."""
    lock = Lock(store)
    target = store / source.into
    if target.is_file():  # placed by hand (e.g. a gated download): verify against what is known, or record it
        got = download.Received(target, sha256_file(target), target.stat().st_size)
        _verify(source, file, got, lock, options, f"{target} (placed by hand)", by_hand=True)
        lock.record_placement(source.into, source.name, [f"{source.name}/{file.name}"], manifest_of(target))
        return Outcome(source, "recorded", f"{target} verified/recorded as it was")
    if source.login and not options.mirror:
        return _login_needed(source, target)
    where = locate()
    partial = store / DOWNLOADS / file.name
    got = _receive(where, partial, file, options)
    _verify(source, file, got, lock, options, where.origin)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(partial, target)
    lock.record_placement(source.into, source.name, [f"{source.name}/{file.name}"], manifest_of(target))
    return Outcome(source, "fetched", f"saved {target}")


def _matches_words(name: str, words: tuple[str, ...]) -> bool:
    low = name.lower()
    return all(any(alt in low for alt in word.split("|")) for word in words)


def _from_folder(source: Source, paths: Paths, options: Options) -> Outcome:
    """A weights file that is one file of another source's Drive folder, chosen by the words of its name."""
    folder = registry()[source.folder]
    file = source.files[0]
    store = paths.store(source)
    if options.mirror or (store / source.into).is_file() or source.login:
        return _weights_file(source, store, options, file, lambda: _locate(source, file, options))

    def locate() -> _Where:
        entries = download.drive_list(folder.drive_folder)
        chosen = [e for e in entries if _matches_words(Path(e.path).name, source.match)]
        if len(chosen) != 1:
            listing = ", ".join(e.path for e in entries) or "no files"
            raise FetchError(
                f"{source.name}: {len(chosen)} files of {folder.title} (Drive folder {folder.drive_folder}) have "
                f"all of {list(source.match)} in their name, expected one; the folder holds: {listing}. Download "
                f"the right one by hand to {store / source.into}"
            )
        log.info("%s: %s of %s", source.name, chosen[0].path, folder.title)
        return _Where(f"https://drive.google.com/uc?id={chosen[0].id}", drive=chosen[0].id)

    return _weights_file(source, store, options, file, locate)


def _drive_folder(source: Source, store: Path, options: Options) -> Outcome:
    """Every file of a Drive folder (or of ``<mirror>/<source name>/``) under ``store/into/``, by its path."""
    lock = Lock(store)
    if options.mirror:
        base = download.mirror_url(options.mirror, source.name)
        entries = [
            (path, _Where(f"{base}/{path}", url=f"{base}/{path}")) for path in download.mirror_list(base)
        ]
    else:
        entries = [
            (e.path, _Where(f"https://drive.google.com/uc?id={e.id}", drive=e.id))
            for e in download.drive_list(source.drive_folder)
        ]
    if not entries:
        raise FetchError(f"{source.name}: the folder lists no files")
    saved = 0
    for path, where in entries:
        rel = f"{source.into}/{path}"
        target = store / rel
        file = RemoteFile(name=path)
        state = check_placement(target, lock.manifest(rel)).state
        if state == "verified":
            continue
        if state == "changed":
            raise FetchError(
                f"{source.name}: {target} is not as fetched; restore it, or move it away and fetch again"
            )
        if state == "present":
            got = download.Received(target, sha256_file(target), target.stat().st_size)
            _verify(source, file, got, lock, options, f"{target} (placed by hand)", by_hand=True)
        else:
            partial = store / DOWNLOADS / source.name / path
            got = _receive(where, partial, file, options)
            _verify(source, file, got, lock, options, where.origin)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(partial, target)
            saved += 1
        lock.record_placement(rel, source.name, [f"{source.name}/{path}"], manifest_of(target))
    return Outcome(source, "fetched", f"{saved} of {len(entries)} file(s) saved under {store / source.into}")
