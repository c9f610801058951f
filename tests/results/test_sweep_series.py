"""Foundation-row, label-efficiency, cross-validation and data-scale results on fabricated sweeps: k-fold
cells, label-efficiency curves, data-scale series, the overlap footnote and rows grouped by backbone."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pandas as pd
import pytest

from ssl4gie.results import collect_runs, format_table, study_table, write_results
from ssl4gie.results.curves import fraction_curves, scale_curves
from ssl4gie.results.tables import STUDY_ROWS, family, ordered_rows, overlapping

SEG = "segmentation/kvasir_seg"


def write_run(
    root: Path, name: str, row: str, dice: float, seed: int = 1, dataset: str = "kvasir_seg", **facts
):
    folder = root / name
    folder.mkdir(parents=True)
    pd.DataFrame({"name": [f"{name}-{i}" for i in range(4)], "dice": dice}).to_csv(
        folder / "per_image_test.csv", index=False
    )
    backbone = {"RN": "resnet50", "VT": "vit_b", "CN": "convnext"}[row.split("-")[0]]
    record = {"status": "complete", "task": "segmentation", "dataset": dataset, "backbone": backbone}
    record |= {"pretraining": "p", "row": row, "seed": seed, "frozen": False, "test/dice": dice} | facts
    (folder / "metrics.json").write_text(json.dumps(record))


def test_runs_without_the_new_fields_get_their_defaults(tmp_path):
    write_run(tmp_path, "a", "RN-IN-SL", 0.8)
    runs = collect_runs(tmp_path)
    assert runs.loc[0, "train_fraction"] == 1.0
    assert pd.isna(runs.loc[0, "fold"]) and pd.isna(runs.loc[0, "pretraining_data_size"])
    assert runs.loc[0, "pretraining_data_seen"] == "" and runs.loc[0, "row_base"] == "RN-IN-SL"


def test_k_fold_cells_are_mean_and_std_over_folds(tmp_path):
    # fold 0: seeds 0.70 and 0.80 (mean 0.75); fold 1: 0.85; fold 2: 0.95
    for name, fold, seed, dice in [
        ("f0s1", 0, 1, 0.70),
        ("f0s2", 0, 2, 0.80),
        ("f1", 1, 1, 0.85),
        ("f2", 2, 1, 0.95),
    ]:
        write_run(tmp_path, name, "RN-IN-SL", dice, seed=seed, fold=fold, folds=3)
    write_run(tmp_path, "plain", "VT-IN-SL", 0.6)
    table = study_table(collect_runs(tmp_path))
    assert table.loc["RN-IN-SL", (SEG, "n")] == 3  # folds, not runs
    assert table.loc["RN-IN-SL", (SEG, "mean")] == pytest.approx(statistics.mean([0.75, 0.85, 0.95]))
    assert table.loc["RN-IN-SL", (SEG, "std")] == pytest.approx(statistics.stdev([0.75, 0.85, 0.95]))
    assert table.loc["VT-IN-SL", (SEG, "n")] == 1
    assert "over folds" in format_table(table)


def test_label_efficiency_curves_and_the_table_at_the_full_split(tmp_path):
    levels = {"RN-IN-SL": 0.8, "VT-IN-SL": 0.7}
    for row, top in levels.items():
        for fraction in (0.1, 0.5, 1.0):
            for seed in (1, 2):
                dice = top * fraction**0.2 + 0.01 * seed
                write_run(tmp_path, f"{row}-{fraction}-{seed}", row, dice, seed=seed, train_fraction=fraction)
    runs = collect_runs(tmp_path)
    table = study_table(runs)
    assert table.loc["RN-IN-SL", (SEG, "n")] == 2  # only the train_fraction=1.0 runs, not 6 "seeds"
    assert table.loc["RN-IN-SL", (SEG, "mean")] == pytest.approx(0.8 + 0.015)
    curves = fraction_curves(runs)
    assert len(curves) == 6 and set(curves["row"]) == set(levels)
    point = curves[(curves["row"] == "VT-IN-SL") & (curves["x"] == 0.1)].iloc[0]
    assert point["mean"] == pytest.approx(0.7 * 0.1**0.2 + 0.015) and point["n"] == 2
    written = write_results(tmp_path, tmp_path / "report")
    assert {"fractions.png", "fractions.csv"} <= set(written) and written["fractions.png"].stat().st_size > 0
    assert "data_scale.png" not in written
    single = tmp_path / "single"
    write_run(single, "one", "RN-IN-SL", 0.8)
    assert "fractions.png" not in write_results(single, single / "report")  # one fraction: no curve


def test_data_scale_series_rows_and_figure(tmp_path):
    for size, dice in ((10_000, 0.70), (50_000, 0.75), (99_417, 0.78)):
        for seed in (1, 2):
            facts = {"pretraining_data_size": size, "pretraining_data_seen": ["hyperkvasir_unlabelled"]}
            write_run(tmp_path, f"s{size}-{seed}", "RN-HK-MC", dice + 0.01 * seed, seed=seed, **facts)
    write_run(tmp_path, "base", "RN-IN-SL", 0.72)
    runs = collect_runs(tmp_path)
    assert set(runs["row"]) == {"RN-HK-MC@10k", "RN-HK-MC@50k", "RN-HK-MC@99417", "RN-IN-SL"}
    table = study_table(runs)
    assert table.loc["RN-HK-MC@50k", (SEG, "n")] == 2  # a size is a row, its seeds are its values
    rows = list(table.index)
    assert rows.index("RN-HK-MC") < rows.index("RN-HK-MC@10k") < rows.index("RN-HK-MC@50k")
    assert rows.index("RN-HK-MC@99417") < rows.index("RN-HK-BT") < rows.index("VT-HK-MC")  # kept with ResNet
    scale = scale_curves(runs)
    assert scale["row"].unique().tolist() == ["RN-HK-MC"] and scale["x"].tolist() == [10_000, 50_000, 99_417]
    assert scale["mean"].tolist() == pytest.approx([0.715, 0.765, 0.795])
    written = write_results(tmp_path, tmp_path / "report")
    assert written["data_scale.png"].stat().st_size > 0


@pytest.mark.parametrize(
    ("seen", "dataset", "expected"),
    [
        (["hyperkvasir_unlabelled"], "hyperkvasir_pathological", ["hyperkvasir_unlabelled"]),
        (["hyperkvasir_unlabelled", "imagenet"], "hyperkvasir_anatomical", ["hyperkvasir_unlabelled"]),
        (["hyperkvasir_unlabelled"], "kvasir_seg", []),
        (["imagenet"], "cvc_clinicdb", []),
        (["c3vd"], "c3vd", ["c3vd"]),
    ],
)
def test_overlap_rule_is_the_family_prefix(seen, dataset, expected):
    assert overlapping(seen, dataset) == expected
    assert family("hyperkvasir_unlabelled") == "hyperkvasir"


def test_overlap_footnote_marks_the_cell(tmp_path):
    seen = {"pretraining_data_seen": ["hyperkvasir_unlabelled"]}
    write_run(tmp_path, "hk", "RN-HK-MC", 0.8, dataset="hyperkvasir_polyps", **seen)
    write_run(tmp_path, "seg", "RN-HK-MC", 0.8, **seen)
    write_run(
        tmp_path, "in", "RN-IN-SL", 0.7, dataset="hyperkvasir_polyps", pretraining_data_seen=["imagenet"]
    )
    table = study_table(collect_runs(tmp_path))
    assert table.loc["RN-HK-MC", ("segmentation/hyperkvasir_polyps", "overlap")] == "hyperkvasir_unlabelled"
    assert table.loc["RN-HK-MC", (SEG, "overlap")] == "" and table.loc["RN-IN-SL", (SEG, "overlap")] == ""
    markdown = format_table(table)
    line = next(line for line in markdown.splitlines() if line.startswith("| RN-HK-MC"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[-1].endswith("†") and not cells[4].endswith("†")  # hyperkvasir column marked, Kvasir-SEG not
    assert "† RN-HK-MC: pretrained on hyperkvasir_unlabelled" in markdown
    assert "hyperkvasir_polyps" in markdown.split("† RN-HK-MC")[1] and "RN-IN-SL:" not in markdown
    assert "$^\\dagger$" in format_table(table, "latex")


def test_rows_are_grouped_by_backbone():
    rows = ordered_rows(["CN-IN-SL", "VT-IN-SL@1M", "RN-XX-YY", "CN-HK-MC", "VT-IN-SL@10k"])
    assert [r for r in rows if r in STUDY_ROWS] == list(STUDY_ROWS)  # the study's order kept
    families = [r.split("-")[0] for r in rows]
    assert families == sorted(families, key=["RN", "VT", "CN"].index)  # each backbone's rows together
    assert rows.index("VT-IN-SL") + 1 == rows.index("VT-IN-SL@10k") == rows.index("VT-IN-SL@1M") - 1
    assert rows.index("RN-XX-YY") == rows.index("RN-NA-NA") + 1  # an extra ResNet row after the study's
    assert rows[-2:] == ["CN-HK-MC", "CN-IN-SL"]
