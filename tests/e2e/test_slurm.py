"""The smoke sweep through the real submitit SLURM launcher on a one-node SLURM cluster (``.ci/slurm-up.sh``).

In CI this must run (``CI`` is set there and ``.ci/run`` starts the cluster); elsewhere it is skipped when no SLURM
cluster answers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
from helpers import ROOT, run_cli

pytestmark = [pytest.mark.slurm, pytest.mark.slow]  # a sweep through a cluster: minutes


def slurm_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    result = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    return result.returncode == 0 and any(
        state in ("idle", "mix", "alloc") for state in result.stdout.split()
    )


@pytest.fixture
def slurm():
    if not slurm_up():
        if os.environ.get("CI"):
            pytest.fail("no SLURM cluster answers; .ci/run must start one (.ci/slurm-up.sh)")
        pytest.skip("no SLURM cluster (start one with: sudo bash .ci/slurm-up.sh)")


@pytest.mark.timeout(1200)
def test_smoke_sweep_through_submitit_slurm(tmp_path, slurm):
    out = tmp_path / "out"
    result = run_cli(
        [
            "-m",
            "sweep=smoke",
            "hydra/launcher=slurm",
            "hydra.launcher.partition=debug",
            "hydra.launcher.gpus_per_node=0",  # a CPU partition: one task per node, tasks_per_node left alone
            "hydra.launcher.cpus_per_task=1",  # the CI node has 2 cores and ~20 GB
            "hydra.launcher.mem_gb=4",
            "hydra.launcher.timeout_min=20",
            "hydra.launcher.signal_delay_s=30",
            f"paths.output_root={out}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            "trainer.progress=false",
        ],
        timeout=1100,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    sweep = out / "sweeps" / "smoke"
    metrics = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
    assert sorted(m["row"] for m in metrics) == ["RN-NA-NA", "VT-NA-NA"]
    assert all(m["status"] == "complete" for m in metrics)
    assert list(sweep.glob(".submitit/*/*_log.out"))  # the jobs really went through SLURM

    tables = subprocess.run(
        [sys.executable, "-m", "ssl4gie.results", str(sweep)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert tables.returncode == 0, tables.stdout + tables.stderr
    table = (sweep / "results" / "table.md").read_text()
    for m in metrics:
        assert m["row"] in table and f"{m['test/dice']:.3f}" in table


def slurm_job(job_id: str) -> dict[str, str]:
    """``scontrol show job`` as a dict (JobState, RunTime, Restarts, ...)."""
    text = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True).stdout
    return dict(field.split("=", 1) for field in text.split() if "=" in field)


def wait_for(condition, what: str, timeout: float, proc: subprocess.Popen):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if value := condition():
            return value
        if proc.poll() is not None:
            pytest.fail(f"the sweep ended while waiting for {what}:\n{proc.communicate()[0][-3000:]}")
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_cell_whose_job_hits_its_time_limit_is_requeued_by_submitit_and_completes(tmp_path, slurm):
    """SLURM's warning before the time limit (``--signal=USR2@signal_delay_s``, to every process of the job step,
    loader workers included) reaches a cell mid-training: ssl4gie saves ``last.pt`` at the step and hands the signal
    to submitit, which requeues the job; the requeued job resumes from ``last.pt`` and completes.

    SLURM checks limits every 30 s, so the warning comes up to 30 s before the time asked for. To have it arrive while
    the cell trains (not during its start-up), the job is submitted with a roomy limit, which the test lowers once
    the cell has finished its first epoch (``scontrol update TimeLimit``: the limit is then within the warning
    delay), and raises again while the requeued job waits to start.
    """
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "run.py"),
            "-m",
            "sweep=smoke",
            "row=rn_na_na",  # one cell
            "hydra/launcher=slurm",
            "hydra.launcher.partition=debug",
            "hydra.launcher.gpus_per_node=0",
            "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.mem_gb=4",
            "hydra.launcher.timeout_min=10",
            "hydra.launcher.signal_delay_s=240",
            "hydra.launcher.max_num_timeout=1",
            # about 1 s each on an idle 2-core machine: training goes on past SLURM's next check (within 30 s)
            "trainer.epochs=40",
            "trainer.num_workers=1",
            f"paths.output_root={out}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            "trainer.progress=false",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    job_id = None
    try:
        sweep = out / "sweeps" / "smoke"
        cell = wait_for(
            lambda: next(sweep.glob("*/last.pt"), None), "the cell's first epoch", 400, proc
        ).parent
        job_log = wait_for(
            lambda: next(sweep.glob(".submitit/*/*_0_log.out"), None), "the job's log", 30, proc
        )
        job_id = job_log.parent.name  # the array of one task: the job
        # 2-3 minutes from now: under signal_delay_s away, so SLURM sends the warning at its next check
        minutes = int(slurm_job(job_id)["RunTime"].split(":")[-2]) + 3  # [D-]HH:MM:SS
        subprocess.run(["scontrol", "update", f"JobId={job_id}", f"TimeLimit={minutes}"], check=True)
        wait_for(lambda: slurm_job(job_id).get("Restarts", "0") != "0", "the requeue", 120, proc)
        subprocess.run(
            ["scontrol", "update", f"JobId={job_id}", "TimeLimit=30"], check=True
        )  # no second warning
        output, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            if job_id is not None:
                subprocess.run(["scancel", job_id], check=False)
            proc.kill()
    assert proc.returncode == 0, output[-3000:]
    log = (cell / "run.log").read_text()
    assert "received SIGUSR2: saving last.pt at step" in log  # mid-epoch, by ssl4gie's handler...
    submitit_log = "".join(p.read_text() for p in job_log.parent.glob("*_log.*"))
    assert "Caught signal SIGUSR2" in submitit_log and "Requeued job" in submitit_log  # ...then by submitit's
    assert "DataLoader worker" not in log + submitit_log
    assert "resumed from" in log
    metrics = json.loads((cell / "metrics.json").read_text())
    assert metrics["status"] == "complete" and metrics["epochs"] == 40
    assert slurm_job(job_id)["Restarts"] == "1"
