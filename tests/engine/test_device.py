"""The engine's GPU-oriented code paths, run on the CPU where torch can: bf16 autocast, the device-side augmentation
path, channels_last, fused AdamW, torch.compile; evaluation in fp32 whatever the training precision; accumulation
from the task's micro-batch ceiling; lean checkpoints. Each is checked against the plain path."""

from __future__ import annotations

import json
from types import MethodType, SimpleNamespace

import pandas as pd
import pytest
import torch
from helpers import TASK_RUNS, compose_config, segmentation_overrides, task_overrides

from ssl4gie.engine.device import resolve_accumulation, resolve_switch
from ssl4gie.engine.distributed import DistEnv
from ssl4gie.engine.trainer import Trainer
from ssl4gie.errors import ConfigError
from ssl4gie.run.pipeline import execute
from ssl4gie.utils.seed import rng_state, seed_everything


def history(run) -> pd.DataFrame:
    return pd.read_csv(run / "history.csv")


@pytest.mark.parametrize(
    "task", [pytest.param(t, marks=pytest.mark.slow) if t == "depth" else t for t in sorted(TASK_RUNS)]
)  # depth: 6 s on 2 cores
def test_evaluation_runs_in_fp32_whatever_the_training_precision(task, tmp_paths, tmp_path):
    """Eval of one checkpoint under trainer.precision=bf16 and fp32 gives identical per-image metrics (CPU)."""
    execute(compose_config(task_overrides(task, tmp_paths), tmp_path / "train"))
    rows = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        ckpt = f"ckpt={tmp_path / 'train' / 'best.pt'}"
        execute(
            compose_config(
                task_overrides(task, tmp_paths, "mode=eval", ckpt, f"trainer.precision={precision}"), out
            )
        )
        rows[precision] = pd.read_csv(out / "per_image_test.csv")
    pd.testing.assert_frame_equal(rows["fp32"], rows["bf16"], check_exact=True)


def test_bf16_autocast_training_runs_on_cpu_and_stays_close_to_fp32(kvasir_tiny, tmp_path):
    losses = {}
    for precision in ("fp32", "bf16"):
        run = tmp_path / precision
        execute(
            compose_config(
                segmentation_overrides(kvasir_tiny, tmp_path, f"trainer.precision={precision}"), run
            )
        )
        losses[precision] = history(run)["train/loss"].iloc[0]
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.05)
    assert losses["bf16"] != losses["fp32"]  # bf16 really ran


@pytest.mark.parametrize(
    "task", ["segmentation", "classification", pytest.param("depth", marks=pytest.mark.slow)]
)
def test_device_augmentation_path_equals_the_loader_path(task, tmp_paths, tmp_path):
    """trainer.gpu_augment=true on a CPU device: the loader hands over uint8 samples and the task augments the
    batch on the device. Same transform, same random draws (no workers): the same training as the loader path."""
    runs = {}
    for flag in ("false", "true"):
        runs[flag] = tmp_path / flag
        execute(compose_config(task_overrides(task, tmp_paths, f"trainer.gpu_augment={flag}"), runs[flag]))
    pd.testing.assert_series_equal(history(runs["true"])["train/loss"], history(runs["false"])["train/loss"])
    monitor = json.loads((runs["true"] / "metrics.json").read_text())["monitor"]
    got, want = (json.loads((runs[f] / "metrics.json").read_text())[monitor] for f in ("true", "false"))
    assert got == pytest.approx(want, abs=1e-6)


def test_device_augmentation_runs_outside_autocast_in_fp32(kvasir_tiny, tmp_path):
    cfg = compose_config(
        segmentation_overrides(kvasir_tiny, tmp_path, "trainer.precision=bf16", "trainer.gpu_augment=true")
    )
    from ssl4gie.utils.conf import instantiate_checked

    task = instantiate_checked(cfg.task, _recursive_=False)
    model = task.build_model(cfg.backbone, cfg.pretraining, False, str(tmp_path))
    trainer = Trainer(cfg.trainer, task, model, tmp_path / "run", cfg.seed, "fp", {}, None)
    assert trainer.augment_on_device and trainer.dtype == torch.bfloat16
    task.augment_on_device = True
    data = task.build_datasets(instantiate_checked(cfg.dataset), ["train"], None, False)["train"]
    batch = next(iter(trainer.loader(data, train=True)))
    assert batch["image"].dtype == torch.uint8
    seed_everything(0)
    with trainer.autocast():  # even inside the training autocast, augmentation runs in fp32
        augmented = trainer._prepare(dict(batch), train=True)
    seed_everything(0)
    reference = task.augment_batch(dict(batch))  # no autocast at all
    assert augmented["image"].dtype == torch.float32 and augmented["target"].dtype == torch.float32
    assert torch.equal(augmented["image"], reference["image"]) and torch.equal(
        augmented["target"], reference["target"]
    )


# Training curves of two epochs: other kernels are equal up to float rounding, which training then amplifies
# (channels_last runs other convolution algorithms); the first step is compared exactly below.
SWITCHES = {
    "channels_last": (["trainer.channels_last=true"], 0.02),
    "fused_adamw": (["trainer.fused_optimizer=true"], 1e-5),  # torch's fused AdamW kernel on the CPU
    "compile": (["trainer.compile=true", "trainer.compile_backend=aot_eager"], 1e-5),  # dynamo + AOT autograd
}


@pytest.mark.parametrize(
    "switch", [pytest.param(s, marks=pytest.mark.slow) if s == "compile" else s for s in sorted(SWITCHES)]
)  # compile: 8 s on 2 cores (dynamo tracing)
def test_gpu_speed_switches_run_on_cpu_and_match_the_plain_path(switch, kvasir_tiny, tmp_path):
    overrides, tolerance = SWITCHES[switch]
    plain, switched = tmp_path / "plain", tmp_path / "switched"
    execute(compose_config(segmentation_overrides(kvasir_tiny, tmp_path, "trainer.epochs=2"), plain))
    execute(
        compose_config(
            segmentation_overrides(kvasir_tiny, tmp_path, "trainer.epochs=2", *overrides), switched
        )
    )
    got, want = history(switched)["train/loss"], history(plain)["train/loss"]
    assert got.to_numpy() == pytest.approx(want.to_numpy(), rel=tolerance, abs=tolerance)
    best = torch.load(switched / "best.pt", weights_only=True)["model"]
    assert not any(k.startswith(("_orig_mod", "module")) for k in best)  # bare keys, whatever the wrapper


@pytest.mark.parametrize("backbone", ["resnet50", "vit_b"])
def test_channels_last_step_equals_the_contiguous_step(backbone, kvasir_tiny, tmp_path):
    from ssl4gie.utils.conf import instantiate_checked

    cfg = compose_config(segmentation_overrides(kvasir_tiny, tmp_path, f"backbone={backbone}"))
    task = instantiate_checked(cfg.task, _recursive_=False)
    torch.manual_seed(0)
    model = task.build_model(cfg.backbone, cfg.pretraining, False, str(tmp_path))
    data = task.build_datasets(instantiate_checked(cfg.dataset), ["val"], None, False)["val"]
    batch = {"image": torch.stack([data[0]["image"]] * 2), "target": torch.stack([data[0]["target"]] * 2)}
    model.eval()  # dropout draws its mask in memory order, so train-mode losses differ by layout, not by error
    results = []
    for memory_format in (torch.contiguous_format, torch.channels_last):
        model.zero_grad()
        model.to(memory_format=memory_format)
        image = batch["image"].contiguous(memory_format=memory_format)
        loss = task.training_step(model, {**batch, "image": image})["loss"]
        loss.backward()
        results.append((loss.item(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    assert results[1][0] == pytest.approx(results[0][0], abs=1e-6)
    for got, want in zip(results[1][1], results[0][1], strict=True):
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)


def test_speed_switch_values_are_checked():
    assert resolve_switch("auto", "channels_last", torch.device("cpu")) is False
    assert resolve_switch("auto", "channels_last", torch.device("cuda")) is True
    assert resolve_switch(True, "channels_last", torch.device("cpu")) is True
    with pytest.raises(ConfigError, match="trainer.channels_last='yes'"):
        resolve_switch("yes", "channels_last", torch.device("cpu"))


@pytest.mark.parametrize(
    "batch, accum, micro, world, expected",
    [
        (48, "auto", 48, 1, (1, 48)),
        (48, "auto", 8, 1, (6, 8)),  # detection on one GPU
        (48, "auto", 8, 4, (2, 6)),  # detection on 4 GPUs
        (48, "auto", 8, 8, (1, 6)),
        (48, "auto", 5, 1, (12, 4)),  # the fewest steps whose micro-batch fits and divides exactly
        (48, 2, 8, 1, (2, 24)),  # an explicit count is used as given
    ],
)
def test_accumulation_from_the_micro_batch_ceiling(batch, accum, micro, world, expected):
    assert resolve_accumulation(batch, accum, micro, world) == expected


def test_accumulation_errors_name_the_option():
    with pytest.raises(ConfigError, match="trainer.accum_steps=5"):
        resolve_accumulation(48, 5, 48, 1)
    with pytest.raises(ConfigError, match="trainer.batch_size=48 must be divisible by the 5 processes"):
        resolve_accumulation(48, "auto", 8, 5)


def test_detection_defaults_fit_a_gpu_and_evaluate_one_image_at_a_time():
    cfg = compose_config(["task=detection"])
    assert (
        cfg.trainer.micro_batch == 8
        and cfg.trainer.accum_steps == "auto"
        and cfg.trainer.eval_batch_size == 1
    )
    assert resolve_accumulation(cfg.trainer.batch_size, "auto", cfg.trainer.micro_batch, 1) == (6, 8)
    for task in ("segmentation", "classification", "depth"):
        assert compose_config([f"task={task}"]).trainer.micro_batch == 48  # the study's batch in one pass


def test_accumulation_with_trainable_batchnorm_warns(kvasir_tiny, tmp_path, caplog):
    with caplog.at_level("WARNING"):
        execute(
            compose_config(
                segmentation_overrides(kvasir_tiny, tmp_path, "trainer.micro_batch=2"), tmp_path / "r"
            )
        )
    assert "BatchNorm normalises over 2 images per forward pass, not the study's 4" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        execute(compose_config(segmentation_overrides(kvasir_tiny, tmp_path), tmp_path / "s"))
    assert "BatchNorm normalises" not in caplog.text


def test_keep_last_keeps_the_full_state(kvasir_tiny, tmp_path):
    run = tmp_path / "run"
    execute(compose_config(segmentation_overrides(kvasir_tiny, tmp_path, "trainer.keep_last=true"), run))
    last = torch.load(run / "last.pt", weights_only=True)
    assert {"optimizer", "scheduler", "scaler", "rng"} <= set(last)
    assert (run / "best.pt").stat().st_size < (run / "last.pt").stat().st_size


def _fake_trainer(rank: int, world: int) -> SimpleNamespace:
    """What Trainer._restore_rng reads of a trainer of ``rank`` in a run of ``world`` processes."""
    fake = SimpleNamespace(dist=DistEnv(rank, world, rank), seed=42, epoch=3)
    fake._rank_seed = MethodType(Trainer._rank_seed, fake)
    return fake


def test_each_rank_restores_its_own_rng_state():
    states = []
    for rank in range(2):
        seed_everything(100 + rank)
        states.append(rng_state())
    draws = []
    for rank in range(2):
        seed_everything(0)
        Trainer._restore_rng(_fake_trainer(rank, 2), states)
        draws.append(torch.rand(3))
    for rank in range(2):
        seed_everything(100 + rank)
        assert torch.equal(draws[rank], torch.rand(3))
    assert not torch.equal(draws[0], draws[1])


def test_a_changed_world_size_reseeds_per_rank(caplog):
    states = [rng_state()]
    draws = []
    for rank in range(2):
        with caplog.at_level("WARNING"):
            Trainer._restore_rng(_fake_trainer(rank, 2), states)
        draws.append(torch.rand(3))
    assert "holds the RNG states of 1 process(es) but this run has 2" in caplog.text
    assert not torch.equal(draws[0], draws[1])
