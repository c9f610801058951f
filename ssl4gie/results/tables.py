"""The study table (SPEC 9): 12 backbone rows × 6 task-datasets, each cell mean ± std over seeds.

Display conventions (the same in Markdown, CSV and LaTeX):

* a cell is ``mean ± std`` with the sample std (ddof=1) over seeds; with a single seed the std is omitted;
* when a cell has fewer seeds than the fullest cell of the table, its seed count follows in brackets, ``(2)``;
* the best mean per column is marked (bold in Markdown/LaTeX, a trailing ``*`` in CSV), ties all marked,
  respecting the metric's direction (↑ higher is better, ↓ lower is better);
* ``—`` marks a cell without any complete run; failed and incomplete runs never enter the values, they are
  counted and listed separately (:func:`problem_runs`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

from ssl4gie.results.collect import ResultsError

log = logging.getLogger(__name__)

STUDY_ROWS = (
    *("RN-HK-MC", "RN-HK-BT", "RN-IN-MC", "RN-IN-BT", "RN-IN-SL", "RN-NA-NA"),
    *("VT-HK-MC", "VT-HK-MA", "VT-IN-MC", "VT-IN-MA", "VT-IN-SL", "VT-NA-NA"),
)
STUDY_COLUMNS = (
    "classification/hyperkvasir_anatomical",
    "classification/hyperkvasir_pathological",
    "detection/kvasir_det",
    "segmentation/kvasir_seg",
    "segmentation/cvc_clinicdb",
    "depth/c3vd",
)
# The study's headline test metric per task; ``--metric task=metric`` (or ``task/dataset=metric``) picks another.
HEADLINE = {
    "classification": "test/f1",
    "detection": "test/map",
    "segmentation": "test/dice",
    "depth": "test/rmse",
}
# Metrics where lower is better: base names containing one of these (``test/rmse_median``, ``val/ssi_mse``);
# all others (dice, iou, f1, map, delta1, ...) are higher-is-better.
LOWER_IS_BETTER = ("mse", "mae", "abs_rel", "med_rel", "loss")
STATS = ("mean", "std", "n", "best")
MISSING = "—"


def direction(metric: str) -> str:
    """``"min"`` when lower values of ``metric`` are better, else ``"max"``."""
    base = metric.rsplit("/", 1)[-1]
    return "min" if any(word in base for word in LOWER_IS_BETTER) else "max"


def arrow(metric: str) -> str:
    return "↓" if direction(metric) == "min" else "↑"


def parse_metric_overrides(items: Iterable[str]) -> dict[str, str]:
    """``["depth=abs_rel", "segmentation/cvc_clinicdb=test/iou"]`` → ``{key: "test/<metric>"}``."""
    overrides = {}
    for item in items:
        key, sep, metric = item.partition("=")
        if not sep or not key or not metric:
            raise ResultsError(
                f"--metric {item!r}: expected TASK=METRIC or TASK/DATASET=METRIC, e.g. depth=abs_rel"
            )
        overrides[key.strip()] = metric.strip() if "/" in metric else f"test/{metric.strip()}"
    return overrides


def selected_runs(runs: pd.DataFrame, frozen: bool = False) -> pd.DataFrame:
    """Complete runs with the given ``frozen`` flag; one run per (row, task-dataset, seed).

    Two complete runs of the same cell and seed (e.g. a sweep folder given together with a rerun of it) would
    count one seed twice: the one with the last ``path`` is kept, with a warning naming both.
    """
    done = runs[(runs["status"] == "complete") & (runs["frozen"] == frozen)].sort_values("path")
    key = ["row", "task_dataset", "seed"]
    dupes = done[done.duplicated(key, keep=False)]
    if not dupes.empty:
        log.warning(
            "several complete runs of one cell and seed; keeping the last of each: %s", list(dupes["path"])
        )
    return done.drop_duplicates(key, keep="last")


def problem_runs(runs: pd.DataFrame, frozen: bool = False) -> pd.DataFrame:
    """Failed and incomplete runs with the given ``frozen`` flag (the cells that are *not* in the values)."""
    columns = [
        c for c in ("status", "row", "task_dataset", "seed", "error_type", "error", "path") if c in runs
    ]
    listed = ~runs["status"].isin(
        ["complete", "skipped"]
    )  # a skipped cell (no dataset on disk) is no problem
    return runs.loc[listed & (runs["frozen"] == frozen), columns]


def ordered(present: Iterable, study: tuple[str, ...]) -> list[str]:
    """The study's names in order, then any other name in ``present`` (sorted), so nothing is dropped."""
    extra = sorted({str(p) for p in present if isinstance(p, str)} - set(study))
    return [*study, *extra]


def column_metrics(columns: Iterable[str], overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """The metric of each task-dataset column: override by column, else by task, else the headline metric."""
    columns = list(columns)
    overrides = dict(overrides or {})
    unknown = set(overrides) - set(columns) - {c.split("/")[0] for c in columns} - set(HEADLINE)
    if unknown:
        valid = sorted({*HEADLINE, *columns})
        raise ResultsError(
            f"--metric {', '.join(sorted(unknown))}: unknown task or column; valid: {', '.join(valid)}"
        )
    metrics = {}
    for column in columns:
        task = column.split("/")[0]
        metric = overrides.get(column) or overrides.get(task) or HEADLINE.get(task)
        if metric is None:
            log.warning("no headline metric for task %s; pass --metric %s=test/<metric>", task, task)
            continue
        metrics[column] = metric
    return metrics


def study_table(
    runs: pd.DataFrame,
    metric_overrides: Mapping[str, str] | None = None,
    frozen: bool = False,
    present_only: bool = False,
) -> pd.DataFrame:
    """Values of the study table.

    Index: backbone rows (the 12 study rows in order, then any other row in the data). Columns: a MultiIndex
    ``(task_dataset, stat)`` with stat ``mean``, ``std`` (ddof=1, NaN with one seed), ``n`` (seeds) and ``best``
    (bool), for the 6 study columns in order, then any other in the data; with ``present_only`` only the columns
    that have runs (in the same order: e.g. a cross-dataset evaluation, Kvasir-SEG first, then the other sets).
    ``table.attrs["metrics"]`` maps each column to its metric, ``table.attrs["frozen"]`` records the selection.
    Only complete runs enter the values.
    """
    # a skipped cell (its dataset is not on disk) is not part of the study: no row, column or "—" for it
    chosen = runs[(runs["frozen"] == frozen) & (runs["status"] != "skipped")]
    rows = ordered(chosen["row"], STUDY_ROWS)
    columns = ordered(chosen["task_dataset"], STUDY_COLUMNS)
    if present_only:
        columns = [c for c in columns if c in set(chosen["task_dataset"])]
    metrics = column_metrics(columns, metric_overrides)
    done = selected_runs(runs, frozen)
    table = pd.DataFrame(
        index=pd.Index(rows, name="row"), columns=pd.MultiIndex.from_product([list(metrics), STATS])
    )
    for column, metric in metrics.items():
        cell_runs = done[done["task_dataset"] == column]
        if metric not in done.columns:
            if not cell_runs.empty:
                log.warning("%s: no complete run reports %s", column, metric)
            values = pd.Series(np.nan, index=cell_runs.index)
        else:
            values = cell_runs[metric].astype(float)
        stats = values.groupby(cell_runs["row"]).agg(["mean", "std", "count"]).reindex(rows)
        n = stats["count"].fillna(0).astype(int)
        mean = stats["mean"].where(n > 0)
        best_value = mean.min() if direction(metric) == "min" else mean.max()
        table[(column, "mean")] = mean.to_numpy(dtype=float)
        table[(column, "std")] = stats["std"].to_numpy(dtype=float)
        table[(column, "n")] = n.to_numpy()
        table[(column, "best")] = np.isclose(mean.to_numpy(dtype=float), best_value, rtol=1e-12, atol=0.0)
    table.attrs.update(metrics=metrics, frozen=frozen)
    return table


def _cells(table: pd.DataFrame, digits: int, mark, escape=str) -> pd.DataFrame:
    """Display strings, index = rows, columns = task-datasets; ``mark`` wraps the best cell's (escaped) text."""
    counts = [table[(c, "n")].max() for c in table.attrs["metrics"]]
    most = int(max([0, *counts]))
    out = {}
    for column in table.attrs["metrics"]:
        texts = []
        for mean, std, n, best in table[column][list(STATS)].itertuples(index=False):
            if n == 0:
                texts.append(escape(MISSING))
                continue
            text = (
                f"{mean:.{digits}f}"
                + (f" ± {std:.{digits}f}" if n > 1 else "")
                + (f" ({n})" if n < most else "")
            )
            texts.append(mark(escape(text)) if best else escape(text))
        out[column] = texts
    return pd.DataFrame(out, index=table.index)


def caption(table: pd.DataFrame) -> str:
    """One sentence that says how to read the table."""
    counts = [int(table[(c, "n")].max()) for c in table.attrs["metrics"]]
    most = max([0, *counts])
    kind = "frozen-backbone" if table.attrs.get("frozen") else "fine-tuned"
    return (
        f"Test metric of {kind} runs per task-dataset: mean ± sample std over up to {most} seed(s) "
        "(std omitted for one seed; (k) = only k seeds); best per column marked, ↑ higher / ↓ lower is better; "
        f"{MISSING} = no complete run."
    )


def _latex_escape(text: str) -> str:
    for char in "\\&%$#_{}":
        text = text.replace(char, "\\" + char)
    return (
        text.replace("±", "$\\pm$")
        .replace("↑", "$\\uparrow$")
        .replace("↓", "$\\downarrow$")
        .replace(MISSING, "---")
    )


def format_table(
    table: pd.DataFrame, fmt: str = "markdown", digits: int = 3, problems: pd.DataFrame | None = None
) -> str:
    """``table`` (from :func:`study_table`) as ``"markdown"``, ``"csv"`` or ``"latex"`` (booktabs) text.

    Markdown gets a caption line and, when ``problems`` (from :func:`problem_runs`) is not empty, a list of the
    failed and incomplete runs. LaTeX is a bare ``tabular`` needing ``\\usepackage{booktabs}``, with the caption
    as a comment, ResNet and ViT rows separated by a rule.
    """
    metrics = table.attrs["metrics"]
    if fmt == "markdown":
        cells = _cells(table, digits, lambda t: f"**{t}**")
        cells.columns = [f"{c} {m} {arrow(m)}" for c, m in metrics.items()]
        text = cells.reset_index().to_markdown(index=False) + f"\n\n{caption(table)}\n"
        if problems is not None and not problems.empty:
            listed = problems.astype(object).where(problems.notna(), "")
            if "error" in listed:  # one table line per run: long tracebacks belong in runs.csv
                listed = listed.assign(error=listed["error"].astype(str).str.replace("\n", " ").str[:160])
            text += (
                f"\n### Failed or incomplete runs ({len(problems)})\n\n{listed.to_markdown(index=False)}\n"
            )
        return text
    if fmt == "csv":
        cells = _cells(table, digits, lambda t: f"{t}*")
        cells.columns = [f"{c} ({m} {arrow(m)})" for c, m in metrics.items()]
        return cells.reset_index().to_csv(index=False)
    if fmt == "latex":
        cells = _cells(table, digits, lambda t: f"\\textbf{{{t}}}", escape=_latex_escape)
        head = [
            " & ".join(["", *(_latex_escape(c.split("/")[0]) for c in metrics)]),
            " & ".join(["", *(_latex_escape(c.split("/", 1)[-1]) for c in metrics)]),
            " & ".join(["Row", *(_latex_escape(f"{m} {arrow(m)}") for m in metrics.values())]),
        ]
        body, previous = [], None
        for row, values in cells.iterrows():
            family = str(row).split("-")[0]
            if previous is not None and family != previous:
                body.append("\\midrule")
            body.append(" & ".join([_latex_escape(str(row)), *values]) + " \\\\")
            previous = family
        lines = [
            f"% {_latex_escape(caption(table))}",
            "% needs \\usepackage{booktabs}",
            f"\\begin{{tabular}}{{l{'c' * len(metrics)}}}",
            "\\toprule",
            *(h + " \\\\" for h in head),
            "\\midrule",
            *body,
            "\\bottomrule",
            "\\end{tabular}",
        ]
        return "\n".join(lines) + "\n"
    raise ResultsError(f"format {fmt!r} is not known; valid: markdown, csv, latex")
