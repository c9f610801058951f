"""The end-of-sweep summary, read from a sweep folder as the launchers leave it: counts by state, failures grouped by
cause with one example each, cells of earlier launches left out, and the exit status."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ssl4gie.run.sweep_progress import SweepProgress
from ssl4gie.run.sweep_summary import summarise


def cell(sweep: Path, name: str, result: str | None, error: tuple[str, str] | None = None, age_s: float = 0):
    """A cell folder as Hydra and ssl4gie leave it; ``age_s``: how long before the launch it last ran."""
    folder = sweep / name
    (folder / ".hydra").mkdir(parents=True)
    overrides = folder / ".hydra" / "overrides.yaml"
    overrides.write_text(f"- {name}\n")
    if age_s:
        past = (sweep / "multirun.yaml").stat().st_mtime - age_s
        os.utime(overrides, (past, past))
    if result == "failed.json":
        kind, message = error
        record = {"type": kind, "error": message, "user_error": False, "traceback": "Traceback ..."}
        (folder / "failed.json").write_text(json.dumps(record))
    elif result is not None:
        (folder / result).write_text(json.dumps({"status": "complete"}))
    return folder


@pytest.fixture
def sweep(tmp_path) -> Path:
    sweep = tmp_path / "sweeps" / "demo"
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("hydra: {}\n")  # written by Hydra when the launch starts
    return sweep


def test_counts_by_state_and_failures_grouped_by_cause_with_an_example(sweep):
    done = cell(sweep, "lr=0.0001", "metrics.json")
    cell(sweep, "dataset=cvc_300", "skipped.json")
    oom = [
        cell(
            sweep,
            f"batch={b}",
            "failed.json",
            ("OutOfMemoryError", f"CUDA out of memory. Tried to allocate {g} GiB"),
        )
        for b, g in ((64, "2.00"), (96, "4.50"))
    ]
    lr = cell(sweep, "lr=-1", "failed.json", ("ValueError", "Invalid learning rate: -1.0\nmore detail"))
    killed = cell(sweep, "seed=3", None)
    cell(sweep, "old=cell", "failed.json", ("ValueError", "from an earlier launch"), age_s=3600)

    summary = summarise(sweep, total=7)
    assert {k: len(v) for k, v in summary.cells.items()} == {
        "done": 1,
        "skipped": 1,
        "failed": 3,
        "no result": 1,
    }
    assert summary.cells["done"] == [done] and summary.not_started == 1 and not summary.ok
    assert summary.causes == {
        "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB": sorted(oom),
        "ValueError: Invalid learning rate: -1.0": [lr],
    }
    assert summary.lines() == [
        f"[sweep] 7 cells: 1 done, 1 skipped, 3 failed, 1 no result, 1 not started ({sweep})",
        "[sweep]   2 failed: OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
        f"[sweep]     e.g. {sorted(oom)[0] / 'failed.json'}",
        "[sweep]   1 failed: ValueError: Invalid learning rate: -1.0",
        f"[sweep]     e.g. {lr / 'failed.json'}",
        "[sweep]   1 ended without a result (killed, out of memory, or still running)",
        f"[sweep]     e.g. {killed / 'run.log'}",
    ]


def test_a_sweep_that_succeeded_ends_with_its_counts_and_status_0(sweep, caplog):
    cell(sweep, "lr=0.0001", "metrics.json")
    cell(sweep, "dataset=cvc_300", "skipped.json")
    cell(
        sweep, "old=cell", "failed.json", ("ValueError", "fixed since"), age_s=3600
    )  # not part of this launch
    progress = SweepProgress(interval_s=3600)
    config = OmegaConf.create(
        {"hydra": {"sweep": {"dir": str(sweep)}, "sweeper": {}, "overrides": {"task": []}}}
    )
    progress.on_multirun_start(config)
    progress.total = 2
    with caplog.at_level(logging.INFO, logger="ssl4gie.sweep"):
        progress.on_multirun_end(config)  # no SystemExit
    assert f"[sweep] 2 cells: 1 done, 1 skipped, 0 failed ({sweep})" in caplog.messages


def test_a_sweep_with_a_failed_cell_exits_1_after_its_summary(sweep, caplog):
    cell(sweep, "lr=-1", "failed.json", ("ValueError", "Invalid learning rate: -1.0"))
    progress = SweepProgress(interval_s=3600)
    config = OmegaConf.create(
        {"hydra": {"sweep": {"dir": str(sweep)}, "sweeper": {}, "overrides": {"task": []}}}
    )
    progress.on_multirun_start(config)
    with caplog.at_level(logging.INFO, logger="ssl4gie.sweep"), pytest.raises(SystemExit) as exit_:
        progress.on_multirun_end(config)
    assert exit_.value.code == 1
    assert "[sweep]   1 failed: ValueError: Invalid learning rate: -1.0" in caplog.messages


def test_a_finished_cell_whose_latest_run_was_refused_counts_as_failed(sweep):
    """A relaunch with another configuration leaves the finished run in place and a failed.json beside it: this
    launch's cell failed, whatever the folder still holds."""
    kept = cell(sweep, "row=rn_na_na", "metrics.json")
    message = f"{kept} holds a finished run of another configuration (trainer.epochs 2 → 3); it is kept."
    (kept / "failed.json").write_text(
        json.dumps({"type": "Ssl4gieError", "error": message, "user_error": True})
    )
    summary = summarise(sweep, total=1)
    assert summary.cells["failed"] == [kept] and not summary.cells["done"] and not summary.ok
