"""Bad input fails fast: one clear line naming the problem and the path, exit status 2, no metrics.json."""

from __future__ import annotations

import shutil

import pytest
from helpers import FAST, SMALL_DECODERS, TINY, run_cli

from ssl4gie.data.segmentation import CVCClinicDB, KvasirSeg
from ssl4gie.data.synthetic import write_cvc_clinicdb, write_kvasir_seg
from ssl4gie.errors import DatasetError


@pytest.fixture
def dataset(tmp_path):
    return write_kvasir_seg(tmp_path / "Kvasir-SEG", n=6, seed=1, size_range=(48, 64))


def fails(tmp_path, root, *extra, expect: str):
    run = tmp_path / "run"
    result = run_cli(
        [
            f"dataset.root={root}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            f"hydra.run.dir={run}",
            *TINY,
            *SMALL_DECODERS,
            *FAST,
            *extra,
        ]
    )
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    errors = [line for line in result.stdout.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and expect in errors[0], result.stdout[-2000:]
    assert "Traceback" not in result.stdout + result.stderr
    assert not (run / "metrics.json").exists()
    return errors[0]


def test_missing_root_says_where_what_and_how(tmp_path):
    line = fails(tmp_path, tmp_path / "nowhere", expect="Kvasir-SEG not found")
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


def test_unknown_option_value_lists_valid_choices(tmp_path):
    result = run_cli(["backbone=resnet51", f"hydra.run.dir={tmp_path / 'run'}"])
    assert result.returncode != 0
    assert "Could not find 'backbone/resnet51'" in result.stderr
    assert "Available options in 'backbone':\n\tresnet50\n\tvit_b" in result.stderr


def test_dataset_of_another_task_is_rejected(tmp_path, dataset):
    cfg_error = fails(tmp_path, dataset, "dataset=kvasir_seg", "task.name=detection", expect="not for task=")
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
