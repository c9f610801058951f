"""torch.distributed set-up: one process per GPU, inside a SLURM job (submitit) or under ``torchrun``.

Rank, world size and the rendezvous address come from the environment: submitit's
``TorchDistributedEnvironment`` exports them inside a SLURM job (its port is derived from the job id, so jobs that
share a node never collide); ``torchrun`` sets the same variables. NCCL on GPUs, gloo on CPUs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _export_slurm_env() -> None:
    """Inside a multi-task submitit job, export MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK."""
    if int(os.environ.get("SLURM_NTASKS", "1")) <= 1 or "WORLD_SIZE" in os.environ:
        return
    try:
        from submitit import JobEnvironment
        from submitit.helpers import TorchDistributedEnvironment

        JobEnvironment()  # raises outside a submitit job
    except (ImportError, RuntimeError):
        return
    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def setup(device_name: str) -> DistEnv:
    """Join the process group if the environment describes one; a single process otherwise."""
    _export_slurm_env()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    env = DistEnv(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        use_cuda = device_name != "cpu" and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(env.local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo", init_method="env://")
    if not env.is_main:  # only rank 0 talks; the others report warnings and errors
        logging.getLogger("ssl4gie").setLevel(logging.WARNING)
    log.info("distributed: rank %d of %d (backend %s)", env.rank, env.world_size, dist.get_backend())
    return env


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def broadcast_float(value: float | None, env: DistEnv, device: torch.device) -> float:
    """Rank 0's value on every rank (one float64 tensor everywhere; the study mixed dtypes here)."""
    if not env.enabled:
        return float(value)
    tensor = torch.tensor([value if value is not None else 0.0], dtype=torch.float64, device=device)
    dist.broadcast(tensor, src=0)
    return float(tensor.item())


def mean_over_ranks(value: float, env: DistEnv, device: torch.device) -> float:
    if not env.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / env.world_size


def max_over_ranks(value: int, env: DistEnv, device: torch.device) -> int:
    """The largest ``value`` of any rank, on every rank (e.g. a stop signal that only some ranks received)."""
    if not env.enabled:
        return int(value)
    tensor = torch.tensor([int(value)], dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def gather_objects(obj, env: DistEnv) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (picklable objects, e.g. RNG states)."""
    if not env.enabled:
        return [obj]
    out: list = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out
