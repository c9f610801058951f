"""Pretraining on a GPU: every (method, backbone) pair runs the real command in the default GPU precision (bf16
autocast; the losses in fp32) with the views decoded (nvJPEG) and augmented on the GPU, exports a backbone the
finetuning reader takes, and its losses are finite (``pytest -m gpu tests/gpu``; ``SSL4GIE_GPU_TESTS_DEVICE=cpu``
runs the same on the CPU)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from helpers import run_cli
from helpers.cuda import DEVICE, GPU_TESTS, ON_GPU
from helpers.pretrain import PAIRS, pretrain_overrides

pytestmark = GPU_TESTS


@pytest.mark.parametrize(("ssl", "backbone"), PAIRS)
def test_pretraining_command_on_the_gpu(ssl, backbone, tmp_path):
    run = tmp_path / "run"
    args = pretrain_overrides(
        tmp_path,
        ssl,
        backbone,
        f"trainer.device={DEVICE}",
        "trainer.num_workers=2",
        "trainer.gpu_augment=true",
    )
    result = run_cli([*args, f"hydra.run.dir={run}"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "complete" and metrics["device"].startswith(DEVICE.split(":")[0])
    history = pd.read_csv(run / "history.csv")
    assert history["train/loss"].iloc[1:].notna().all()
    assert (run / "export" / f"hyperkvasir_{ssl}_{backbone}.pth").is_file()


@pytest.mark.skipif(
    not ON_GPU, reason="fp16 autocast needs CUDA (the CPU variant: tests/e2e/test_pretrain_runs.py)"
)
def test_fp16_with_grad_scaler_on_the_gpu(tmp_path):
    """``trainer.precision=fp16``: the official codebases' fp16 autocast with a GradScaler, on the GPU."""
    run = tmp_path / "run"
    args = pretrain_overrides(
        tmp_path,
        "mocov3",
        "resnet50",
        f"trainer.device={DEVICE}",
        "trainer.precision=fp16",
        "trainer.keep_last=true",
    )
    result = run_cli([*args, f"hydra.run.dir={run}"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "fp16 autocast with dynamic loss scaling" in (run / "run.log").read_text()
    assert pd.read_csv(run / "history.csv")["train/loss"].iloc[1:].notna().all()
