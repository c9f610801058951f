"""Hub weights offline: one attempt per file, then the whole message (which file, where to put it, how to fetch it).

The network is made unreachable through the environment, never reached: the Hugging Face endpoint points at a closed
local port (connection refused, as behind a firewall), or offline mode is on; the Hugging Face cache is empty.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from helpers import ROOT, run_cli

pytestmark = pytest.mark.slow  # each starts Python with torch and timm: about 7 s on 2 cores

UNREACHABLE = {"HF_ENDPOINT": "http://127.0.0.1:9"}  # the discard port: nothing listens, connection refused
OFFLINE = {"HF_HUB_OFFLINE": "1"}

LOAD = """
import json, sys, time
import timm
from helpers import compose_config
from ssl4gie.models.pretrained import load_pretrained
cfg = compose_config(["row=rn_in_sl", "paths.weights_dir=" + sys.argv[1]])
encoder = timm.create_model("resnet50", num_classes=0)
start = time.perf_counter()
try:
    load_pretrained(encoder, cfg.pretraining, cfg.backbone, cfg.paths.weights_dir)
    error = None
except Exception as e:
    error = f"{type(e).__name__}: {e}"
print(json.dumps({"seconds": time.perf_counter() - start, "error": error}))
"""


def env(tmp_path, network: dict) -> dict:
    import os

    return {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf"),  # an empty Hugging Face cache
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
        **network,
    }


def expect_whole_message(message: str, weights_dir) -> None:
    assert "timm weights 'resnet50.tv_in1k' for pretraining=imagenet_supervised backbone=resnet50" in message
    assert f"put the weights file at {weights_dir / 'resnet50-19c8e357.pth'} (paths.weights_dir" in message
    assert "`python -m ssl4gie.fetch row=rn_in_sl`" in message
    assert message.endswith("or pass pretraining.checkpoint=PATH")


@pytest.mark.parametrize(
    "network",
    [
        pytest.param(UNREACHABLE, id="unreachable"),
        pytest.param(OFFLINE, id="offline"),
    ],
)
def test_hub_weights_without_network_fail_at_once_with_the_whole_message(tmp_path, network):
    result = subprocess.run(
        [sys.executable, "-c", LOAD, str(tmp_path / "weights")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env(tmp_path, network),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["error"].startswith("ConfigError: could not download"), outcome
    expect_whole_message(outcome["error"], tmp_path / "weights")
    assert outcome["seconds"] < 3, (
        outcome
    )  # one request per file, no retries (huggingface_hub's: ~23 s per file)
    assert "Retrying" not in result.stderr and "thrown while requesting" not in result.stderr


def test_a_run_from_hub_weights_offline_ends_in_one_line(tmp_path, kvasir_tiny):
    run = tmp_path / "run"
    start = time.perf_counter()
    result = run_cli(
        [
            "row=rn_in_sl",
            f"dataset.root={kvasir_tiny}",
            f"paths.weights_dir={tmp_path / 'weights'}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            f"hydra.run.dir={run}",
            "trainer.device=cpu",
        ],
        env=env(tmp_path, UNREACHABLE),
    )
    seconds = time.perf_counter() - start
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    (error,) = [line for line in result.stdout.splitlines() if "[ERROR]" in line]
    expect_whole_message(error, tmp_path / "weights")
    assert "Traceback" not in output and "Retrying" not in output
    print(f"run start to the error: {seconds:.1f} s")
