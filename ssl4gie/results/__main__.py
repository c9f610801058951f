"""``python -m ssl4gie.results SWEEP_DIR [--out DIR] [--metric TASK=METRIC ...] [--frozen] [--full] [--ci]``.

Writes the results files (see :func:`~ssl4gie.results.report.write_results`) and prints ``table.md`` (and
``stored.md``, for evaluations of the study's released files) to stdout.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ssl4gie.errors import Ssl4gieError
from ssl4gie.results.bootstrap import METHODS, BootstrapOptions
from ssl4gie.results.report import write_results
from ssl4gie.results.tables import HEADLINE, parse_metric_overrides

log = logging.getLogger("ssl4gie.results")


def main(argv: list[str] | None = None) -> int:
    """Command line: 0 when the files were written (even with failed or missing cells), 2 on a user error."""
    parser = argparse.ArgumentParser(
        prog="ssl4gie-results",
        description="Tables, a figure and significance tests from a Hydra sweep folder of ssl4gie runs.",
    )
    parser.add_argument("sweep_dir", help="the multirun folder (run folders are searched recursively)")
    parser.add_argument("--out", default=None, help="output folder (default: SWEEP_DIR/results)")
    parser.add_argument(
        "--metric",
        action="extend",
        nargs="+",
        default=[],
        metavar="TASK=METRIC",
        help="metric of a task or task/dataset column, e.g. depth=abs_rel segmentation/cvc_clinicdb=test/iou "
        f"(defaults: {', '.join(f'{t}={m}' for t, m in HEADLINE.items())})",
    )
    parser.add_argument(
        "--frozen", action="store_true", help="report frozen-backbone runs instead of fine-tuned"
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help="the study's full layout, 12 rows x 6 task-datasets ('—' where a cell has no run); by default the "
        "tables hold only the rows and columns the sweep has runs of",
    )
    parser.add_argument("--digits", type=int, default=3, help="decimals in the tables (default 3)")
    parser.add_argument(
        "--ci",
        action="store_true",
        help="bootstrap intervals over test images in the tables and paired bootstrap differences in the "
        "significance report (reads every run's per_image_test.csv)",
    )
    parser.add_argument("--ci-level", type=float, default=0.95, help="interval level (default 0.95)")
    parser.add_argument("--ci-resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    parser.add_argument("--ci-seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument(
        "--ci-method", default="percentile", choices=METHODS, help="interval method (default percentile)"
    )
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        ci = None
        if args.ci:
            ci = BootstrapOptions(args.ci_resamples, args.ci_level, args.ci_seed, args.ci_method)
        written = write_results(
            args.sweep_dir,
            args.out,
            parse_metric_overrides(args.metric),
            args.frozen,
            args.digits,
            ci,
            full=args.full,
        )
    except Ssl4gieError as e:
        log.error("%s", e)
        return 2
    # the table itself on stdout (the log goes to stderr), so that the study is readable without opening a file
    sys.stdout.write(written["table.md"].read_text())
    if "stored.md" in written:  # the study's released files: the numbers stored in them beside ours
        sys.stdout.write("\n" + written["stored.md"].read_text())
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
