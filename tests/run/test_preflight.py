"""The sweep preflight in the driver: each cell's config composed as its job composes it, its dataset checked from
directory listings (layout, published counts, C3VD's videos), its weights (present, unchanged where recorded or
published, hub rows named) and its checkpoint; missing things grouped by cell, skippable cells listed apart."""

from __future__ import annotations

import importlib
import inspect
import time

import pytest
import torch
from helpers import compose_config
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

import ssl4gie  # noqa: F401  (registers the resolvers for the in-process compose)
from ssl4gie.data import synthetic
from ssl4gie.run.cells import cell_configs
from ssl4gie.run.data_checks import PUBLISHED, READER_LAYOUTS, check_dataset
from ssl4gie.run.preflight import check_sweep, describe_cells
from ssl4gie.utils.conf import CONF_DIR


def multirun(overrides: list[str]):
    """The config the driver of ``python run.py -m overrides...`` hands to the callbacks."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    cfg = compose_config(fixed, hydra=True)
    cfg.hydra.overrides.task = list(overrides)
    return cfg


def node(name: str, **changes) -> dict:
    """A dataset config as a run resolves it, with ``changes``."""
    cfg = compose_config([f"dataset={name}", f"task={compose_config([f'dataset={name}']).dataset.task}"])
    return {**OmegaConf.to_container(cfg.dataset, resolve=True), **changes}


# ------------------------------------------------------------------------------------------------ the cells
def test_each_cells_config_is_what_its_job_composes(tmp_path):
    cfg = multirun(
        [
            "sweep=generalisation",
            "row=rn_in_mc",
            "dataset=kvasir_seg,cvc_300",
            "seed=1,2",
            f"paths.output_root={tmp_path}",
        ]
    )
    cells = cell_configs(cfg)
    assert len(cells) == 4 and all(c.error is None for c in cells)
    assert [c.label for c in cells[:2]] == ["dataset=kvasir_seg,seed=1", "dataset=kvasir_seg,seed=2"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for cell in cells:
            full = compose(config_name="config", overrides=list(cell.overrides))
            ours = OmegaConf.to_container(cell.config, resolve=False)
            theirs = OmegaConf.to_container(full, resolve=False)
            ours.pop("hydra")
            assert ours == theirs, cell.label
            assert cell.config.ckpt == full.ckpt  # the resolvers see the same cell


def test_the_readers_layouts_are_those_the_preflight_checks():
    for target in {str(o.get("_target_")) for o in _dataset_configs()}:
        module, name = target.rsplit(".", 1)
        reader = getattr(importlib.import_module(module), name)
        if hasattr(reader, "layout_name"):  # ssl4gie.data.readers.Reader finds its root with this layout
            assert READER_LAYOUTS.get(name, "") == reader.layout_name, target
        elif name in READER_LAYOUTS:  # a reader of its own that finds its root itself
            assert f'find_root(root, "{READER_LAYOUTS[name]}"' in inspect.getsource(reader), target


def _dataset_configs() -> list[dict]:
    return [OmegaConf.load(p) for p in sorted((CONF_DIR / "dataset").glob("*.yaml"))]


# ------------------------------------------------------------------------------------------------ datasets
def test_a_dataset_is_checked_from_its_listing_against_the_published_count(tmp_path):
    missing = check_dataset(node("kvasir_seg", root=str(tmp_path / "Kvasir-SEG")))
    assert missing.missing and "Kvasir-SEG does not exist" in missing.problem
    (tmp_path / "empty").mkdir()
    wrong = check_dataset(node("kvasir_seg", root=str(tmp_path / "empty")))
    assert not wrong.missing and "does not hold images/ and masks/" in wrong.problem

    root = synthetic.write_kvasir_seg(tmp_path / "Kvasir-SEG", n=5, seed=0, size_range=(32, 48))
    found = check_dataset(node("kvasir_seg", root=str(root)))
    assert found.problem is None and found.count == 5
    assert found.warnings == (
        f"dataset kvasir_seg: 5 images in {root}, the published release has 1000 (a partial unzip or another "
        "release?)",
    )
    assert check_dataset(node("kvasir_det", root=str(root))).count == 5
    (root / "kavsir_bboxes.json").unlink()
    assert "has no box file" in check_dataset(node("kvasir_det", root=str(root))).problem
    nested = check_dataset(node("kvasir_seg", root=str(tmp_path)))  # the archive's top folder: found inside
    assert nested.root == root and nested.count == 5
    assert (
        check_dataset(node("kvasir_seg", root=str(tmp_path / "nowhere"), synthetic={"n": 3})).problem is None
    )


def test_kaggles_cvc_clinicdb_and_hyperkvasir_are_counted_as_their_readers_read_them(tmp_path):
    kaggle = tmp_path / "CVC-ClinicDB"
    synthetic.write_cvc_clinicdb(kaggle / "TIF", n=4, seed=0, size=(32, 32))
    synthetic.write_cvc_clinicdb(kaggle / "PNG", n=4, seed=0, ext="png", size=(32, 32))
    cvc = check_dataset(node("cvc_clinicdb", root=str(kaggle)))
    assert cvc.root == kaggle / "TIF" and cvc.count == 4 and "has 612" in cvc.warnings[0]

    root = synthetic.write_hyperkvasir(tmp_path / "hyper-kvasir", seed=0, size=(32, 32))
    anatomical = check_dataset(node("hyperkvasir_anatomical", root=str(root)))
    pathological = check_dataset(node("hyperkvasir_pathological", root=str(root)))
    assert (anatomical.count, pathological.count) == (
        6 * 4,
        12 * 4,
    )  # 4 images per class, other classes left out
    assert "24 images" in anatomical.warnings[0] and "has 4104" in anatomical.warnings[0]
    assert PUBLISHED["hyperkvasir_pathological"] == 2642 and "has 2642" in pathological.warnings[0]


def test_c3vds_videos_of_the_split_table_must_all_be_there(tmp_path):
    videos = dict.fromkeys(synthetic.C3VD_VIDEOS, 1)
    root = synthetic.write_c3vd(tmp_path / "C3VD", videos=videos, seed=0, size=(40, 32))
    full = check_dataset(node("c3vd", root=str(root)))
    assert full.problem is None and full.count == 22 and "has 10015" in full.warnings[0]
    partial = tmp_path / "partial"
    test_video = next(k for k in videos if k.endswith("t2v2"))
    synthetic.write_c3vd(partial, videos={k: 1 for k in videos if k != test_video}, seed=0, size=(40, 32))
    check = check_dataset(node("c3vd", root=str(partial)))
    assert check.problem == f"1 of the 22 videos of the split table are not under {partial}: t2v2 (test)"


# ------------------------------------------------------------------------------------------------ sweeps
def test_an_eval_sweep_blocks_on_a_missing_checkpoint_and_skips_a_missing_dataset(tmp_path):
    data = tmp_path / "data"
    synthetic.write_kvasir_seg(data / "Kvasir-SEG", n=4, seed=0, size_range=(32, 48))
    study = tmp_path / "study"
    (study / "column=kvasir_seg,row=rn_na_na,seed=42").mkdir(parents=True)
    (study / "column=kvasir_seg,row=rn_na_na,seed=42" / "best.pt").write_bytes(b"x")
    report = check_sweep(
        multirun(
            [
                "sweep=generalisation",
                "row=rn_na_na,vt_na_na",
                "dataset=kvasir_seg,cvc_300",
                f"paths.study_sweep={study}",
                f"paths.data_dir={data}",
            ]
        )
    )
    (missing_ckpt, blocked), *others = report.problems.items()
    assert not others and sorted(blocked) == [
        ("dataset=cvc_300", "row=vt_na_na"),
        ("dataset=kvasir_seg", "row=vt_na_na"),
    ]
    assert missing_ckpt.what.startswith("checkpoint ")
    assert missing_ckpt.fix == "python run.py -m sweep=study (or point paths.study_sweep / ckpt at it)"
    (skipped, cells), *others = report.skipped.items()  # CVC-300 is not there: skip_missing_data=true
    assert (
        not others and cells == [("dataset=cvc_300", "row=rn_na_na")] and skipped.skip == "skip_missing_data"
    )
    assert skipped.fix == "python -m ssl4gie.fetch cvc_300"
    assert describe_cells(blocked, report.cells) == "dataset=*,row=vt_na_na (2 cells)"


def test_the_released_sweep_skips_the_files_that_are_absent(tmp_path):
    released = tmp_path / "released"
    released.mkdir()
    (released / "resnet50-ImageNet_self_mocov3_init-frozen_False-dataset_Hyperkvasir_anatomical.pth").touch()
    report = check_sweep(
        multirun(
            [
                "sweep=released",
                "row=rn_in_mc",
                "column=hyperkvasir_anatomical,c3vd",
                f"paths.released_dir={released}",
                f"paths.data_dir={tmp_path / 'data'}",
            ]
        )
    )
    [(dataset, cells)] = report.problems.items()  # the file is there, its dataset is not
    assert cells == [("column=hyperkvasir_anatomical",)] and dataset.what.startswith(
        "dataset hyperkvasir_anatomical"
    )
    [(absent, skipped)] = report.skipped.items()
    assert skipped == [("column=c3vd",)] and absent.skip == "skip_missing_ckpt"
    name = "resnet50-ImageNet_self_mocov3_init-frozen_False-dataset_C3VD.pth"
    expected = released / "Depth_estimation" / "Trained models" / name
    assert (
        absent.what == f"checkpoint {expected} does not exist"
        and absent.fix == "python -m ssl4gie.fetch released"
    )


def test_weights_that_changed_since_they_were_fetched_or_differ_from_the_published_hash_are_refused(tmp_path):
    from ssl4gie.fetch.verify import Lock, manifest_of

    data, weights = tmp_path / "data", tmp_path / "w"
    synthetic.write_kvasir_seg(data / "Kvasir-SEG", n=4, seed=0, size_range=(32, 48))
    weights.mkdir()
    torch.save({"conv1.weight": torch.zeros(1)}, weights / "resnet50-19c8e357.pth")  # not torchvision's file
    torch.save({"conv1.weight": torch.zeros(2)}, weights / "barlowtwins_resnet50.pth")
    Lock(weights).record_placement(
        "barlowtwins_resnet50.pth",
        "imagenet_barlowtwins:resnet50",
        ["imagenet_barlowtwins:resnet50/barlowtwins_resnet50.pth"],
        manifest_of(weights / "barlowtwins_resnet50.pth"),
    )
    paths = [f"paths.data_dir={data}", f"paths.weights_dir={weights}"]
    assert not check_sweep(
        multirun(["sweep=segmentation", "row=rn_in_bt", "column=kvasir_seg", *paths])
    ).problems
    time.sleep(0.01)
    torch.save({"conv1.weight": torch.ones(2)}, weights / "barlowtwins_resnet50.pth")  # changed since fetched
    args = ["sweep=segmentation", "row=rn_in_sl,rn_in_bt,vt_in_sl", "column=kvasir_seg", *paths]
    report = check_sweep(multirun(args))
    whats = sorted(f.what for f in report.problems)
    assert len(whats) == 2
    assert whats[0].startswith("weights imagenet_barlowtwins resnet50: ") and "1 changed" in whats[0]
    assert whats[1] == (
        f"weights imagenet_supervised resnet50: {weights / 'resnet50-19c8e357.pth'} has another sha256 than the "
        "published 19c8e357"
    )
    count, hub = report.warnings  # ViT-B's supervised weights come from the hub here
    assert count.startswith("dataset kvasir_seg: 4 images in ")
    assert "timm hub weights 'vit_base_patch16_224.augreg_in21k_ft_in1k' (needs the network" in hub
    assert "python -m ssl4gie.fetch row=vt_in_sl" in hub


@pytest.mark.slow
def test_the_study_sweeps_preflight_takes_seconds(tmp_path, capsys):
    args = ["sweep=study", f"paths.data_dir={tmp_path / 'data'}", f"paths.weights_dir={tmp_path / 'w'}"]
    wall, cpu = time.perf_counter(), time.process_time()
    report = check_sweep(multirun(args))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    with capsys.disabled():
        print(f"\npreflight of the 72-cell study sweep: {wall:.1f} s wall, {cpu:.1f} s CPU")
    assert len(report.cells) == 72 and not report.skipped and not report.unchecked
    datasets = [f for f in report.problems if f.what.startswith("dataset ")]
    weights = [f for f in report.problems if f.what.startswith("weights ")]
    assert len(datasets) == 6 and len(weights) == 8 and len(report.warnings) == 2  # IN-SL: the timm hub
    assert all(len(report.problems[f]) == 12 for f in datasets) and all(
        len(report.problems[f]) == 6 for f in weights
    )
    assert cpu < 30  # a few seconds on an idle machine (18 group options composed, not 72 cells)


def test_preflight_is_no_part_of_a_cells_identity_or_folder(tmp_path):
    from ssl4gie.run.identity import identity
    from ssl4gie.run.weights import InitialWeights

    on, off = (compose_config([f"preflight={v}"], tmp_path) for v in ("true", "false"))
    assert identity(on, InitialWeights()) == identity(off, InitialWeights())
    hydra = compose_config([], hydra=True).hydra.job.config.override_dirname.exclude_keys
    assert {"preflight", "skip_missing_ckpt", "paths.released_dir"} <= set(hydra)  # never in a folder name
