"""Every run writes ``splits.json``: the files of each split it used, relative to ``dataset.root``; a label
fraction trains on a nested subset and leaves validation and test alone (the run's side of
tests/data/test_fractions.py)."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import compose_config, task_overrides

from ssl4gie.run.pipeline import execute


def test_a_run_lists_the_files_it_trained_on_and_the_fraction_in_its_metrics(tmp_paths, tmp_path):
    runs = {}
    for fraction in (1.0, 0.5):
        run = tmp_path / f"run{fraction}"
        execute(
            compose_config(
                task_overrides("classification", tmp_paths, f"dataset.train_fraction={fraction}"), run
            )
        )
        runs[fraction] = (
            json.loads((run / "splits.json").read_text()),
            json.loads((run / "metrics.json").read_text()),
        )
    (full, full_metrics), (half, half_metrics) = runs[1.0], runs[0.5]
    root = Path(compose_config(task_overrides("classification", tmp_paths)).dataset.root)
    assert all((root / f).is_file() for split in full.values() for f in split)
    assert half["val"] == full["val"] and half["test"] == full["test"]
    assert set(half["train"]) < set(full["train"]) and len(half["train"]) == half_metrics["n_train"]
    assert (half_metrics["train_fraction"], full_metrics["train_fraction"]) == (0.5, 1.0)
    assert len(full["test"]) == full_metrics["n_test"]
