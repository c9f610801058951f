"""Sweep folder → tidy pandas DataFrame → the study's tables, a figure and significance tests.

``python -m ssl4gie.results SWEEP_DIR`` (or ``ssl4gie-results SWEEP_DIR``) writes everything; the functions
below are the same steps for a notebook.
"""

from ssl4gie.results.bootstrap import BootstrapOptions, cell_interval, paired_interval
from ssl4gie.results.collect import ResultsError, collect_runs
from ssl4gie.results.curves import fraction_curves, scale_curves
from ssl4gie.results.report import write_results
from ssl4gie.results.stats import significance
from ssl4gie.results.tables import format_table, problem_runs, study_table

__all__ = [
    "BootstrapOptions",
    "ResultsError",
    "cell_interval",
    "collect_runs",
    "format_table",
    "fraction_curves",
    "paired_interval",
    "problem_runs",
    "scale_curves",
    "significance",
    "study_table",
    "write_results",
]
