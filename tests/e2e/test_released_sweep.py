"""``python run.py -m sweep=released`` over a folder holding some of the study's files under their published names
(fabricated in the study's exact format, tiny backbones): exactly those cells are evaluated, the others skipped
(listed before the sweep starts), each metrics.json holds the file's stored numbers, and the results print ours
beside them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import compose_config, run_cli
from helpers.checkpoints import random_like, study_file
from helpers.study import SMP_NAMES, study_classifier_state

from ssl4gie.data.synthetic import write_hyperkvasir, write_kvasir_seg
from ssl4gie.utils.conf import instantiate_checked

TINY_EVAL = [
    "backbone.tiny=true",
    "task.input_size=64",
    "trainer.batch_size=4",
    "trainer.device=cpu",
    "trainer.num_workers=0",
    "trainer.num_figures=1",
    "trainer.progress=false",
]


def study_segmenter(tmp_path) -> dict:
    """A ResNet-50 segmentation model in smp 0.3.2's names, as the study saved it."""
    cfg = compose_config(["task=segmentation", "backbone=resnet50", *TINY_EVAL])
    model = instantiate_checked(cfg.task, _recursive_=False).build_model(
        cfg.backbone, cfg.pretraining, False, str(tmp_path)
    )
    torch.manual_seed(3)
    state = {}
    for key, value in random_like(model.state_dict()).items():
        old, new = next((o, n) for o, n in SMP_NAMES if key.startswith(o))
        state[new + key.removeprefix(old)] = value.abs() + 0.5 if key.endswith("running_var") else value
    return state


def cell(path) -> str:
    """The row and column of the cell folder that holds ``path`` (the folder also names the shrinking options)."""
    return ",".join(o for o in path.parent.name.split(",") if o.startswith(("column=", "row=")))


@pytest.mark.slow
def test_the_released_sweep_evaluates_the_files_present_and_records_their_stored_numbers(tmp_path, capsys):
    released, data, out = tmp_path / "released", tmp_path / "data", tmp_path / "out"
    classifier = (
        released / "resnet50-ImageNet_self_mocov3_init-frozen_False-dataset_Hyperkvasir_anatomical.pth"
    )
    segmenter = (
        released
        / "Binary_segmentation"
        / "Trained models"
        / "resnet50-random_init-frozen_False-dataset_Kvasir.pth"
    )
    segmenter.parent.mkdir(parents=True)
    stored = {
        classifier: {"epoch": 31, "val_perf": 0.8123456789012345, "test_perf": 0.7890123456789012},
        # the detection script stores tensors' item(); a numpy scalar must come out as the same number
        segmenter: {
            "epoch": 147,
            "val_perf": 0.9012345678901234,
            "test_perf": np.float64(0.8765432109876543),
        },
    }
    study_file(classifier, study_classifier_state("resnet", 6), **stored[classifier])
    study_file(segmenter, study_segmenter(tmp_path), **stored[segmenter])
    write_hyperkvasir(data / "hyper-kvasir", seed=0, size=(48, 40))
    write_kvasir_seg(data / "Kvasir-SEG", n=12, seed=0, size_range=(64, 96))

    result = run_cli(
        [
            "-m",
            "sweep=released",
            "row=rn_in_mc,rn_na_na",
            "column=hyperkvasir_anatomical,kvasir_seg,c3vd",  # C3VD is not even on disk: its cells are skipped
            f"paths.released_dir={released}",
            f"paths.data_dir={data}",
            f"paths.output_root={out}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            *TINY_EVAL,
        ],
        timeout=1200,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert "[preflight] 4 of 6 cells will be skipped" in log and "skipped (skip_missing_ckpt=true)" in log
    sweep = out / "sweeps" / "released"
    evaluated = {cell(p): json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")}
    assert sorted(evaluated) == [
        "column=hyperkvasir_anatomical,row=rn_in_mc",
        "column=kvasir_seg,row=rn_na_na",
    ]
    skipped = sorted(cell(p) for p in sweep.glob("*/skipped.json"))
    assert skipped == [
        "column=c3vd,row=rn_in_mc",
        "column=c3vd,row=rn_na_na",
        "column=hyperkvasir_anatomical,row=rn_na_na",
        "column=kvasir_seg,row=rn_in_mc",
    ]
    assert not list(sweep.glob("*/failed.json"))
    cells = {
        "column=hyperkvasir_anatomical,row=rn_in_mc": classifier,
        "column=kvasir_seg,row=rn_na_na": segmenter,
    }
    for name, path in cells.items():
        metrics = evaluated[name]
        assert (
            metrics["ckpt"] == str(path)
            and metrics["protocol"] == "study"
            and metrics["status"] == "complete"
        )
        for key, value in stored[path].items():  # exactly the stored value, as a plain number
            assert metrics[f"stored/{key}"] == value
            assert type(metrics[f"stored/{key}"]) is (int if key == "epoch" else float)
    assert "test/f1" in evaluated["column=hyperkvasir_anatomical,row=rn_in_mc"]

    from ssl4gie.results.__main__ import main as results

    capsys.readouterr()
    assert results([str(sweep)]) == 0
    printed = capsys.readouterr().out
    stored_table = printed[printed.index("Our re-evaluation of the study's released files") :]
    anatomical = next(line for line in stored_table.splitlines() if "hyperkvasir_anatomical" in line)
    seg = next(line for line in stored_table.splitlines() if "segmentation/kvasir_seg" in line)
    assert anatomical.startswith("| RN-IN-MC |") and "| 0.789 | 0.812 | 31 |" in anatomical
    assert seg.startswith("| RN-NA-NA |") and "| 0.877 | 0.901 | 147 |" in seg
    f1 = evaluated["column=hyperkvasir_anatomical,row=rn_in_mc"]["test/f1"]
    assert f"test/f1 {f1:.3f}" in anatomical
    assert "- segmentation: the training script's Dice at 224²" in stored_table
    assert "- classification: the training script's macro F1" in stored_table
    assert (sweep / "results" / "stored.csv").is_file()
