"""``python -m ssl4gie.bench.pretrain`` end to end on tiny settings: a functional check of the command (every key,
positive rates, the invariants between them, FLOPs against the encoder's own count), not a timing."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import compose_config
from torch.utils.flop_counter import FlopCounterMode

from ssl4gie.bench import pretrain as bench_pretrain
from ssl4gie.utils.conf import instantiate_checked

SIZE = 64
TINY_ARGS = [
    "--tiny",
    "--input-size", str(SIZE),
    "--device", "cpu",
    "--frames", "6",
    "--frame-sizes", "96,160",  # realistic sizes cost ~0.5 s of CPU per frame to write
    "--batch-size", "4",
    "--steps", "2",
    "--warmup", "1",
    "--workers", "0",
    "--loader-workers", "1",  # the loader rates through a worker process, as on a real machine
    "--loader-frames", "12",
    "--threads", "1",
    "--no-progress",
]  # fmt: skip


def encoder_forward_flops(ssl: str, backbone: str) -> int:
    """FLOPs of the tiny encoder's forward pass on one SIZE² image, counted independently of the benchmark."""
    cfg = compose_config(
        [
            "task=pretrain",
            f"ssl={ssl}",
            f"backbone={backbone}",
            "backbone.tiny=true",
            f"task.input_size={SIZE}",
        ]
    )
    task = instantiate_checked(cfg.task, _recursive_=False)
    model = task.build_model(cfg.backbone, cfg.pretraining, cfg.frozen, cfg.paths.weights_dir)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.encoder(torch.randn(1, 3, SIZE, SIZE))
    return counter.get_total_flops()


# Per frame, in units of the encoder's forward F. A weight gradient costs what the forward costs, so a backward is
# at least F. MoCo v3: two views forward + backward (>= 4F) plus both through the momentum encoder (2F), at most
# 3F per online view. MAE: the encoder sees a quarter of the patches (>= 2 × F/4), far below a full pass's 3F.
FLOP_BOUNDS = {"mocov3": (6.0, 9.0), "mae": (0.5, 3.0)}


@pytest.mark.parametrize(("ssl", "backbone", "views"), [("mocov3", "resnet50", 2), ("mae", "vit_b", 1)])
def test_bench_pretrain_writes_every_measurement(ssl, backbone, views, tmp_path, capsys):
    threads = torch.get_num_threads()
    out = tmp_path / "bench.json"
    status = bench_pretrain.main(
        [
            *TINY_ARGS,
            "--ssl",
            ssl,
            "--backbone",
            backbone,
            "--work-dir",
            str(tmp_path / "work"),
            "--out",
            str(out),
        ]
    )
    assert status == 0
    assert torch.get_num_threads() == threads, "--threads must not leak into the calling program"

    written = json.loads(out.read_text())
    (pair,) = written["pairs"]
    assert set(pair) == set(bench_pretrain.PAIR_KEYS)
    assert (pair["ssl"], pair["backbone"], pair["status"], pair["error"]) == (ssl, backbone, "ok", None)
    assert pair["views"] == views
    for key in (
        "loader_cache_per_worker", "loader_jpeg_per_worker", "loader_speedup", "train_images_per_s",
        "train_images_per_s_preloaded", "step_time_s", "train_flops_per_image", "workers_per_device",
        "peak_rss_mb", "params_m",
    ):  # fmt: skip
        assert isinstance(pair[key], float) and math.isfinite(pair[key]) and pair[key] > 0, (key, pair[key])
    assert 0.0 <= pair["data_wait_fraction"] <= 1.0
    assert pair["mfu"] is None and pair["peak_cuda_mb"] is None  # CPU: no peak FLOP/s, no CUDA memory
    # the derived numbers follow from the measured ones (4 significant digits in the JSON: each of the three
    # numbers is off by up to 5e-4 relative, so their relation by up to 1.5e-3)
    assert pair["loader_speedup"] == pytest.approx(
        pair["loader_cache_per_worker"] / pair["loader_jpeg_per_worker"], rel=1.5e-3
    )
    assert pair["workers_per_device"] == pytest.approx(
        pair["train_images_per_s_preloaded"] / pair["loader_cache_per_worker"], rel=1.5e-3
    )
    assert pair["step_time_s"] * pair["train_images_per_s"] == pytest.approx(4, rel=1.5e-3)  # frames per step
    low, high = FLOP_BOUNDS[ssl]
    forward = encoder_forward_flops(ssl, backbone)
    assert low * forward <= pair["train_flops_per_image"] <= high * forward

    s = written["settings"]
    assert s["trainer"]["batch_size"] == s["trainer"]["micro_batch"] == 4  # one forward pass per step
    assert (s["frames"], s["input_size"], s["device"], s["loader_workers"]) == (6, SIZE, "cpu", 1)
    assert written["data_write_s"] > 0 and written["cache_build_s"] > 0  # first run: both timed

    table = capsys.readouterr().out
    assert f"{ssl}  " in table and "train img/s preloaded" in table and str(out) in table


def test_an_unknown_pair_is_refused_with_the_valid_ones(capsys):
    with pytest.raises(SystemExit) as e:
        bench_pretrain.parse_args(["--ssl", "barlowtwins", "--backbone", "vit_b"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "barlowtwins has no recipe for --backbone vit_b" in err and "mae×vit_b" in err


def test_all_runs_the_four_pairs():
    args = bench_pretrain.parse_args(["--all"])
    assert args.pairs == [
        ("barlowtwins", "resnet50"),
        ("mae", "vit_b"),
        ("mocov3", "resnet50"),
        ("mocov3", "vit_b"),
    ]


PEAK_RSS_PROBE = """
import json, numpy as np
from ssl4gie.bench.pretrain import peak_rss_mb, reset_peak_rss
values = {"reset": reset_peak_rss(), "before": peak_rss_mb()}
block = np.ones(200 * 2**20 // 8)  # 200 MiB, touched
values["with_block"] = peak_rss_mb()
del block
values["reset_again"] = reset_peak_rss()
values["after"] = peak_rss_mb()
print(json.dumps(values))
"""


def test_peak_rss_is_reset_between_pairs():
    """In a fresh process, whose peak is its own (a long test session's earlier peaks would hide a 200 MiB block)."""
    result = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_PROBE], capture_output=True, text=True, check=True
    )
    values = json.loads(result.stdout)
    if not values["reset"]:
        pytest.skip("this kernel cannot reset the RSS high-water mark")
    assert values["with_block"] >= values["before"] + 190
    assert values["reset_again"] and values["after"] < values["before"] + 100  # the 200 MiB left the new peak


@pytest.mark.slow
def test_loader_records_one_per_method_backbone_mode_and_decode_size(tmp_path, capsys):
    """``--loader --json``: a list of records with the documented keys, for each mode (views made in the workers
    from the decode-once cache and from the full-size JPEG; made on the device from the bytes and from the cache);
    the device records also give the device step's rate. Tiny frames: a functional check, not a timing."""
    out = tmp_path / "loader.json"
    args = [
        "--loader", "--ssl", "mae", "--backbone", "vit_b", "--input-size", str(SIZE), "--device", "cpu",
        "--frames", "4", "--frame-sizes", "96,160", "--loader-frames", "8", "--loader-batch", "4",
        "--loader-batches", "1", "--loader-rounds", "2", "--loader-workers", "1", "--decode-size", "64",
        "--threads", "1", "--no-progress", "--work-dir", str(tmp_path / "work"), "--json", str(out),
    ]  # fmt: skip
    assert bench_pretrain.main(args) == 0
    records = json.loads(out.read_text())
    assert isinstance(records, list)
    assert [(r["mode"], r["decode_size"]) for r in records] == [
        ("worker", 64), ("worker", None), ("device", None), ("device", 64)
    ]  # fmt: skip
    for r in records:
        assert set(r) == set(bench_pretrain.LOADER_KEYS)
        assert (r["method"], r["backbone"], r["workers"], r["batch_size"]) == ("mae", "vit_b", 1, 4)
        assert len(r["rounds_frames_per_s_per_worker"]) == 2 and r["frames_per_s_per_worker"] > 0
        assert r["frames_per_s_per_worker"] == pytest.approx(
            float(np.median(r["rounds_frames_per_s_per_worker"])), rel=1e-3
        )
        assert (r["device_frames_per_s"] is not None) == (r["mode"] == "device")
    assert records[2]["device_frames_per_s"] > 0 and records[2]["device"] == "cpu"
    table = capsys.readouterr().out
    assert "vs worker from cache" in table and str(out) in table
