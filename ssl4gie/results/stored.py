"""The study's own numbers beside ours: every evaluation of one of the study's released files records the file's stored
``epoch``, ``val_perf`` and ``test_perf`` (``stored/*`` in ``metrics.json``); this table puts our re-evaluation of the
test split beside the stored test number, per cell, with what the stored number is for each task.

The stored numbers are what the study's training scripts (``<Task>/train_<task>.py``) computed on the test split at the
epoch they kept, not what the paper's tables report (those come from its ``eval_*.py`` scripts, which
``task.protocol=study`` reproduces): for segmentation and depth they are measured differently, so the note says
which of our metrics comes closest and how it differs.
"""

from __future__ import annotations

import pandas as pd

from ssl4gie.results.tables import HEADLINE

# task -> (our metric closest to the stored test number, what the stored number is)
STORED = {
    "classification": (
        "test/f1",
        "the training script's macro F1 over the test split (the study's smoothed formula, an absent class "
        "counting 2): the same quantity as test/f1 under task.protocol=study",
    ),
    "detection": (
        "test/map",
        "the training script's torchmetrics mAP@[.5:.95] over the test split: the quantity of test/map",
    ),
    "segmentation": (
        "test/dice",
        "the training script's Dice at 224² against resized masks, averaged per batch (weighted by its size); "
        "test/dice is per image at each mask's own size, as the study's eval_segmentation.py scores",
    ),
    "depth": (
        "test/ssi_mse",
        "the training script's validation loss: the scale-and-shift-invariant MSE at 224² (the data term of its "
        "training loss, lower is better), averaged per batch; not an RMSE: compare test/ssi_mse (pooled over "
        "pixels), not test/rmse",
    ),
}
COLUMNS = ("stored/test_perf", "stored/val_perf", "stored/epoch")


def stored_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per complete evaluation of a study file: row, task/dataset, our headline metric, our metric
    closest to the stored test number, and the stored numbers (empty when no run recorded any)."""
    if "stored/test_perf" not in runs:
        return pd.DataFrame()
    done = runs[(runs["status"] == "complete") & runs["stored/test_perf"].notna()]
    rows = []
    for record in done.to_dict("records"):
        task = record.get("task")
        closest, _ = STORED.get(task, (HEADLINE.get(task), ""))
        headline = HEADLINE.get(task)
        rows.append(
            {
                "row": record.get("row"),
                "task_dataset": record.get("task_dataset"),
                "ours": headline,
                "ours_value": record.get(headline),
                "closest": closest,
                "closest_value": record.get(closest),
                **{c.removeprefix("stored/"): record.get(c) for c in COLUMNS},
            }
        )
    return pd.DataFrame(rows).sort_values(["task_dataset", "row"], kind="stable") if rows else pd.DataFrame()


def _number(value, digits: int) -> str:
    return "—" if value is None or pd.isna(value) else f"{float(value):.{digits}f}"


def format_stored(table: pd.DataFrame, digits: int = 3) -> str:
    """Markdown: the table, then one note per task present on what its stored number is."""
    header = (
        "| row | task/dataset | ours | ours, closest to stored | stored test_perf | stored val_perf | epoch |"
    )
    lines = [
        "Our re-evaluation of the study's released files beside the numbers stored in each file",
        "",
        header,
        "|---|---|---|---|---|---|---|",
    ]
    for r in table.to_dict("records"):
        epoch = "—" if pd.isna(r["epoch"]) else str(int(r["epoch"]))
        lines.append(
            f"| {r['row']} | {r['task_dataset']} | {r['ours']} {_number(r['ours_value'], digits)} | "
            f"{r['closest']} {_number(r['closest_value'], digits)} | {_number(r['test_perf'], digits)} | "
            f"{_number(r['val_perf'], digits)} | {epoch} |"
        )
    tasks = sorted({str(td).split("/", 1)[0] for td in table["task_dataset"]})
    lines += [
        "",
        "What the stored number is (test_perf, at the kept epoch; val_perf the same on validation):",
    ]
    lines += [f"- {task}: {STORED[task][1]}." for task in tasks if task in STORED]
    return "\n".join(lines) + "\n"
