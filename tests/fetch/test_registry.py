"""The registry read from the configs: every dataset and weights row has a source that lands where its config
reads, names resolve as users type them, and a sweep's sources are exactly what its cells read."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers import CONF, compose_config, expand

from ssl4gie.errors import ConfigError
from ssl4gie.fetch.registry import dataset_sources, registry, resolve, sources_for_sweep
from ssl4gie.run.identity import fingerprint
from ssl4gie.run.weights import InitialWeights


def _yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("dataset", sorted(dataset_sources()))
def test_every_datasets_source_lands_where_its_config_reads(dataset):
    root = str(_yaml(CONF / "dataset" / f"{dataset}.yaml")["root"])
    assert root.startswith("${paths.data_dir}/")
    rel = root.removeprefix("${paths.data_dir}/")
    source = registry()[dataset_sources()[dataset]]
    assert source.store == "data" and source.is_archive and source.licence and source.page
    # the root is the placed folder, a set inside it (PraNet's TestDataset), or holds it (hyper-kvasir/labeled-images)
    assert rel == source.into or rel.startswith(source.into + "/") or source.into.startswith(rel + "/")


def test_every_dataset_with_a_download_has_a_source():
    for path in sorted((CONF / "dataset").glob("*.yaml")):
        raw = _yaml(path)
        assert ("download" in raw) == ("source" in raw), path.name


@pytest.mark.parametrize("pretraining", sorted(p.stem for p in (CONF / "pretraining").glob("*.yaml")))
def test_every_weights_file_of_a_row_has_a_source(pretraining):
    raw = _yaml(CONF / "pretraining" / f"{pretraining}.yaml")
    for backbone, file_name in (raw.get("files") or {}).items():
        source = registry()[f"{pretraining}:{backbone}"]
        assert source.store == "weights" and source.into == file_name and source.files[0].name == file_name
        reachable = source.files[0].url or source.folder or source.login
        assert reachable, f"{pretraining}:{backbone} has no URL, Drive folder or login"


def test_names_resolve_as_users_type_them():
    assert [s.name for s in resolve("kvasir_det")] == ["kvasir_seg"]
    assert [s.name for s in resolve("cvc_300")] == ["pranet_test"] == [s.name for s in resolve("pranet_test")]
    assert [s.name for s in resolve("row=rn_in_mc")] == ["imagenet_mocov3:resnet50"]
    assert [s.name for s in resolve("pretraining=imagenet_mocov3")] == [
        "imagenet_mocov3:resnet50",
        "imagenet_mocov3:vit_b",
    ]
    assert resolve("row=vt_na_na") == []
    assert registry()["imagenet_mocov3:resnet50"].command == "python -m ssl4gie.fetch row=rn_in_mc"
    assert registry()["c3vd"].command == "python -m ssl4gie.fetch c3vd"
    assert registry()["imagenet_supervised:resnet50"].files[0].sha256 == "19c8e357"  # torch hub's name prefix
    with pytest.raises(ConfigError, match=r"unknown pretraining 'nope'; valid: endovit_mae"):
        resolve("pretraining=nope")


def test_the_study_sweep_reads_four_datasets_and_ten_weights_files():
    names = [s.name for s in sources_for_sweep("study")]
    assert names[:4] == ["hyperkvasir_labelled", "kvasir_seg", "cvc_clinicdb", "c3vd"]
    assert sorted(names[4:]) == sorted(
        f"{p}:{b}"
        for p, b in [
            ("hyperkvasir_mocov3", "resnet50"), ("hyperkvasir_barlowtwins", "resnet50"),
            ("imagenet_mocov3", "resnet50"), ("imagenet_barlowtwins", "resnet50"),
            ("imagenet_supervised", "resnet50"), ("hyperkvasir_mocov3", "vit_b"), ("hyperkvasir_mae", "vit_b"),
            ("imagenet_mocov3", "vit_b"), ("imagenet_mae", "vit_b"), ("imagenet_supervised", "vit_b"),
        ]
    )  # fmt: skip
    assert sources_for_sweep("smoke") == []  # synthetic data, random rows
    released = [s.name for s in sources_for_sweep("released")]  # the study's own files, then the datasets
    assert released == ["released", "hyperkvasir_labelled", "kvasir_seg", "cvc_clinicdb", "c3vd"]


def _composed_sources(sweep: str) -> set[str]:
    """What the cells of a sweep read, from the fully composed config of each cell (slow, exact)."""
    found = set()
    for overrides in expand(sweep):
        cfg = compose_config([f"sweep={sweep}", *overrides])
        if not cfg.dataset.get("synthetic") and cfg.dataset.get("source"):
            found.add(cfg.dataset.source)
        if cfg.task.name == "pretrain":
            found.add(dataset_sources()[cfg.task.probe.data.name])
        if cfg.mode == "train" and cfg.pretraining.name != "random":
            found.add(f"{cfg.pretraining.name}:{cfg.backbone.name}")
    return found


@pytest.mark.slow
@pytest.mark.parametrize("sweep", ["study", "generalisation", "pretrain_hyperkvasir", "smoke", "data_scale"])
def test_a_sweeps_sources_are_what_its_composed_cells_read(sweep):
    assert {s.name for s in sources_for_sweep(sweep)} == _composed_sources(sweep)


def test_source_blocks_are_no_part_of_a_runs_identity(tmp_path):
    base = compose_config(["row=rn_in_mc", "column=kvasir_seg"], tmp_path)
    other = compose_config(
        [
            "row=rn_in_mc",
            "column=kvasir_seg",
            "dataset.source=elsewhere",
            "pretraining.source.sha256.resnet50=0123456789abcdef",
        ],
        tmp_path,
    )
    weights = InitialWeights(sha256="ab" * 32)
    assert fingerprint(base, weights) == fingerprint(other, weights)
