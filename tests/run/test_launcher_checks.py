"""SLURM launcher settings: one task per GPU, one per node without GPUs; settings that cannot work are refused in
the driver with one line naming them (exit 2) before anything is submitted, so no SLURM cluster is needed here.

The messages are checked in-process, through the callback that ``conf/config.yaml`` registers; one command line
shows the whole path (``python run.py -m ...``: one line, exit 2, nothing submitted)."""

from __future__ import annotations

import logging

import pytest
from helpers import compose_config, run_cli
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate

import ssl4gie  # noqa: F401  (registers the resolvers for the in-process compose)


def slurm_sweep(*settings: str):
    return compose_config(["sweep=smoke", "hydra/launcher=slurm", *settings], hydra=True)


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
def test_unusable_slurm_setting_is_one_line_and_exit_2_at_multirun_start(settings, named, caplog):
    cfg = slurm_sweep(*settings)
    callback = instantiate(cfg.hydra.callbacks.launcher_checks)  # the callback the driver runs
    with pytest.raises(SystemExit) as stop:
        callback.on_multirun_start(config=cfg)
    assert stop.value.code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and f"hydra.launcher.{named} " in errors[0], errors
    assert "\n" not in errors[0]


def test_usable_slurm_settings_and_other_launchers_pass(caplog):
    for cfg in (slurm_sweep("hydra.launcher.gpus_per_node=2"), compose_config(["sweep=smoke"], hydra=True)):
        instantiate(cfg.hydra.callbacks.launcher_checks).on_multirun_start(config=cfg)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_the_command_line_prints_one_line_exits_2_and_submits_nothing(tmp_path):
    result = run_cli(
        [
            "-m",
            "sweep=smoke",
            "hydra/launcher=slurm",
            "hydra.launcher.nodes=0",
            f"paths.output_root={tmp_path}",
        ],
        timeout=120,
    )
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 2, output
    assert len(output.splitlines()) == 1 and "hydra.launcher.nodes=0 " in output, output
    assert "Traceback" not in output
    assert not (tmp_path / "sweeps").exists()  # nothing was submitted


def test_non_integer_gpus_are_refused_by_the_launcher_schema():
    with pytest.raises(ConfigCompositionException, match=r"hydra\.launcher\.gpus_per_node=1\.5"):
        slurm_sweep("hydra.launcher.gpus_per_node=1.5")
