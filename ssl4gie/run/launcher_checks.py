"""SLURM launcher settings that cannot work, refused in the driver before any job is submitted.

``hydra/launcher=slurm`` passes its settings to submitit, which writes them into an sbatch script without checking
them; sbatch (or, worse, the job hours later) then fails. :class:`LauncherChecks` runs in the driver at
``on_multirun_start`` and turns each such setting into one line naming it, with exit status 2.

Value *types* are enforced earlier by hydra-submitit-launcher's schema (``SlurmQueueConf``: e.g. a non-integer
``gpus_per_node`` is refused when the config is composed, with Hydra's message naming the option); the checks
below repeat them so that a schema-less launcher config is refused too.
"""

from __future__ import annotations

import logging
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ssl4gie.errors import ConfigError

log = logging.getLogger("ssl4gie.launcher")
SLURM_TARGET = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_slurm_launcher(launcher: DictConfig) -> None:
    """Raise :class:`ConfigError` (one line, naming the option) for the first setting of a submitit SLURM
    ``launcher`` config that cannot work with ssl4gie: one process per GPU, or one per node without GPUs."""
    # Only the checked keys are resolved: an interpolation elsewhere (setup lines, names) is not ours to judge.
    checked = ("gpus_per_node", "nodes", "tasks_per_node", "cpus_per_task", "mem_gb", "timeout_min")
    checked += ("signal_delay_s", "max_num_timeout", "array_parallelism")
    values = {key: launcher.get(key) for key in checked}

    def fail(key: str, expected: str) -> ConfigError:
        return ConfigError(f"hydra.launcher.{key}={values.get(key)} {expected}")

    gpus = values.get("gpus_per_node")
    if gpus is not None and not (_whole(gpus) and gpus >= 0):
        raise fail("gpus_per_node", "must be a whole number >= 0 (0 for a CPU partition)")
    gpus = gpus or 0
    nodes = values.get("nodes")
    if not (_whole(nodes) and nodes >= 1):
        raise fail("nodes", "must be a whole number >= 1")
    tasks = values.get("tasks_per_node")
    if not (_whole(tasks) and tasks >= 1):
        raise fail(
            "tasks_per_node", "must be a whole number >= 1 (leave it unset: one task per GPU, 1 without)"
        )
    if gpus and tasks != gpus:
        raise fail(
            "tasks_per_node",
            f"must equal hydra.launcher.gpus_per_node={gpus}: ssl4gie runs one process per GPU "
            "(leave tasks_per_node unset)",
        )
    cpus = values.get("cpus_per_task")
    if cpus is not None and not (_whole(cpus) and cpus >= 1):
        raise fail("cpus_per_task", "must be a whole number >= 1 (or null for the partition's default)")
    mem = values.get("mem_gb")
    if mem is not None and not (isinstance(mem, int | float) and not isinstance(mem, bool) and mem > 0):
        raise fail("mem_gb", "must be > 0 (or null for the partition's default)")
    timeout = values.get("timeout_min")
    if not (_whole(timeout) and timeout >= 1):
        raise fail("timeout_min", "must be a whole number of minutes >= 1")
    delay = values.get("signal_delay_s")
    if delay is not None and not (_whole(delay) and 0 <= delay < 60 * timeout):
        # the warning signal at or before the start would make every job save, requeue and start over at once
        raise fail("signal_delay_s", f"must be a whole number >= 0 and below timeout_min={timeout} minutes")
    requeues = values.get("max_num_timeout")
    if requeues is not None and not (_whole(requeues) and requeues >= 0):
        raise fail("max_num_timeout", "must be a whole number >= 0")
    parallel = values.get("array_parallelism")
    if parallel is not None and not (_whole(parallel) and parallel >= 1):
        raise fail("array_parallelism", "must be a whole number >= 1")


class LauncherChecks(Callback):
    """Hydra callback: refuse unusable SLURM launcher settings in the driver, before the sweep is launched.

    Logs the one-line error and exits with status 2 (``SystemExit``: Hydra's ``run_and_report`` would print an
    ``Exception`` as a traceback). Other launchers are not checked.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        launcher = OmegaConf.select(config, "hydra.launcher")
        if launcher is None or launcher.get("_target_") != SLURM_TARGET:
            return
        try:
            check_slurm_launcher(launcher)
        except ConfigError as e:
            log.error("%s", e)
            raise SystemExit(2) from None
