"""The run flow, called by ``run.py`` through Hydra for every run and sweep cell: :func:`run` (Hydra's task
function: a user-input problem becomes one line, a failure ``failed.json``) and :func:`execute`, the steps of one run.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from contextlib import ExitStack
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from ssl4gie.engine import distributed
from ssl4gie.errors import Ssl4gieError
from ssl4gie.loggers import Trackers
from ssl4gie.run.modes import finish, fit, load_checkpoint, predict_frames, test
from ssl4gie.run.prepare import build, claim, prepare, skip_absent_input
from ssl4gie.utils.io import write_json

log = logging.getLogger("ssl4gie")


def _multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run(cfg: DictConfig) -> float | None:
    """Hydra task function; returns the monitored validation metric (for sweepers).

    A user-input problem (:class:`Ssl4gieError`) is logged as one line and ends a single run with exit status 2.
    In a multirun every failure is recorded in the cell's ``failed.json`` (with its traceback) and logged as one line;
    the cell returns, the other cells go on, and the sweep's summary reports it (``ssl4gie.run.sweep_progress``).
    """
    output_dir = Path(cfg.paths.output_dir)
    try:
        result = execute(cfg)
        (output_dir / "failed.json").unlink(missing_ok=True)  # a rerun that succeeded
        return result
    except Exception as e:
        if int(os.environ.get("RANK", "0")) == 0:
            record_failure(output_dir, e)
        if isinstance(e, Ssl4gieError):
            log.error("%s", e)
            if not _multirun():
                raise SystemExit(2) from None
        if _multirun():
            if not isinstance(e, Ssl4gieError):
                log.error("%s: %s (traceback in %s)", type(e).__name__, e, output_dir / "failed.json")
            return None
        raise
    finally:
        distributed.teardown()


def record_failure(output_dir: Path, error: BaseException) -> None:
    """``failed.json`` beside the run's log: what went wrong, for people and for ``ssl4gie.results``."""
    try:
        write_json(
            output_dir / "failed.json",
            {
                "error": str(error),
                "type": type(error).__name__,
                "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                "user_error": isinstance(error, Ssl4gieError),
                "traceback": traceback.format_exc(limit=20),
            },
        )
    except OSError:
        log.exception("could not write %s", output_dir / "failed.json")


def execute(cfg: DictConfig) -> float | None:
    """One run: prepare → claim the folder → build → fit or load → test (if the task tests) → finish; an
    evaluation of an input the sweep allows to be absent is skipped first. Returns the monitored validation metric
    (for sweepers); the trackers (``logger=``) are finished with how the run ended, and the run folder released, also
    on an error."""
    if skip_absent_input(cfg):  # an evaluation sweep's absent checkpoint or dataset: skipped.json
        return None
    with Trackers() as trackers, ExitStack() as held:
        run = prepare(cfg)  # checks, identity, process group
        claim(run, held)  # one writer per folder; a finished run of this configuration, or of another one
        if run.done is not None:  # a complete run of this configuration: nothing to do
            return run.done.get(run.task.monitor)
        build(run, trackers)  # data reader, model, trainer
        results = fit(run) if run.train else load_checkpoint(run)
        if not run.dist.is_main:
            return None
        if run.frames is not None:
            results.update(predict_frames(run))
        elif run.task.tests:
            results.update(test(run))
        return finish(run, results)
