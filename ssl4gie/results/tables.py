"""The study table (the grid of the study's README): 12 backbone rows × 6 task-datasets, each cell mean ± std
over seeds (or folds).

Display conventions (the same in Markdown, CSV and LaTeX):

* a cell is ``mean ± std`` with the sample std (ddof=1) over seeds; with a single seed the std is omitted;
* a k-fold cell (runs with ``fold``) is ``mean ± std`` over its folds, each fold first averaged over its seeds;
* when a cell has fewer seeds (folds) than the fullest cell of the table, the count follows in brackets, ``(2)``;
* with ``--ci``, ``[low, high]`` follows: a bootstrap interval over test images (:mod:`ssl4gie.results.bootstrap`);
* ``†`` marks a cell whose row's pretraining data overlaps the evaluated dataset (:func:`overlapping`), with a
  footnote naming the datasets;
* rows are grouped by backbone (the row code's first part: ``RN``, ``VT``, then any other in name order), rows of
  a data-scale series (``RN-HK-MC@10k``) beside their row;
* a label-efficiency sweep is tabled at each column's largest ``train_fraction`` (normally 1.0); the other
  fractions are in the curves (:mod:`ssl4gie.results.curves`);
* the best mean per column is marked (bold in Markdown/LaTeX, a trailing ``*`` in CSV), ties all marked,
  respecting the metric's direction (↑ higher is better, ↓ lower is better);
* ``—`` marks a cell without any complete run; failed and incomplete runs never enter the values, they are
  counted and listed separately (:func:`problem_runs`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

from ssl4gie.results.bootstrap import BootstrapOptions, cell_interval
from ssl4gie.results.collect import SWEEP_FACTS, ResultsError

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
STATS = ("mean", "std", "n", "best", "ci_low", "ci_high", "overlap")
MISSING = "—"
OVERLAP_MARK = "†"
# What makes one cell value: one run per key (a rerun of the same key is a duplicate).
RUN_KEY = ["row", "task_dataset", "train_fraction", "fold", "seed"]


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


def family(dataset: str) -> str:
    """A dataset's family: its name up to the first underscore (``hyperkvasir_unlabelled`` → ``hyperkvasir``,
    ``kvasir_seg`` → ``kvasir``, ``c3vd`` → ``c3vd``)."""
    return str(dataset).split("_", 1)[0].lower()


def overlapping(seen: Iterable[str], dataset: str) -> list[str]:
    """The names in ``seen`` (a row's ``pretraining_data_seen``) of ``dataset``'s family.

    The rule: pretraining data overlaps an evaluated dataset when both names share a family (:func:`family`),
    e.g. ``hyperkvasir_unlabelled`` and ``hyperkvasir_pathological`` (one release, one hospital, possibly the
    same patients). It is a flag for the reader, not a proof either way: ``python -m ssl4gie.leakage`` checks
    the images themselves (Kvasir-SEG's polyps and HyperKvasir are separate families by this rule).
    """
    return sorted({s for s in seen if s and family(s) == family(dataset)})


def _fill_sweep_facts(runs: pd.DataFrame) -> pd.DataFrame:
    """The columns a hand-built or older runs table may lack, with :data:`collect.SWEEP_FACTS`' defaults."""
    missing = {c: d for c, d in {**SWEEP_FACTS, "pretraining_data_seen": ""}.items() if c not in runs}
    return runs.assign(**missing) if missing else runs


def selected_runs(
    runs: pd.DataFrame, frozen: bool = False, train_fraction: float | None = None
) -> pd.DataFrame:
    """Complete runs with the given ``frozen`` flag at one training fraction; one run per :data:`RUN_KEY`.

    ``train_fraction``: the fraction to keep; None = each task-dataset's largest (normally 1.0, the full split).
    Two complete runs of the same key (e.g. a sweep folder given together with a rerun of it) would count one
    seed twice: the one with the last ``path`` is kept, with a warning naming both.
    """
    runs = _fill_sweep_facts(runs)
    done = runs[(runs["status"] == "complete") & (runs["frozen"] == frozen)].sort_values("path")
    if train_fraction is None:
        largest = done.groupby("task_dataset")["train_fraction"].transform("max")
        done = done[done["train_fraction"] == largest]
    else:
        done = done[np.isclose(done["train_fraction"].astype(float), train_fraction)]
    key = done[RUN_KEY].astype(object).where(done[RUN_KEY].notna(), "")  # NA folds compare equal
    dupes = done[key.duplicated(keep=False)]
    if not dupes.empty:
        log.warning(
            "several complete runs of one cell and seed; keeping the last of each: %s", list(dupes["path"])
        )
    return done[~key.duplicated(keep="last")]


def cell_values(cell_runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One value per seed, or per fold (seeds of a fold averaged first) for k-fold runs, with its ``row``."""
    values = cell_runs.assign(value=pd.to_numeric(cell_runs.get(metric), errors="coerce"))
    plain = values[values["fold"].isna()][["row", "value"]]
    folds = values[values["fold"].notna()].groupby(["row", "fold"], as_index=False)["value"].mean()
    return pd.concat([plain, folds[["row", "value"]]], ignore_index=True)


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


def ordered_rows(present: Iterable) -> list[str]:
    """The 12 study rows and every row in ``present``, grouped by backbone (the code's first part: the study's
    ``RN`` then ``VT``, then others by name); within a backbone the study's order, a row's data-scale variants
    (``RN-HK-MC@10k``) right after it, by size, then other rows by name."""
    rows = set(STUDY_ROWS) | {str(p) for p in present if isinstance(p, str)}
    families = list(dict.fromkeys(r.split("-")[0] for r in STUDY_ROWS))

    def key(row: str) -> tuple:
        base, _, size = row.partition("@")
        prefix = base.split("-")[0]
        rank = families.index(prefix) if prefix in families else len(families)
        position = STUDY_ROWS.index(base) if base in STUDY_ROWS else len(STUDY_ROWS)
        return (rank, prefix, position, base, size != "", _size_value(size), row)

    return sorted(rows, key=key)


def _size_value(label: str) -> float:
    """``10k`` → 10000.0 (the inverse of :func:`ssl4gie.results.collect.size_label`); "" → 0."""
    if not label:
        return 0.0
    scale = {"k": 1e3, "M": 1e6}.get(label[-1], 1.0)
    try:
        return float(label[:-1] if scale != 1.0 else label) * scale
    except ValueError:
        return math.inf


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
    sweep_dir: str | os.PathLike | None = None,
    ci: BootstrapOptions | None = None,
    compact: bool = False,
) -> pd.DataFrame:
    """Values of the study table.

    Index: backbone rows (:func:`ordered_rows`). Columns: a MultiIndex ``(task_dataset, stat)`` with stat
    ``mean``, ``std`` (ddof=1, NaN with one value), ``n`` (seeds, or folds for k-fold cells), ``best`` (bool),
    ``ci_low``/``ci_high`` (the bootstrap interval with ``ci`` and ``sweep_dir``, else NaN) and ``overlap``
    (the row's pretraining datasets of the column's family, comma-joined, "" for none), for the 6 study columns
    in order, then any other in the data; with ``present_only`` only the columns that have runs (in the same
    order: e.g. a cross-dataset evaluation, Kvasir-SEG first, then the other sets); with ``compact`` also only the
    rows that have runs (the study's layout cut to what the sweep holds, in the same order). ``table.attrs``:
    ``metrics`` (column → metric), ``frozen``, ``folds`` (whether a cell is over folds), ``fractions``
    (column → the tabled ``train_fraction``), ``ci`` (the options' description or None). Only complete runs
    enter the values.
    """
    runs = _fill_sweep_facts(runs)
    # a skipped cell (its dataset is not on disk) is not part of the study: no row, column or "—" for it
    chosen = runs[(runs["frozen"] == frozen) & (runs["status"] != "skipped")]
    rows = ordered_rows(chosen["row"])
    columns = ordered(chosen["task_dataset"], STUDY_COLUMNS)
    if compact:
        rows = [r for r in rows if r in set(chosen["row"])]
    if present_only or compact:
        columns = [c for c in columns if c in set(chosen["task_dataset"])]
    metrics = column_metrics(columns, metric_overrides)
    done = selected_runs(runs, frozen)
    table = pd.DataFrame(
        index=pd.Index(rows, name="row"), columns=pd.MultiIndex.from_product([list(metrics), STATS])
    )
    fractions = {}
    for column, metric in metrics.items():
        cell_runs = done[done["task_dataset"] == column]
        if not cell_runs.empty:
            fractions[column] = float(cell_runs["train_fraction"].iloc[0])
        if metric not in done.columns and not cell_runs.empty:
            log.warning("%s: no complete run reports %s", column, metric)
        values = cell_values(cell_runs, metric)
        stats = values.groupby("row")["value"].agg(["mean", "std", "count"]).reindex(rows)
        n = stats["count"].fillna(0).astype(int)
        mean = stats["mean"].where(n > 0)
        best_value = mean.min() if direction(metric) == "min" else mean.max()
        table[(column, "mean")] = mean.to_numpy(dtype=float)
        table[(column, "std")] = stats["std"].to_numpy(dtype=float)
        table[(column, "n")] = n.to_numpy()
        table[(column, "best")] = np.isclose(mean.to_numpy(dtype=float), best_value, rtol=1e-12, atol=0.0)
        low, high = np.full(len(rows), np.nan), np.full(len(rows), np.nan)
        if ci is not None and sweep_dir is not None:
            for i, row in enumerate(rows):
                row_runs = cell_runs[cell_runs["row"] == row]
                if not row_runs.empty:
                    _, low[i], high[i] = cell_interval(row_runs, sweep_dir, column.split("/")[0], metric, ci)
        table[(column, "ci_low")], table[(column, "ci_high")] = low, high
        dataset = column.split("/", 1)[-1]
        seen = cell_runs.groupby("row")["pretraining_data_seen"].agg(lambda s: ",".join(s))
        table[(column, "overlap")] = [
            ",".join(overlapping(str(seen.get(row, "")).split(","), dataset)) for row in rows
        ]
    table.attrs.update(
        metrics=metrics,
        frozen=frozen,
        folds=bool(done["fold"].notna().any()),
        fractions=fractions,
        ci=ci.describe() if ci is not None and sweep_dir is not None else None,
    )
    return table


def _cells(table: pd.DataFrame, digits: int, mark, escape=str) -> pd.DataFrame:
    """Display strings, index = rows, columns = task-datasets; ``mark`` wraps the best cell's (escaped) text."""
    counts = [table[(c, "n")].max() for c in table.attrs["metrics"]]
    most = int(max([0, *counts]))
    out = {}
    for column in table.attrs["metrics"]:
        texts = []
        for mean, std, n, best, low, high, overlap in table[column][list(STATS)].itertuples(index=False):
            if n == 0:
                texts.append(escape(MISSING))
                continue
            text = (
                f"{mean:.{digits}f}"
                + (f" ± {std:.{digits}f}" if n > 1 else "")
                + (f" ({n})" if n < most else "")
                + (f" [{low:.{digits}f}, {high:.{digits}f}]" if np.isfinite([low, high]).all() else "")
            )
            text = mark(escape(text)) if best else escape(text)
            texts.append(text + (OVERLAP_MARK if overlap else ""))
        out[column] = texts
    return pd.DataFrame(out, index=table.index)


def caption(table: pd.DataFrame) -> str:
    """One sentence that says how to read the table."""
    counts = [int(table[(c, "n")].max()) for c in table.attrs["metrics"]]
    most = max([0, *counts])
    kind = "frozen-backbone" if table.attrs.get("frozen") else "fine-tuned"
    over = (
        "seed(s) or fold(s) (k-fold cells: over folds, seeds averaged per fold)"
        if table.attrs.get("folds")
        else "seed(s)"
    )
    text = (
        f"Test metric of {kind} runs per task-dataset: mean ± sample std over up to {most} {over} "
        "(std omitted for one value; (k) = only k); best per column marked, ↑ higher / ↓ lower is better; "
        f"{MISSING} = no complete run."
    )
    if table.attrs.get("ci"):
        text += f" [low, high] = {table.attrs['ci']}, seeds averaged first."
    partial = {c: f for c, f in table.attrs.get("fractions", {}).items() if f < 1.0}
    if partial:
        text += (
            " Trained on a fraction of the training split: "
            + ", ".join(f"{c} {f:g}" for c, f in partial.items())
            + "."
        )
    return text


def footnotes(table: pd.DataFrame) -> list[str]:
    """One line per row whose pretraining data overlaps an evaluated dataset (the ``†`` cells)."""
    lines = []
    for row in table.index:
        found = {
            column.split("/", 1)[-1]: table.loc[row, (column, "overlap")]
            for column in table.attrs["metrics"]
            if table.loc[row, (column, "overlap")]
        }
        if found:
            seen = sorted({name for names in found.values() for name in names.split(",")})
            lines.append(
                f"{OVERLAP_MARK} {row}: pretrained on {', '.join(seen)}, of the same dataset family as "
                f"{', '.join(sorted(found))} (same name before the first '_'): possible overlap of pretraining "
                "and test images; python -m ssl4gie.leakage checks it."
            )
    return lines


def _latex_escape(text: str) -> str:
    for char in "\\&%$#_{}":
        text = text.replace(char, "\\" + char)
    return (
        text.replace("±", "$\\pm$")
        .replace(OVERLAP_MARK, "$^\\dagger$")
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
        if notes := footnotes(table):
            text += "\n" + "\n".join(f"- {line}" for line in notes) + "\n"
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
            *(f"% {_latex_escape(line)}" for line in footnotes(table)),
        ]
        return "\n".join(lines) + "\n"
    raise ResultsError(f"format {fmt!r} is not known; valid: markdown, csv, latex")
