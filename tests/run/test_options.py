"""The command line is checked once, before Hydra starts anything: an option ssl4gie does not have is refused with
the closest valid name (also when added with ``+``), a value of the wrong type with the type expected."""

from __future__ import annotations

import pytest
from helpers import run_cli

from ssl4gie.errors import ConfigError
from ssl4gie.run.options import check_overrides


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["+trainer.epoch=2"],
            "+trainer.epoch: ssl4gie has no option trainer.epoch (did you mean trainer.epochs?)",
        ),
        (
            ["trainer.epoch=2"],
            "trainer.epoch: ssl4gie has no option trainer.epoch (did you mean trainer.epochs?)",
        ),
        (["trainer.epochs=two"], "trainer.epochs=two: expected an integer, as its default 200"),
        (["trainer.lr=1e-4,fast"], "trainer.lr=fast: expected a number, as its default 0.0001"),
        (["trainer.keep_last=1"], "trainer.keep_last=1: expected true or false, as its default False"),
        (["trainer.optimizer.betas=0.9"], "trainer.optimizer.betas=0.9: expected a list"),
        (["task=segmentaton"], "task=segmentaton is not an option of task (did you mean segmentation?)"),
        (["tsk=segmentation"], "tsk: ssl4gie has no option tsk (did you mean task?)"),
        (
            ["+trainer.epochs=2"],
            "+trainer.epochs: trainer.epochs is an option already; set it without the '+'",
        ),
        (
            ["dataset.synthetic.n=3"],
            "dataset.synthetic is null, so it is set whole, e.g. dataset.synthetic={n: ...}",
        ),
        # an option of a group chosen on the same command line
        (["task=detection", "task.canvas_sise=512"], "did you mean task.canvas_size?"),
    ],
)
def test_typos_and_wrong_types_are_one_line_naming_the_option(overrides, message):
    with pytest.raises(ConfigError) as error:
        check_overrides(overrides)
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    "overrides",
    [
        ["trainer.epochs=3", "trainer.lr=3e-4", "trainer.num_workers=2", "trainer.device=cpu"],
        ["task=detection", "task.canvas_size=512", "backbone=vit_b", "pretraining=imagenet_mae"],
        ["dataset.synthetic={n: 12, seed: 0}", "dataset.root=/tmp/x", "hydra.run.dir=/tmp/y"],
        ["row=rn_in_mc,rn_na_na", "column=kvasir_seg", "seed=42,43", "trainer/optimizer=lars"],
        ["task=pretrain", "ssl=mae", "backbone=vit_b", "trainer.epochs=1", "~trainer.prefetch_factor"],
        ["experiment=demo", "trainer.accum_steps=2", "trainer.precision=bf16"],
        ["backbone=vit_b14", "pretraining=imagenet_dinov2", "backbone.registers=4"],
    ],
)
def test_valid_command_lines_pass(overrides):
    check_overrides(overrides)


@pytest.mark.slow
def test_the_command_line_exits_2_in_one_line_without_starting_a_run(tmp_path):
    for option in ("+trainer.epoch=2", "trainer.epochs=two"):
        result = run_cli([option, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr, result.stderr
        assert not (tmp_path / "run").exists()  # nothing started: no run folder, no log
