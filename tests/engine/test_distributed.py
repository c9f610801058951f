"""Paths that only rank 0 takes issue no collective: the model they run has plain BatchNorm, whatever the training
model's SyncBatchNorm.

On GPUs the engine converts every BatchNorm to SyncBatchNorm under DDP; a SyncBatchNorm in train mode on a path the
other ranks do not take (the ResNet epoch-0 baseline estimates BatchNorm statistics in train mode) gathers from ranks
that never answer, and the job hangs. On a CPU torch raises instead ("SyncBatchNorm expected input tensor to be on
GPU"), which is what makes the class testable here: 2 gloo processes, a model converted to SyncBatchNorm by hand (the
trainer converts only on CUDA, and DDP refuses SyncBatchNorm on a CPU), every rank-0 path run on rank 0 while rank 1
waits, and the collectives each rank issued compared: the same sequence on both ranks, or a rank waits forever.
"""

from __future__ import annotations

import copy
import datetime
import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from helpers import TINY, compose_config, task_overrides
from helpers.pretrain import pretrain_overrides
from helpers.spawn import spawn_ranks
from torch import nn

from ssl4gie.engine import distributed
from ssl4gie.engine.distributed import BatchNormXd, DistEnv, local_model
from ssl4gie.utils.conf import instantiate_checked

WORLD = 2
COLLECTIVES = (
    "all_reduce", "all_gather", "all_gather_into_tensor", "_all_gather_base", "all_gather_object", "broadcast",
    "broadcast_object_list", "barrier", "reduce", "reduce_scatter_tensor", "gather", "scatter",
)  # fmt: skip


def _sync_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.BatchNorm1d(144))
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def test_local_model_has_plain_batchnorm_sharing_the_weights_and_leaves_the_model_alone():
    model = _sync_model()
    local = local_model(nn.DataParallel(model))  # wrappers are removed too
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in local.modules())
    assert sum(isinstance(m, BatchNormXd) for m in local.modules()) == 2
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in model.modules()) == 2  # the training model keeps them
    for (name, p), (_, q) in zip(model.state_dict().items(), local.state_dict().items(), strict=True):
        assert p.data_ptr() == q.data_ptr(), name  # shared, not copied
    assert local[0] is model[0]  # modules without BatchNorm below are the model's own
    x = torch.randn(6, 3, 8, 8)
    local.eval(), model.eval()
    assert torch.equal(local(x), model(x))
    # train mode: the plain BatchNorm updates the shared running statistics, as one process of SyncBatchNorm would
    local.train()
    before = model[1].running_mean.clone()
    local(x)
    assert not torch.equal(model[1].running_mean, before)
    assert local[1].training and not model[1].training  # the replaced BatchNorm has its own mode flag


def test_a_model_without_syncbatchnorm_is_returned_as_is():
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    assert local_model(model) is model


def test_a_deep_copy_of_the_local_model_is_independent():
    model = _sync_model()
    frozen = copy.deepcopy(local_model(model))
    frozen.train()
    frozen(torch.randn(6, 3, 8, 8))
    assert torch.equal(model[1].running_mean, torch.zeros(4))  # the baseline's statistics do not leak back


# ----------------------------------------------------------------------------------------- 2 gloo processes
def _record_collectives(log: list[str]) -> None:
    """Every torch.distributed collective this process calls is appended to ``log`` (then runs as usual)."""
    for name in COLLECTIVES:
        original = getattr(dist, name, None)
        if original is None:
            continue

        def recorded(*args, _name=name, _original=original, **kwargs):
            log.append(_name)
            return _original(*args, **kwargs)

        setattr(dist, name, recorded)


def _build(cfg, rank: int):
    """task, reader, datasets and a Trainer of ``cfg`` on this rank, its model converted to SyncBatchNorm."""
    from ssl4gie.engine.trainer import Trainer
    from ssl4gie.utils.seed import seed_everything

    seed_everything(cfg.seed + rank)
    task = instantiate_checked(cfg.task, _recursive_=False)
    reader = instantiate_checked(cfg.dataset)
    model = task.build_model(cfg.backbone, cfg.pretraining, cfg.frozen, cfg.paths.weights_dir)
    env = DistEnv(rank=rank, world_size=WORLD, local_rank=rank)
    trainer = Trainer(cfg.trainer, task, model, Path(cfg.paths.output_dir), cfg.seed, "test", {}, env)
    splits = ["train", "val"] if cfg.task.name == "pretrain" else ["test"]
    data = task.build_datasets(reader, splits, str(Path(cfg.paths.cache_dir) / "decoded"), False)
    # what the trainer does on GPUs (DDP refuses SyncBatchNorm on a CPU, so it is converted after wrapping)
    nn.SyncBatchNorm.convert_sync_batchnorm(trainer.model)
    assert any(isinstance(m, nn.SyncBatchNorm) for m in trainer.train_model.modules())
    return task, trainer, data


def _configs(tmp_path: Path):
    """The two runs of the test: MoCo v3 × ResNet pretraining, segmentation × ResNet finetuning (tiny)."""
    pretrain = pretrain_overrides(tmp_path, "mocov3", "resnet50", "trainer.val_at_start=true")
    paths = [f"paths.{k}={tmp_path / k}" for k in ("data_dir", "cache_dir", "output_root", "weights_dir")]
    return (
        compose_config(pretrain, tmp_path / "pretrain"),
        compose_config(task_overrides("segmentation", paths), tmp_path / "segmentation"),
    )


def _write_data(tmp_path: Path) -> None:
    """The runs' synthetic data and decoded caches, written once before the processes start (both ranks would
    otherwise write them at once)."""

    for cfg in _configs(tmp_path):
        task = instantiate_checked(cfg.task, _recursive_=False)
        reader = instantiate_checked(cfg.dataset)
        task.build_model(cfg.backbone, cfg.pretraining, cfg.frozen, cfg.paths.weights_dir)
        splits = ["train", "val"] if cfg.task.name == "pretrain" else ["test"]
        task.build_datasets(reader, splits, str(Path(cfg.paths.cache_dir) / "decoded"), False)


def one_rank_worker(rank: int, init_file: str, tmp: str) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=120),  # a mismatch fails the test instead of hanging it
    )
    tmp_path = Path(tmp)
    env = DistEnv(rank=rank, world_size=WORLD, local_rank=rank)
    issued: list[str] = []
    try:
        # Pretraining, MoCo v3 × ResNet: the epoch-0 baseline (train-mode BatchNorm), validation with the kNN probe,
        # the export read back through the finetuning reader
        cfg, seg_cfg = _configs(tmp_path)
        run, seg = Path(cfg.paths.output_dir), Path(seg_cfg.paths.output_dir)
        task, trainer, data = _build(cfg, rank)
        stats = {k: v.clone() for k, v in trainer.model.state_dict().items() if "running" in k}
        _record_collectives(issued)
        # the real method: rank 0 evaluates, rank 1 waits in a barrier
        trainer._validate_at_start(data["val"])
        if rank == 0:
            metrics, _, _ = trainer.evaluate(data["val"], "val")
            facts = task.finish(trainer.eval_model(), run, trainer.device)
        distributed.barrier(env)

        # Finetuning, segmentation × ResNet: test with figures, and predict on a folder of frames
        seg_task, seg_trainer, seg_data = _build(seg_cfg, rank)
        if rank == 0:
            _, _, kept = seg_trainer.evaluate(seg_data["test"], "test", keep=2)
            figures = seg_task.draw(kept, seg / "figures")
            frames = sorted(Path(seg_cfg.dataset.root, "images").glob("*.jpg"))[:3]
            predictor = seg_task.frame_predictor(seg / "predictions", keep=1)
            seg_trainer.evaluate(seg_task.frame_dataset(frames), "predict", evaluator=predictor)
        distributed.barrier(env)

        result = {"issued": issued}
        if rank == 0:
            after = {k: v for k, v in trainer.model.state_dict().items() if "running" in k}
            result.update(
                history=trainer.history,
                metrics=metrics,
                export_tensors=facts["export_tensors"],
                figures=len(figures),
                sync_left=sum(isinstance(m, nn.SyncBatchNorm) for m in trainer.model.modules()),
                stats_unchanged=all(torch.equal(stats[k], after[k]) for k in stats),
            )
        (tmp_path / f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_every_rank_0_path_runs_a_syncbatchnorm_model_without_a_collective(tmp_path):
    _write_data(tmp_path)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the spawned processes
    spawn_ranks(one_rank_worker, WORLD, str(tmp_path / "init"), str(tmp_path))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    # every collective rank 0 issued, rank 1 issued too, in the same order (the barriers and nothing else)
    assert ranks[0]["issued"] == ranks[1]["issued"]
    assert set(ranks[0]["issued"]) == {"barrier"}
    main = ranks[0]
    assert main["history"][0]["epoch"] == 0 and "val/knn_top1" in main["history"][0]  # the baseline ran
    assert {"val/rankme", "val/feature_std", "val/knn_top1"} <= set(main["metrics"])
    assert main["export_tensors"] > 0 and main["figures"] >= 1
    assert main["sync_left"] > 0  # the training model still has its SyncBatchNorm
    assert main["stats_unchanged"]  # the baseline estimated its statistics on a copy
    assert (tmp_path / "segmentation" / "predictions").is_dir()


def test_the_tiny_backbone_of_the_two_process_test_has_batchnorm():
    """The two-process test means something only if the ResNet it builds has BatchNorm to convert."""
    from ssl4gie.models.backbone import create_backbone

    cfg = compose_config(["backbone=resnet50", *TINY])
    encoder = create_backbone(cfg.backbone, 64)
    assert any(isinstance(m, nn.BatchNorm2d) for m in encoder.modules())
