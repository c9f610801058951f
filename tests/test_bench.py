"""``python -m ssl4gie.bench`` end to end on tiny settings: a functional check of the command, not a timing."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import SMALL_DECODERS

from ssl4gie import bench

TINY_BENCH = [
    "--tiny",
    "--input-size", "64",
    "--batch-size", "4",
    "--workers", "1",  # one loader worker: both pipelines must work in worker processes
    "--steps", "2",
    "--warmup", "1",
    "--threads", "1",
    "--no-progress",
    *(arg for override in SMALL_DECODERS for arg in ("--set", override)),
]  # fmt: skip


def test_bench_writes_every_measurement(tmp_path, kvasir_tiny):
    threads = torch.get_num_threads()
    out = tmp_path / "bench.json"
    results = bench.main(
        [*TINY_BENCH, "--data", str(kvasir_tiny), "--work-dir", str(tmp_path / "work"), "--out", str(out)]
    )
    assert torch.get_num_threads() == threads, "--threads must not leak into the calling program"

    written = json.loads(out.read_text())
    assert written == {k: v for k, v in results.items() if k != "out"}
    for key in bench.RESULT_KEYS:
        value = written[key]
        assert isinstance(value, float) and math.isfinite(value) and value > 0, (key, value)
    assert 0.0 <= written["data_wait_fraction"] <= 1.0
    assert written["loader_speedup"] == pytest.approx(
        written["loader_images_per_s"] / written["study_loader_images_per_s"], rel=1e-3
    )
    assert written["peak_cuda_mb"] is None  # CPU run
    assert written["data_write_s"] is None  # --data given: nothing written

    settings, machine = written["settings"], written["machine"]
    assert settings["task"] == "segmentation" and settings["backbone"] == "resnet50" and settings["tiny"]
    assert (settings["input_size"], settings["batch_size"], settings["workers"]) == (64, 4, 1)
    assert (settings["device"], settings["precision"], settings["compile"]) == ("cpu", "float32", False)
    assert settings["steps"] == 2 and settings["train_images"] == 10  # 12 images: 10/1/1 (study split)
    assert machine["cpu_count"] >= 1 and machine["torch_threads"] == 1
    assert machine["torch"] == torch.__version__ and machine["timm"]
    # the scratch folder (fresh decoded cache) is removed; only the JSON stays
    assert [p.name for p in (tmp_path / "work").iterdir()] == []


def test_bench_rejects_unknown_choices(capsys):
    with pytest.raises(SystemExit) as exc:
        bench.parse_args(["--backbone", "resnet18"])
    assert exc.value.code == 2
    assert "resnet50" in capsys.readouterr().err  # the valid choices are listed


def test_loader_only_skips_training(tmp_path, kvasir_tiny, capsys):
    out = tmp_path / "loader.json"
    bench.main(
        [
            *TINY_BENCH,
            "--loader-only",
            "--data",
            str(kvasir_tiny),
            "--work-dir",
            str(tmp_path),
            "--out",
            str(out),
        ]
    )
    written = json.loads(out.read_text())
    assert written["loader_images_per_s"] > 0 and written["study_loader_images_per_s"] > 0
    skipped = (
        "train_images_per_s",
        "train_images_per_s_preloaded",
        "data_wait_fraction",
        "eval_images_per_s",
    )
    assert all(written[key] is None for key in skipped)
    table = capsys.readouterr().out
    assert "loader speed-up" in table and str(out) in table
