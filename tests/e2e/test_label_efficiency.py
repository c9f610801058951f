"""``sweep=label_efficiency``: its grid (fractions × rows × columns) composes to valid cells, and on a smoke grid of
synthetic data every column's cells train on nested subsets of one training split with the same val/test."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict

import pandas as pd
import pytest
from helpers import FAST, ROOT, SMALL_DECODERS, TINY, compose_config, expand, run_cli
from omegaconf import DictConfig

from ssl4gie.data.splits import split_files
from ssl4gie.run.checks import validate
from ssl4gie.utils.conf import instantiate_checked

FRACTIONS = ["0.01", "0.1", "0.25", "0.5", "1.0"]
COLUMNS = {
    "kvasir_seg",
    "cvc_clinicdb",
    "kvasir_det",
    "hyperkvasir_anatomical",
    "hyperkvasir_pathological",
    "c3vd",
}
# synthetic data per column, in its real layout (written where dataset.root points)
SYNTHETIC = {
    "kvasir_seg": "{n: 30, seed: 0, size_range: [32, 40]}",
    "kvasir_det": "{n: 30, seed: 0, size_range: [32, 40]}",
    "cvc_clinicdb": "{n: 30, seed: 0, size: [32, 32]}",
    "hyperkvasir_anatomical": "{per_class: 5, seed: 0, size: [32, 32]}",
    "hyperkvasir_pathological": "{per_class: 5, seed: 0, size: [32, 32]}",
    "c3vd": "{seed: 0, size: [40, 32]}",
}


def test_grid_is_the_study_grid_at_every_fraction():
    # the study grid's cells are valid (tests/conf/test_sweeps.py composes them); here each is there at 5 fractions
    study = {tuple(sorted(c)) for c in expand("study")}
    by_cell = defaultdict(set)
    for cell in expand("label_efficiency"):
        fraction = [o for o in cell if o.startswith("dataset.train_fraction=")]
        by_cell[tuple(sorted(o for o in cell if o not in fraction))].add(fraction[0].split("=")[1])
    assert set(by_cell) == study and len(study) == 72
    assert all(sorted(f, key=float) == FRACTIONS for f in by_cell.values())


def test_smoke_grid_trains_each_column_on_nested_subsets(tmp_path):
    cells = [c for c in expand("label_efficiency") if "row=rn_na_na" in c]
    assert len(cells) == 6 * 5
    listings: dict[str, dict[float, dict]] = defaultdict(dict)
    composed: dict[str, DictConfig] = {}
    for cell in cells:
        column = next(o.split("=", 1)[1] for o in cell if o.startswith("column="))
        fraction = float(next(o.split("=", 1)[1] for o in cell if o.startswith("dataset.train_fraction=")))
        if (
            column not in composed
        ):  # one compose per column (composing is slow); the cells differ in one value
            composed[column] = compose_config(
                ["sweep=label_efficiency", *cell, f"dataset.root={tmp_path / column}",
                 f"dataset.synthetic={SYNTHETIC[column]}"]
            )  # fmt: skip
            validate(composed[column])
            assert composed[column].dataset.fraction_seed == composed[column].seed  # rows of a seed share it
        cfg = composed[column].copy()
        cfg.dataset.train_fraction = fraction
        listings[column][fraction] = split_files(instantiate_checked(cfg.dataset))
    assert set(listings) == set(SYNTHETIC)
    for column, by_fraction in listings.items():
        full = by_fraction[1.0]
        previous: set[str] = set()
        for f in sorted(by_fraction):
            listing = by_fraction[f]
            assert listing["val"] == full["val"] and listing["test"] == full["test"], column
            assert previous <= set(listing["train"]) <= set(full["train"]), (column, f)
            previous = set(listing["train"])
        assert len(by_fraction[0.01]["train"]) < len(full["train"]), column


@pytest.mark.slow  # a sweep as a command line
def test_a_label_efficiency_smoke_sweep_gives_the_curves_figure(tmp_path):
    """Two fractions of one tiny cell through the real multirun, then ssl4gie.results: the metric-vs-fraction
    curves (fractions.png / .csv) and a table of the full training split."""
    out = tmp_path / "out"
    args = [
        "-m",
        "sweep=label_efficiency",
        "row=rn_na_na",
        "column=kvasir_seg",
        "dataset.train_fraction=0.5,1.0",
        *TINY,
        *SMALL_DECODERS,
        *FAST,
        f"dataset.root={tmp_path / 'Kvasir-SEG'}",
        "dataset.synthetic={n: 20, seed: 0, size_range: [64, 96]}",
        f"paths.output_root={out}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "hydra.sweep.subdir=cell${hydra.job.num}",  # the shrinking overrides would make too long a folder name
    ]
    result = run_cli(args)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    sweep = out / "sweeps" / "label_efficiency"
    cells = sorted(p.parent.name for p in sweep.glob("*/metrics.json"))
    assert cells == ["cell0", "cell1"]
    report = subprocess.run(
        [sys.executable, "-m", "ssl4gie.results", str(sweep)], cwd=ROOT, capture_output=True, text=True
    )
    assert report.returncode == 0, report.stderr[-2000:]
    assert (sweep / "results" / "fractions.png").is_file()
    curves = pd.read_csv(sweep / "results" / "fractions.csv")
    assert sorted(curves["x"]) == [0.5, 1.0] and set(curves["row"]) == {
        "RN-NA-NA"
    }  # x: the training fraction
    n_train = sorted(json.loads((sweep / c / "metrics.json").read_text())["n_train"] for c in cells)
    assert n_train[0] == n_train[1] // 2
