"""``logger=mlflow``: one MLflow run per run folder, in the experiment named by the sweep (``ssl4gie`` for a single
run), through ``MlflowClient`` (no global active run, so sequential sweep cells in one process stay apart).

``tracking_uri: null`` is a file store in ``<paths.output_root>/mlruns``: one folder per run, so concurrent SLURM
cells never contend for one database file on a network disk. MLflow 3 keeps that backend in maintenance mode and
asks for an opt-in (``MLFLOW_ALLOW_FILE_STORE``), which this logger sets for its own store; any other URI
(``sqlite:///...``, ``http://server:5000``, ``databricks``) is passed to MLflow as it is.

A run that resumes from ``last.pt`` continues the MLflow run its folder noted (``trackers.json``) when that run
did not finish and is still in the store: it is set running again and gets the epochs after the resume (an epoch
logged just before the interruption and run again is logged twice, at the same step).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ssl4gie.loggers.base import (
    FAILED,
    KILLED,
    RUNNING,
    SUCCESS,
    RunInfo,
    RunLogger,
    numeric,
    remember,
    require,
    unfinished,
)

log = logging.getLogger(__name__)
STATUS = {SUCCESS: "FINISHED", FAILED: "FAILED", KILLED: "KILLED"}
BATCH = 100  # MLflow's log_batch takes at most 1000 metrics and 100 params per call
MAX_PARAM = 500  # the shortest parameter-value limit of MLflow's stores; the whole config is also an artifact
_NOT_IN_A_NAME = re.compile(r"[^\w./\- ]")  # what MLflow refuses in a parameter or metric name


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"trainer.lr": "0.0001", ...}``: nested dicts joined with dots, leaves as text (lists included)."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        dotted = f"{prefix}{_NOT_IN_A_NAME.sub('_', str(key))}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = str(value)[:MAX_PARAM]
    return flat


class MlflowLogger(RunLogger):
    """Logs to ``tracking_uri`` (None: the file store ``<paths.output_root>/mlruns``), experiment ``experiment``
    (None: the sweep's name, else ``ssl4gie``)."""

    def __init__(self, tracking_uri: str | None = None, experiment: str | None = None) -> None:
        self.tracking_uri, self.experiment = tracking_uri, experiment
        self.client = None
        self.run_id: str | None = None
        self.output_dir: Path | None = None

    def _experiment_id(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name)
        except Exception:  # another cell of the sweep created it first
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def start(self, run: RunInfo) -> None:
        require("mlflow", "mlflow", "mlflow")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = self.tracking_uri
        if not uri:
            uri = (run.output_root / "mlruns").as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        self.output_dir = run.output_dir
        experiment = self.experiment or run.group or "ssl4gie"
        known: dict[str, str] = {}
        if earlier := self._continuable(run.output_dir, uri):
            self.run_id, known = earlier.info.run_id, dict(earlier.data.params)
            self.client.update_run(self.run_id, status="RUNNING")
            resumes = int(earlier.data.tags.get("ssl4gie.resumes", "0")) + 1
            self.client.set_tag(self.run_id, "ssl4gie.resumes", str(resumes))
            log.info("MLflow: continuing run %s (this run folder's interrupted run) at %s", self.run_id, uri)
        else:
            created = self.client.create_run(
                self._experiment_id(experiment), run_name=run.name, tags=run.tags
            )
            self.run_id = created.info.run_id
            log.info("MLflow: run %s in experiment %s at %s", self.run_id, experiment, uri)
        remember(run.output_dir, "mlflow", run_id=self.run_id, tracking_uri=uri, status=RUNNING)
        # a continued run keeps its parameters (MLflow's are write-once); options outside a run's identity that
        # changed since (e.g. trainer.num_workers) are in the config.yaml written now
        params = [Param(k, v) for k, v in flatten(run.config).items() if k not in known]
        for i in range(0, len(params), BATCH):
            self.client.log_batch(self.run_id, params=params[i : i + BATCH])
        self.client.log_dict(self.run_id, run.config, "config.yaml")

    def _continuable(self, output_dir: Path, uri: str):
        """The MLflow run this folder noted, if it did not finish and is still in the store at ``uri``."""
        from mlflow.exceptions import MlflowException

        noted = unfinished(output_dir, "mlflow", tracking_uri=uri)
        if noted is None or not noted.get("run_id"):
            return None
        try:
            earlier = self.client.get_run(noted["run_id"])
        except MlflowException:
            log.info("MLflow: run %s noted in %s is gone; opening a new one", noted["run_id"], output_dir)
            return None
        return earlier if earlier.info.lifecycle_stage == "active" else None

    def _metrics(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in values.items()]
        for i in range(0, len(metrics), BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + BATCH])

    def log_epoch(self, row: Mapping[str, Any]) -> None:
        self._metrics({k: v for k, v in numeric(row) if k != "epoch"}, int(row["epoch"]))

    def log_final(self, metrics: Mapping[str, float], epoch: int) -> None:
        self._metrics({f"final/{k}": v for k, v in metrics.items()}, epoch)

    def log_figures(self, paths: Sequence[Path]) -> None:
        for path in paths:
            self.client.log_artifact(self.run_id, str(path), artifact_path="figures")

    def finish(self, status: str) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, STATUS.get(status, "FAILED"))
            remember(self.output_dir, "mlflow", status=status)
            self.run_id = None
