"""The demos' last line: whether the model learned, against what a model that learned nothing scores."""

from __future__ import annotations

import json
import logging

import pandas as pd
import pytest
from helpers import CONF, compose_config
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ssl4gie.run.demo_verdict import DemoVerdict, verdict

SIX = OmegaConf.create({"task": {"classes": ["a", "b", "c", "d", "e", "f"]}})


def finished_run(folder, metrics: dict, history: list[dict] | None = None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps({"status": "complete", **metrics}))
    if history is not None:
        pd.DataFrame(history).to_csv(folder / "history.csv", index=False)
    return folder


def test_chance_is_one_over_the_classes(tmp_path):
    run = finished_run(tmp_path, {"test/f1": 0.58})
    learned, line = verdict("test/f1", "chance", 0.2, run, SIX)
    assert learned and line.startswith(
        "demo verdict: learned: test/f1 0.580 vs 0.167 for a uniform guess among 6"
    )
    run = finished_run(tmp_path, {"test/f1": 0.08})  # the classification demo before it learned
    learned, line = verdict("test/f1", "chance", 0.2, run, SIX)
    assert not learned and "did NOT learn: test/f1 0.080 vs 0.167" in line


def test_the_best_trivial_answer_the_task_wrote(tmp_path):
    metrics = {"test/dice": 0.35, "test/dice_all_polyp": 0.31, "test/dice_all_background": 0.0}
    learned, line = verdict(
        "test/dice",
        ["test/dice_all_polyp", "test/dice_all_background"],
        0.1,
        finished_run(tmp_path, metrics),
        SIX,
    )
    assert not learned and "vs 0.310 for dice all polyp" in line  # 0.35 is not 0.1 above 0.31


def test_lower_is_better_against_the_initial_weights(tmp_path):
    history = [{"epoch": 0, "val/rmse": 12.0}, {"epoch": 1, "val/rmse": 9.5}, {"epoch": 2, "val/rmse": 8.0}]
    run = finished_run(tmp_path, {"val/rmse": 8.0}, history)
    learned, line = verdict("val/rmse", "initial", 1.0, run, SIX)
    assert learned and "val/rmse 8.000 vs 12.000 for the initial weights (lower is better" in line
    run = finished_run(tmp_path / "flat", {"val/rmse": 11.5}, [{"epoch": 0, "val/rmse": 12.0}])
    assert not verdict("val/rmse", "initial", 1.0, run, SIX)[0]
    with pytest.raises(ValueError, match="val_at_start"):
        verdict(
            "val/rmse", "initial", 1.0, finished_run(tmp_path / "no0", {"val/rmse": 1}, [{"epoch": 1}]), SIX
        )


def test_the_callback_logs_the_verdict_of_a_finished_run_only(tmp_path, caplog):
    config = OmegaConf.merge(SIX, {"hydra": {"runtime": {"output_dir": str(tmp_path)}}})
    callback = DemoVerdict(
        metric="test/map", reference=0.0, margin=0.05, what="a detector that finds nothing"
    )
    with caplog.at_level(logging.INFO, logger="ssl4gie"):
        callback.on_job_end(config, job_return=None)  # no metrics.json: the run's own error says why
        assert caplog.messages == []
        finished_run(tmp_path, {"test/map": 0.02})
        callback.on_job_end(config, job_return=None)
    assert caplog.records[-1].levelno == logging.WARNING
    assert caplog.messages[-1].startswith(
        "demo verdict: did NOT learn: test/map 0.020 vs 0.000 for a detector that finds nothing"
    )


@pytest.mark.parametrize("demo", sorted(p.stem for p in (CONF / "experiment").glob("demo*.yaml")))
def test_every_demo_ends_with_a_verdict(demo):
    cfg = compose_config([f"experiment={demo}"], hydra=True)
    callback = instantiate(cfg.hydra.callbacks.demo_verdict)
    assert isinstance(callback, DemoVerdict) and callback.margin > 0
    task = cfg.task.name
    assert (
        callback.metric.split("/")[1]
        in {
            "segmentation": {"dice"},
            "classification": {"f1", "accuracy"},
            "detection": {"map", "map_50"},
            "depth": {"rmse", "abs_rel", "delta1"},
        }[task]
    )
    if callback.reference == "initial":
        assert cfg.trainer.val_at_start and callback.metric.startswith("val/")
