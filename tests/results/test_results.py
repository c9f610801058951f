"""Results aggregation on a fabricated sweep folder: exact table values, marks, missing/failed cells, tests, CLI."""

from __future__ import annotations

import json
import logging
import shutil
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.stats import wilcoxon

from ssl4gie.results import collect_runs, format_table, problem_runs, significance, study_table
from ssl4gie.results.__main__ import main
from ssl4gie.results.stats import _compare, holm
from ssl4gie.results.tables import STUDY_ROWS, direction

SEG, DEPTH = "segmentation/kvasir_seg", "depth/c3vd"
NAMES = {"RN-IN-SL": ("resnet50", "imagenet_supervised"), "RN-NA-NA": ("resnet50", "random")}
NAMES |= {"VT-IN-MA": ("vit_b", "imagenet_mae"), "VT-NA-NA": ("vit_b", "random")}
# Per-image metric level per row: RN-IN-SL has the best Dice (↑), VT-IN-MA the best (lowest) RMSE (↓).
LEVEL = {
    SEG: {"RN-IN-SL": 0.90, "RN-NA-NA": 0.60, "VT-IN-MA": 0.85, "VT-NA-NA": 0.55},
    DEPTH: {"RN-IN-SL": 3.0, "RN-NA-NA": 5.0, "VT-IN-MA": 2.5},
}
IMAGES = [f"{i:03d}" for i in range(8)]  # zero-padded names must stay strings when paired


def overrides(row: str, column: str, seed: int, frozen: bool = False) -> list[str]:
    backbone, pretraining = NAMES[row]
    task, dataset = column.split("/")
    groups = {
        "task": task,
        "dataset": dataset,
        "backbone": backbone,
        "pretraining": pretraining,
        "seed": seed,
    }
    return [f"{k}={v}" for k, v in groups.items()] + [f"frozen={str(frozen).lower()}"]


def per_image(row: str, column: str, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng([list(LEVEL).index(column), sorted(NAMES).index(row), seed])
    names = IMAGES[:4] if row == "VT-NA-NA" else IMAGES  # this row: too few images to pair
    values = LEVEL[column][row] + 0.03 * seed + rng.normal(0, 0.02, len(names))
    metric = "dice" if column == SEG else "rmse"
    return pd.DataFrame({"name": names, metric: values, "iou": values - 0.1})


def write_run(folder: Path, row: str, column: str, seed: int, frozen: bool = False) -> pd.DataFrame:
    """A complete run folder as ssl4gie.run.pipeline writes it; returns its per-image table."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides(row, column, seed, frozen)))
    frame = per_image(row, column, seed)
    frame.to_csv(folder / "per_image_test.csv", index=False)
    backbone, pretraining = NAMES[row]
    task, dataset = column.split("/")
    metric = "dice" if task == "segmentation" else "rmse"
    facts = {"status": "complete", "task": task, "dataset": dataset, "backbone": backbone}
    facts |= {"pretraining": pretraining, "row": row, "seed": seed, "frozen": frozen, "mode": "train"}
    facts |= {"wall_time_s": 12.5, "monitor": f"val/{metric}", "epochs": 2, "best_epoch": 1}
    facts |= {
        f"test/{metric}": float(frame[metric].mean()),
        f"val/{metric}": 0.5,
        "test/iou": float(frame["iou"].mean()),
    }
    (folder / "metrics.json").write_text(json.dumps(facts))
    return frame


@pytest.fixture
def sweep(tmp_path: Path) -> tuple[Path, dict]:
    """4 rows × 2 task-datasets × 2 seeds, with a missing cell (VT-NA-NA depth: no folder), a failed run
    (VT-IN-MA segmentation seed 2), an incomplete run (RN-NA-NA depth seed 2) and one frozen run."""
    root = tmp_path / "sweep"
    (root).mkdir()
    (root / "multirun.yaml").write_text("hydra: {}\n")
    frames, job = {}, 0
    for column, levels in LEVEL.items():
        for row in levels:
            for seed in (1, 2):
                job += 1
                # half flat (<sweep>/<job>), half nested one level (<sweep>/<override_dirname>/<seed>)
                folder = root / str(job) if seed == 1 else root / f"{row},{column.replace('/', '-')}" / "s2"
                if (row, column, seed) == ("VT-IN-MA", SEG, 2):
                    (folder / ".hydra").mkdir(parents=True)
                    (folder / ".hydra" / "overrides.yaml").write_text(
                        yaml.safe_dump(overrides(row, column, seed))
                    )
                    error = {
                        "error": "CUDA out of memory\nTraceback ...",
                        "type": "OutOfMemoryError",
                        "time": 1.0,
                    }
                    (folder / "failed.json").write_text(json.dumps(error))
                elif (row, column, seed) == ("RN-NA-NA", DEPTH, 2):
                    (folder / ".hydra").mkdir(parents=True)
                    config = {
                        "task": {"name": "depth"},
                        "dataset": {"name": "c3vd"},
                        "seed": 2,
                        "frozen": False,
                    }
                    config |= {"backbone": {"name": "resnet50", "code": "RN"}}
                    config |= {"pretraining": {"name": "random", "code": "NA-NA"}}
                    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
                else:
                    frames[(row, column, seed)] = write_run(folder, row, column, seed)
    frames[("RN-IN-SL", SEG, "frozen")] = write_run(root / "frozen", "RN-IN-SL", SEG, 1, frozen=True)
    return root, frames


def cell_values(frames: dict, row: str, column: str, metric: str) -> list[float]:
    return [
        float(f[metric].mean())
        for (r, c, s), f in frames.items()
        if (r, c) == (row, column) and s != "frozen"
    ]


def test_collect_runs_statuses_and_fallbacks(sweep):
    root, _ = sweep
    runs = collect_runs(root)
    assert len(runs) == 15  # 16 cells - 2 missing + 1 frozen
    assert runs["status"].value_counts().to_dict() == {"complete": 13, "failed": 1, "incomplete": 1}
    assert not runs["path"].str.startswith("/").any()  # relative to the sweep folder
    failed = runs[runs["status"] == "failed"].iloc[0]  # identity from .hydra/overrides.yaml only
    assert (failed["row"], failed["task_dataset"], failed["seed"]) == ("VT-IN-MA", SEG, 2)
    assert failed["error_type"] == "OutOfMemoryError"
    incomplete = runs[runs["status"] == "incomplete"].iloc[0]  # identity from .hydra/config.yaml
    assert (incomplete["row"], incomplete["task_dataset"], incomplete["seed"]) == ("RN-NA-NA", DEPTH, 2)
    assert {"test/dice", "test/rmse", "val/dice", "wall_time_s"} <= set(runs.columns)


def test_study_table_values_best_and_missing(sweep):
    root, frames = sweep
    table = study_table(collect_runs(root))
    assert list(table.index[:12]) == [
        *("RN-HK-MC", "RN-HK-BT", "RN-IN-MC", "RN-IN-BT", "RN-IN-SL", "RN-NA-NA"),
        *("VT-HK-MC", "VT-HK-MA", "VT-IN-MC", "VT-IN-MA", "VT-IN-SL", "VT-NA-NA"),
    ]
    for row, column, metric in [
        ("RN-IN-SL", SEG, "dice"),
        ("RN-NA-NA", SEG, "dice"),
        ("VT-IN-MA", DEPTH, "rmse"),
    ]:
        values = cell_values(frames, row, column, metric)
        assert table.loc[row, (column, "n")] == 2
        assert table.loc[row, (column, "mean")] == pytest.approx(statistics.mean(values), abs=1e-12)
        assert table.loc[row, (column, "std")] == pytest.approx(statistics.stdev(values), abs=1e-12)
    # the failed seed and the incomplete seed do not count; the missing cell has none
    assert table.loc["VT-IN-MA", (SEG, "n")] == 1 and np.isnan(table.loc["VT-IN-MA", (SEG, "std")])
    assert table.loc["RN-NA-NA", (DEPTH, "n")] == 1
    assert table.loc["VT-NA-NA", (DEPTH, "n")] == 0 and np.isnan(table.loc["VT-NA-NA", (DEPTH, "mean")])
    # best: highest Dice (↑) and lowest RMSE (↓)
    assert table.index[table[(SEG, "best")]].tolist() == ["RN-IN-SL"]
    assert table.index[table[(DEPTH, "best")]].tolist() == ["VT-IN-MA"]
    # frozen runs only with frozen=True; another metric by task
    frozen = study_table(collect_runs(root), frozen=True)
    assert frozen.loc["RN-IN-SL", (SEG, "n")] == 1 and frozen[(DEPTH, "n")].sum() == 0
    by_iou = study_table(collect_runs(root), {"segmentation": "iou"} | {SEG: "test/iou"})
    assert by_iou.attrs["metrics"][SEG] == "test/iou"
    expected = statistics.mean(cell_values(frames, "RN-IN-SL", SEG, "iou"))
    assert by_iou.loc["RN-IN-SL", (SEG, "mean")] == pytest.approx(expected)


def test_format_table_marks(sweep):
    root, frames = sweep
    runs = collect_runs(root)
    table = study_table(runs)
    values = cell_values(frames, "RN-IN-SL", SEG, "dice")
    best = f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"
    markdown = format_table(table, "markdown", problems=problem_runs(runs))
    assert f"**{best}**" in markdown
    assert "OutOfMemoryError" in markdown and "Failed or incomplete runs (2)" in markdown
    cells = {}
    for line in markdown.splitlines():
        if line.startswith("| ") and "error" not in line:
            row, *values = (c.strip() for c in line.strip("|").split("|"))
            cells[row] = values
    assert len(cells["VT-NA-NA"]) == 6 and cells["VT-NA-NA"][5] == "—"  # the missing depth cell
    assert cells["VT-NA-NA"].count("—") == 5  # 4 study columns without data + the missing depth cell
    assert cells["VT-IN-MA"][3] == f"{table.loc['VT-IN-MA', (SEG, 'mean')]:.3f} (1)"  # single seed: no ±
    csv = pd.read_csv(pd.io.common.StringIO(format_table(table, "csv")), index_col=0)
    seg_col, depth_col = (c for c in csv.columns if c.startswith((SEG, DEPTH)))
    assert "↑" in seg_col and "↓" in depth_col
    assert csv.loc["RN-IN-SL", seg_col] == f"{best}*"
    assert csv[depth_col].str.endswith("*").sum() == 1 and csv.loc["VT-IN-MA", depth_col].endswith("*")
    assert csv.loc["VT-NA-NA", depth_col] == "—"
    latex = format_table(table, "latex")
    pm = best.replace("±", "$\\pm$")
    assert f"\\textbf{{{pm}}}" in latex
    assert "\\toprule" in latex and "segmentation" in latex and "kvasir\\_seg" in latex and "---" in latex
    assert "±" not in latex.split("\n", 1)[1] and "—" not in latex


def test_significance_matches_scipy(sweep):
    root, frames = sweep
    tests = significance(collect_runs(root), root)
    assert set(tests["task_dataset"]) == {SEG, DEPTH}
    # seeds averaged per image first, images paired by name
    a = (frames[("RN-IN-SL", SEG, 1)]["dice"] + frames[("RN-IN-SL", SEG, 2)]["dice"]) / 2
    b = (frames[("RN-NA-NA", SEG, 1)]["dice"] + frames[("RN-NA-NA", SEG, 2)]["dice"]) / 2
    line = tests[
        (tests["task_dataset"] == SEG) & (tests["row_a"] == "RN-IN-SL") & (tests["row_b"] == "RN-NA-NA")
    ]
    assert len(line) == 1
    line = line.iloc[0]
    expected = wilcoxon(a.to_numpy(), b.to_numpy())
    assert line["n_pairs"] == 8 and line["seeds_a"] == 2 and line["better"] == "RN-IN-SL"
    assert line["p_value"] == pytest.approx(expected.pvalue) and line["statistic"] == expected.statistic
    seg = tests[tests["task_dataset"] == SEG]
    tested = seg["p_value"].notna()
    assert seg.loc[tested, "p_holm"].to_numpy() == pytest.approx(holm(seg.loc[tested, "p_value"].to_numpy()))
    skipped = seg[(seg["row_b"] == "VT-NA-NA")]  # only 4 images in that row
    assert (
        len(skipped) == 3 and skipped["p_value"].isna().all() and skipped["note"].str.contains("only 4").all()
    )


@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        *[("test/rmse", "min"), ("test/rmse_median", "min"), ("val/ssi_mse", "min"), ("test/abs_rel", "min")],
        *[("test/dice", "max"), ("test/f1", "max"), ("test/map_50", "max"), ("test/delta1", "max")],
    ],
)
def test_direction(metric, expected):
    assert direction(metric) == expected


def test_holm_and_zero_differences():
    assert holm(np.array([0.01, 0.04, 0.03])) == pytest.approx([0.03, 0.06, 0.06])
    assert holm(np.array([0.5, 0.9])) == pytest.approx([1.0, 1.0])
    same = pd.Series(np.linspace(0.1, 0.9, 8), index=IMAGES)
    assert "zero" in _compare(same, same.copy(), 6, lower_better=False)["note"]


def test_cli_writes_all_files(sweep, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    root, _ = sweep
    out = tmp_path / "report"
    assert main([str(root), "--out", str(out), "--metric", "depth=abs_rel"]) == 0
    names = {
        "runs.csv",
        "table.md",
        "table.csv",
        "table.tex",
        "table.png",
        "significance.csv",
        "significance.md",
    }
    assert {p.name for p in out.iterdir()} == names  # no temporary file left behind
    assert "depth/c3vd test/abs_rel ↓" in (out / "table.md").read_text()
    assert pd.read_csv(out / "runs.csv")["status"].value_counts()["complete"] == 13
    assert "13 complete, 1 failed, 1 incomplete" in caplog.text
    assert main([str(root)]) == 0 and (root / "results" / "table.png").stat().st_size > 0


def test_cli_prints_the_table_to_stdout(sweep, tmp_path, capsys):
    root, _ = sweep
    out = tmp_path / "report"
    assert main([str(root), "--out", str(out), "--metric", "depth=abs_rel"]) == 0
    printed = capsys.readouterr().out
    assert printed == (out / "table.md").read_text()  # the Markdown table as written, nothing else
    assert "depth/c3vd test/abs_rel ↓" in printed and "RN-IN-SL" in printed


def test_cli_user_errors(tmp_path, caplog, capsys):
    assert main([str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().out == ""  # no table when nothing was written
    assert "does not exist" in caplog.text
    (tmp_path / "empty" / "logs").mkdir(parents=True)
    assert main([str(tmp_path / "empty")]) == 2
    assert "holds no run folder" in caplog.text
    write_run(tmp_path / "one", "RN-IN-SL", SEG, 1)
    assert main([str(tmp_path / "one"), "--metric", "colour=red"]) == 2
    assert "unknown task or column" in caplog.text


def test_duplicate_seed_counts_once(sweep, caplog):
    root, _ = sweep
    first = next(p for p in root.iterdir() if (p / "metrics.json").is_file() and p.name != "frozen")
    shutil.copytree(first, root / "rerun" / first.name)  # the same cell and seed twice, e.g. a rerun
    metrics = json.loads((first / "metrics.json").read_text())
    column = f"{metrics['task']}/{metrics['dataset']}"
    table = study_table(collect_runs(root))
    assert table.loc[metrics["row"], (column, "n")] == 2
    assert "several complete runs of one cell and seed" in caplog.text


def test_a_column_that_mixes_evaluation_protocols_is_flagged(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    for seed, protocol in ((1, "ssl4gie"), (2, "study")):
        folder = tmp_path / f"seed{seed}"
        write_run(folder, "RN-IN-SL", "depth/c3vd", seed)
        metrics = json.loads((folder / "metrics.json").read_text())
        (folder / "metrics.json").write_text(json.dumps({**metrics, "protocol": protocol}))
    assert main([str(tmp_path)]) == 0
    assert "depth/c3vd mixes evaluation protocols ['ssl4gie', 'study']" in caplog.text


def table_lines(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("|")]


def test_a_small_sweep_prints_a_compact_table_and_full_gives_the_study_layout(tmp_path, capsys):
    """Two cells (the smoke sweep's shape): two rows, one column, narrow enough for a terminal; --full: 12 x 6."""
    root = tmp_path / "smoke"
    for job, row in enumerate(("RN-NA-NA", "VT-NA-NA")):
        write_run(root / str(job), row, SEG, 42)
    assert main([str(root)]) == 0
    compact = table_lines(capsys.readouterr().out)
    assert [line.split("|")[1].strip() for line in compact[2:]] == ["RN-NA-NA", "VT-NA-NA"]
    assert [c.strip() for c in compact[0].split("|")[2:-1]] == [f"{SEG} test/dice ↑"]
    assert max(map(len, compact)) <= 60

    assert main([str(root), "--full"]) == 0
    full = table_lines(capsys.readouterr().out)
    assert [line.split("|")[1].strip() for line in full[2:]] == list(STUDY_ROWS)
    assert len(full[0].split("|")[2:-1]) == 6 and max(map(len, full)) > 200
    written = table_lines((root / "results" / "table.md").read_text())  # the files follow the flag
    assert sum(line.count("—") for line in written) == 12 * 6 - 2
