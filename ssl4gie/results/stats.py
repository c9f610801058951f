"""Paired tests between backbone rows: Wilcoxon signed-rank tests on per-image test metrics (segmentation,
depth) and, with ``ci``, paired bootstrap differences for every task (:mod:`ssl4gie.results.bootstrap`).

Choices, stated once:

* **Seeds are averaged per image first.** All seeds of a row share the study's fixed test split, so each image
  gets the mean of its metric over the row's complete seeds, and one test per pair of rows compares those
  means. (Testing each seed separately would multiply the tests and the correction without adding images.)
* **Pairs are images by ``name``** present in both rows with a finite value (depth frames without valid pixels
  have none). Pairs with fewer than ``min_pairs`` common images, or whose differences are all zero (the test is
  undefined), are reported with a ``note`` and no p-value.
* ``scipy.stats.wilcoxon`` with its defaults (two-sided; zero differences dropped, ``zero_method="wilcox"``).
* **Holm's step-down correction** over the tested pairs of one task-dataset column (``p_holm``).
* **Paired bootstrap** (``ci``): ``diff`` = row a − row b on the images both rows scored, with its interval
  ``diff_low``/``diff_high``; an interval that excludes 0 says the rows differ at that level. Classification
  F1 and detection mAP get only these (their metric is not a mean of per-image values: no Wilcoxon).
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import wilcoxon

from ssl4gie.results.bootstrap import BootstrapOptions, paired_interval
from ssl4gie.results.tables import (
    STUDY_COLUMNS,
    column_metrics,
    direction,
    ordered,
    ordered_rows,
    selected_runs,
)

log = logging.getLogger(__name__)

PAIRED_TASKS = ("segmentation", "depth")  # tasks whose headline metric is a mean of per-image values
MIN_PAIRS = 6
COLUMNS = (
    "task_dataset", "metric", "row_a", "row_b", "seeds_a", "seeds_b", "n_pairs",
    "mean_a", "mean_b", "better", "statistic", "p_value", "p_holm", "diff", "diff_low", "diff_high", "note",
)  # fmt: skip
BOOTSTRAP_ONLY = ("classification", "detection")  # tasks with a whole-split metric: paired bootstrap only


def holm(pvalues: np.ndarray) -> np.ndarray:
    """Holm-adjusted p-values (same order as given), capped at 1.

    Written here because scipy offers only FDR corrections (``false_discovery_control``) and the step-down
    family-wise correction is four lines.
    """
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p)
    steps = (len(p) - np.arange(len(p))) * p[order]
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(np.maximum.accumulate(steps), 1.0)
    return adjusted


def per_image_means(row_runs: pd.DataFrame, sweep_dir: Path, name: str) -> tuple[pd.Series, int]:
    """Per-image ``name`` averaged over the runs (seeds) of one row; also how many seeds had the values."""
    tables = []
    for path in row_runs["path"]:
        csv = sweep_dir / path / "per_image_test.csv"
        if not csv.is_file():
            log.warning("%s is missing; this seed is left out of the significance tests", csv)
            continue
        frame = pd.read_csv(csv, dtype={"name": str})
        if "name" not in frame or name not in frame:
            log.warning("%s has no column 'name' or %r; left out of the significance tests", csv, name)
            continue
        tables.append(frame[["name", name]])
    if not tables:
        return pd.Series(dtype=float), 0
    values = pd.concat(tables).dropna().groupby("name")[name].mean()
    return values, len(tables)


def _compare(a: pd.Series, b: pd.Series, min_pairs: int, lower_better: bool) -> dict:
    common = a.index.intersection(b.index)
    x, y = a[common].to_numpy(float), b[common].to_numpy(float)
    result = {"n_pairs": len(common), "mean_a": np.nan, "mean_b": np.nan, "better": "", "note": ""}
    result.update(statistic=np.nan, p_value=np.nan)
    if len(common):
        result.update(mean_a=x.mean(), mean_b=y.mean())
    if len(common) < min_pairs:
        result["note"] = f"only {len(common)} common image(s), fewer than {min_pairs}: not tested"
    elif np.all(x == y):
        result["note"] = "all per-image differences are zero: not tested"
    else:
        test = wilcoxon(x, y)
        result.update(statistic=float(test.statistic), p_value=float(test.pvalue))
        if x.mean() != y.mean():
            result["better"] = "a" if (x.mean() < y.mean()) == lower_better else "b"
    return result


def significance(
    runs: pd.DataFrame,
    sweep_dir: str | os.PathLike,
    metric_overrides: Mapping[str, str] | None = None,
    frozen: bool = False,
    min_pairs: int = MIN_PAIRS,
    ci: BootstrapOptions | None = None,
) -> pd.DataFrame:
    """Wilcoxon tests between every pair of rows of each segmentation and depth column; with ``ci`` also the
    paired bootstrap difference of every pair, in every column (classification and detection included).

    ``runs`` comes from :func:`~ssl4gie.results.collect.collect_runs` (its ``path`` is relative to
    ``sweep_dir``); the metric per column is the table's (``metric_overrides`` as in
    :func:`~ssl4gie.results.tables.study_table`), read by its base name (``test/dice`` → ``dice``) from each run's
    ``per_image_test.csv``. One line per pair of rows with data, rows in table order (``row_a`` before
    ``row_b``): columns ``COLUMNS``; ``better`` is ``"a"``/``"b"`` by the mean over the paired images, respecting
    the metric's direction. See the module docstring for the choices.
    """
    sweep_dir = Path(sweep_dir)
    done = selected_runs(runs, frozen)
    columns = ordered(runs.loc[runs["frozen"] == frozen, "task_dataset"], STUDY_COLUMNS)
    metrics = column_metrics(columns, metric_overrides)
    lines = []
    for column, metric in metrics.items():
        task = column.split("/")[0]
        wilcoxon_task = task in PAIRED_TASKS
        if not wilcoxon_task and (ci is None or task not in BOOTSTRAP_ONLY):
            continue
        name = metric.rsplit("/", 1)[-1]
        cell_runs = done[done["task_dataset"] == column]
        row_names = [r for r in ordered_rows(cell_runs["row"]) if r in set(cell_runs["row"])]
        per_row = {}
        for row in row_names:
            row_runs = cell_runs[cell_runs["row"] == row]
            if not wilcoxon_task:  # the bootstrap reads the tables itself
                per_row[row] = (pd.Series(dtype=float), len(row_runs))
                continue
            values, seeds = per_image_means(row_runs, sweep_dir, name)
            if seeds:
                per_row[row] = (values, seeds)
        start = len(lines)
        for (row_a, (a, seeds_a)), (row_b, (b, seeds_b)) in itertools.combinations(per_row.items(), 2):
            if wilcoxon_task:
                result = _compare(a, b, min_pairs, direction(metric) == "min")
            else:
                result = {"n_pairs": 0, "mean_a": np.nan, "mean_b": np.nan, "better": "", "statistic": np.nan}
                result |= {
                    "p_value": np.nan,
                    "note": f"no Wilcoxon test: {metric} is not a mean of per-image values",
                }
            line = {"task_dataset": column, "metric": metric, "row_a": row_a, "row_b": row_b}
            line |= {"seeds_a": seeds_a, "seeds_b": seeds_b} | result
            line |= {"diff": np.nan, "diff_low": np.nan, "diff_high": np.nan}
            if ci is not None:
                runs_a, runs_b = (cell_runs[cell_runs["row"] == r] for r in (row_a, row_b))
                boot = paired_interval(runs_a, runs_b, sweep_dir, task, metric, ci)
                line |= {k: boot[k] for k in ("diff", "diff_low", "diff_high")}
                if not wilcoxon_task:  # the bootstrap's own pairing: images both rows scored, seeds averaged
                    line |= {k: boot[k] for k in ("n_pairs", "mean_a", "mean_b")}
                    line["seeds_a"], line["seeds_b"] = len(runs_a), len(runs_b)
                    if np.isfinite(boot["diff"]) and boot["diff"] != 0:
                        result["better"] = "a" if (boot["diff"] < 0) == (direction(metric) == "min") else "b"
            line["better"] = {"a": row_a, "b": row_b}.get(result["better"], "")
            lines.append(line)
        block = lines[start:]
        tested = [i for i, line in enumerate(block) if np.isfinite(line["p_value"])]
        adjusted = holm(np.array([block[i]["p_value"] for i in tested]))
        for line in block:
            line["p_holm"] = np.nan
        for i, p in zip(tested, adjusted, strict=True):
            block[i]["p_holm"] = float(p)
    return pd.DataFrame(lines, columns=list(COLUMNS))
