"""Sweep cell folders are named by their overrides and always fit the file system: a name past its 255-byte limit
keeps a readable prefix and ends in a hash of the whole override set (the same on every relaunch); the study
grid's names are unchanged, and code that predicts a cell's folder (the generalisation sweep's ckpt) uses the same
rule."""

from __future__ import annotations

import json

import pytest
from helpers import FAST, SMALL_DECODERS, TINY, compose_config, expand, run_cli
from omegaconf import OmegaConf

import ssl4gie  # noqa: F401  (registers the resolvers for the in-process compose)
from ssl4gie.run.resolvers import NAME_MAX, fit_name, with_weights

LONG = ",".join(f"task.decoder.vit.head.option_{i}=value_{i}" for i in range(10))  # 419 bytes


def test_a_name_that_fits_is_unchanged_and_a_long_one_is_shortened_deterministically():
    assert fit_name("column=kvasir_seg,row=rn_hk_mc,seed=42") == "column=kvasir_seg,row=rn_hk_mc,seed=42"
    assert len(LONG.encode()) > 300
    short = fit_name(LONG)
    assert len(short.encode()) == NAME_MAX and short == fit_name(LONG)  # the same folder on every relaunch
    prefix, digest = short.rsplit("~", 1)
    assert LONG.startswith(prefix) and len(digest) == 12 and int(digest, 16) >= 0
    assert fit_name(LONG.replace("value_9", "value_X")) != short  # the hash covers the whole override set


def test_each_path_part_is_shortened_alone_and_multibyte_characters_are_not_cut():
    name = "dataset.root=/data/" + "é" * 200 + "/x," + "a" * 300
    parts = fit_name(name).split("/")
    assert parts[:2] == ["dataset.root=", "data"]
    assert all(len(p.encode()) <= NAME_MAX for p in parts)
    parts[2].encode().decode()  # valid UTF-8: no half character before the hash
    assert parts[2].endswith(fit_name(name)[-12:]) and parts[3].startswith("x,aaa")


def test_the_study_grids_cell_names_do_not_change():
    for cell in expand("study"):
        dirname = ",".join(sorted(cell))  # hydra.job.override_dirname: sorted overrides
        root = OmegaConf.create({})  # no weights file: the name is the override dirname itself
        assert with_weights(dirname, _root_=root) == dirname
        assert len(dirname.encode()) < 100


def test_the_generalisation_sweep_predicts_a_long_study_cell_name_by_the_same_rule(tmp_path):
    long_study = tmp_path / ("s" * 10)
    cfg = compose_config(
        [
            "sweep=generalisation",
            "row=rn_na_na",
            "dataset=cvc_300",
            f"paths.study_sweep={long_study}",
            "seed=7",
        ],
        tmp_path,
    )
    assert cfg.ckpt == str(long_study / "column=kvasir_seg,row=rn_na_na,seed=7" / "best.pt")
    from ssl4gie.run.resolvers import study_ckpt

    root = OmegaConf.create({"backbone": {"code": "RN"}, "pretraining": {"code": "NA-NA"}, "seed": "4" * 300})
    predicted = study_ckpt(str(tmp_path), "kvasir_seg", _root_=root)
    assert predicted == str(
        tmp_path / fit_name(f"column=kvasir_seg,row=rn_na_na,seed={'4' * 300}") / "best.pt"
    )


@pytest.mark.slow
def test_a_sweep_with_a_300_byte_folder_name_runs_and_its_relaunch_skips_the_finished_cells(tmp_path):
    out = tmp_path / "out"
    args = [
        "-m",
        "sweep=smoke",
        "row=rn_na_na",
        "seed=1,2",
        *TINY,
        *SMALL_DECODERS,  # with FAST: the overrides that name the folder pass 300 bytes
        *FAST,
        f"paths.output_root={out}",
        f"paths.cache_dir={tmp_path / 'cache'}",
    ]
    result = run_cli(args, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    sweep = out / "sweeps" / "smoke"
    cells = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    assert len(cells) == 2
    for cell in cells:
        full = OmegaConf.load(
            cell / ".hydra" / "hydra.yaml"
        ).hydra.job.override_dirname  # what names the cell
        assert len(full.encode()) > 300 and len(cell.name.encode()) <= NAME_MAX
        assert cell.name == fit_name(full)
        assert "task.decoder.resnet.head.channels=16" in OmegaConf.load(cell / ".hydra" / "overrides.yaml")
        assert json.loads((cell / "metrics.json").read_text())["status"] == "complete"
    stamps = [(c / "metrics.json").stat().st_mtime_ns for c in cells]

    again = run_cli(args, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert (again.stdout + again.stderr).count("already holds a complete run") == 2
    assert [(c / "metrics.json").stat().st_mtime_ns for c in cells] == stamps
    assert sorted(p.parent for p in sweep.glob("*/metrics.json")) == cells
