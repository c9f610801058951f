"""Runs that survive preemption and sweeps that can be relaunched: SIGKILL + resume, skipping complete cells,
a failed cell that does not stop the others, DDP on CPU with two processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from helpers import FAST, ROOT, SMALL_DECODERS, TINY, run_cli

pytestmark = pytest.mark.slow  # sweeps and runs as command lines, killed and relaunched

SMOKE = ["trainer.progress=false"]  # sweeps/smoke.yaml shrinks everything else


def tiny_run_args(kvasir, tmp_path, *extra):
    return [
        f"dataset.root={kvasir}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        *TINY,
        *SMALL_DECODERS,
        *FAST,
        *extra,
    ]


def summary_lines(log: str, n: int) -> list[str]:
    """The last ``n`` lines of a sweep's output, from their ``[sweep]`` on (the log prefix left out)."""
    return [line[line.find("[sweep]") :] for line in log.rstrip().splitlines()[-n:]]


def start_until_first_checkpoint(args: list[str], run) -> subprocess.Popen:
    """Start ``run.py args`` in the background and return once its first ``last.pt`` exists."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not (run / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    return proc


def test_sigkill_then_relaunch_resumes_from_last_checkpoint(tmp_path, kvasir_tiny):
    args = tiny_run_args(kvasir_tiny, tmp_path, "trainer.epochs=4", "trainer.batch_size=2")
    run = tmp_path / "run"
    proc = start_until_first_checkpoint(args, run)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)  # no handler runs: the state on disk is whatever was complete
    proc.wait()
    assert not (run / "metrics.json").exists()

    result = run_cli(args)
    assert result.returncode == 0, result.stdout[-3000:]
    log = (run / "run.log").read_text()
    assert "resumed from" in log and "last.pt after epoch" in log
    resumed_after = int(log.split("last.pt after epoch ")[1].split("/")[0])
    assert 1 <= resumed_after < 4
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == 4 and metrics["status"] == "complete"
    assert list(pd.read_csv(run / "history.csv")["epoch"]) == [1, 2, 3, 4]


def test_sigterm_saves_last_checkpoint_mid_epoch(tmp_path, kvasir_tiny):
    args = tiny_run_args(kvasir_tiny, tmp_path, "trainer.epochs=50", "trainer.batch_size=2")
    run = tmp_path / "run"
    proc = start_until_first_checkpoint(args, run)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) != 0
    log = (run / "run.log").read_text()
    assert "received SIGTERM: saving last.pt" in log
    import torch

    state = torch.load(run / "last.pt", weights_only=True)
    assert state["epoch"] >= 1 and state["epoch"] < 50


def test_failed_cell_does_not_stop_the_others_and_relaunch_skips_complete_cells(tmp_path):
    out = tmp_path / "out"
    # Two cells of the smoke sweep; lr=-1 makes one of them fail when its optimiser is built.
    args = [
        "-m",
        "sweep=smoke",
        "row=rn_na_na",
        "trainer.lr=-1,0.0001",
        f"paths.output_root={out}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        *SMOKE,
    ]
    result = run_cli(args)
    log = result.stdout + result.stderr
    assert result.returncode != 0  # the sweep reports its failure...
    sweep = out / "sweeps" / "smoke"
    done = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    failed = sorted(p.parent for p in sweep.glob("*/failed.json"))
    assert len(done) == 1 and len(failed) == 1  # ...after running the other cell to the end
    assert "trainer.lr=0.0001" in done[0].name and "trainer.lr=-1" in failed[0].name
    assert "Invalid learning rate" in json.loads((failed[0] / "failed.json").read_text())["error"]
    assert "[sweep] 1/2 done, 1 failed, 0 running, 0 pending" in log
    assert f"[sweep] failed: {failed[0].name}" in log
    # ...and ends on its summary: counts, the cause with an example, no traceback
    assert summary_lines(log, 4) == [
        f"[sweep] 2 cells: 1 done, 0 skipped, 1 failed ({sweep})",
        "[sweep]   1 failed: ValueError: Invalid learning rate: -1.0",
        f"[sweep]     e.g. {failed[0] / 'failed.json'}",
        f"[sweep] tables: python -m ssl4gie.results {sweep}",
    ]
    assert "Traceback" not in log

    stamp = (done[0] / "metrics.json").stat().st_mtime_ns
    result = run_cli(args)  # relaunch the same sweep: the complete cell is skipped, the failed one reruns
    log = result.stdout + result.stderr
    assert log.count("already holds a complete run") == 1
    assert (done[0] / "metrics.json").stat().st_mtime_ns == stamp
    assert (failed[0] / "failed.json").exists() and not (failed[0] / "metrics.json").exists()

    # The finished cell as a run of another configuration left it (as after an edit of the sweep file): a relaunch
    # keeps it, and this launch's cell fails, in the summary and the exit status.
    for name in ("metrics.json", "identity.json"):
        record = json.loads((done[0] / name).read_text())
        record["fingerprint"] = "0" * 16
        if name == "identity.json":
            record["options"]["trainer"]["epochs"] = 1
        (done[0] / name).write_text(json.dumps(record))
    stamp = (done[0] / "metrics.json").stat().st_mtime_ns
    result = run_cli(args)
    log = result.stdout + result.stderr
    assert result.returncode == 1
    assert "holds a finished run of another configuration (trainer.epochs 1 → 2); it is kept" in log
    assert (done[0] / "metrics.json").stat().st_mtime_ns == stamp and (done[0] / "failed.json").exists()
    assert f"[sweep] 2 cells: 0 done, 0 skipped, 2 failed ({sweep})" in log


@pytest.mark.slow
def test_a_sweep_whose_cells_all_failed_ends_on_its_summary_through_submitit(tmp_path):
    out = tmp_path / "out"
    result = run_cli(
        [
            "-m",
            "sweep=smoke",
            "row=rn_na_na",
            "trainer.lr=-1,-2",
            "hydra/launcher=submitit_local",
            f"paths.output_root={out}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            *SMOKE,
        ]
    )
    log = result.stdout + result.stderr
    assert result.returncode == 1, log[-3000:]
    sweep = out / "sweeps" / "smoke"
    first = sweep / "column=kvasir_seg,row=rn_na_na,seed=42,trainer.lr=-1"
    assert summary_lines(log, 3) == [
        f"[sweep] 2 cells: 0 done, 0 skipped, 2 failed ({sweep})",
        "[sweep]   2 failed: ValueError: Invalid learning rate: -1.0",  # one cause: the numbers differ
        f"[sweep]     e.g. {first / 'failed.json'}",
    ]
    assert "Traceback" not in log


@pytest.mark.timeout(600)
def test_ddp_on_cpu_with_two_processes_keeps_a_frozen_backbone_unchanged(tmp_path, kvasir_tiny):
    """(Every task × backbone family trains under DDP in test_distributed.py; here: frozen=true.)"""
    args = tiny_run_args(kvasir_tiny, tmp_path, "trainer.epochs=2", "frozen=true")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(ROOT / "run.py"),
            *args,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = tmp_path / "run"
    log = (run / "run.log").read_text()
    assert "distributed: rank 0 of 2 (backend gloo)" in log
    assert log.count("results in") == 1  # rank 0 alone evaluates and writes
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["status"] == "complete" and metrics["epochs"] == 2
    assert len(pd.read_csv(run / "per_image_test.csv")) == 1
    assert len(list((run / "figures").glob("*.png"))) == 1
    # the backbone is bit-identical to its initialisation after DDP training
    import torch
    from helpers import compose_config

    from ssl4gie.tasks.segmentation import SegmentationTask

    cfg = compose_config(args[:2] + args[3:])
    task = SegmentationTask(**{k: v for k, v in cfg.task.items() if k != "_target_"})
    torch.manual_seed(cfg.seed)
    initial = task.build_model(cfg.backbone, cfg.pretraining, True, str(tmp_path)).encoder.state_dict()
    trained = torch.load(run / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(trained[f"encoder.{k}"], v) for k, v in initial.items())
