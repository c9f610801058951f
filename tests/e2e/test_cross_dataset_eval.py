"""``dataset.split``: evaluating a checkpoint on every image of another dataset, and what training refuses."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from helpers import compose_config, segmentation_overrides
from omegaconf import OmegaConf

from ssl4gie.errors import ConfigError
from ssl4gie.run.checks import validate
from ssl4gie.run.identity import fingerprint
from ssl4gie.run.pipeline import execute

CVC = "dataset.synthetic={n: 9, seed: 1, size: [64, 48]}"
PRANET = "dataset.synthetic={n: 7, seed: 2, size_range: [48, 72]}"


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, kvasir_tiny):
    """best.pt of a one-epoch tiny ResNet-50 segmentation run on synthetic Kvasir-SEG."""
    tmp = tmp_path_factory.mktemp("train")
    execute(compose_config(segmentation_overrides(kvasir_tiny, tmp), tmp / "run"))
    return tmp / "run" / "best.pt"


def _eval(tmp_path, ckpt, root, *extra):
    out = tmp_path / "eval"
    execute(compose_config(segmentation_overrides(root, tmp_path, "mode=eval", f"ckpt={ckpt}", *extra), out))
    return json.loads((out / "metrics.json").read_text()), pd.read_csv(out / "per_image_test.csv")


def test_eval_split_all_scores_every_image_of_another_dataset(tmp_path, tiny_checkpoint):
    metrics, per_image = _eval(
        tmp_path, tiny_checkpoint, tmp_path / "CVC", "dataset=cvc_clinicdb", "dataset.split=all", CVC
    )
    assert metrics["n_test"] == 9 and len(per_image) == 9
    assert sorted(per_image["name"].astype(str)) == sorted(str(i) for i in range(1, 10))
    assert metrics["dataset"] == "cvc_clinicdb" and 0.0 <= metrics["test/dice"] <= 1.0


def test_eval_split_test_is_the_study_test_split(tmp_path, tiny_checkpoint):
    metrics, per_image = _eval(
        tmp_path, tiny_checkpoint, tmp_path / "CVC", "dataset=cvc_clinicdb", "dataset.split=test", CVC
    )
    assert metrics["n_test"] == len(per_image) == 1  # round(0.1 * 9)


def test_eval_on_a_pranet_set_defaults_to_every_image(tmp_path, tiny_checkpoint):
    metrics, per_image = _eval(tmp_path, tiny_checkpoint, tmp_path / "ColonDB", "dataset=cvc_colondb", PRANET)
    assert metrics["n_test"] == len(per_image) == 7


def test_training_with_split_all_is_refused_in_one_line(tmp_path, kvasir_tiny):
    cfg = compose_config(segmentation_overrides(kvasir_tiny, tmp_path, "dataset.split=all"))
    with pytest.raises(ConfigError, match="dataset.split=all .*dataset=kvasir_seg.*mode=train") as err:
        validate(cfg)
    assert "\n" not in str(err.value)
    # a PraNet test set defaults to all: training on it needs the study split, and then it validates
    with pytest.raises(ConfigError, match="dataset.split=all"):
        validate(compose_config(["dataset=cvc_300"]))
    validate(compose_config(["dataset=cvc_300", "dataset.split=study"]))


def test_split_is_in_the_identity_but_test_and_study_are_one(tmp_path):
    base = ["mode=eval", "ckpt=x.pt", "dataset=cvc_clinicdb"]
    study, test, every = (
        fingerprint(compose_config([*base, f"dataset.split={s}"], tmp_path)) for s in ("study", "test", "all")
    )
    assert study == test != every
    assert fingerprint(compose_config(["dataset=cvc_clinicdb"], tmp_path)) == fingerprint(
        compose_config(["dataset=cvc_clinicdb", "dataset.split=test"], tmp_path)
    )


@pytest.mark.parametrize(
    "split,tag", [("study", ""), ("test", ""), ("all", "-all"), ("/tables/my_split.yaml", "-my_split")]
)
def test_split_tag_names_the_run_folder_of_a_non_study_split(split, tag):
    cfg = compose_config([f"dataset.split={split}"])
    with_tag = OmegaConf.create({"x": "${ssl4gie.split_tag:-}", **OmegaConf.to_container(cfg)})
    assert with_tag.x == tag


def test_generalisation_cells_point_at_the_study_kvasir_checkpoint(tmp_path):
    def cell(*extra):
        return compose_config(["sweep=generalisation", f"paths.output_root={tmp_path}", *extra], tmp_path)

    ood = cell("row=rn_in_mc", "dataset=cvc_colondb", "seed=43")
    assert ood.mode == "eval" and ood.dataset.split == "all"
    assert ood.ckpt == str(tmp_path / "sweeps/study/column=kvasir_seg,row=rn_in_mc,seed=43/best.pt")
    in_distribution = cell("row=vt_na_na", "dataset=kvasir_seg", "paths.study_sweep=/elsewhere")
    assert in_distribution.dataset.split == "test"
    assert in_distribution.ckpt == "/elsewhere/column=kvasir_seg,row=vt_na_na,seed=42/best.pt"
    validate(ood)


def test_generalisation_finds_the_cell_trained_from_the_same_weights_file(tmp_path):
    from helpers.checkpoints import write_weights

    weights = ["row=rn_in_bt", f"paths.weights_dir={tmp_path / 'w'}", f"paths.output_root={tmp_path}"]
    cfg = compose_config(["sweep=generalisation", "dataset=etis_laribpolypdb", *weights], tmp_path)
    sha = write_weights(tmp_path / "w" / cfg.pretraining.files.resnet50, seed=1)
    cfg = compose_config(["sweep=generalisation", "dataset=etis_laribpolypdb", *weights], tmp_path)
    cell = f"column=kvasir_seg,row=rn_in_bt,seed=42,weights={sha[:8]}"
    assert cfg.ckpt == str(tmp_path / "sweeps/study" / cell / "best.pt")


@pytest.mark.slow  # two sweeps as command lines
def test_generalisation_smoke_sweep_gives_an_in_vs_out_of_distribution_table(tmp_path, capsys):
    from helpers import run_cli

    from ssl4gie.results.__main__ import main as results_main

    out, cache = tmp_path / "out", tmp_path / "cache"
    paths = [f"paths.output_root={out}", f"paths.cache_dir={cache}", f"paths.weights_dir={tmp_path / 'w'}"]
    trained = run_cli(["-m", "sweep=smoke", *paths], timeout=900)
    assert trained.returncode == 0, trained.stderr[-2000:]
    from ssl4gie.data.synthetic import write_kvasir_seg, write_pranet_set

    data = tmp_path / "data"  # two sets present; ETIS-LaribPolypDB is not: its cells are skipped, not failed
    write_kvasir_seg(data / "Kvasir-SEG", n=6, seed=0, size_range=(64, 96))
    write_pranet_set(data / "TestDataset" / "CVC-ColonDB", n=6, seed=0, size_range=(64, 96))
    evaluated = run_cli(
        [
            "-m",
            "sweep=generalisation",
            "row=rn_na_na,vt_na_na",
            "dataset=kvasir_seg,cvc_colondb,etis_laribpolypdb",
            f"paths.study_sweep={out / 'sweeps/smoke'}",
            f"paths.data_dir={data}",
            "backbone.tiny=true",
            "task.input_size=64",
            "trainer.device=cpu",
            "trainer.num_workers=0",
            "trainer.batch_size=4",
            "trainer.num_figures=1",
            "trainer.progress=false",
            *paths,
        ],
        timeout=900,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    sweep = out / "sweeps/generalisation"
    skipped = sorted(p.parent.name for p in sweep.glob("*/skipped.json"))
    assert len(skipped) == 2 and all("dataset=etis_laribpolypdb" in name for name in skipped)
    assert not list(sweep.glob("*/failed.json"))
    assert "cell skipped (skip_missing_data=true)" in evaluated.stdout + evaluated.stderr
    n_test = {}
    for metrics_file in sweep.glob("*/metrics.json"):
        metrics = json.loads(metrics_file.read_text())
        assert metrics["mode"] == "eval" and metrics["ckpt"].startswith(
            str(out / "sweeps/smoke/column=kvasir_seg")
        )
        n_test[(metrics["row"], metrics["dataset"])] = metrics["n_test"]
    # Kvasir-SEG: its test split (round(0.1 * 6)); CVC-ColonDB: every image
    assert n_test == {
        ("RN-NA-NA", "kvasir_seg"): 1,
        ("VT-NA-NA", "kvasir_seg"): 1,
        ("RN-NA-NA", "cvc_colondb"): 6,
        ("VT-NA-NA", "cvc_colondb"): 6,
    }
    capsys.readouterr()
    assert results_main([str(sweep)]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns == ["row", "segmentation/kvasir_seg test/dice ↑", "segmentation/cvc_colondb test/dice ↑"]


def test_skip_missing_data_skips_only_evaluations(tmp_path):
    from ssl4gie.errors import DatasetMissing
    from ssl4gie.run.pipeline import execute

    missing = segmentation_overrides(tmp_path / "nowhere", tmp_path, "skip_missing_data=true")
    with pytest.raises(DatasetMissing, match="not found"):  # training on absent data is an error, always
        execute(compose_config(missing, tmp_path / "train"))
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"")  # never read: the missing dataset is noticed first
    assert execute(compose_config([*missing, "mode=eval", f"ckpt={ckpt}"], tmp_path / "eval")) is None
    assert (tmp_path / "eval" / "skipped.json").is_file() and not (
        tmp_path / "eval" / "metrics.json"
    ).exists()
