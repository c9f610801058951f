"""The end of a sweep: what each cell of this launch left in its folder, in a few lines.

Read from the sweep folder only (never log text), so it works with every launcher: a cell is done when its
``metrics.json`` exists and no ``failed.json`` says that its latest run failed, skipped with a ``skipped.json`` (its dataset is absent and ``skip_missing_data`` allowed it),
failed with a ``failed.json``, and without a result when none exists (a job killed by the scheduler or out of memory).
Failures are grouped by cause (exception type and message, numbers aside), each with one example cell.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

STATES = ("done", "skipped", "failed", "no result")


def cell_state(cell: Path) -> str:
    """The state of one cell folder (one of :data:`STATES`). A ``failed.json`` means that the cell's latest run
    failed (every run that ends well removes it), also beside a ``metrics.json``: a finished run of another
    configuration that refused to be replaced is kept, and the cell of this launch has failed."""
    if (cell / "failed.json").exists():
        return "failed"
    if (cell / "metrics.json").exists():
        return "done"
    if (cell / "skipped.json").exists():
        return "skipped"
    return "no result"


def launched_cells(sweep_dir: Path) -> list[Path]:
    """Cell folders of the latest launch of the sweep in ``sweep_dir``.

    Hydra writes a cell's ``.hydra/overrides.yaml`` each time the cell runs (also when it only finds its run
    complete) and the sweep's ``multirun.yaml`` when the launch starts, so folders left by earlier launches of other
    cells are told apart by comparing the two files' times (both set by the file system that holds them).
    """
    cells = sorted(h.parent for h in sweep_dir.glob("**/.hydra") if (h / "overrides.yaml").exists())
    start = sweep_dir / "multirun.yaml"
    if not start.exists():
        return cells
    since = start.stat().st_mtime_ns
    return [c for c in cells if (c / ".hydra" / "overrides.yaml").stat().st_mtime_ns >= since]


def _cause(failed_json: Path) -> tuple[str, str]:
    """(grouping key, message) of a ``failed.json``: the exception type and first line of its message."""
    try:
        record = json.loads(failed_json.read_text())
        message = f"{record.get('type', 'Error')}: {str(record.get('error', '')).strip().splitlines()[0]}"
    except (OSError, ValueError, IndexError):
        message = f"unreadable {failed_json.name}"
    # numbers (sizes, learning rates, memory amounts, ids) differ between cells that fail for the same reason
    return re.sub(r"\d+(\.\d+)?", "#", message), message


@dataclass
class SweepSummary:
    """Counts by state, failures grouped by cause (message -> cells), cells that never got a folder."""

    sweep_dir: Path
    cells: dict[str, list[Path]] = field(default_factory=lambda: {s: [] for s in STATES})
    causes: dict[str, list[Path]] = field(default_factory=dict)  # first message of a cause -> its cells
    not_started: int = 0

    @property
    def ok(self) -> bool:
        return not (self.cells["failed"] or self.cells["no result"] or self.not_started)

    def lines(self, limit: int = 160) -> list[str]:
        """The summary as log lines: one of counts, then one per cause with an example path."""
        counts = ", ".join(f"{len(self.cells[s])} {s}" for s in STATES if s != "no result" or self.cells[s])
        total = sum(len(v) for v in self.cells.values()) + self.not_started
        not_started = f", {self.not_started} not started" if self.not_started else ""
        out = [f"[sweep] {total} cells: {counts}{not_started} ({self.sweep_dir})"]
        for message, cells in sorted(self.causes.items(), key=lambda kv: -len(kv[1])):
            short = message if len(message) <= limit else message[: limit - 3] + "..."
            out.append(f"[sweep]   {len(cells)} failed: {short}")
            out.append(f"[sweep]     e.g. {cells[0] / 'failed.json'}")
        if cells := self.cells["no result"]:
            out.append(
                f"[sweep]   {len(cells)} ended without a result (killed, out of memory, or still running)"
            )
            out.append(f"[sweep]     e.g. {cells[0] / 'run.log'}")
        return out


def summarise(sweep_dir: Path, total: int | None = None) -> SweepSummary:
    """The summary of the latest launch in ``sweep_dir``; ``total``: how many cells it has (None: unknown)."""
    summary = SweepSummary(Path(sweep_dir))
    by_key: dict[str, str] = {}
    for cell in launched_cells(summary.sweep_dir):
        state = cell_state(cell)
        summary.cells[state].append(cell)
        if state == "failed":
            key, message = _cause(cell / "failed.json")
            summary.causes.setdefault(by_key.setdefault(key, message), []).append(cell)
    if total is not None:
        summary.not_started = max(total - sum(len(v) for v in summary.cells.values()), 0)
    return summary
