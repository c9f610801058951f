"""The engine's CUDA speed switches against the plain path, SyncBatchNorm under a one-process NCCL group, and the
real command line on a GPU (``pytest -m gpu tests/gpu``)."""

from __future__ import annotations

import json
import math
import socket

import pytest
import torch
import torch.distributed as dist
from helpers import run_cli, task_overrides
from helpers.cuda import (
    DEVICE,
    GPU_TESTS,
    ON_GPU,
    PLAIN,
    build_case,
    exact_kernels,
    first_batch,
    paths_under,
    step_losses,
)
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ssl4gie.engine.distributed import DistEnv

pytestmark = GPU_TESTS


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> list[str]:
    return paths_under(tmp_path_factory.mktemp("gpu-engine"))


def _channels_last(trainer) -> bool:
    convs = [m.weight for m in trainer.model.modules() if isinstance(m, nn.Conv2d) and m.weight.shape[-1] > 1]
    return bool(convs) and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)


def _fused(trainer) -> bool:
    return bool(trainer.optimizer.defaults.get("fused"))


def _compiled(trainer) -> bool:
    return trainer.train_model is not trainer.model


# switch -> (the engaged check, [(task, backbone, loss tolerance)]). Two steps each: the loss before and after one
# AdamW update, in fp32 without TF32, so that only the switch differs. AdamW's first update is about ±lr for every
# weight whatever its gradient's size, so rounding-level gradient differences show in the second loss
# (measured on a CPU: up to 4e-3 relative, detection). DeepLabV3+'s dropout draws its mask in memory order, so
# channels_last changes the segmentation loss itself (about 1e-3).
SWITCHES = {
    "channels_last": (
        _channels_last,
        [("segmentation", "resnet50", 0.02), ("depth", "resnet50", 2e-3), ("detection", "resnet50", 1e-2)],
    ),
    "fused_optimizer": (_fused, [("segmentation", "resnet50", 1e-4), ("classification", "vit_b", 1e-4)]),
    "compile": (_compiled, [("classification", "resnet50", 1e-3)]),  # inductor on a GPU: one compile, ~30 s
}
SWITCH_CASES = [
    pytest.param(switch, task, backbone, tol, id=f"{switch}-{task}-{backbone}")
    for switch, (_, cases) in SWITCHES.items()
    for task, backbone, tol in cases
]


@pytest.mark.parametrize("switch, task, backbone, tol", SWITCH_CASES)
def test_speed_switch_runs_a_step_and_matches_the_plain_path(switch, task, backbone, tol, paths, tmp_path):
    case = build_case(task, backbone, paths, "task.augment=false")  # no random augmentation between the paths
    engaged, _ = SWITCHES[switch]
    losses = {}
    with exact_kernels():
        for name, extra in (("plain", []), (switch, [f"{switch}=true"])):
            trainer = case.trainer(tmp_path / name, *PLAIN, *extra)
            assert engaged(trainer) == (name == switch), f"{switch} engaged on the {name} path"
            if name == "plain":
                batch = first_batch(trainer, case.datasets("train")["train"])
            losses[name] = step_losses(trainer, batch, steps=2)
    assert all(math.isfinite(v) for v in losses[switch]), losses
    assert losses[switch] == pytest.approx(losses["plain"], rel=tol, abs=tol), losses
    assert losses["plain"][1] != losses["plain"][0]  # the optimiser step changed the weights


class OneProcessGroup(DistEnv):
    """Rank 0 of a world of 1 that still takes the distributed code path (SyncBatchNorm, DDP, all-reduces)."""

    @property
    def enabled(self) -> bool:
        return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not ON_GPU, reason="NCCL and SyncBatchNorm need a GPU")
def test_syncbatchnorm_and_ddp_under_a_one_process_nccl_group(paths, tmp_path):
    case = build_case("segmentation", "resnet50", paths)
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        assert dist.get_backend() == "nccl"
        trainer = case.trainer(tmp_path, dist_env=OneProcessGroup(0, 1, 0))
        assert any(isinstance(m, nn.SyncBatchNorm) for m in trainer.model.modules())
        assert not any(type(m) is nn.BatchNorm2d for m in trainer.model.modules())
        assert isinstance(trainer.train_model, DistributedDataParallel)
        (loss,) = step_losses(trainer, first_batch(trainer, case.datasets("train")["train"]))
        assert math.isfinite(loss)
        total = torch.ones(1, device="cuda")
        dist.all_reduce(total)
        assert total.item() == 1.0
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("task, backbone", [("segmentation", "resnet50"), ("detection", "vit_b")])
def test_command_line_run_on_the_gpu(task, backbone, paths, tmp_path):
    """``python run.py ...`` on the device at its defaults there (precision auto = bf16, GPU augmentation, fp32
    evaluation): one tiny epoch, test metrics written and finite."""
    run = tmp_path / "run"
    args = task_overrides(
        task, paths, f"backbone={backbone}", f"trainer.device={DEVICE}", f"hydra.run.dir={run}"
    )
    result = run_cli(args, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "complete" and metrics["device"].startswith(DEVICE)
    tested = {k: v for k, v in metrics.items() if k.startswith("test/")}
    assert tested and all(math.isfinite(v) for v in tested.values() if isinstance(v, float)), tested
