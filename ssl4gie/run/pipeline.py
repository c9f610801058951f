"""``run(cfg)``: validate, seed, build, fit, test, write outputs. Called by ``run.py`` through Hydra."""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
from pathlib import Path

import pandas as pd
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from ssl4gie.data.frames import list_frames
from ssl4gie.data.splits import split_facts, split_files
from ssl4gie.engine import distributed
from ssl4gie.engine.checkpoint import check_model_config, read_model_checkpoint, read_run_checkpoint
from ssl4gie.engine.trainer import Trainer
from ssl4gie.errors import DatasetMissing, Ssl4gieError
from ssl4gie.loggers import Trackers, build_loggers, final_metrics, run_info
from ssl4gie.models.checkpoints import study as study_checkpoints
from ssl4gie.models.checkpoints.study import check_against
from ssl4gie.run import config as config_checks
from ssl4gie.run.weights import InitialWeights, run_weights
from ssl4gie.utils.io import save_dataframe_csv, write_json
from ssl4gie.utils.seed import seed_everything

log = logging.getLogger("ssl4gie")


def _multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run(cfg: DictConfig) -> float | None:
    """Hydra task function; returns the monitored validation metric (for sweepers).

    A user-input problem (:class:`Ssl4gieError`) is logged as one line and ends a single run with exit status 2.
    In a multirun every failure is recorded in the cell's ``failed.json`` (with its traceback) and logged as one line;
    the cell returns, the other cells go on, and the sweep's summary reports it (``ssl4gie.run.sweep_progress``).
    """
    output_dir = Path(cfg.paths.output_dir)
    try:
        result = execute(cfg)
        (output_dir / "failed.json").unlink(missing_ok=True)  # a rerun that succeeded
        return result
    except Exception as e:
        if int(os.environ.get("RANK", "0")) == 0:
            record_failure(output_dir, e)
        if isinstance(e, Ssl4gieError):
            log.error("%s", e)
            if not _multirun():
                raise SystemExit(2) from None
        if _multirun():
            if not isinstance(e, Ssl4gieError):
                log.error("%s: %s (traceback in %s)", type(e).__name__, e, output_dir / "failed.json")
            return None
        raise
    finally:
        distributed.teardown()


def record_failure(output_dir: Path, error: BaseException) -> None:
    """``failed.json`` beside the run's log: what went wrong, for people and for ``ssl4gie.results``."""
    try:
        write_json(
            output_dir / "failed.json",
            {
                "error": str(error),
                "type": type(error).__name__,
                "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                "user_error": isinstance(error, Ssl4gieError),
                "traceback": traceback.format_exc(limit=20),
            },
        )
    except OSError:
        log.exception("could not write %s", output_dir / "failed.json")


def completed_metrics(output_dir: Path, fp: str) -> dict | None:
    """``metrics.json`` of a finished run with the same fingerprint, else None."""
    path = output_dir / "metrics.json"
    if not path.exists():
        return None
    metrics = json.loads(path.read_text())
    return metrics if metrics.get("status") == "complete" and metrics.get("fingerprint") == fp else None


def execute(cfg: DictConfig) -> float | None:
    """One run (see :func:`run`); its trackers (``logger=``) are finished with how it ended, also on an error."""
    with Trackers() as trackers:
        return _execute(cfg, trackers)


def _execute(cfg: DictConfig, trackers: Trackers) -> float | None:
    start = time.perf_counter()
    config_checks.validate(cfg)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    # The initial weights are part of the run's identity by content: hashed once, before the completed-run check.
    # (eval/predict: the checkpoint holds every tensor, so the row's weights file is neither read nor needed)
    weights = run_weights(cfg) if cfg.mode == "train" else InitialWeights()
    fp = config_checks.fingerprint(cfg, weights)
    if weights.file is not None:
        log.info("initial weights %s (sha256 %s) -> run folder %s", weights.file, weights.tag, output_dir)
    elif weights.hub is not None:
        log.info("initial weights: timm hub '%s' -> run folder %s", weights.hub, output_dir)
    task = config_checks.instantiate_checked(cfg.task, _recursive_=False)
    if cfg.mode == "train" and (done := completed_metrics(output_dir, fp)) is not None:
        log.info(
            "%s already holds a complete run of this configuration; nothing to do",
            output_dir / "metrics.json",
        )
        return done.get(task.monitor)

    dist_env = distributed.setup(cfg.trainer.device)
    seed_everything(cfg.seed + dist_env.rank)  # ranks augment differently; DDP broadcasts rank 0's weights
    torch.backends.cudnn.benchmark = not cfg.trainer.deterministic
    if cfg.trainer.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    # Predicting on a folder of frames reads no dataset (its root need not exist); the frames are listed and
    # checked before the model is built, as a dataset's root and layout are otherwise.
    frames = list_frames(cfg.input) if cfg.mode == "predict" and cfg.get("input") else None
    (output_dir / "skipped.json").unlink(missing_ok=True)  # a dataset that was missing before may be here now
    try:
        reader = None if frames is not None else config_checks.instantiate_checked(cfg.dataset)
    except DatasetMissing as missing:
        if cfg.mode == "train" or not cfg.get("skip_missing_data", False):
            raise
        # An evaluation sweep over "every dataset present" (sweep=generalisation): an absent set is no failure.
        log.warning("%s; cell skipped (skip_missing_data=true)", str(missing).split(" Expected layout")[0])
        write_json(
            output_dir / "skipped.json", {"reason": str(missing), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
        )
        return None
    if cfg.mode != "train" and study_checkpoints.is_study_checkpoint(cfg.ckpt):
        task.use_study_model()  # so that the study's weights run exactly as they did
    pretraining = cfg.pretraining
    if cfg.mode != "train":
        pretraining = OmegaConf.create(
            {**OmegaConf.to_container(cfg.pretraining, resolve=True), "load": False}
        )
    model = task.build_model(cfg.backbone, pretraining, cfg.frozen, cfg.paths.weights_dir)
    # What a checkpoint must match to be loaded into this model (checked in eval/predict mode).
    model_config = {
        "task": task.name,
        "backbone": cfg.backbone.name,
        "timm_name": cfg.backbone.timm_name,
        "tiny": bool(cfg.backbone.get("tiny", False)),
        "input_size": getattr(task, "input_size", None),
        "decoder": OmegaConf.to_container(cfg.task.decoder, resolve=True) if "decoder" in cfg.task else None,
        "classes": OmegaConf.to_container(cfg.dataset.classes, resolve=True)
        if "classes" in cfg.dataset
        else None,
        # a ViT's register tokens (backbone.registers=auto: what the weights file has)
        "registers": next(
            (int(m.num_reg_tokens) for m in model.modules() if hasattr(m, "num_reg_tokens")), 0
        ),
        **task.structure(),  # options that change the model's structure (e.g. the detector's windows)
    }
    trainer = Trainer(cfg.trainer, task, model, output_dir, cfg.seed, fp, model_config, dist_env)
    if dist_env.is_main:  # trackers record what rank 0 writes: history rows, then metrics.json and figures
        trackers.loggers.extend(build_loggers(cfg.get("logger")))
        trackers.start(run_info(cfg, fp))
        trainer.loggers = [trackers]
    # Tasks that can augment a batch on the GPU skip it in the loader workers (trainer.gpu_augment).
    task.augment_on_device = trainer.augment_on_device
    cache_dir = str(Path(cfg.paths.cache_dir) / "decoded") if cfg.cache else None
    progress = bool(cfg.trainer.progress)

    facts = {
        "task": task.name,
        "dataset": cfg.dataset.name,
        "backbone": cfg.backbone.name,
        "pretraining": cfg.pretraining.name,
        "row": config_checks.row_code(cfg),
        "seed": int(cfg.seed),
        "frozen": bool(cfg.frozen),
        "mode": cfg.mode,
        "fingerprint": fp,
        "weights_file": None if weights.file is None else str(weights.file),
        "weights_sha256": weights.sha256,
        "weights_hub": weights.hub,
        "device": str(trainer.device),
        "world_size": dist_env.world_size,
        "monitor": task.monitor,
        # the metrics' formulas (task.protocol); a task without the option has only ours
        "protocol": getattr(task, "protocol", "ssl4gie"),
        "macro_over": getattr(task, "macro_over", None),  # classification's macro average (results --ci)
        # the pretraining data of the row, for the results tables' overlap footnote and data-scale figure
        "pretraining_data_size": cfg.pretraining.get("data_size"),
        "pretraining_data_seen": list(cfg.pretraining.get("data_seen") or []),
    }
    if task.name == "pretrain":
        return pretrain(cfg, task, trainer, reader, output_dir, facts, start, cache_dir)
    metrics: dict = {}
    if cfg.mode == "train":
        data = task.build_datasets(reader, ["train", "val", "test"], cache_dir, progress)
        if dist_env.is_main:  # the files of each split this run uses, relative to dataset.root
            write_json(output_dir / "splits.json", split_files(reader))
        facts.update(split_facts(reader))
        log.info(
            "%s %s: %s, train/val/test = %d/%d/%d",
            task.name,
            cfg.dataset.name,
            reader.root,
            len(data["train"]),
            len(data["val"]),
            len(data["test"]),
        )
        trainer.fit(data["train"], data["val"])
        if not dist_env.is_main:
            return None
        best = read_run_checkpoint(output_dir / "best.pt")
        model.load_state_dict(best["model"])
        best_row = next(h for h in best["history"] if h["epoch"] == best["best_epoch"])
        metrics.update({k: v for k, v in best_row.items() if k.startswith("val/")})
        facts.update(epochs=int(cfg.trainer.epochs), best_epoch=int(best["best_epoch"]))
        save_dataframe_csv(output_dir / "history.csv", pd.DataFrame(trainer.history))
    else:
        if not dist_env.is_main:
            return None
        ckpt = read_model_checkpoint(cfg.ckpt, task.name, cfg.backbone.family)
        if ckpt["model_config"] is None:  # one of the study's files: its keys and shapes are the check
            check_against(model, ckpt["model"], cfg.ckpt)
            log.info("%s", ckpt["receipt"])
        else:
            check_model_config(ckpt, model_config, cfg.ckpt)
        model.load_state_dict(ckpt["model"], strict=ckpt["model_config"] is not None)
        facts.update(ckpt=str(cfg.ckpt), epochs=int(ckpt["epoch"]), best_epoch=int(ckpt["best_epoch"]))
        if frames is not None:
            return predict_frames(cfg, task, trainer, frames, output_dir, facts, start)
        data = task.build_datasets(reader, ["test"], cache_dir, progress)
        write_json(output_dir / "splits.json", {"train": [], "val": [], "test": split_files(reader)["test"]})
        facts.update({k: v for k, v in split_facts(reader).items() if k not in ("n_train", "n_val")})

    save_dir = output_dir / "predictions" if cfg.mode == "predict" else None
    test_metrics, rows, kept = trainer.evaluate(
        data["test"], "test", keep=int(cfg.trainer.num_figures), save_dir=save_dir
    )
    metrics.update(test_metrics)
    save_dataframe_csv(output_dir / "per_image_test.csv", pd.DataFrame(rows))
    figures = task.draw(kept, output_dir / "figures")
    if save_dir is not None:
        log.info("wrote %d predictions to %s", len(rows), save_dir)
    log.info("wrote %d figures to %s", len(figures), output_dir / "figures")
    metrics.update(
        facts, n_test=len(data["test"]), wall_time_s=round(time.perf_counter() - start, 2), status="complete"
    )
    write_json(output_dir / "metrics.json", metrics)  # last: its presence means the run completed
    _log_results(trainer, metrics, figures, int(metrics.get("epochs", trainer.epoch)))
    if cfg.mode == "train" and not cfg.trainer.get("keep_last", False):
        (output_dir / "last.pt").unlink(missing_ok=True)  # the full training state is not needed any more
    for key in sorted(k for k in metrics if k.startswith(("val/", "test/"))):
        log.info("  %-34s %.4f", key, metrics[key])
    log.info("results in %s", output_dir)
    return metrics.get(task.monitor)


def _log_results(trainer: Trainer, metrics: dict, figures: list, epoch: int) -> None:
    """The trackers' end of a completed run: ``metrics.json``'s ``val/`` and ``test/`` values, the figure files."""
    for tracker in trainer.loggers:
        tracker.log_final(final_metrics(metrics), epoch)
        tracker.log_figures([Path(p) for p in figures])


def pretrain(
    cfg: DictConfig, task, trainer: Trainer, reader, output_dir: Path, facts: dict, start: float, cache_dir
) -> None:
    """``task=pretrain``: fit on every frame of ``reader``, then (rank 0) ``history.csv``, the exported backbone
    (``export/``, checked by loading it back), figures, and ``metrics.json`` with the last epoch's monitors."""
    data = task.build_datasets(reader, ["train", "val"], cache_dir, bool(cfg.trainer.progress))
    log.info(
        "pretrain %s %s on %s: %d frames in %s; %d optimiser steps of %d images per epoch",
        task.method_name,
        cfg.backbone.name,
        cfg.dataset.name,
        len(data["train"]),
        reader.root,
        len(data["train"]) // int(cfg.trainer.batch_size),
        int(cfg.trainer.batch_size),
    )
    trainer.fit(data["train"], data["val"])
    if not trainer.dist.is_main:
        return None
    save_dataframe_csv(output_dir / "history.csv", pd.DataFrame(trainer.history))
    facts.update(task.finish(trainer.model, output_dir, trainer.device))
    last = trainer.history[-1]
    metrics = {k: v for k, v in last.items() if k.startswith(("train/", "val/"))}
    metrics.update(
        facts,
        ssl=task.method_name,
        epochs=int(cfg.trainer.epochs),
        steps=int(trainer.global_step),
        n_frames=len(data["train"]),
        wall_time_s=round(time.perf_counter() - start, 2),
        status="complete",
    )
    write_json(output_dir / "metrics.json", metrics)  # last: its presence means the run completed
    _log_results(trainer, metrics, facts.get("figures", []), trainer.epoch)
    if not cfg.trainer.get("keep_last", False):
        (output_dir / "last.pt").unlink(missing_ok=True)
    for key in sorted(k for k in metrics if k.startswith("val/")):
        log.info("  %-34s %.4f", key, metrics[key])
    log.info(
        "results in %s; finetune from it with paths.weights_dir=%s", output_dir, Path(facts["export"]).parent
    )
    return None


def predict_frames(
    cfg: DictConfig, task, trainer: Trainer, frames: list[Path], output_dir: Path, facts: dict, start: float
) -> None:
    """``mode=predict input=DIR``: the task's outputs for every frame in ``predictions/``, a summary row per frame
    in ``per_frame.csv``, figures of the first ``trainer.num_figures``, then ``metrics.json`` (no metrics: the
    frames have no ground truth) naming them."""
    save_dir = output_dir / "predictions"
    predictor = task.frame_predictor(save_dir, keep=int(cfg.trainer.num_figures))
    _, rows, _ = trainer.evaluate(task.frame_dataset(frames), "predict", evaluator=predictor)
    save_dataframe_csv(output_dir / "per_frame.csv", pd.DataFrame(rows))
    figures = task.draw_frames(predictor.kept, output_dir / "figures")
    log.info("wrote the predictions of %d frames to %s", len(frames), save_dir)
    log.info("wrote %d figures to %s", len(figures), output_dir / "figures")
    metrics = {
        **facts,
        "input": str(Path(str(cfg.input)).expanduser().resolve()),
        "frames": [p.name for p in frames],
        "n_frames": len(frames),
        "wall_time_s": round(time.perf_counter() - start, 2),
        "status": "complete",
    }
    write_json(output_dir / "metrics.json", metrics)  # last: its presence means the run completed
    _log_results(trainer, metrics, figures, int(facts["epochs"]))
    log.info("results in %s", output_dir)
    return None
