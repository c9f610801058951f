"""What a run folder keeps, as users meet it: the same command with another option after a finished run, a second
process in a folder in use, and eval / predict of a checkpoint without retyping its model's options."""

from __future__ import annotations

import json

import pytest
from helpers import FAST, TINY, compose_config, run_cli, segmentation_overrides

from ssl4gie.errors import ConfigError
from ssl4gie.run.folder import FolderLock
from ssl4gie.run.pipeline import execute
from ssl4gie.run.prepare import build, claim, prepare

pytestmark = pytest.mark.slow


def one_line_exit_2(result) -> str:
    """The one error line of a run that exited with status 2 (Hydra logs to stdout)."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-2000:]
    errors = [line for line in output.splitlines() if "ERROR" in line or line.startswith("Error")]
    assert len(errors) == 1 and "Traceback" not in output, output[-2000:]
    return errors[0]


def test_a_finished_run_is_never_replaced_by_the_same_command_with_other_options(tmp_path, kvasir_tiny):
    run = tmp_path / "run"
    command = [*segmentation_overrides(kvasir_tiny, tmp_path), f"hydra.run.dir={run}"]
    assert run_cli(command).returncode == 0
    kept = {name: (run / name).read_bytes() for name in ("metrics.json", "best.pt")}

    line = one_line_exit_2(run_cli([*command, "trainer.epochs=2"]))
    assert "holds a finished run of another configuration (trainer.epochs 1 → 2); it is kept" in line
    assert "overwrite=true" in line
    assert {name: (run / name).read_bytes() for name in kept} == kept  # byte-identical

    again = run_cli(command)  # the same configuration: nothing to do
    assert again.returncode == 0 and "already holds a complete run of this configuration" in again.stdout
    assert {name: (run / name).read_bytes() for name in kept} == kept

    replaced = run_cli([*command, "trainer.epochs=2", "overwrite=true"])
    assert replaced.returncode == 0, replaced.stderr[-2000:]
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 2


def test_a_folder_in_use_refuses_a_second_process_naming_the_holder(tmp_path, kvasir_tiny):
    run = tmp_path / "run"
    with FolderLock(run):  # this test's process is the first run
        line = one_line_exit_2(
            run_cli([*segmentation_overrides(kvasir_tiny, tmp_path), f"hydra.run.dir={run}"])
        )
    assert "is in use by another run (process" in line
    assert not (run / "metrics.json").exists()


def test_eval_builds_the_checkpoints_model_without_its_options_and_no_optimiser(tmp_path, kvasir_tiny):
    train = tmp_path / "train"
    execute(compose_config(segmentation_overrides(kvasir_tiny, tmp_path), train))
    trained = json.loads((train / "metrics.json").read_text())
    ckpt = train / "best.pt"
    # only what eval needs: no tiny backbone, small decoder or input size typed again
    plain = [
        f"dataset.root={kvasir_tiny}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "trainer.device=cpu",
        "trainer.num_workers=0",
        "mode=eval",
        f"ckpt={ckpt}",
    ]
    result = run_cli([*plain, f"hydra.run.dir={tmp_path / 'eval'}"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "backbone.tiny=True" in result.stdout and "task.input_size=64" in result.stdout  # said so
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert evaluated["test/dice"] == pytest.approx(trained["test/dice"])

    # an option typed that contradicts the checkpoint is refused, naming both values
    line = one_line_exit_2(run_cli([*plain, "task.input_size=96", f"hydra.run.dir={tmp_path / 'eval96'}"]))
    assert "task.input_size=96 contradicts checkpoint" in line and "task.input_size=64" in line

    # eval builds no optimiser
    cfg = compose_config([*plain, *TINY], tmp_path / "eval-inproc")
    run = prepare(cfg)
    with __import__("contextlib").ExitStack() as held:
        claim(run, held)
        from ssl4gie.loggers import Trackers

        with Trackers() as trackers:
            build(run, trackers)
    assert run.trainer.optimizer is None and run.trainer.schedule is None


def test_a_missing_checkpoint_is_refused_first(tmp_path):
    cfg = compose_config(
        ["mode=eval", f"ckpt={tmp_path / 'nope' / 'best.pt'}", *TINY, *FAST], tmp_path / "eval"
    )
    with pytest.raises(ConfigError, match=r"ckpt=.*nope/best.pt does not exist \(expected the best.pt"):
        execute(cfg)
    assert not (tmp_path / "eval" / "run.lock").exists()  # refused before the folder was taken
