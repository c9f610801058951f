"""A tracker for the tests: it keeps what it is told (``logger._target_=helpers.trackers.Recorder``)."""

from __future__ import annotations

from ssl4gie.loggers.base import RunLogger


class Recorder(RunLogger):
    """A tracker that keeps what it is told (``logger._target_=helpers.trackers.Recorder``)."""

    calls: list = []  # noqa: RUF012  one test at a time reads it

    def __init__(self, fail_at: str | None = None) -> None:
        self.fail_at = fail_at

    def start(self, run):
        Recorder.calls.append(("start", run.name, run.group))

    def log_epoch(self, row):
        Recorder.calls.append(("epoch", dict(row)))
        if self.fail_at == "log_epoch":
            raise RuntimeError("tracker server went away")

    def log_final(self, metrics, epoch):
        Recorder.calls.append(("final", dict(metrics), epoch))

    def finish(self, status):
        Recorder.calls.append(("finish", status))
