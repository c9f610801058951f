"""The study's released finetuned files by their published names: one per cell of the study grid, found flat or in
the study's ``<Task>/Trained models/`` folders, the name that detection and segmentation share only in its task's
folder; ``sweep=released`` points each cell's ckpt at its file."""

from __future__ import annotations

from helpers import CONF, compose_config, expand

import ssl4gie  # noqa: F401  (registers the resolvers for the in-process compose)
from ssl4gie.fetch.registry import _overrides, _rows
from ssl4gie.run.released import expected, find, published_name


def study_cells() -> list[tuple[str, str, str, str]]:
    """(task, backbone, pretraining, dataset) of the study grid's 72 cells, read from the row and column files."""
    cells = []
    for cell in expand("study"):
        choice = dict(o.split("=", 1) for o in cell)
        backbone, pretraining = _rows()[choice["row"]]
        column = _overrides(CONF / "column" / f"{choice['column']}.yaml")
        cells.append((column["task"], backbone, pretraining, column["dataset"]))
    return cells


def test_every_study_cell_has_a_published_name_and_a_place():
    cells = study_cells()
    names = {(task, published_name(b, p, d)) for task, b, p, d in cells}
    assert len(cells) == 72 and len(names) == 72 and all(name for _, name in names)
    assert len({name for _, name in names}) == 60  # Kvasir: detection and segmentation give the same name
    for example in (
        "vit_b-Hyperkvasir_mocov3_init-frozen_False-dataset_Kvasir.pth",
        "resnet50-ImageNet_class_init-frozen_False-dataset_C3VD.pth",
        "resnet50-Hyperkvasir_mocov3_init-frozen_False-dataset_Hyperkvasir_anatomical.pth",
        "vit_b-ImageNet_self_mae_init-frozen_False-dataset_CVC.pth",
        "resnet50-random_init-frozen_False-dataset_Hyperkvasir_pathological.pth",
    ):
        assert example in {name for _, name in names}
    assert published_name("resnet50", "gastronet5m_dinov1", "kvasir_seg") is None  # not a study row


def test_files_are_found_flat_or_in_their_tasks_folder_and_a_shared_name_only_in_its_tasks(tmp_path):
    depth = "resnet50-ImageNet_class_init-frozen_False-dataset_C3VD.pth"
    kvasir = "vit_b-ImageNet_self_mae_init-frozen_False-dataset_Kvasir.pth"
    (tmp_path / depth).touch()
    (tmp_path / kvasir).touch()
    assert find(tmp_path, "depth", depth) == tmp_path / depth
    assert find(tmp_path, "detection", kvasir) is None and find(tmp_path, "segmentation", kvasir) is None
    detection = tmp_path / "Object_detection" / "Trained models"
    detection.mkdir(parents=True)
    (detection / kvasir).touch()
    assert find(tmp_path, "detection", kvasir) == detection / kvasir
    assert find(tmp_path, "segmentation", kvasir) is None  # the detector's file is not the segmenter's
    (tmp_path / "binary segmentation").mkdir()
    (tmp_path / "binary segmentation" / kvasir).touch()
    assert find(tmp_path, "segmentation", kvasir) == tmp_path / "binary segmentation" / kvasir
    cls = "resnet50-random_init-frozen_False-dataset_Hyperkvasir_anatomical.pth"
    (tmp_path / "Depth_estimation" / cls).parent.mkdir()
    (tmp_path / "Depth_estimation" / cls).touch()  # in another task's folder: not this task's file
    (tmp_path / ".trash").mkdir()
    (tmp_path / ".trash" / cls).touch()
    assert find(tmp_path, "classification", cls) is None
    assert expected(tmp_path, "classification", cls) == tmp_path / "Classification" / "Trained models" / cls


def test_the_released_sweep_points_each_cell_at_its_file(tmp_path):
    def cell(*overrides):
        return compose_config(["sweep=released", f"paths.released_dir={tmp_path}", *overrides], tmp_path)

    cfg = cell("row=vt_hk_ma", "column=kvasir_det")
    name = "vit_b-Hyperkvasir_mae_init-frozen_False-dataset_Kvasir.pth"
    assert cfg.mode == "eval" and cfg.task.protocol == "study" and cfg.skip_missing_ckpt
    assert cfg.ckpt == str(tmp_path / "Object_detection" / "Trained models" / name)  # absent: where expected
    (tmp_path / "Object_detection").mkdir()
    (tmp_path / "Object_detection" / name).touch()
    assert cell("row=vt_hk_ma", "column=kvasir_det").ckpt == str(tmp_path / "Object_detection" / name)
    default = compose_config(["sweep=released", "paths.weights_dir=/w"])
    assert default.paths.released_dir == "/w/study"  # where `python -m ssl4gie.fetch released` puts them
