"""The GI foundation pretraining rows, row files and sweeps: each row is complete data (backbones, file names,
sources, licence, code, pretraining-set facts), its row file composes to a valid run, and the sweeps expand to
valid cells."""

from __future__ import annotations

import pytest
import yaml
from helpers import CONF, compose_config, expand
from hydra import compose, initialize_config_dir

from ssl4gie.errors import ConfigError
from ssl4gie.run.checks import validate

# row file -> (backbone, pretraining, row code)
ROWS = {
    "rn_gn5m_d1": ("resnet50", "gastronet5m_dinov1", "RN-GN5M-D1"),
    "vs_gn5m_d1": ("vit_s", "gastronet5m_dinov1", "VS-GN5M-D1"),
    "rn_gn5m_m2": ("resnet50", "gastronet5m_mocov2", "RN-GN5M-M2"),
    "rn_gn5m_s2": ("resnet50", "gastronet5m_simclrv2", "RN-GN5M-S2"),
    "rn_gn1m_d1": ("resnet50", "gastronet1m_dinov1", "RN-GN1M-D1"),
    "rn_gn200k_d1": ("resnet50", "gastronet200k_dinov1", "RN-GN200K-D1"),
    "vb14_gn5m_d2": ("vit_b14", "gastronet5m_dinov2", "VB14-GN5M-D2"),
    "vt_e700k_ma": ("vit_b", "endovit_mae", "VT-E700K-MA"),
    "rn_in_d1": ("resnet50", "imagenet_dino", "RN-IN-D1"),
    "vs_in_d1": ("vit_s", "imagenet_dino", "VS-IN-D1"),
    "vt_in_d1": ("vit_b", "imagenet_dino", "VT-IN-D1"),
    "vb14_lvd_d2": ("vit_b14", "imagenet_dinov2", "VB14-LVD-D2"),
    "vb14_lvd_d2r": ("vit_b14", "imagenet_dinov2_reg4", "VB14-LVD-D2R"),
}
PRETRAINING = sorted({p for _, p, _ in ROWS.values()})
BACKBONES = {p: sorted({b for b, q, _ in ROWS.values() if q == p}) for p in PRETRAINING}
COLUMNS = {
    ("classification", "hyperkvasir_anatomical"),
    ("classification", "hyperkvasir_pathological"),
    ("detection", "kvasir_det"),
    ("segmentation", "kvasir_seg"),
    ("segmentation", "cvc_clinicdb"),
    ("depth", "c3vd"),
}


def row_file(name: str) -> dict:
    return yaml.safe_load((CONF / "pretraining" / f"{name}.yaml").read_text())


@pytest.mark.parametrize("name", PRETRAINING)
def test_row_is_complete_data(name):
    row = row_file(name)
    assert row["name"] == name and sorted(row["backbones"]) == BACKBONES[name]
    for backbone in row["backbones"]:  # a file name in paths.weights_dir and where to get it, per backbone
        assert row["files"][backbone].endswith((".pth", ".pth.tar", ".bin"))
        assert row["urls"][backbone].startswith("https://")
    assert row["license"] and row["code"]
    assert row["data_size"] is None or (isinstance(row["data_size"], int) and row["data_size"] > 0)
    assert isinstance(row["data_seen"], list) and all(isinstance(d, str) for d in row["data_seen"])
    if "normalize" in row:
        assert len(row["normalize"]["mean"]) == 3 and all(0 < s < 1 for s in row["normalize"]["std"])
    if name.startswith("gastronet"):
        assert row["license"].startswith("CC BY-NC-ND 4.0") and "gated" in row["license"]
        assert "gastronet5m" in row["data_seen"]


def test_file_names_are_unique_across_rows():
    """Two rows must never look for the same file in paths.weights_dir."""
    names = [
        (p.stem, f)
        for p in (CONF / "pretraining").glob("*.yaml")
        for f in (yaml.safe_load(p.read_text()).get("files") or {}).values()
    ]
    assert len({f for _, f in names}) == len(names)


def test_data_scale_series_grows():
    sizes = [
        row_file(n)["data_size"] for n in ("gastronet200k_dinov1", "gastronet1m_dinov1", "gastronet5m_dinov1")
    ]
    assert sizes == sorted(sizes) and sizes[0] == 200_000 and sizes[-1] > 4_000_000


@pytest.mark.parametrize(
    ("backbone", "pretraining"),
    [("resnet50", "gastronet5m_dinov2"), ("vit_b", "gastronet5m_mocov2"), ("vit_b14", "endovit_mae")],
)
def test_invalid_backbone_row_pairs_are_refused(backbone, pretraining):
    cfg = compose_config([f"backbone={backbone}", f"pretraining={pretraining}"])
    with pytest.raises(ConfigError, match=f"pretraining={pretraining} exists for backbone"):
        validate(cfg)


@pytest.mark.parametrize(
    ("sweep", "rows"),
    [
        pytest.param("gi_foundation", set(ROWS), marks=pytest.mark.slow),
        ("data_scale", None),
    ],  # 78 and 18 cells
)
def test_sweeps_expand_to_the_rows_by_the_six_columns(sweep, rows):
    """Every row × every column, each once; a cell's validity is its row's (backbone × pretraining) and its
    column's (task × dataset), so every row is composed and checked with one column, every column with one row."""
    cells = expand(sweep)
    expected_rows = rows or {"rn_gn200k_d1", "rn_gn1m_d1", "rn_gn5m_d1"}
    assert len(cells) == 6 * len(expected_rows) == len({tuple(sorted(c)) for c in cells})
    row_of = {tuple(sorted(cell)): next(c[4:] for c in cell if c.startswith("row=")) for cell in cells}
    column_of = {k: next(c[7:] for c in k if c.startswith("column=")) for k in row_of}
    assert set(row_of.values()) == expected_rows and len(set(column_of.values())) == 6
    first_row, first_column = sorted(expected_rows)[0], "kvasir_seg"
    checked = [k for k in row_of if row_of[k] == first_row or column_of[k] == first_column]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        configs = {k: compose(config_name="config", overrides=[f"sweep={sweep}", *k]) for k in checked}
    columns = set()
    for key, cfg in configs.items():
        validate(cfg)  # dataset fits the task, pretraining exists for the backbone
        backbone, pretraining, code = ROWS[row_of[key]]
        assert (cfg.backbone.name, cfg.pretraining.name) == (backbone, pretraining)
        assert f"{cfg.backbone.code}-{cfg.pretraining.code}" == code
        columns.add((cfg.task.name, cfg.dataset.name))
        if row_of[key] in ("vb14_lvd_d2", "vb14_lvd_d2r"):  # the row fixes the register count of its release
            assert cfg.backbone.registers == (4 if row_of[key].endswith("r") else 0)
    assert columns == COLUMNS
    codes = [code for name, (_, _, code) in ROWS.items()]
    assert len(set(codes)) == len(codes)  # one results-table row per row file
