"""Signals as clusters send them: to the whole process group, loader workers included (SLURM at the time limit and on
preemption, ``timeout``, Ctrl-C). The main process saves ``last.pt`` at the step, ends by the signal, its workers end
with it, and the same command resumes and finishes with the metrics of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import ROOT, SMALL_DECODERS, TINY, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

STEPS_PER_EPOCH = 16  # 32 training images (40 written; 4 val, 4 test) in batches of 2
TIMING = ["epoch_time_s", "train/data_wait", "wall_time_s"]  # seconds, which differ from run to run


@pytest.fixture(scope="module")
def kvasir40(tmp_path_factory) -> Path:
    from ssl4gie.data.synthetic import write_kvasir_seg

    return write_kvasir_seg(
        tmp_path_factory.mktemp("data") / "Kvasir-SEG", n=40, seed=0, size_range=(64, 112)
    )


def run_args(data: Path, tmp_path: Path, run: Path) -> list[str]:
    return [
        f"dataset.root={data}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={run}",
        *TINY,
        *SMALL_DECODERS,
        "task.input_size=64",
        "trainer.epochs=2",
        "trainer.batch_size=2",
        "trainer.num_workers=2",
        "trainer.device=cpu",
        "trainer.progress=false",
        "trainer.num_figures=1",
    ]


def signal_group_mid_epoch(args: list[str], run: Path, signum: int) -> tuple[subprocess.Popen, str]:
    """Start ``run.py args`` in its own process group (as SLURM and a terminal do); once epoch 1's ``last.pt`` exists
    (epoch 2 is starting), send ``signum`` to every process of the group. Returns the process and its output."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        # as from an interactive shell, also when these tests run in a background job (which ignores SIGINT)
        preexec_fn=lambda: [signal.signal(s, signal.SIG_DFL) for s in (signal.SIGINT, signal.SIGTERM)],
    )
    deadline = time.time() + 400
    while not (run / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    while len(group(proc.pid)) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)  # epoch 2's two loader workers are starting
    assert proc.poll() is None, "the run ended before the signal:\n" + proc.communicate()[0][-3000:]
    os.killpg(proc.pid, signum)
    out, _ = proc.communicate(timeout=120)
    # the workers end with the main process: nothing of the group is left
    deadline = time.time() + 15
    while time.time() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail("processes of the run's group still alive 15 s after it ended")
    return proc, out


def group(pgid: int) -> list[str]:
    """The process ids of a process group."""
    return subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True).stdout.split()


def stopped_step(log: str, signame: str) -> int:
    """The step at which the run said it saved ``last.pt`` (of epoch 2)."""
    line = next(x for x in log.splitlines() if f"received {signame}: saving last.pt at step" in x)
    step, epoch = line.split("at step ")[1].split(" of epoch ")
    assert epoch.strip() == "2", line
    return int(step)


def test_sigterm_to_the_group_saves_at_the_step_and_the_resumed_run_equals_an_uninterrupted_one(
    kvasir40, tmp_path
):
    previous_umask = os.umask(0o022)
    try:
        interrupted = tmp_path / "interrupted"
        proc, out = signal_group_mid_epoch(
            run_args(kvasir40, tmp_path, interrupted), interrupted, signal.SIGTERM
        )
    finally:
        os.umask(previous_umask)
    assert proc.returncode == -signal.SIGTERM, out[-3000:]  # ended by the signal: 143 in a shell
    assert "DataLoader worker" not in out and "Traceback" not in out, out[-3000:]
    step = stopped_step((interrupted / "run.log").read_text(), "SIGTERM")
    assert 1 <= step < STEPS_PER_EPOCH  # mid-epoch
    state = torch.load(interrupted / "last.pt", weights_only=True)
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, step, STEPS_PER_EPOCH + step)
    assert not (interrupted / "metrics.json").exists()
    files = [p for p in interrupted.rglob("*") if p.is_file()]
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {p.name: "0o644" for p in files}

    resumed = run_cli(run_args(kvasir40, tmp_path, interrupted))  # the same command
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"after step {step} of epoch 2/2" in (interrupted / "run.log").read_text()
    uninterrupted = tmp_path / "uninterrupted"
    result = run_cli(run_args(kvasir40, tmp_path, uninterrupted))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    # Equal, not close: the batches and the augmentation draws of a step do not depend on where the epoch was
    # resumed (the sampler skips what was trained; each item's draws come from the epoch's seed and its index),
    # and the epoch's mean training loss counts the steps before the stop (kept in last.pt).
    history = [
        pd.read_csv(run / "history.csv").drop(columns=TIMING[:2]) for run in (interrupted, uninterrupted)
    ]
    pd.testing.assert_frame_equal(*history, check_exact=True)
    metrics = [json.loads((run / "metrics.json").read_text()) for run in (interrupted, uninterrupted)]
    for m in metrics:
        del m[TIMING[2]]
    assert metrics[0] == metrics[1]


def test_ctrl_c_to_the_group_saves_at_the_step_and_ends_by_sigint_without_a_traceback(kvasir40, tmp_path):
    run = tmp_path / "run"
    proc, out = signal_group_mid_epoch(run_args(kvasir40, tmp_path, run), run, signal.SIGINT)
    # ended by SIGINT (not an exit status), so that a shell running a loop of runs stops too
    assert proc.returncode == -signal.SIGINT, out[-3000:]
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out[-3000:]
    step = stopped_step((run / "run.log").read_text(), "SIGINT")
    assert torch.load(run / "last.pt", weights_only=True)["step_in_epoch"] == step
