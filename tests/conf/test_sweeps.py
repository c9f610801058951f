"""Every sweep file expands to valid cells only, with the expected count; `python run.py -m` is the study grid."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import CONF, ROOT, compose_config, expand
from hydra import compose, initialize_config_dir

from ssl4gie.run.checks import validate
from ssl4gie.run.sweep_progress import count_cells

EXPECTED = {
    "study": 72,
    "study_seeds": 216,
    "resnet50": 36,
    "vit_b": 36,
    "classification": 24,
    "detection": 12,
    "segmentation": 24,
    "depth": 12,
    "smoke": 2,
    "generalisation": 60,
    "released": 72,
    "gi_foundation": 78,
    "data_scale": 18,
    "label_efficiency": 360,
    "pretrain_hyperkvasir": 4,
}
INVALID = {
    ("vit_b", "imagenet_barlowtwins"),
    ("vit_b", "hyperkvasir_barlowtwins"),
    ("resnet50", "imagenet_mae"),
    ("resnet50", "hyperkvasir_mae"),
}


def test_every_sweep_file_is_listed():
    assert {p.stem for p in (ROOT / "sweeps").glob("*.yaml")} == set(EXPECTED)


def test_seeded_study_is_the_study_grid_per_seed():
    study = {tuple(sorted(c for c in cell if not c.startswith("seed="))) for cell in expand("study")}
    seeded = expand("study_seeds")
    assert {tuple(sorted(c for c in cell if not c.startswith("seed="))) for cell in seeded} == study
    assert sorted({c for cell in seeded for c in cell if c.startswith("seed=")}) == [
        "seed=42",
        "seed=43",
        "seed=44",
    ]


# study_seeds: the study grid per seed; label_efficiency: the study grid per fraction (test_label_efficiency).
# Composing every cell takes about 0.3 s a cell on 2 cores: the small sweeps run in the fast lane.
SWEEPS = sorted(set(EXPECTED) - {"study_seeds", "label_efficiency"})
FAST_SWEEPS = {"smoke", "pretrain_hyperkvasir"}


@pytest.mark.parametrize(
    "name", [n if n in FAST_SWEEPS else pytest.param(n, marks=pytest.mark.slow) for n in SWEEPS]
)
def test_sweep_expands_to_valid_cells(name):
    cells = expand(name)
    assert len(cells) == EXPECTED[name]
    seen = set()
    with initialize_config_dir(
        config_dir=str(CONF), version_base="1.3"
    ):  # one context: fast repeated composes
        configs = [compose(config_name="config", overrides=[f"sweep={name}", *cell]) for cell in cells]
    for cfg in configs:
        if cfg.mode != "train":  # an evaluation's ckpt is a finished run's file, not the sweep's
            cfg.ckpt = __file__
        validate(cfg)  # dataset fits the task, pretraining exists for the backbone
        assert (cfg.backbone.name, cfg.pretraining.name) not in INVALID
        method = cfg.ssl.name if "ssl" in cfg else None  # pretraining cells differ by method
        seen.add((cfg.task.name, cfg.dataset.name, cfg.backbone.name, cfg.pretraining.name, method, cfg.seed))
    assert len(seen) == len(cells)  # no duplicate cells


@pytest.mark.slow  # composes the 72 cells
def test_study_grid_covers_12_rows_by_6_columns():
    rows, columns = set(), set()
    cells = expand("study")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        configs = [compose(config_name="config", overrides=["sweep=study", *cell]) for cell in cells]
    for cfg in configs:
        rows.add(f"{cfg.backbone.code}-{cfg.pretraining.code}")
        columns.add((cfg.task.name, cfg.dataset.name))
    assert len(rows) == 12 and len(columns) == 6
    assert "RN-HK-BT" in rows and "VT-HK-MA" in rows and "VT-IN-BT" not in rows


def test_bare_multirun_is_the_study_grid():
    cfg = compose_config([], hydra=True)
    assert cfg.hydra.sweeper.params == compose_config(["sweep=study"], hydra=True).hydra.sweeper.params
    assert count_cells(cfg) == 72


def test_command_line_seeds_extend_a_sweep():
    cfg = compose_config(["sweep=segmentation"], hydra=True)
    cfg.hydra.overrides.task = ["seed=1,2,3"]
    assert count_cells(cfg) == 24 * 3


def test_single_run_ignores_the_sweep():
    cfg = compose_config([])
    assert (cfg.backbone.name, cfg.pretraining.name, cfg.task.name, cfg.seed) == (
        "resnet50",
        "random",
        "segmentation",
        42,
    )


def test_local_settings_example_exists():
    assert (Path(ROOT) / "conf" / "local" / "example.yaml").exists()
