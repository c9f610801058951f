"""``logger=wandb``: one Weights & Biases run per run folder, grouped by sweep, offline by default.

Offline (``mode: offline``) writes the run under ``<run folder>/wandb/offline-run-*`` and needs no account or
network, which compute nodes often lack; ``wandb sync <that folder>`` uploads it later. ``mode: online`` logs
live (after ``wandb login``). History rows are plotted against ``epoch``.

A run that resumes from ``last.pt`` continues, online, the W&B run its folder noted (``trackers.json``), with
``resume="allow"``. W&B cannot continue an offline run (wandb/wandb#2423: offline runs with one id replace each
other when synced), so offline the resumed part is a new run with the same name and group, and the log names both.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ssl4gie.errors import ConfigError
from ssl4gie.loggers.base import RUNNING, SUCCESS, RunInfo, RunLogger, numeric, remember, require, unfinished

log = logging.getLogger(__name__)
MODES = ("offline", "online", "disabled")


class WandbLogger(RunLogger):
    """Logs to project ``project`` (entity ``entity``: your default when None) in ``mode``; ``dir`` None: the run
    folder; ``group`` None: the sweep's name (none for a single run)."""

    def __init__(
        self,
        project: str = "ssl4gie",
        entity: str | None = None,
        mode: str = "offline",
        dir: str | None = None,
        group: str | None = None,
        tags: Sequence[str] = (),
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"logger.mode={mode} is not valid for logger=wandb; valid: {', '.join(MODES)}")
        self.project, self.entity, self.mode, self.dir = project, entity, mode, dir
        self.group, self.tags = group, list(tags)
        self.run = None
        self._epoch = 0
        self.output_dir: Path | None = None

    def start(self, run: RunInfo) -> None:
        wandb = require("wandb", "wandb", "wandb")
        folder = Path(self.dir) if self.dir else run.output_dir
        folder.mkdir(parents=True, exist_ok=True)
        self.output_dir = run.output_dir
        earlier = unfinished(run.output_dir, "wandb", project=self.project, entity=self.entity)
        resume_id = None
        if earlier and self.mode == "online" and earlier.get("mode") == "online":
            resume_id = earlier.get("id")
        elif earlier and self.mode == "offline":
            log.info(
                "W&B cannot continue an offline run: the part after this resume is a new offline run beside "
                "the interrupted %s (same name and group); sync both",
                earlier.get("id"),
            )
        self.run = wandb.init(
            id=resume_id,
            resume="allow" if resume_id else None,
            project=self.project,
            entity=self.entity,
            mode=self.mode,
            dir=str(folder),
            name=run.name,
            group=self.group or run.group,
            tags=self.tags or None,
            config={**run.config, "ssl4gie": run.tags},
            # a sweep run by Hydra's basic launcher opens one run per cell in the same process
            reinit="create_new",
            # our own log already holds the console; W&B's banner would only repeat it per cell
            settings=wandb.Settings(console="off", silent=True),
        )
        remember(
            run.output_dir,
            "wandb",
            id=self.run.id,
            project=self.project,
            entity=self.entity,
            mode=self.mode,
            status=RUNNING,
        )
        self.run.define_metric("epoch")
        self.run.define_metric("*", step_metric="epoch")
        if self.mode == "offline":
            offline = Path(self.run.dir).parent  # run.dir is its files/ folder; wandb sync takes the run's
            log.info("W&B run %s offline in %s; upload with: wandb sync %s", self.run.id, offline, offline)
        else:
            log.info("W&B run %s%s: %s", self.run.id, " (continued)" if resume_id else "", self.run.url)

    def log_epoch(self, row: Mapping[str, Any]) -> None:
        self._epoch = int(row["epoch"])
        self.run.log(dict(numeric(row)))

    def log_final(self, metrics: Mapping[str, float], epoch: int) -> None:
        for key, value in metrics.items():
            self.run.summary[f"final/{key}"] = value

    def log_figures(self, paths: Sequence[Path]) -> None:
        import wandb

        if paths:
            self.run.log({"epoch": self._epoch, **{f"figures/{p.stem}": wandb.Image(str(p)) for p in paths}})

    def finish(self, status: str) -> None:
        if self.run is not None:
            import wandb

            self.run.finish(exit_code=0 if status == SUCCESS else 1)
            self.run = None
            remember(self.output_dir, "wandb", status=status)
            # finish() returns before W&B's service process has written the last records of an offline run;
            # stopping the service waits for them (a job that ends, or is preempted, right after keeps them all)
            wandb.teardown()
