"""DistributedDataParallel as users run it, with 2 gloo processes on the CPU: every task × backbone family trains,
evaluates and writes its outputs once; a stop signal that reaches one rank stops both at the same step; a resumed
run restores each rank's own RNG state."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import ROOT, TASK_RUNS, task_overrides

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def torchrun(args: list[str]) -> subprocess.Popen:
    """``torchrun --standalone --nproc_per_node=2 run.py args`` in the background, in its own process group."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return subprocess.Popen(
        [*command, str(ROOT / "run.py"), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        start_new_session=True,
    )


def finish(proc: subprocess.Popen, timeout: int = 400) -> tuple[int, str]:
    """Exit status and output; a run that hangs (e.g. ranks waiting for each other) is killed and fails the test."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(
            f"torchrun still running after {timeout} s (ranks waiting for each other?):\n{out[-3000:]}"
        )
    return proc.returncode, out


@pytest.mark.parametrize("backbone", ["resnet50", "vit_b"])
@pytest.mark.parametrize("task", sorted(TASK_RUNS))
def test_ddp_trains_every_task_and_backbone_family(task, backbone, tmp_paths, tmp_path):
    run = tmp_path / "run"
    args = task_overrides(task, tmp_paths, f"backbone={backbone}", "trainer.epochs=2", f"hydra.run.dir={run}")
    code, out = finish(torchrun(args))
    assert code == 0, out[-4000:]
    log = (run / "run.log").read_text()
    assert "distributed: rank 0 of 2 (backend gloo)" in log
    assert "Expected to have finished reduction" not in out
    assert log.count("results in") == 1  # rank 0 alone evaluates and writes
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["status"] == "complete" and metrics["epochs"] == 2
    assert list(pd.read_csv(run / "history.csv")["epoch"]) == [1, 2]
    assert len(pd.read_csv(run / "per_image_test.csv")) == metrics["n_test"]
    assert not (run / "last.pt").exists()  # a complete run keeps the weights-only best.pt


def worker_pids(proc: subprocess.Popen) -> dict[int, int]:
    """rank -> pid of torchrun's worker processes (read from their environment)."""
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    ranks = {}
    for pid in map(int, children):
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        rank = next((int(v.split(b"=", 1)[1]) for v in env if v.startswith(b"RANK=")), None)
        if rank is not None:
            ranks[rank] = pid
    return ranks


def test_sigterm_to_one_rank_stops_both_at_the_same_step_and_resume_restores_each_rank(tmp_paths, tmp_path):
    run = tmp_path / "run"
    # 10 training images, one per rank and step: 5 steps per epoch, 6 epochs, so the signal lands mid-run.
    args = task_overrides(
        "segmentation", tmp_paths, "trainer.epochs=6", "trainer.batch_size=2", f"hydra.run.dir={run}"
    )
    proc = torchrun(args)
    deadline = time.time() + 300
    while not (run / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    ranks = worker_pids(proc)
    assert proc.poll() is None and sorted(ranks) == [0, 1], "the run ended before the signal"
    os.kill(ranks[1], signal.SIGTERM)  # as a preemption that reaches one task first
    code, out = finish(proc, timeout=120)  # no hang: both ranks leave
    assert code != 0
    log = (run / "run.log").read_text()
    assert "received SIGTERM (on another rank): saving last.pt at step" in log  # rank 0 stopped with rank 1
    assert not (run / "metrics.json").exists()
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["epoch"] < 6 and len(state["rng"]) == 2  # one RNG state per rank...
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # ...and they differ

    code, out = finish(torchrun(args))
    assert code == 0, out[-4000:]
    log = (run / "run.log").read_text()
    assert "resumed from" in log and "restored the RNG state of each of 2 ranks" in log
    assert list(pd.read_csv(run / "history.csv")["epoch"]) == [1, 2, 3, 4, 5, 6]
    assert json.loads((run / "metrics.json").read_text())["status"] == "complete"


@pytest.mark.parametrize(("ssl", "backbone"), [("mocov3", "vit_b"), ("barlowtwins", "resnet50")])
def test_ddp_pretraining_runs_with_the_global_batch_and_exports_once(ssl, backbone, tmp_path):
    """2 processes × 4 frames = the global batch of 8: MoCo v3 gathers the keys of both ranks (16 logits per
    query), Barlow Twins all-reduces its cross-correlation; rank 0 alone exports (the loss-level equality with one
    process is tests/ssl/test_distributed.py)."""
    from helpers.pretrain import pretrain_overrides

    run = tmp_path / "run"
    code, out = finish(torchrun([*pretrain_overrides(tmp_path, ssl, backbone), f"hydra.run.dir={run}"]))
    assert code == 0, out[-4000:]
    log = (run / "run.log").read_text()
    assert "batch 8 = 4 per process × 1 accumulation steps × 2 processes" in log
    assert log.count("exported the backbone") == 1
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 2 * 3 and metrics["status"] == "complete"
    assert (run / "export" / f"hyperkvasir_{ssl}_{backbone}.pth").is_file()
