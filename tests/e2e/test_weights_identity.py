"""The initial weights are part of a run's identity by content: another weights file is another experiment (other
fingerprint, other folder, never another run's metrics or last.pt); the same file moved or renamed is the same one."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest
from helpers import compose_config, run_cli, segmentation_overrides
from helpers.checkpoints import write_weights
from omegaconf import OmegaConf

from ssl4gie.run.identity import fingerprint
from ssl4gie.run.weights import file_sha256

ROW = ["pretraining=imagenet_barlowtwins"]  # ResNet-50; Barlow Twins' resnet50.pth is a plain state dict


def documented_file(tmp_path):
    return tmp_path / "w" / compose_config(ROW).pretraining.files.resnet50


def run_dir(overrides: list[str]) -> str:
    return OmegaConf.select(compose_config(overrides, hydra=True), "hydra.run.dir")


@pytest.mark.slow
def test_run_folder_and_fingerprint_follow_the_weights_content(tmp_path, kvasir_tiny):
    base = segmentation_overrides(kvasir_tiny, tmp_path, *ROW)
    doc = documented_file(tmp_path)
    sha_a = write_weights(doc, seed=1)
    a = [*base]
    a_moved = [*base, f"pretraining.checkpoint={shutil.copy(doc, tmp_path / 'elsewhere.pth')}"]
    sha_b = write_weights(tmp_path / "b" / "other.pth", seed=2)
    b = [*base, f"pretraining.checkpoint={tmp_path / 'b' / 'other.pth'}"]

    assert run_dir(a).endswith(f"/resnet50-imagenet_barlowtwins-w{sha_a[:8]}/seed42")
    assert run_dir(a_moved) == run_dir(a)
    assert run_dir(b).endswith(f"/resnet50-imagenet_barlowtwins-w{sha_b[:8]}/seed42")
    fp = {
        name: fingerprint(compose_config(o, tmp_path / "run"))
        for name, o in [("a", a), ("m", a_moved), ("b", b)]
    }
    assert fp["a"] == fp["m"] != fp["b"]

    write_weights(doc, seed=3)  # the documented file replaced by another
    assert run_dir(a) not in (run_dir(a_moved), run_dir(b))
    assert fingerprint(compose_config(a, tmp_path / "run")) not in fp.values()

    # Random and hub rows keep their folder names; a missing file gives no tag (the loader reports it later).
    assert run_dir(segmentation_overrides(kvasir_tiny, tmp_path)).endswith("/resnet50-random/seed42")
    hub = segmentation_overrides(kvasir_tiny, tmp_path, "pretraining=imagenet_supervised")
    assert run_dir(hub).endswith("/resnet50-imagenet_supervised/seed42")
    missing = [*base, f"pretraining.checkpoint={tmp_path / 'nope.pth'}"]
    assert run_dir(missing).endswith("/resnet50-imagenet_barlowtwins/seed42")

    # Sweep cells: the checkpoint path stays out of the folder name, the content tag goes in.
    cell = compose_config(["row=rn_in_bt", "column=kvasir_seg", "seed=42", *b[-1:]], hydra=True)
    assert (
        OmegaConf.select(cell, "hydra.sweep.subdir")
        == f"column=kvasir_seg,row=rn_in_bt,seed=42,weights={sha_b[:8]}"
    )
    cell = compose_config(["row=rn_na_na", "column=kvasir_seg", "seed=42"], hydra=True)
    assert OmegaConf.select(cell, "hydra.sweep.subdir") == "column=kvasir_seg,row=rn_na_na,seed=42"


def test_file_hash_is_cached_per_file_version(tmp_path):
    path = tmp_path / "w.pth"
    path.write_bytes(b"first")
    assert file_sha256(path) == hashlib.sha256(b"first").hexdigest()
    partial = tmp_path / "w.part"
    partial.write_bytes(b"other")
    os.replace(partial, path)  # same path and size, another file
    assert file_sha256(path) == hashlib.sha256(b"other").hexdigest()


@pytest.mark.slow  # three command lines
def test_other_weights_never_reuse_a_run_and_moved_weights_are_the_same_run(tmp_path, kvasir_tiny):
    out = tmp_path / "outputs" / "train" / "segmentation" / "kvasir_seg"
    base = segmentation_overrides(kvasir_tiny, tmp_path, *ROW)
    doc = documented_file(tmp_path)

    sha_a = write_weights(doc, seed=1)
    first = run_cli(base)
    assert first.returncode == 0, first.stderr[-3000:]
    run_a = out / f"resnet50-imagenet_barlowtwins-w{sha_a[:8]}" / "seed42"
    metrics_a = json.loads((run_a / "metrics.json").read_text())
    assert (metrics_a["weights_file"], metrics_a["weights_sha256"]) == (str(doc), sha_a)
    assert (
        f"initial weights {doc} (sha256 {sha_a[:8]}) -> run folder {run_a}" in (run_a / "run.log").read_text()
    )
    stamp_a = (run_a / "metrics.json").stat().st_mtime_ns
    shutil.copy(doc, tmp_path / "copy_of_a.pth")  # identical bytes under another name

    # The documented file replaced by another: another experiment, trained in its own folder.
    sha_b = write_weights(doc, seed=2)
    second = run_cli(base)
    assert second.returncode == 0, second.stderr[-3000:]
    run_b = out / f"resnet50-imagenet_barlowtwins-w{sha_b[:8]}" / "seed42"
    metrics_b = json.loads((run_b / "metrics.json").read_text())
    assert "already holds a complete run" not in (run_b / "run.log").read_text()
    assert metrics_b["weights_sha256"] == sha_b and metrics_b["fingerprint"] != metrics_a["fingerprint"]
    assert (run_a / "metrics.json").stat().st_mtime_ns == stamp_a  # the first run is untouched

    # The same contents under other names, through pretraining.checkpoint: the same experiments, nothing to do.
    (tmp_path / "moved").mkdir()
    shutil.move(doc, tmp_path / "moved" / "renamed.pth")
    for weights, run in [(tmp_path / "moved" / "renamed.pth", run_b), (tmp_path / "copy_of_a.pth", run_a)]:
        stamp = (run / "metrics.json").stat().st_mtime_ns
        again = run_cli([*base, f"pretraining.checkpoint={weights}"])
        assert again.returncode == 0, again.stderr[-3000:]
        assert f"{run / 'metrics.json'} already holds a complete run" in again.stdout + again.stderr
        assert (run / "metrics.json").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in out.iterdir()) == sorted([run_a.parent.name, run_b.parent.name])


@pytest.mark.slow  # two sweeps as command lines
def test_sweep_cell_folder_names_the_weights_in_submitit_job_processes(tmp_path):
    """The folder of a cell is resolved in the job process: submitit_local runs it in a real subprocess, which
    has the resolver only because unpickling the ssl4gie Hydra callbacks imports the package."""
    sha = write_weights(tmp_path / "weights" / "bt.pth", seed=1)
    out = tmp_path / "out"
    args = [
        "-m",
        "sweep=smoke",
        "row=rn_in_bt",
        f"pretraining.checkpoint={tmp_path / 'weights' / 'bt.pth'}",
        "trainer.epochs=1",
        f"paths.output_root={out}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "trainer.progress=false",
    ]
    result = run_cli([*args, "hydra/launcher=submitit_local"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    sweep = out / "sweeps" / "smoke"
    cell = sweep / f"column=kvasir_seg,row=rn_in_bt,seed=42,trainer.epochs=1,weights={sha[:8]}"
    assert json.loads((cell / "metrics.json").read_text())["weights_sha256"] == sha
    assert list(sweep.glob(".submitit/*/*_log.out"))  # it really ran as a submitit job

    # The driver (basic launcher) resolves the same folder, and finds the complete cell there.
    result = run_cli(args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "already holds a complete run" in result.stdout + result.stderr
    assert [p.name for p in sweep.glob("*/metrics.json")] == ["metrics.json"]
