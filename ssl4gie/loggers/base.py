"""What every experiment tracker implements, the facts a tracker run is named by, and the factory.

A tracker is a callback: the engine hands it each row it appends to the history (the rows of ``history.csv``), the
CLI hands it the resolved config first and the run's final metrics and figures last. ``history.csv`` and
``metrics.json`` stay the record that results tables read; a tracker is a view of them, so it never changes what a
run computes (``logger`` is outside the fingerprint) and a tracker that fails while logging costs a warning, not
the run.

No tracker library is imported here: the chosen tracker's module (``logger._target_``) is imported when it is
built, and that module imports its library when the tracker starts (:func:`require`).

A tracker notes its run in the run folder (``trackers.json``: :func:`remember`), so that an interrupted run that
resumes from ``last.pt`` continues the same tracker run instead of opening a second one (:func:`unfinished`).
"""

from __future__ import annotations

import importlib
import json
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from ssl4gie.errors import ConfigError
from ssl4gie.utils.io import write_json

log = logging.getLogger(__name__)

# How a run ended, as finish() is told (each tracker maps it to its own vocabulary).
SUCCESS, FAILED, KILLED = "success", "failed", "killed"
RUNNING = "running"  # noted at start: a run killed outright (SIGKILL, a node lost) never gets to finish()
TRACKER_FILE = "trackers.json"  # in the run folder: {tracker: {its run's id, where it lives, status}}


def _notes(output_dir: Path) -> dict:
    path = output_dir / TRACKER_FILE
    try:
        notes = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError:
        log.warning("%s is not JSON; its tracker runs are not continued", path)
        return {}
    return notes if isinstance(notes, dict) else {}


def remember(output_dir: Path, tracker: str, **facts: Any) -> None:
    """Note (or update) ``facts`` about ``tracker``'s run of this run folder in ``trackers.json``."""
    notes = _notes(output_dir)
    notes[tracker] = {**(notes.get(tracker) or {}), **facts}
    write_json(output_dir / TRACKER_FILE, notes)


def unfinished(output_dir: Path, tracker: str, **where: Any) -> dict | None:
    """The facts ``tracker`` noted of this run folder's earlier run, if that run did not end in success and lives
    ``where`` this one logs (same tracking URI, project, ...): the tracker run a resumed run continues."""
    facts = _notes(output_dir).get(tracker)
    if not isinstance(facts, dict) or facts.get("status") == SUCCESS:
        return None
    if any(facts.get(key) != value for key, value in where.items()):
        return None
    return facts


@dataclass(frozen=True)
class RunInfo:
    """One run as a tracker names it.

    ``name``: the run folder relative to the sweep folder for a sweep cell (``column=kvasir_seg,row=rn_na_na,...``),
    else relative to ``paths.output_root`` (``train/segmentation/kvasir_seg/resnet50-random/seed42``). ``group``:
    the sweep's name for a sweep cell, None for a single run. ``config``: the resolved config without ``hydra``.
    """

    output_dir: Path
    output_root: Path
    name: str
    group: str | None
    fingerprint: str
    config: dict = field(repr=False)

    @property
    def tags(self) -> dict[str, str]:
        """Facts that find a run again: its folder, fingerprint and (for a sweep cell) sweep."""
        tags = {"ssl4gie.run_dir": str(self.output_dir), "ssl4gie.fingerprint": self.fingerprint}
        if self.group is not None:
            tags["ssl4gie.sweep"] = self.group
        return tags


class RunLogger:
    """A tracker: every hook is a no-op here; subclasses override what their tracker records.

    Call order: ``start`` once, ``log_epoch`` per history row, ``log_final`` and ``log_figures`` at the end of a
    completed run, ``finish`` once whatever happened (also after a failure, with that status).
    """

    def start(self, run: RunInfo) -> None:
        """Open the tracker's run and record ``run.config``."""

    def log_epoch(self, row: Mapping[str, Any]) -> None:
        """One history row, exactly as the engine appends it: ``epoch``, ``step`` and metric values."""

    def log_final(self, metrics: Mapping[str, float], epoch: int) -> None:
        """The run's results (``metrics.json``'s ``val/`` and ``test/`` values), recorded at ``epoch``."""

    def log_figures(self, paths: Sequence[Path]) -> None:
        """The figure files the run wrote (PNG)."""

    def finish(self, status: str) -> None:
        """Close the run with ``status`` (SUCCESS, FAILED or KILLED); write everything out."""


def require(module: str, option: str, extra: str) -> ModuleType:
    """``import module``, or a one-line ConfigError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"logger={option} needs the {module} package: pip install -e '.[{extra}]'"
        ) from None


def numeric(values: Mapping[str, Any]) -> Iterator[tuple[str, float]]:
    """The (key, float) pairs of ``values`` a tracker can plot: numbers, not bools, strings or lists."""
    for key, value in values.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            yield key, float(value)


def final_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """What a tracker records at the end: the finite numeric ``val/`` and ``test/`` entries of ``metrics``."""
    return {k: v for k, v in numeric(metrics) if k.startswith(("val/", "test/")) and math.isfinite(v)}


def run_info(cfg: DictConfig, fingerprint: str) -> RunInfo:
    """The names of this run: a sweep cell is named within its sweep and grouped by ``sweep_name``."""
    output_dir = Path(cfg.paths.output_dir).resolve()
    output_root = Path(cfg.paths.output_root).resolve()
    group, base = None, output_root
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        group, base = str(cfg.get("sweep_name") or "sweep"), Path(HydraConfig.get().sweep.dir).resolve()
    try:
        name = output_dir.relative_to(base).as_posix()
    except ValueError:  # a run folder set outside the output root (hydra.run.dir=...)
        name = HydraConfig.get().job.override_dirname if group else output_dir.name
    config = OmegaConf.to_container(cfg, resolve=True)
    config.pop("hydra", None)
    return RunInfo(output_dir, output_root, name or output_dir.name, group, fingerprint, config)


def build_loggers(node: DictConfig | Mapping | None) -> list[RunLogger]:
    """The trackers ``logger=...`` chooses: none for ``csv`` (no ``_target_``; ``history.csv`` is always written),
    else ``_target_`` built with the group's other keys (``name`` excepted)."""
    if node is None:
        return []
    options = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    target = options.pop("_target_", None)
    name = options.pop("name", target)
    if not target:
        return []
    module_name, _, class_name = str(target).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        raise ConfigError(
            f"logger={name}: logger._target_={target} is not a class that can be imported; valid loggers: "
            "csv, tensorboard, mlflow, wandb (conf/logger/)"
        ) from None
    try:
        return [cls(**options)]
    except TypeError as e:
        raise ConfigError(f"logger={name}: {e} (see conf/logger/{name}.yaml for its options)") from None


class Trackers(RunLogger):
    """Several trackers as one; a context manager that finishes them with the way the block ended.

    ``start`` raises (a tracker that cannot open its run is a configuration problem, best seen before training);
    the other hooks log a tracker's first error as a warning and skip that tracker afterwards, so that a tracker
    that breaks mid-run (a server gone away) never fails the run whose record is ``history.csv``.
    """

    def __init__(self, loggers: Sequence[RunLogger] = ()) -> None:
        self.loggers: list[RunLogger] = list(loggers)
        self._broken: set[int] = set()
        self._started: list[RunLogger] = []

    def start(self, run: RunInfo) -> None:
        for tracker in self.loggers:
            tracker.start(run)
            self._started.append(tracker)

    def _each(self, hook: str, *args: Any) -> None:
        for tracker in self._started:
            if id(tracker) in self._broken:
                continue
            try:
                getattr(tracker, hook)(*args)
            except Exception:
                self._broken.add(id(tracker))
                log.warning(
                    "%s.%s failed; that tracker records nothing more for this run (history.csv and "
                    "metrics.json are unaffected)",
                    type(tracker).__name__,
                    hook,
                    exc_info=True,
                )

    def log_epoch(self, row: Mapping[str, Any]) -> None:
        self._each("log_epoch", row)

    def log_final(self, metrics: Mapping[str, float], epoch: int) -> None:
        self._each("log_final", metrics, epoch)

    def log_figures(self, paths: Sequence[Path]) -> None:
        self._each("log_figures", [Path(p) for p in paths])

    def finish(self, status: str) -> None:
        # even a tracker that broke mid-run gets the chance to close its run
        self._broken.clear()
        self._each("finish", status)
        self._started.clear()

    def __enter__(self) -> Trackers:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            status = SUCCESS
        elif issubclass(exc_type, KeyboardInterrupt | SystemExit):
            status = KILLED  # Ctrl-C, or a preemption signal after last.pt was saved (the run resumes later)
        else:
            status = FAILED
        self.finish(status)
