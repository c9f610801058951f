"""The three collectives the self-supervised losses need, written so that one process is the same code path.

When ``torch.distributed`` is not initialised (or the world has one process) every function is the identity, so the
losses run unchanged in CPU tests and single-GPU runs. In a process group the conventions are those of the official
MoCo v3 and Barlow Twins code (see :func:`all_reduce_sum` for what each gradient equals).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def gather_with_offset(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All ranks' ``x`` concatenated along dim 0 in rank order (no gradient), and where this rank's rows start.

    Ranks may hold different numbers of rows (the other dimensions must agree): the row counts are exchanged first
    and the shorter tensors padded, because ``all_gather`` needs equal shapes.
    """
    rank, world_size = world()
    x = x.detach()
    if world_size == 1:
        return x, 0
    count = torch.tensor([x.shape[0]], device=x.device)
    counts = [torch.empty_like(count) for _ in range(world_size)]
    dist.all_gather(counts, count)
    sizes = [int(c.item()) for c in counts]
    padded = x.new_zeros((max(sizes), *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)]), sum(sizes[:rank])


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """All ranks' ``x`` concatenated along dim 0 in rank order, detached; ``x.detach()`` at world size 1."""
    return gather_with_offset(x)[0]


class _SumLocalGradient(torch.autograd.Function):
    """Forward: the sum over ranks. Backward: the incoming gradient unchanged, as if the other ranks' terms were
    constants (what an in-place ``dist.all_reduce`` on a tensor in the graph does, but without mutating it)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        total = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def all_reduce_sum(x: torch.Tensor, exact_gradient: bool = True) -> torch.Tensor:
    """The sum of ``x`` over ranks (a new tensor; ``x`` itself is untouched). Identity at world size 1.

    Let ``L`` be a loss that every rank computes from the summed tensor (so it has the same value everywhere), and
    ``g_r`` the gradient that backward leaves on rank r's own inputs ``x_r``:

    * ``exact_gradient=True`` (``torch.distributed.nn.functional.all_reduce``): backward sums the ranks' incoming
      gradients, so ``g_r = world_size · ∂L/∂x_r``. DDP then *averages* parameter gradients over ranks, which gives
      exactly ∂L/∂θ, the gradient a single process would get on the whole global batch.
    * ``exact_gradient=False`` (the official Barlow Twins code, which all-reduces its correlation matrix in place,
      unseen by autograd): the other ranks' terms act as constants, so ``g_r = ∂L/∂x_r`` and after DDP's
      averaging the parameter gradient is ``∂L/∂θ / world_size``. LARS's trust ratio hides the overall scale of
      the adapted weights' update, but weight decay weighs world_size times more against the gradient, and the 1-D
      parameters (not adapted) get world_size times smaller steps.
    """
    if world()[1] == 1:
        return x
    if exact_gradient:
        return dist_fn.all_reduce(x, op=dist.ReduceOp.SUM)
    return _SumLocalGradient.apply(x)
