"""The modes of a run after :func:`~ssl4gie.run.prepare.build`: :func:`fit` (training) or :func:`load_checkpoint`
(``mode=eval|predict``), then :func:`test` or :func:`predict_frames`, and the one ending, :func:`finish`.

Each returns the entries it adds to ``metrics.json``; only rank 0 goes past the training loop.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd

from ssl4gie.data.splits import split_facts, split_files
from ssl4gie.engine.checkpoint import read_run_checkpoint
from ssl4gie.loggers import final_metrics
from ssl4gie.models.checkpoints.study import check_against
from ssl4gie.run.checkpoint import check_model_config
from ssl4gie.run.prepare import Run
from ssl4gie.utils.io import save_dataframe_csv, write_json

log = logging.getLogger("ssl4gie")


def _datasets(run: Run, splits: list[str]) -> dict[str, Any]:
    cfg = run.cfg
    cache_dir = str(Path(cfg.paths.cache_dir) / "decoded") if cfg.cache else None
    return run.task.build_datasets(run.reader, splits, cache_dir, bool(cfg.trainer.progress))


def fit(run: Run) -> dict[str, Any]:
    """Train on the train split (validating on val), resuming from ``last.pt`` where there is one. Rank 0 then
    holds the result: the best checkpoint's weights and validation metrics, or, for a task without model selection
    (no ``task.monitor``: pretraining), the last epoch's training and validation values."""
    task, trainer = run.task, run.trainer
    run.data = _datasets(run, ["train", "val", "test"] if task.tests else ["train", "val"])
    if run.dist.is_main:  # the files of each split this run uses, relative to dataset.root
        write_json(run.output_dir / "splits.json", split_files(run.reader))
    run.facts.update(split_facts(run.reader))
    sizes = "/".join(str(len(d)) for d in run.data.values())
    log.info(
        "%s %s: %s, %s = %s", task.name, run.cfg.dataset.name, run.reader.root, "/".join(run.data), sizes
    )
    trainer.fit(run.data["train"], run.data["val"])
    if not run.dist.is_main:
        return {}
    save_dataframe_csv(run.output_dir / "history.csv", pd.DataFrame(trainer.history))
    run.facts.update(epochs=int(run.cfg.trainer.epochs), steps=int(trainer.global_step))
    if task.monitor is None:
        last = trainer.history[-1]
        return {k: v for k, v in last.items() if k.startswith(("train/", "val/"))}
    best = read_run_checkpoint(run.output_dir / "best.pt")
    run.model.load_state_dict(best["model"])
    run.facts.update(best_epoch=int(best["best_epoch"]))
    best_row = next(h for h in best["history"] if h["epoch"] == best["best_epoch"])
    return {k: v for k, v in best_row.items() if k.startswith("val/")}


def load_checkpoint(run: Run) -> dict[str, Any]:
    """``mode=eval|predict`` (rank 0): the weights of ``ckpt``, checked against the model the config built, and
    the test split of the dataset (unless predicting on a folder of frames). A study file's stored ``epoch``,
    ``val_perf`` and ``test_perf`` go into ``metrics.json`` as ``stored/epoch``, ``stored/val_perf``,
    ``stored/test_perf``."""
    if not run.dist.is_main:
        return {}
    cfg, ckpt = run.cfg, run.checkpoint
    if ckpt["model_config"] is None:  # one of the study's files: its keys and shapes are the check
        check_against(run.model, ckpt["model"], cfg.ckpt)
        log.info("%s", ckpt["receipt"])
    else:
        check_model_config(ckpt, run.trainer.model_config, cfg.ckpt)
    run.model.load_state_dict(ckpt["model"], strict=ckpt["model_config"] is not None)
    run.facts.update(ckpt=str(cfg.ckpt), epochs=int(ckpt["epoch"]), best_epoch=int(ckpt["best_epoch"]))
    # a study file's own numbers (training-time metrics at the kept epoch), exactly as stored, beside ours
    run.facts.update({f"stored/{key}": value for key, value in ckpt.get("stored", {}).items()})
    if run.frames is None:
        run.data = _datasets(run, ["test"])
        write_json(
            run.output_dir / "splits.json", {"train": [], "val": [], "test": split_files(run.reader)["test"]}
        )
        run.facts.update({k: v for k, v in split_facts(run.reader).items() if k not in ("n_train", "n_val")})
    return {}


def test(run: Run) -> dict[str, Any]:
    """The test split through the model (rank 0): ``test/`` metrics, ``per_image_test.csv``, figures of the first
    ``trainer.num_figures`` images and, in ``mode=predict``, one prediction file per image."""
    cfg, task = run.cfg, run.task
    save_dir = run.output_dir / "predictions" if cfg.mode == "predict" else None
    test_set = run.data["test"]
    metrics, rows, kept = run.trainer.evaluate(
        test_set, "test", keep=int(cfg.trainer.num_figures), save_dir=save_dir
    )
    save_dataframe_csv(run.output_dir / "per_image_test.csv", pd.DataFrame(rows))
    run.facts["figures"] = task.draw(kept, run.output_dir / "figures")
    if save_dir is not None:
        log.info("wrote %d predictions to %s", len(rows), save_dir)
    return {**metrics, "n_test": len(test_set)}


def predict_frames(run: Run) -> dict[str, Any]:
    """``mode=predict input=DIR``: the task's outputs for every frame in ``predictions/``, a summary row per frame
    in ``per_frame.csv``, figures of the first ``trainer.num_figures``; no metrics (no ground truth)."""
    cfg, task = run.cfg, run.task
    save_dir = run.output_dir / "predictions"
    predictor = task.frame_predictor(save_dir, keep=int(cfg.trainer.num_figures))
    _, rows, _ = run.trainer.evaluate(task.frame_dataset(run.frames), "predict", evaluator=predictor)
    save_dataframe_csv(run.output_dir / "per_frame.csv", pd.DataFrame(rows))
    run.facts["figures"] = task.draw_frames(predictor.kept, run.output_dir / "figures")
    log.info("wrote the predictions of %d frames to %s", len(run.frames), save_dir)
    return {
        "input": str(Path(str(cfg.input)).expanduser().resolve()),
        "frames": [p.name for p in run.frames],
        "n_frames": len(run.frames),
    }


def finish(run: Run, results: dict[str, Any]) -> float | None:
    """The one ending (rank 0): the task's own products after training (e.g. pretraining's export), then
    ``metrics.json`` (written last: its presence means the run completed), the trackers' end of the run, and
    ``last.pt`` removed unless ``trainer.keep_last``. Returns the monitored metric (for sweepers)."""
    cfg, task = run.cfg, run.task
    figures = [Path(p) for p in run.facts.pop("figures", [])]
    if run.train:
        products = task.finish(run.trainer.eval_model(), run.output_dir, run.trainer.device)  # rank 0 alone
        figures += [Path(p) for p in products.pop("figures", [])]
        run.facts.update(products)
    metrics = {
        **results,
        **run.facts,
        "wall_time_s": round(time.perf_counter() - run.start, 2),
        "status": "complete",
    }
    write_json(run.output_dir / "metrics.json", metrics)
    if figures:
        log.info("wrote %d figures to %s", len(figures), figures[0].parent)
    epoch = int(metrics.get("epochs", run.trainer.epoch))
    for tracker in run.trainer.loggers:
        tracker.log_final(final_metrics(metrics), epoch)
        tracker.log_figures(figures)
    if run.train and not cfg.trainer.keep_last:
        (run.output_dir / "last.pt").unlink(missing_ok=True)  # the full training state is not needed any more
    for key in sorted(k for k in metrics if k.startswith(("val/", "test/"))):
        log.info("  %-34s %.4f", key, metrics[key])
    log.info("results in %s", run.output_dir)
    return metrics.get(task.monitor) if task.monitor else None
