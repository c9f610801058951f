"""Experiment trackers (``logger=csv|tensorboard|mlflow|wandb``): callbacks that record what a run writes to
``history.csv`` and ``metrics.json`` in TensorBoard, MLflow or Weights & Biases as well.

Only :mod:`ssl4gie.loggers.base` is imported with the package; a tracker's module, and its library, only when
``logger=`` chooses it.
"""

from ssl4gie.loggers.base import (
    FAILED,
    KILLED,
    RUNNING,
    SUCCESS,
    RunInfo,
    RunLogger,
    Trackers,
    build_loggers,
    final_metrics,
    run_info,
)

__all__ = [
    "FAILED",
    "KILLED",
    "RUNNING",
    "SUCCESS",
    "RunInfo",
    "RunLogger",
    "Trackers",
    "build_loggers",
    "final_metrics",
    "run_info",
]
