"""A run folder has one writer and keeps what it holds: the lock names its holder and is taken over from a process
that died; a finished or interrupted run of another configuration is kept, naming the options that differ."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from ssl4gie.errors import Ssl4gieError
from ssl4gie.run.folder import IDENTITY, LOCK, FolderBusy, FolderLock, check_folder, record_identity


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    with FolderLock(tmp_path):
        holder = json.loads((tmp_path / LOCK).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(FolderBusy, match=rf"in use by another run \(process {os.getpid()} on "):
            FolderLock(tmp_path).acquire()
        # another process sees it held too
        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                f"from ssl4gie.run.folder import FolderLock; FolderLock({str(tmp_path)!r}).acquire()",
            ],
            capture_output=True,
            text=True,
        )
        assert probe.returncode != 0 and "FolderBusy" in probe.stderr
    assert (tmp_path / LOCK).read_text() == ""  # released in order
    FolderLock(tmp_path).acquire().release()


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path, caplog):
    # a process that takes the lock and dies without releasing it (as SIGKILL or a node failure leaves it)
    subprocess.run(
        [
            sys.executable,
            "-c",
            f"import os; from ssl4gie.run.folder import FolderLock; FolderLock({str(tmp_path)!r}).acquire(); os._exit(0)",
        ],
        check=True,
    )
    assert json.loads((tmp_path / LOCK).read_text())["pid"] != os.getpid()
    with caplog.at_level("INFO", logger="ssl4gie"), FolderLock(tmp_path):
        assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
    assert "is gone; lock taken over" in caplog.text


def finished(folder, fp, options):
    record_identity(folder, fp, options)
    (folder / "metrics.json").write_text(json.dumps({"status": "complete", "fingerprint": fp}))
    (folder / "best.pt").write_bytes(b"weights")


def test_a_finished_run_of_another_configuration_is_kept_naming_the_options(tmp_path):
    before = {"trainer": {"epochs": 2, "lr": 1e-4}, "seed": 42}
    finished(tmp_path, "aaaa", before)
    same = check_folder(tmp_path, "aaaa", before, overwrite=False)
    assert same == {"status": "complete", "fingerprint": "aaaa"}  # nothing to do
    now = {"trainer": {"epochs": 3, "lr": 1e-4}, "seed": 42}
    with pytest.raises(Ssl4gieError) as error:
        check_folder(tmp_path, "bbbb", now, overwrite=False)
    message = str(error.value)
    assert "holds a finished run of another configuration (trainer.epochs 2 → 3); it is kept" in message
    assert "overwrite=true" in message and "\n" not in message
    assert (tmp_path / "best.pt").read_bytes() == b"weights"
    assert json.loads((tmp_path / IDENTITY).read_text())["fingerprint"] == "aaaa"
    # overwrite=true: its results go, the new run starts
    assert check_folder(tmp_path, "bbbb", now, overwrite=True) is None
    assert not (tmp_path / "best.pt").exists() and not (tmp_path / "metrics.json").exists()


def test_an_interrupted_run_of_another_configuration_is_kept(tmp_path):
    record_identity(tmp_path, "aaaa", {"trainer": {"epochs": 2}})
    (tmp_path / "last.pt").write_bytes(b"state")
    assert check_folder(tmp_path, "aaaa", {"trainer": {"epochs": 2}}, overwrite=False) is None  # resumes
    with pytest.raises(
        Ssl4gieError, match=r"an interrupted run of another configuration \(trainer.epochs 2 → 3\)"
    ):
        check_folder(tmp_path, "bbbb", {"trainer": {"epochs": 3}}, overwrite=False)
    assert (tmp_path / "last.pt").exists()


def test_results_of_an_earlier_version_are_named_by_fingerprint(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"status": "complete", "fingerprint": "aaaa"}))
    with pytest.raises(Ssl4gieError, match="fingerprint aaaa → bbbb; its options were not recorded"):
        check_folder(tmp_path, "bbbb", {}, overwrite=False)
    # an evaluation of an earlier version is replaced, as that version did
    assert check_folder(tmp_path, "bbbb", {}, overwrite=False, earlier_replaceable=True) is None
