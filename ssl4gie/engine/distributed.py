"""torch.distributed set-up: one process per GPU, inside a SLURM job (submitit) or under ``torchrun``.

Rank, world size and the rendezvous address come from the environment: submitit's
``TorchDistributedEnvironment`` exports them inside a SLURM job (its port is derived from the job id, so jobs that
share a node never collide); ``torchrun`` sets the same variables. NCCL on GPUs, gloo on CPUs.
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

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


# ---------------------------------------------------------------------------------------------- one-rank paths
def unwrap(module: nn.Module) -> nn.Module:
    """The bare module inside DistributedDataParallel / DataParallel / ``torch.compile`` wrappers, whose state
    dicts would otherwise carry ``module.`` / ``_orig_mod.`` prefixes."""
    while True:
        if isinstance(module, nn.parallel.DistributedDataParallel | nn.DataParallel):
            module = module.module
        elif hasattr(module, "_orig_mod") and isinstance(module._orig_mod, nn.Module):
            module = module._orig_mod
        else:
            return module


class BatchNormXd(nn.modules.batchnorm._BatchNorm):
    """Plain BatchNorm over any input of two or more dimensions, as SyncBatchNorm accepts (SyncBatchNorm does not
    remember whether it replaced a 1-D, 2-D or 3-D BatchNorm)."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an input of at least 2 dimensions, got {input.dim()}")


def _plain_batchnorm(sync: nn.SyncBatchNorm) -> BatchNormXd:
    """A BatchNorm computing what ``sync`` computes in one process, sharing its parameters and buffers."""
    bn = BatchNormXd(sync.num_features, sync.eps, sync.momentum, sync.affine, sync.track_running_stats)
    bn._parameters = dict(sync._parameters)  # the same tensors: nothing copied, updates are seen both ways
    bn._buffers = dict(sync._buffers)
    bn.train(sync.training)
    return bn


def _without_sync(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.SyncBatchNorm):
        return _plain_batchnorm(module)
    children = {name: _without_sync(child) for name, child in module._modules.items() if child is not None}
    if all(child is module._modules[name] for name, child in children.items()):
        return module  # nothing below synchronises: the module itself
    # its own child table; parameters, buffers and the unchanged children are shared
    shallow = copy.copy(module)
    shallow._modules = {**module._modules, **children}
    return shallow


def local_model(model: nn.Module) -> nn.Module:
    """``model`` as one process runs it alone, on a path the other ranks do not take (validation, the epoch-0
    baseline, the kNN probe, figures, exports, test and predict all run on rank 0 only).

    The bare module (no DistributedDataParallel / ``torch.compile`` wrapper: their forward synchronises or
    recompiles) with every SyncBatchNorm replaced by a plain BatchNorm. SyncBatchNorm in train mode gathers batch
    statistics from every rank: on a path only rank 0 takes, the others never answer and the job hangs on GPUs
    (on a CPU, torch raises instead). Parameters and buffers are shared with ``model`` (no copy; a module tree
    without SyncBatchNorm is returned as is), so the result always computes with the current weights; modules
    that hold a SyncBatchNorm are shallow copies with their own child table, so ``model`` keeps its SyncBatchNorm
    for training. Use :func:`copy.deepcopy` on the result for a model whose statistics may change.
    """
    return _without_sync(unwrap(model))
