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
