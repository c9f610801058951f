"""A run folder has one writer and keeps what it holds.

* :class:`FolderLock`: the process that runs in a folder holds ``run.lock`` (an exclusive ``flock``, with the
  holder's host and process id written inside); a second process refuses with one line naming the holder. The
  kernel releases the lock of a process that died, so a lock left by a killed job is no obstacle: the next run
  takes it over and says so.
* :func:`check_folder`: a finished run of another configuration (or an interrupted one) is never replaced
  silently: the run stops with one line naming the options that differ, unless ``overwrite=true``.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from ssl4gie.errors import Ssl4gieError
from ssl4gie.run.identity import differences
from ssl4gie.utils.io import write_json

log = logging.getLogger("ssl4gie")

LOCK = "run.lock"
IDENTITY = "identity.json"  # the identity of the run that last started in the folder (ssl4gie.run.identity)
# What a run writes besides the logs: removed before a run of another configuration replaces it (overwrite=true)
RESULTS = (
    "metrics.json",
    "best.pt",
    "last.pt",
    "history.csv",
    "per_image_test.csv",
    "per_frame.csv",
    "splits.json",
)


class FolderBusy(Ssl4gieError):
    """Another process is running in the run folder."""


class FolderLock:
    """``run.lock`` in ``folder``, held from :meth:`acquire` to :meth:`release` (a context manager too)."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK
        self.fd: int | None = None

    def acquire(self) -> FolderLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.read(fd, 4096).decode(errors="replace").strip()
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise Ssl4gieError(f"cannot lock {self.path}: {e.strerror or e}") from None
            raise FolderBusy(
                f"{self.path.parent} is in use by another run ({_describe(holder)}); two processes would write "
                "the same run folder: wait for it to end or stop it, or run elsewhere with hydra.run.dir=PATH"
            ) from None
        previous = os.read(fd, 4096).decode(errors="replace").strip()
        if previous:  # its holder ended without releasing it (killed): the kernel dropped its lock
            log.info("%s: the run that held it (%s) is gone; lock taken over", self.path, _describe(previous))
        holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        os.ftruncate(self.fd, 0)  # empty: released in order (the file stays; removing it would race a waiter)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _describe(holder: str) -> str:
    try:
        h = json.loads(holder)
        return f"process {h['pid']} on {h['host']}, since {h['since']}"
    except (ValueError, KeyError, TypeError):
        return "a process that left no name"


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def check_folder(
    folder: Path, fp: str, options: dict, overwrite: bool, earlier_replaceable: bool = False
) -> dict | None:
    """What ``folder`` holds, before a run of identity ``options`` (fingerprint ``fp``) starts there: the
    ``metrics.json`` of a finished run of the same configuration (nothing to do), else None. A finished or
    interrupted run of another configuration stops the run with one line naming the options that differ, unless
    ``overwrite``, which removes its results first. ``earlier_replaceable``: a finished run of an earlier version
    (which recorded no identity) is replaced as that version did (evaluations, which are cheap to repeat)."""
    metrics = _read_json(folder / "metrics.json") or {}
    finished = metrics.get("status") == "complete"
    if finished and metrics.get("fingerprint") == fp:
        return metrics
    recorded = _read_json(folder / IDENTITY) or {}
    # an interrupted run that recorded another identity (one of an earlier version, which did not record it, is
    # checked against last.pt's own fingerprint when the trainer resumes)
    interrupted = (folder / "last.pt").exists() and recorded.get("fingerprint") not in (None, fp)
    if not (finished or interrupted):
        return None
    what = "a finished run" if finished else "an interrupted run"
    theirs = metrics.get("fingerprint") if finished else recorded.get("fingerprint")
    if recorded.get("options") is not None and recorded.get("fingerprint") == theirs:
        changed = differences(recorded["options"], options)
    elif earlier_replaceable:
        log.info("%s: replacing the results of an earlier version, which recorded no identity", folder)
        return None
    else:  # finished by an earlier version, which did not record its options
        changed = f"fingerprint {theirs} → {fp}; its options were not recorded"
    if not overwrite:
        raise Ssl4gieError(
            f"{folder} holds {what} of another configuration ({changed}); it is kept. Run this one elsewhere "
            "(hydra.run.dir=PATH), or replace it with overwrite=true"
        )
    log.warning("overwrite=true: replacing %s of another configuration in %s (%s)", what, folder, changed)
    for name in RESULTS:
        (folder / name).unlink(missing_ok=True)
    return None


def record_identity(folder: Path, fp: str, options: dict) -> None:
    """``identity.json``: the identity of the run starting in ``folder``, for :func:`check_folder` later."""
    write_json(folder / IDENTITY, {"fingerprint": fp, "options": options})
