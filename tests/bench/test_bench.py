"""``python -m ssl4gie.bench`` end to end on tiny settings: a functional check of the command, not a timing."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import SMALL_DECODERS, compose_config, task_overrides

from ssl4gie.bench import common, flops
from ssl4gie.bench import finetune as bench
from ssl4gie.bench import gpu as bench_gpu

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


# ----------------------------------------------------------------------------------- the GPU suite (bench_gpu)
@pytest.mark.slow
def test_gpu_suite_tiny_on_cpu_reports_every_case(tmp_path, capsys):
    """All 8 cases (4 tasks × ResNet-50 / ViT-B) at tiny sizes on the CPU: every key of every case, sane values."""
    out = tmp_path / "suite.json"
    status = bench_gpu.main(
        [
            "--tiny",
            "--device", "cpu",
            "--workers", "0",
            "--loader-batches", "2",
            "--threads", "1",
            "--work-dir", str(tmp_path / "work"),
            "--out", str(out),
        ]
    )  # fmt: skip
    assert status == 0
    written = json.loads(out.read_text())
    assert written["tiny"] and written["peak_tflops"] is None  # CPU: no peak, so no MFU
    cases = written["cases"]
    assert [(c["task"], c["backbone"]) for c in cases] == [
        (t, b) for t in bench_gpu.TASKS for b in bench_gpu.BACKBONES
    ]
    for case in cases:
        assert set(case) == set(bench_gpu.CASE_KEYS), case["task"]
        assert case["status"] == "ok" and case["error"] is None, case
        for key in ("train_images_per_s", "step_time_s", "loss", "train_flops_per_image", "cores_per_gpu"):
            assert isinstance(case[key], float) and case[key] > 0, (case["task"], key, case[key])
        assert 0.0 <= case["data_wait_fraction"] <= 1.0
        assert case["mfu"] is None and case["peak_memory_mb"] is None  # CPU
        assert (case["micro_batch"], case["accum_steps"], case["batch_size"]) == (4, 2, 8)
        assert set(case["loader_images_per_s"]) == set(case["loader_per_worker_images_per_s"]) == {"1", "2"}
        per_worker = case["loader_per_worker_images_per_s"]
        assert per_worker["2"] == pytest.approx(case["loader_images_per_s"]["2"] / 2, rel=1e-3)
        assert case["cores_per_gpu"] == pytest.approx(
            case["train_images_per_s"] / min(per_worker.values()), rel=1e-2
        )
        assert case["gpu_augment"] is False and case["device"] == "cpu"
    table = capsys.readouterr().out
    assert "segmentation" in table and "n/a" in table and str(out) in table


def test_gpu_suite_pieces():
    cpu = torch.device("cpu")
    assert flops.peak_tflops(cpu, 100.0) == (None, None)  # MFU is n/a on a CPU
    assert flops.mfu(None, 10.0, 989.0) is None
    assert flops.mfu(24.5e9, 1000.0, 989.0) == pytest.approx(24.5e12 / 989e12)
    assert dict(flops.BF16_PEAK_TFLOPS)["H200"] == 989.0 and dict(flops.BF16_PEAK_TFLOPS)["A100"] == 312.0
    assert common.is_oom(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert common.is_oom(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"))
    assert not common.is_oom(RuntimeError("shape mismatch"))
    assert len(common.repeated(list(range(3)), 7)) == 7
    with pytest.raises(SystemExit):
        bench_gpu.parse_args(["--tasks", "segmentation,pose"])
    args = bench_gpu.parse_args(["--loader-workers", "2,1"])
    assert args.loader_workers == [1, 2] and args.batch_size == 48 and args.micro_batch is None


def test_step_flops_count_forward_and_backward(tmp_path, tmp_paths):
    """FlopCounterMode over one micro-step of a plain CNN classifier: forward, weight gradients and input gradients
    (none for the stem convolution, which is most of the tiny ResNet's work): between 2× and 3× the forward."""
    from torch.utils.flop_counter import FlopCounterMode

    from ssl4gie.engine.trainer import Trainer
    from ssl4gie.utils.conf import instantiate_checked

    cfg = compose_config(task_overrides("classification", tmp_paths))
    task = instantiate_checked(cfg.task, _recursive_=False)
    model = task.build_model(cfg.backbone, cfg.pretraining, False, str(tmp_path))
    trainer = Trainer(cfg.trainer, task, model, tmp_path / "run", cfg.seed, "fp", {})
    data = task.build_datasets(instantiate_checked(cfg.dataset), ["train"], None, False)["train"]
    batch = next(iter(trainer.loader(data, train=True)))
    step = flops.step_flops(trainer, batch)
    with FlopCounterMode(display=False) as forward, torch.no_grad():
        trainer.model(batch["image"])
    assert 2.0 < step / forward.get_total_flops() <= 3.0
    assert all(p.grad is None for p in trainer.model.parameters())  # the counted step left no gradients


@pytest.mark.slow
def test_gpu_suite_loader_records_detection_in_both_modes(tmp_path, capsys):
    """``--loader --json`` for detection: the worker mode decodes and augments in the workers, the device mode
    hands over bytes and parameters (the device step's rate is the decode + augmentation)."""
    out = tmp_path / "loader.json"
    status = bench_gpu.main(
        [
            "--loader", "--tasks", "detection", "--backbones", "resnet50", "--tiny", "--device", "cpu",
            "--loader-batches", "1", "--loader-rounds", "1", "--loader-workers", "1", "--threads", "1",
            "--work-dir", str(tmp_path / "work"), "--json", str(out),
        ]
    )  # fmt: skip
    assert status == 0
    records = json.loads(out.read_text())
    assert [(r["task"], r["backbone"], r["mode"], r["decode_size"]) for r in records] == [
        ("detection", "resnet50", "worker", None), ("detection", "resnet50", "device", None)
    ]  # fmt: skip
    for r in records:
        assert set(r) == set(bench_gpu.LOADER_KEYS) and r["frames_per_s_per_worker"] > 0
    assert records[0]["device_frames_per_s"] is None and records[1]["device_frames_per_s"] > 0
    assert "detection" in capsys.readouterr().out
