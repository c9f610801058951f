"""Write every results file of a sweep folder, atomically, and log a short summary."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from ssl4gie.results.bootstrap import BootstrapOptions
from ssl4gie.results.collect import collect_runs
from ssl4gie.results.curves import fraction_curves, plot_curves, scale_curves
from ssl4gie.results.figure import plot_table
from ssl4gie.results.stats import significance
from ssl4gie.results.stored import format_stored, stored_table
from ssl4gie.results.tables import format_table, problem_runs, study_table
from ssl4gie.utils.io import save_dataframe_csv, write_text

log = logging.getLogger(__name__)

SIGNIFICANCE_NOTE = (
    "Paired Wilcoxon signed-rank tests on per-image test values (images paired by name, each image averaged over "
    "the row's seeds first); p_holm: Holm correction over the tested pairs of one column; pairs with fewer than 6 "
    "common images or only zero differences are not tested (see note)."
)
BOOTSTRAP_NOTE = (
    "diff = row_a − row_b on the images both rows scored, [diff_low, diff_high] its paired {ci}; "
    "classification and detection rows have the bootstrap only (their metric is not a mean of per-image values)."
)


def write_results(
    sweep_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    metric_overrides: Mapping[str, str] | None = None,
    frozen: bool = False,
    digits: int = 3,
    ci: BootstrapOptions | None = None,
    full: bool = False,
) -> dict[str, Path]:
    """Collect ``sweep_dir`` and write ``runs.csv``, ``table.{md,csv,tex,png}``, ``significance.{csv,md}``;
    ``fractions.{csv,png}`` for a label-efficiency sweep (two or more ``train_fraction`` values in a column) and
    ``data_scale.{csv,png}`` for a data-scale series (a row with two or more ``pretraining_data_size`` values);
    ``stored.{md,csv}`` where runs evaluated the study's released files (their stored numbers beside ours).

    ``ci``: bootstrap intervals in the tables and paired bootstrap differences in the significance report.
    The tables hold the rows and columns the sweep has runs of; ``full``: the study's 12 × 6 layout (``—`` where a
    cell has no run), plus any other row or column of the sweep.
    ``out_dir`` defaults to ``<sweep_dir>/results``. Returns ``{file name: path}``. Failed or missing cells do
    not stop the report (they are counted, listed in ``table.md`` and logged); a missing or empty sweep folder
    raises :class:`~ssl4gie.results.collect.ResultsError`.
    """
    sweep_dir = Path(sweep_dir)
    out = Path(out_dir) if out_dir is not None else sweep_dir / "results"
    runs = collect_runs(sweep_dir)
    # a folder of evaluations only (sweep=generalisation) has its own columns, not the study's six
    evaluations_only = "mode" in runs and bool((runs["mode"] == "eval").all())
    table = study_table(runs, metric_overrides, frozen, evaluations_only, sweep_dir, ci, compact=not full)
    problems = problem_runs(runs, frozen)
    tests = significance(runs, sweep_dir, metric_overrides, frozen, ci=ci)
    notes = SIGNIFICANCE_NOTE + ("" if ci is None else " " + BOOTSTRAP_NOTE.format(ci=ci.describe()))
    written = {
        "runs.csv": save_dataframe_csv(out / "runs.csv", runs),
        "table.md": write_text(out / "table.md", format_table(table, "markdown", digits, problems)),
        "table.csv": write_text(out / "table.csv", format_table(table, "csv", digits)),
        "table.tex": write_text(out / "table.tex", format_table(table, "latex", digits)),
        "table.png": plot_table(table, out / "table.png"),
        "significance.csv": save_dataframe_csv(out / "significance.csv", tests),
        "significance.md": write_text(
            out / "significance.md",
            (
                tests.to_markdown(index=False, floatfmt=".4g")
                if not tests.empty
                else "No pair could be tested."
            )
            + f"\n\n{notes}\n",
        ),
    }
    stored = stored_table(runs)  # evaluations of the study's released files: their own numbers beside ours
    if not stored.empty:
        written["stored.csv"] = save_dataframe_csv(out / "stored.csv", stored)
        written["stored.md"] = write_text(out / "stored.md", format_stored(stored, digits))
    fractions = fraction_curves(runs, metric_overrides, frozen)
    if not fractions.empty:
        written["fractions.csv"] = save_dataframe_csv(out / "fractions.csv", fractions)
        written["fractions.png"] = plot_curves(
            fractions, out / "fractions.png", "training fraction", percent=True
        )
    scale = scale_curves(runs, metric_overrides, frozen)
    if not scale.empty:
        written["data_scale.csv"] = save_dataframe_csv(out / "data_scale.csv", scale)
        written["data_scale.png"] = plot_curves(scale, out / "data_scale.png", "pretraining images")
    if "protocol" in runs:  # task.protocol=study reports some metrics in other units (depth): never mix them
        protocols = runs.dropna(subset=["protocol"]).groupby("task_dataset")["protocol"].unique()
        for column, found in protocols.items():
            if len(found) > 1:
                log.warning(
                    "%s mixes evaluation protocols %s (task.protocol): its numbers are not comparable; "
                    "table one protocol at a time (one sweep folder per protocol)",
                    column,
                    sorted(found),
                )
    counts = runs["status"].value_counts()
    log.info(
        "%s: %d run folder(s): %d complete, %d failed, %d incomplete",
        sweep_dir, len(runs), counts.get("complete", 0), counts.get("failed", 0), counts.get("incomplete", 0),
    )  # fmt: skip
    for record in problems.to_dict("records"):
        fields = {k: v for k, v in record.items() if k != "status" and not pd.isna(v)}
        if "error" in fields:  # first line only: the full message is in runs.csv
            fields["error"] = str(fields["error"]).splitlines()[0] if str(fields["error"]) else ""
        log.warning("  %s: %s", record["status"], " ".join(f"{k}={v}" for k, v in fields.items()))
    log.info("wrote %s to %s", ", ".join(written), out)
    return written
