"""The last line of a demo run: did the model learn? Its test metric against what a model that learned nothing scores.

A Hydra callback, set by the ``experiment=demo*`` configs (``hydra.callbacks.demo_verdict``); it reads the run's
``metrics.json`` only. ``reference`` says what "learned nothing" scores on the same test split:

* ``chance``: one over the number of classes (``task.classes``), e.g. accuracy or macro F1 of a uniform guess;
* metric names (a list, the best of them is taken), e.g. the Dice of the all-polyp and all-background answers,
  which the segmentation task writes beside its own;
* ``initial``: the same (validation) metric for the initial weights, the history's epoch 0
  (``trainer.val_at_start=true``), e.g. a depth network's RMSE before training;
* a number, e.g. 0 for the mAP of a detector that finds nothing (``what`` names it in the line).

The model learned when its metric beats the reference by ``margin`` (in the metric's direction: lower is better
for errors such as RMSE).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf

log = logging.getLogger("ssl4gie")

LOWER_IS_BETTER = ("rmse", "mse", "mae", "abs_rel", "med_rel", "loss")


def reference_value(
    reference: Any, metric: str, metrics: dict, run: Path, config: DictConfig, what: str = ""
) -> tuple[float, str]:
    """(value, description) of ``reference`` for ``metric`` of the run in folder ``run``."""
    if reference == "initial":
        history = pd.read_csv(run / "history.csv")
        initial = history[history["epoch"] == 0]
        if initial.empty:
            raise ValueError(
                "demo_verdict: reference=initial needs trainer.val_at_start=true (history epoch 0)"
            )
        return float(initial[metric].iloc[0]), "the initial weights"
    if reference == "chance":
        classes = len(OmegaConf.select(config, "task.classes") or [])
        if classes < 2:
            raise ValueError("demo_verdict: reference=chance needs task.classes")
        return 1.0 / classes, f"a uniform guess among {classes} classes"
    if isinstance(reference, str | list | ListConfig):
        names = [reference] if isinstance(reference, str) else list(reference)
        best = max(names, key=lambda name: metrics.get(name, float("-inf")))
        return float(metrics[best]), f"{best.rsplit('/', 1)[-1].replace('_', ' ')}"
    return float(reference), what or "a model that learned nothing"


def verdict(
    metric: str, reference: Any, margin: float, run: Path, config: DictConfig, what: str = ""
) -> tuple[bool, str]:
    """(learned, the one line) for the finished run in folder ``run`` (its ``metrics.json``)."""
    metrics = json.loads((run / "metrics.json").read_text())
    value = float(metrics[metric])
    ref, what = reference_value(reference, metric, metrics, run, config, what)
    lower = any(word in metric.rsplit("/", 1)[-1] for word in LOWER_IS_BETTER)
    learned = value <= ref - margin if lower else value >= ref + margin
    line = (
        f"demo verdict: {'learned' if learned else 'did NOT learn'}: {metric} {value:.3f} vs {ref:.3f} for "
        f"{what} ({'lower' if lower else 'higher'} is better; learned = "
        f"{'below' if lower else 'above'} by {margin:g} or more)"
    )
    return learned, line


class DemoVerdict(Callback):
    """Logs :func:`verdict` as the run's last line (a warning when the model did not learn)."""

    def __init__(self, metric: str, reference: Any, margin: float = 0.05, what: str = "") -> None:
        self.metric, self.reference, self.margin, self.what = metric, reference, float(margin), what

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        run = Path(config.hydra.runtime.output_dir)
        if not (run / "metrics.json").is_file():  # the run failed or stopped: its own message says why
            return
        learned, line = verdict(self.metric, self.reference, self.margin, run, config, self.what)
        (log.info if learned else log.warning)("%s", line)
