"""Bad input fails fast: one clear line naming the problem and the path, exit status 2, no metrics.json.

The messages are checked in-process (the error :func:`ssl4gie.run.pipeline.run` logs as its one line); one
command line shows the whole path: ``python run.py`` prints that line and exits 2 without a traceback."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
from helpers import FAST, SMALL_DECODERS, TINY, compose_config, run_cli
from hydra.errors import MissingConfigException

from ssl4gie.data.segmentation import CVCClinicDB, KvasirSeg
from ssl4gie.data.synthetic import write_cvc_clinicdb, write_kvasir_seg
from ssl4gie.errors import ConfigError, DatasetError, DatasetMissing
from ssl4gie.run.pipeline import execute, run


@pytest.fixture
def dataset(tmp_path):
    return write_kvasir_seg(tmp_path / "Kvasir-SEG", n=6, seed=1, size_range=(48, 64))


def overrides(tmp_path, root, *extra):
    return [
        f"dataset.root={root}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        *TINY,
        *SMALL_DECODERS,
        *FAST,
        *extra,
    ]


def fails(tmp_path, root, *extra, error: type[Exception] = DatasetError, expect: str) -> str:
    """The run's error: of type ``error`` (an input problem: the command line exits 2), one line holding
    ``expect``; no metrics.json."""
    run_dir = tmp_path / "run"
    with pytest.raises(error) as raised:
        execute(compose_config(overrides(tmp_path, root, *extra), run_dir))
    message = str(raised.value)
    assert expect in message and "\n" not in message, message
    assert not (run_dir / "metrics.json").exists()
    return message


def test_the_run_logs_one_line_records_failed_json_and_exits_2(tmp_path, caplog):
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        run(compose_config(overrides(tmp_path, tmp_path / "nowhere"), run_dir))
    assert stop.value.code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "Kvasir-SEG not found" in errors[0] and "\n" not in errors[0], errors
    failed = json.loads((run_dir / "failed.json").read_text())
    assert failed["user_error"] and failed["type"] == "DatasetMissing" and failed["error"] == errors[0]
    assert not (run_dir / "metrics.json").exists()


@pytest.mark.slow  # a real command line: python and torch start in a new process
def test_the_command_line_prints_one_line_and_exits_2_without_a_traceback(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli([*overrides(tmp_path, tmp_path / "nowhere"), f"hydra.run.dir={run_dir}"])
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    errors = [line for line in result.stdout.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and "Kvasir-SEG not found" in errors[0], result.stdout[-2000:]
    assert str(tmp_path / "nowhere") in errors[0]
    assert "Traceback" not in result.stdout + result.stderr
    assert not (run_dir / "metrics.json").exists()


def test_missing_root_says_where_what_and_how(tmp_path):
    line = fails(tmp_path, tmp_path / "nowhere", error=DatasetMissing, expect="Kvasir-SEG not found")
    assert str(tmp_path / "nowhere") in line and "images/" in line
    assert "https://datasets.simula.no/downloads/kvasir-seg.zip" in line and "experiment=demo" in line


def test_root_with_wrong_layout(tmp_path):
    (tmp_path / "wrong" / "pictures").mkdir(parents=True)
    fails(tmp_path, tmp_path / "wrong", expect="has no 'images/' folder")


def test_image_without_mask(tmp_path, dataset):
    mask = sorted((dataset / "masks").iterdir())[2]
    mask.unlink()
    line = fails(tmp_path, dataset, expect="has no mask")
    assert mask.stem in line


def test_corrupt_image(tmp_path, dataset):
    image = sorted((dataset / "images").iterdir())[3]
    image.write_bytes(image.read_bytes()[:200])  # truncated JPEG
    line = fails(tmp_path, dataset, expect="cannot read image")
    assert str(image) in line


def test_mask_of_another_size(tmp_path, dataset):
    from PIL import Image

    mask = sorted((dataset / "masks").iterdir())[0]
    Image.new("L", (5, 7)).save(mask, format="JPEG")
    line = fails(tmp_path, dataset, expect="a mask must have its image's size")
    assert str(mask) in line


def test_unknown_option_value_lists_valid_choices():
    with pytest.raises(MissingConfigException) as raised:
        compose_config(["backbone=resnet51"])
    assert "Could not find 'backbone/resnet51'" in str(raised.value)
    assert "Available options in 'backbone':\n\tresnet50\n\tvit_b" in str(raised.value)


def test_dataset_of_another_task_is_rejected(tmp_path, dataset):
    cfg_error = fails(
        tmp_path,
        dataset,
        "dataset=kvasir_seg",
        "task.name=detection",
        error=ConfigError,
        expect="not for task=",
    )
    assert "kvasir_seg" in cfg_error


def test_pairing_is_by_name_not_position(tmp_path):
    root = write_cvc_clinicdb(tmp_path / "CVC", n=4, seed=0, ext="png")
    # A mask saved with another extension still pairs with its image by name.
    (root / "Ground Truth" / "2.png").rename(root / "Ground Truth" / "2.tif")
    items = CVCClinicDB(str(root), name="cvc_clinicdb").items
    assert [(i.image.stem, i.mask.stem) for i in items] == [(s, s) for s in ("1", "2", "3", "4")]
    # Position-based pairing would silently shift every pair after a missing file; name-based pairing names it.
    (root / "Ground Truth" / "1.png").unlink()
    (root / "Ground Truth" / "0.png").write_bytes((root / "Ground Truth" / "3.png").read_bytes())
    with pytest.raises(DatasetError, match=r"Original/1\.png has no mask"):
        CVCClinicDB(str(root), name="cvc_clinicdb")


def test_orphan_mask_is_reported(tmp_path, dataset):
    shutil.copy(sorted((dataset / "masks").iterdir())[0], dataset / "masks" / "zzz-orphan.jpg")
    with pytest.raises(DatasetError, match="zzz-orphan.jpg has no image"):
        KvasirSeg(str(dataset), name="kvasir_seg")
