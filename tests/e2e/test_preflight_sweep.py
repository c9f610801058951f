"""``python run.py -m`` checks every cell before anything starts: a sweep missing a weights file and a dataset is
refused in one table naming both and the commands that fetch them, with no cell folder made; ``preflight=false``
runs it as before (each cell fails on its own); with both present the same sweep runs."""

from __future__ import annotations

import json

import pytest
from helpers import run_cli
from helpers.checkpoints import write_weights

from ssl4gie.data.synthetic import write_kvasir_seg


@pytest.mark.slow
def test_a_sweep_missing_a_weights_file_and_a_dataset_is_refused_before_any_cell_starts(tmp_path):
    out, data, weights = tmp_path / "out", tmp_path / "data", tmp_path / "weights"
    args = [
        "-m",
        "sweep=segmentation",
        "row=rn_in_bt,rn_na_na",  # Barlow Twins on ImageNet loads weights/barlowtwins_resnet50.pth
        "column=kvasir_seg",
        "backbone.tiny=true",
        "task.input_size=64",
        "trainer.epochs=1",
        "trainer.batch_size=4",
        "trainer.device=cpu",
        "trainer.num_workers=0",
        "trainer.num_figures=1",
        "trainer.progress=false",
        f"paths.data_dir={data}",
        f"paths.weights_dir={weights}",
        f"paths.output_root={out}",
        f"paths.cache_dir={tmp_path / 'cache'}",
    ]
    refused = run_cli(args, timeout=600)
    log = refused.stdout + refused.stderr
    assert refused.returncode == 2, log[-3000:]
    assert "[preflight] 2 of 2 cells cannot run; nothing was started" in log and "Traceback" not in log
    table = [line for line in log.splitlines() if line.startswith("| ")]
    assert [c.strip() for c in table[0].strip("|").split("|")] == ["cells", "missing", "get it with"]
    dataset, weights_row = table[1], table[2]
    assert "all 2 cells" in dataset and f"dataset kvasir_seg: {data / 'Kvasir-SEG'} does not exist" in dataset
    assert "python -m ssl4gie.fetch kvasir_seg" in dataset
    assert weights_row.startswith("| row=rn_in_bt ")  # the cells differ by row only
    assert f"{weights / 'barlowtwins_resnet50.pth'} does not exist" in weights_row
    assert "python -m ssl4gie.fetch row=rn_in_bt" in weights_row
    assert not (out / "sweeps").exists()  # no cell folder, no log, no job

    # preflight=false: as before, each cell starts and fails on its own (failed.json beside its log)
    unchecked = run_cli([*args, "preflight=false"], timeout=600)
    assert unchecked.returncode != 0 and "[preflight] off" in unchecked.stdout + unchecked.stderr
    sweep = out / "sweeps" / "segmentation"
    failed = sorted(p.parent.name for p in sweep.glob("*/failed.json"))
    assert len(failed) == 2 and "row=rn_in_bt,seed=42," in failed[0] and "row=rn_na_na,seed=42," in failed[1]
    errors = [json.loads((sweep / f / "failed.json").read_text())["error"] for f in failed]
    assert "barlowtwins_resnet50.pth" in errors[0] and "Kvasir-SEG not found" in errors[1]
    assert all((sweep / f / "run.log").is_file() for f in failed)

    # both fetched (here: written): the same sweep runs, a count unlike the release's a warning
    write_kvasir_seg(data / "Kvasir-SEG", n=12, seed=0, size_range=(64, 96))
    sha = write_weights(weights / "barlowtwins_resnet50.pth", seed=1)
    ran = run_cli(args, timeout=900)
    log = ran.stdout + ran.stderr
    assert ran.returncode == 0, log[-3000:]
    assert "[preflight] 2 cells: data, weights and checkpoints present" in log
    assert f"dataset kvasir_seg: 12 images in {data / 'Kvasir-SEG'}, the published release has 1000" in log
    done = sorted(p.parent.name for p in sweep.glob("*/metrics.json"))
    assert len(done) == 2 and "row=rn_in_bt" in done[0] and done[0].endswith(f",weights={sha[:8]}")
    assert "row=rn_na_na" in done[1] and "weights=" not in done[1]
