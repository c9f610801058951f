"""Series across sweeps: metric vs training fraction (label efficiency) and metric vs pretraining-set size.

Both are tidy tables first (one line per task-dataset × row × x value, with mean, std and count over seeds or
folds, as the study table's cells), then figures with one panel per task-dataset and one line per row.

* **Label efficiency**: complete runs grouped by ``train_fraction``; drawn when a task-dataset has at least two
  fractions. x on a log scale (the usual 1 %, 10 %, 25 %, 50 %, 100 %).
* **Data scale**: runs with a ``pretraining_data_size``, grouped by ``row_base`` (the row code without its
  ``@size``: same backbone and method) and size, at each column's largest training fraction; drawn when a row
  has at least two sizes. x on a log scale.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ssl4gie.results.tables import (
    STUDY_COLUMNS,
    _fill_sweep_facts,
    arrow,
    cell_values,
    column_metrics,
    ordered,
    ordered_rows,
    selected_runs,
)
from ssl4gie.utils.figures import save_figure

SERIES_COLUMNS = ("task_dataset", "metric", "row", "x", "mean", "std", "n")


def _series(done: pd.DataFrame, metrics: Mapping[str, str], x: str, row: str) -> pd.DataFrame:
    lines = []
    for column, metric in metrics.items():
        cell = done[done["task_dataset"] == column]
        for (row_name, value), runs in cell.groupby([row, x]):
            values = cell_values(runs.assign(row=row_name), metric)["value"].dropna()
            if values.empty:
                continue
            lines.append(
                {"task_dataset": column, "metric": metric, "row": row_name, "x": float(value)}
                | {"mean": values.mean(), "std": values.std(), "n": len(values)}
            )
    return pd.DataFrame(lines, columns=list(SERIES_COLUMNS))


def fraction_curves(
    runs: pd.DataFrame, metric_overrides: Mapping[str, str] | None = None, frozen: bool = False
) -> pd.DataFrame:
    """Label-efficiency table: ``SERIES_COLUMNS`` with ``x`` = ``train_fraction``, for the task-datasets that
    have two or more fractions (empty otherwise)."""
    runs = _fill_sweep_facts(runs)
    done = pd.concat(
        [selected_runs(runs, frozen, f) for f in sorted(runs["train_fraction"].dropna().unique())]
        or [runs.iloc[:0]]
    )
    swept = done.groupby("task_dataset")["train_fraction"].nunique()
    columns = [c for c in ordered(done["task_dataset"], STUDY_COLUMNS) if swept.get(c, 0) > 1]
    return _series(done, column_metrics(columns, metric_overrides), "train_fraction", "row")


def scale_curves(
    runs: pd.DataFrame, metric_overrides: Mapping[str, str] | None = None, frozen: bool = False
) -> pd.DataFrame:
    """Data-scale table: ``SERIES_COLUMNS`` with ``x`` = ``pretraining_data_size`` and ``row`` = the row code
    (``row_base``), for the rows that have two or more sizes in a task-dataset (empty otherwise)."""
    runs = _fill_sweep_facts(runs)
    if "row_base" not in runs:
        runs = runs.assign(row_base=runs["row"])
    done = selected_runs(runs, frozen).dropna(subset=["pretraining_data_size"])
    done = done.assign(pretraining_data_size=done["pretraining_data_size"].astype(float))
    sizes = done.groupby(["task_dataset", "row_base"])["pretraining_data_size"].transform("nunique")
    done = done[sizes > 1]
    columns = [c for c in ordered(done["task_dataset"], STUDY_COLUMNS) if c in set(done["task_dataset"])]
    return _series(done, column_metrics(columns, metric_overrides), "pretraining_data_size", "row_base")


def plot_curves(curves: pd.DataFrame, path: Path, xlabel: str, percent: bool = False) -> Path:
    """One panel per task-dataset of ``curves`` (from :func:`fraction_curves` / :func:`scale_curves`), one line
    per row with its std band (where n > 1), log x; written atomically as PNG."""
    columns = list(dict.fromkeys(curves["task_dataset"]))
    ncols = min(3, max(1, len(columns)))
    nrows = max(1, math.ceil(len(columns) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.8 * ncols, 3.6 * nrows + 0.6), squeeze=False)
    for ax, column in zip(axes.flat, columns, strict=False):
        panel = curves[curves["task_dataset"] == column]
        for row in ordered_rows(panel["row"]):
            line = panel[panel["row"] == row].sort_values("x")
            if line.empty:
                continue
            (drawn,) = ax.plot(line["x"], line["mean"], marker="o", ms=4, label=row)
            std = line["std"].where(line["n"] > 1).fillna(0).to_numpy(float)
            ax.fill_between(
                line["x"], line["mean"] - std, line["mean"] + std, alpha=0.15, color=drawn.get_color()
            )
        metric = panel["metric"].iloc[0]
        ax.set_xscale("log")
        ticks = np.sort(panel["x"].unique())
        ax.set_xticks(ticks, [f"{t:.0%}" if percent else f"{t:,.0f}" for t in ticks], fontsize=8)
        ax.minorticks_off()
        ax.set_title(column, fontsize=10)
        ax.set_xlabel(xlabel, fontsize=9)
        ax.set_ylabel(f"{metric} {arrow(metric)}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(columns) :]:
        ax.axis("off")
    if not columns:
        axes.flat[0].text(0.5, 0.5, "no series to plot", ha="center", va="center")
    fig.suptitle("mean over seeds (or folds); band: ± sample std", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    return save_figure(fig, path, dpi=120)
