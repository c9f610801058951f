"""A Hydra callback that reports a sweep's progress from the driver: cells done / running / failed / pending, and
at the end a summary (:mod:`ssl4gie.run.sweep_summary`) with an exit status that says whether every cell succeeded.

It watches the sweep folder (never log text): a cell is done when its ``metrics.json`` exists, failed when it has a
``failed.json``, running when Hydra has created its folder but neither file exists yet. Works with every launcher
(basic, submitit_local, submitit_slurm), since the driver process is the one that runs ``on_multirun_start``.
"""

from __future__ import annotations

import logging
import math
import threading
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from ssl4gie.run.sweep_summary import cell_state, summarise

log = logging.getLogger("ssl4gie.sweep")


def count_cells(config: DictConfig) -> int:
    """Number of cells of the sweep: sweeper params, overridden per key by sweep overrides on the command line."""
    params = dict((config.hydra.sweeper.get("params") or {}).items())
    parser = OverridesParser.create()
    by_key = {o.get_key_element(): o for o in parser.parse_overrides([f"{k}={v}" for k, v in params.items()])}
    by_key.update({o.get_key_element(): o for o in parser.parse_overrides(list(config.hydra.overrides.task))})
    return math.prod(len(list(o.sweep_iterator())) if o.is_sweep_override() else 1 for o in by_key.values())


def cell_status(sweep_dir: Path) -> dict[str, list[Path]]:
    """Cell folders under ``sweep_dir`` by status."""
    status: dict[str, list[Path]] = {"done": [], "failed": [], "running": []}
    for hydra_dir in sorted(sweep_dir.glob("**/.hydra")):
        # a skipped cell is finished (its dataset is not on disk, skip_missing_data); no result yet: running
        state = cell_state(hydra_dir.parent)
        status[{"skipped": "done", "no result": "running"}.get(state, state)].append(hydra_dir.parent)
    return status


class SweepProgress(Callback):
    """Logs ``[sweep] 3/72 done, 1 failed, 2 running, 66 pending`` whenever the counts change."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: tuple | None = None
        self._reported_failures: set[Path] = set()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        # submitit pickles the callbacks along with the job: send only the settings, not the watcher.
        return {"interval_s": self.interval_s}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.sweep_dir = Path(config.hydra.sweep.dir)
        try:
            self.total = count_cells(config)
        except Exception:  # a sweeper with its own parameter syntax: report without a total
            self.total = None
        log.info("[sweep] %s cells -> %s", self.total if self.total is not None else "?", self.sweep_dir)
        self._thread = threading.Thread(target=self._watch, name="sweep-progress", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.report()

    def report(self) -> None:
        with self._lock:  # the watcher thread and the job callbacks both report
            status = cell_status(self.sweep_dir)
            for cell in status["failed"]:
                if cell not in self._reported_failures:
                    self._reported_failures.add(cell)
                    log.warning(
                        "[sweep] failed: %s (see %s and %s)",
                        cell.name,
                        cell / "failed.json",
                        cell / "run.log",
                    )
            counts = tuple(len(status[k]) for k in ("done", "failed", "running"))
            if counts == self._last:
                return
            self._last = counts
            done, failed, running = counts
            pending = (
                "" if self.total is None else f", {max(self.total - done - failed - running, 0)} pending"
            )
            total = "" if self.total is None else f"/{self.total}"
            log.info("[sweep] %d%s done, %d failed, %d running%s", done, total, failed, running, pending)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        # With the basic launcher the jobs run in the driver: report after each.
        if hasattr(self, "sweep_dir"):
            self.report()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """The summary of the sweep; exit status 1 (``SystemExit``, no traceback) when a cell failed or has no
        result. (A failed cell records ``failed.json`` and returns, so Hydra reaches this point with any launcher.)"""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.report()
        summary = summarise(self.sweep_dir, self.total)
        for line in summary.lines():
            (log.info if summary.ok else log.error)("%s", line)
        if summary.cells["done"]:
            log.info("[sweep] tables: python -m ssl4gie.results %s", self.sweep_dir)
        if not summary.ok:
            raise SystemExit(1)
