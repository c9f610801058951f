"""The SSL losses on 2 gloo processes (CPU) against one process on the concatenated batch.

What equals what (r = rank, W = 2 ranks, each holding a slice of the global batch; "single" = one process on the
whole batch):

* MoCo v3: each rank's loss is the mean over its own queries, so the mean of the ranks' losses = the single loss,
  and each rank's query gradient = W × the single gradient for those rows (DDP's averaging turns that into the
  single gradient). Each rank's labels point at its own keys in the gathered matrix (top-1 = 1 for aligned keys).
* Barlow Twins: the loss value on every rank = the single loss. Gradient w.r.t. a rank's own inputs:
  exact_gradient=True gives W × single (so DDP-averaged parameter gradients = single), exact_gradient=False gives
  1 × single (DDP-averaged parameter gradients = single / W, the official code's behaviour). Both parameter
  statements are also checked directly with a DDP-wrapped Linear layer.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
from helpers.spawn import spawn_ranks
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ssl4gie.ssl.distributed import gather_no_grad, gather_with_offset, world
from ssl4gie.ssl.losses import barlow_twins, mocov3_contrastive

# Two spawned processes each import torch: ~15–45 s on a shared 2-core machine, hence slow (it still runs in CI).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

WORLD = 2
N, D, TAU = 8, 6, 0.2
SLICES = [slice(0, 4), slice(4, 8)]
UNEVEN = [slice(0, 3), slice(3, 8)]  # ranks with different batch sizes (3 and 5 rows)


def data() -> dict[str, torch.Tensor]:
    """The global batch, identical in every process (float64, so comparisons can be tight)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g, dtype=torch.float64)
    return {
        "q": x,
        "k": torch.randn(N, D, generator=g, dtype=torch.float64),
        "z1": x * 2 + 1,
        "z2": x + 0.7 * torch.randn(N, D, generator=g, dtype=torch.float64),
        "x1": torch.randn(N, 5, generator=g, dtype=torch.float64),
        "x2": torch.randn(N, 5, generator=g, dtype=torch.float64),
    }


def linear() -> nn.Linear:
    torch.manual_seed(1)
    return nn.Linear(5, D).double()


def bt_input_grads(z1, z2, sl, exact):
    a, b = z1[sl].clone().requires_grad_(), z2[sl].clone().requires_grad_()
    out = barlow_twins(a, b, exact_gradient=exact)
    out["loss"].backward()
    return out["loss"].detach(), a.grad, b.grad


def bt_param_grad(x1, x2, sl, exact, ddp: bool):
    """Gradient of the Linear layer's weight when it projects both views and Barlow Twins runs on the result."""
    layer = linear()
    model = DistributedDataParallel(layer) if ddp else layer
    n = x1[sl].shape[0]
    z = model(torch.cat([x1[sl], x2[sl]]))  # one forward per backward, as DDP expects
    barlow_twins(z[:n], z[n:], exact_gradient=exact)["loss"].backward()
    return layer.weight.grad.clone()


def worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        d, sl, res = data(), SLICES[rank], {}
        res["world"] = world()
        res["gathered"] = gather_no_grad(torch.arange(4.0) + 10 * rank)
        res["uneven"], res["uneven_offset"] = gather_with_offset(d["q"][UNEVEN[rank]])

        q = d["q"][sl].clone().requires_grad_()
        loss, _ = mocov3_contrastive(q, d["k"][sl], TAU)
        loss.backward()
        res["moco_loss"], res["moco_grad"] = loss.detach(), q.grad
        res["moco_top1_aligned"] = mocov3_contrastive(d["q"][sl], d["q"][sl] + 0.01, TAU)[1]

        for exact in (True, False):
            res[f"bt_{exact}"] = bt_input_grads(d["z1"], d["z2"], sl, exact)
            res[f"bt_param_{exact}"] = bt_param_grad(d["x1"], d["x2"], sl, exact, ddp=True)
        res["bt_uneven"] = barlow_twins(d["z1"][UNEVEN[rank]], d["z2"][UNEVEN[rank]])["loss"]
        torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """Run the worker on 2 spawned gloo processes once; each rank's results, loaded back."""
    tmp = tmp_path_factory.mktemp("ssl_ddp")
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the spawned processes
    spawn_ranks(worker, WORLD, str(tmp / "init"), str(tmp))
    return [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def test_world_and_gather(ranks):
    assert [r["world"] for r in ranks] == [(0, 2), (1, 2)]
    expected = torch.cat([torch.arange(4.0), torch.arange(4.0) + 10])
    assert all(torch.equal(r["gathered"], expected) for r in ranks)
    q = data()["q"]
    assert all(torch.equal(r["uneven"], q) for r in ranks)  # 3 + 5 rows, in rank order
    assert [r["uneven_offset"] for r in ranks] == [0, 3]


def test_mocov3_on_two_ranks_equals_one_process_on_the_whole_batch(ranks):
    d = data()
    q = d["q"].clone().requires_grad_()
    single, _ = mocov3_contrastive(q, d["k"], TAU)
    single.backward()
    mean_over_ranks = sum(r["moco_loss"] for r in ranks) / WORLD
    torch.testing.assert_close(mean_over_ranks, single.detach(), rtol=1e-12, atol=1e-12)
    rank_grads = torch.cat([r["moco_grad"] for r in ranks])
    torch.testing.assert_close(rank_grads, WORLD * q.grad, rtol=1e-10, atol=1e-12)
    # labels = own index + N_local·rank: every query finds its own key among all 8 gathered keys
    assert [float(r["moco_top1_aligned"]) for r in ranks] == [1.0, 1.0]


@pytest.mark.parametrize(("exact", "input_scale"), [(True, WORLD), (False, 1)])
def test_barlow_twins_on_two_ranks_value_and_input_gradients(ranks, exact, input_scale):
    d = data()
    loss, g1, g2 = bt_input_grads(d["z1"], d["z2"], slice(None), exact)
    for r in ranks:
        torch.testing.assert_close(r[f"bt_{exact}"][0], loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        torch.cat([r[f"bt_{exact}"][1] for r in ranks]), input_scale * g1, rtol=1e-9, atol=1e-12
    )
    torch.testing.assert_close(
        torch.cat([r[f"bt_{exact}"][2] for r in ranks]), input_scale * g2, rtol=1e-9, atol=1e-12
    )


@pytest.mark.parametrize(("exact", "param_scale"), [(True, 1.0), (False, 1 / WORLD)])
def test_barlow_twins_ddp_parameter_gradient(ranks, exact, param_scale):
    """After DDP averages: exact_gradient=True = the single-process gradient; False = 1/world_size of it."""
    d = data()
    single = bt_param_grad(d["x1"], d["x2"], slice(None), exact, ddp=False)
    for r in ranks:
        torch.testing.assert_close(r[f"bt_param_{exact}"], param_scale * single, rtol=1e-9, atol=1e-12)


def test_barlow_twins_with_uneven_rank_batches_uses_the_global_statistics(ranks):
    d = data()
    single = barlow_twins(d["z1"], d["z2"])["loss"]
    for r in ranks:
        torch.testing.assert_close(r["bt_uneven"], single, rtol=1e-12, atol=1e-12)
