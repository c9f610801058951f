"""SLURM launcher settings: one task per GPU, one per node without GPUs; settings that cannot work are refused in
the driver with one line naming them (exit 2) before anything is submitted, so no SLURM cluster is needed here."""

from __future__ import annotations

import pytest
from helpers import compose_config, run_cli

import ssl4gie  # noqa: F401  (registers the resolvers for the in-process compose)


@pytest.mark.parametrize(("gpus", "tasks"), [(0, 1), (1, 1), (4, 4)])
def test_tasks_per_node_is_one_per_gpu_and_one_without_gpus(gpus, tasks):
    cfg = compose_config(["hydra/launcher=slurm", f"hydra.launcher.gpus_per_node={gpus}"], hydra=True)
    assert cfg.hydra.launcher.tasks_per_node == tasks


BAD = [
    (["hydra.launcher.gpus_per_node=-1"], "gpus_per_node=-1"),
    (["hydra.launcher.nodes=0"], "nodes=0"),
    (["hydra.launcher.gpus_per_node=2", "hydra.launcher.tasks_per_node=1"], "tasks_per_node=1"),
    (["hydra.launcher.gpus_per_node=0", "hydra.launcher.tasks_per_node=0"], "tasks_per_node=0"),
    (["hydra.launcher.cpus_per_task=0"], "cpus_per_task=0"),
    (["hydra.launcher.mem_gb=0"], "mem_gb=0"),
    (["hydra.launcher.timeout_min=0"], "timeout_min=0"),
    (["hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=60"], "signal_delay_s=60"),
]


@pytest.mark.parametrize(("settings", "named"), BAD, ids=[n for _, n in BAD])
def test_unusable_slurm_setting_is_one_line_and_exit_2_before_submission(tmp_path, settings, named):
    result = run_cli(
        ["-m", "sweep=smoke", "hydra/launcher=slurm", *settings, f"paths.output_root={tmp_path}"], timeout=120
    )
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 2, output
    assert len(output.splitlines()) == 1 and f"hydra.launcher.{named} " in output, output
    assert not (tmp_path / "sweeps").exists()  # nothing was submitted


def test_non_integer_gpus_are_refused_by_the_launcher_schema(tmp_path):
    result = run_cli(
        ["-m", "sweep=smoke", "hydra/launcher=slurm", "hydra.launcher.gpus_per_node=1.5"], timeout=120
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "hydra.launcher.gpus_per_node" in output and "Traceback" not in output
