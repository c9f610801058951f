"""The study table as a figure: one panel per task-dataset, a point per backbone row with its std over seeds."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.lines import Line2D

from ssl4gie.results.tables import MISSING, arrow, caption
from ssl4gie.utils.figures import save_figure

FAMILY_COLOURS = {"RN": "tab:blue", "VT": "tab:orange"}  # ResNet-50 rows, ViT-B rows; any other: grey
FAMILY_NAMES = {"RN": "ResNet-50", "VT": "ViT-B"}


def plot_table(table, path: Path, panels_per_line: int = 3) -> Path:
    """Draw ``table`` (from :func:`~ssl4gie.results.tables.study_table`) to a PNG at ``path``, atomically.

    Only columns with at least one complete run get a panel; every panel lists all rows in table order
    (``—`` where a row has no run), the best row drawn as a large star with a bold label.
    """
    metrics = {c: m for c, m in table.attrs["metrics"].items() if table[(c, "n")].sum() > 0}
    rows = [str(r) for r in table.index]
    if not metrics:
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.text(0.5, 0.5, "no complete run to plot", ha="center", va="center")
        ax.axis("off")
        return save_figure(fig, path)
    ncols = min(panels_per_line, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4.8 * ncols, (0.3 * len(rows) + 1.4) * nrows + 0.6), squeeze=False
    )
    for ax, (column, metric) in zip(axes.flat, metrics.items(), strict=False):
        cells = table[column]
        for y, (row, (mean, std, n, best)) in enumerate(
            zip(rows, cells[["mean", "std", "n", "best"]].itertuples(index=False), strict=True)
        ):
            if n == 0:
                ax.text(0.01, y, MISSING, color="0.6", va="center", transform=ax.get_yaxis_transform())
                continue
            colour = FAMILY_COLOURS.get(row.split("-")[0], "0.4")
            ax.errorbar(
                mean, y, xerr=std if n > 1 else None, fmt="*" if best else "o", ms=13 if best else 6,
                color=colour, ecolor=colour, capsize=3, markeredgecolor="black" if best else colour,
            )  # fmt: skip
        for y in range(1, len(rows)):  # a rule between ResNet and ViT rows, as in the LaTeX table
            if rows[y].split("-")[0] != rows[y - 1].split("-")[0]:
                ax.axhline(y - 0.5, color="0.8", lw=0.8)
        ax.set_yticks(range(len(rows)), rows, fontsize=8)
        for label, best in zip(ax.get_yticklabels(), cells["best"], strict=True):
            label.set_fontweight("bold" if best else "normal")
        ax.set_ylim(len(rows) - 0.5, -0.5)  # first row on top, as in the table
        ax.set_title(column, fontsize=10)
        ax.set_xlabel(f"{metric} {arrow(metric)}", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    handles = [
        Line2D([], [], marker="o", ls="", color=c, label=FAMILY_NAMES[f]) for f, c in FAMILY_COLOURS.items()
    ]
    handles.append(
        Line2D([], [], marker="*", ls="", ms=12, color="0.5", markeredgecolor="black", label="best")
    )
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=9)
    fig.suptitle(caption(table), fontsize=8, wrap=True)
    fig.tight_layout(rect=(0, 0.04, 1, 0.95))
    return save_figure(fig, path, dpi=120)
