"""The first two steps of a run: :func:`prepare` (checks, identity, run folder, process group, seeds) and
:func:`build` (data reader, model, trainer, trackers). What they make travels on to the modes in one :class:`Run`."""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ssl4gie.data.frames import list_frames
from ssl4gie.engine import distributed
from ssl4gie.engine.trainer import Trainer
from ssl4gie.errors import ConfigError, DatasetMissing
from ssl4gie.loggers import Trackers, build_loggers, run_info
from ssl4gie.models.checkpoints import study as study_checkpoints
from ssl4gie.run.checkpoint import explicit_options, read_model_checkpoint, with_checkpoint_structure
from ssl4gie.run.checks import validate
from ssl4gie.run.folder import FolderLock, check_folder, record_identity
from ssl4gie.run.identity import hash_identity, identity, row_code
from ssl4gie.run.weights import InitialWeights, file_sha256, run_weights
from ssl4gie.tasks.base import Task
from ssl4gie.utils.conf import instantiate_checked
from ssl4gie.utils.io import write_json
from ssl4gie.utils.seed import seed_everything

log = logging.getLogger("ssl4gie")


@dataclass
class Run:
    """One run as the steps see it: the config and what the steps made of it so far."""

    cfg: DictConfig
    output_dir: Path
    fingerprint: str
    weights: InitialWeights
    task: Task
    start: float = field(default_factory=time.perf_counter)
    dist: distributed.DistEnv = field(default_factory=distributed.DistEnv)
    done: dict | None = None  # metrics.json of a complete run of this configuration found in the folder
    frames: list[Path] | None = None  # mode=predict input=DIR: the frames to predict on, instead of a dataset
    reader: Any = None
    trainer: Trainer | None = None
    data: dict[str, Any] = field(default_factory=dict)  # the torch Datasets of the splits in use
    checkpoint: dict | None = (
        None  # eval/predict: what ckpt holds (ssl4gie.run.checkpoint.read_model_checkpoint)
    )
    options: dict = field(default_factory=dict)  # the identity (ssl4gie.run.identity) the fingerprint hashes
    facts: dict[str, Any] = field(default_factory=dict)  # what metrics.json records beside the metrics

    @property
    def model(self) -> torch.nn.Module:
        return self.trainer.model

    @property
    def train(self) -> bool:
        return self.cfg.mode == "train"


def skip_absent_input(cfg: DictConfig) -> bool:
    """An evaluation whose input the sweep allows to be absent: with ``skip_missing_ckpt=true`` no file at ``ckpt``
    (``sweep=released``: a file the study's folder lacks), with ``skip_missing_data=true`` no dataset
    (``sweep=generalisation``: every polyp set present). Such a cell writes ``skipped.json`` with the reason and
    stops, before anything is read or built; True then. A ``skipped.json`` of an earlier launch is removed by
    :func:`build` once the input is there. Training on absent input is always an error."""
    if cfg.mode == "train":
        return False
    reason, option = None, ""
    ckpt = Path(str(cfg.ckpt)).expanduser() if cfg.ckpt else None
    if cfg.skip_missing_ckpt and ckpt is not None and not ckpt.is_file():
        reason, option = f"checkpoint {ckpt} does not exist (option ckpt)", "skip_missing_ckpt"
    elif cfg.skip_missing_data and not (cfg.mode == "predict" and cfg.input):
        try:
            instantiate_checked(cfg.dataset)
        except DatasetMissing as missing:
            reason, option = str(missing), "skip_missing_data"
    if reason is None:
        return False
    log.warning("%s; cell skipped (%s=true)", reason.split(" Expected layout")[0], option)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json(output_dir / "skipped.json", {"reason": reason, "time": time.strftime("%Y-%m-%d %H:%M:%S")})
    return True


def prepare(cfg: DictConfig) -> Run:
    """Check the config (and, in eval/predict, adopt the checkpoint's model structure), establish the run's identity
    and join the process group."""
    validate(cfg)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = None
    if cfg.mode != "train":  # the checkpoint first: its structure decides the model
        if not Path(str(cfg.ckpt)).expanduser().is_file():
            raise ConfigError(
                f"ckpt={cfg.ckpt} does not exist (expected the best.pt of a finished run, or one of the study's "
                "finetuned files)"
            )
        checkpoint = read_model_checkpoint(cfg.ckpt, cfg.task.name, cfg.backbone.family)
        cfg = with_checkpoint_structure(cfg, checkpoint, explicit_options())
    # The initial weights are part of the run's identity by content: hashed once, before the completed-run check.
    # (eval/predict: the checkpoint holds every tensor, so the row's weights file is neither read nor needed; the
    # checkpoint's content and the frames' folder are the identity instead)
    weights = run_weights(cfg) if cfg.mode == "train" else InitialWeights()
    options = identity(cfg, weights)
    if checkpoint is not None:
        options["checkpoint"] = file_sha256(cfg.ckpt)
        if cfg.mode == "predict" and cfg.input:
            options["input"] = str(Path(str(cfg.input)).expanduser().resolve())
    fp = hash_identity(options)
    if weights.file is not None:
        log.info("initial weights %s (sha256 %s) -> run folder %s", weights.file, weights.tag, output_dir)
    elif weights.hub is not None:
        log.info("initial weights: timm hub '%s' -> run folder %s", weights.hub, output_dir)
    run = Run(
        cfg, output_dir, fp, weights, instantiate_checked(cfg.task, _recursive_=False), checkpoint=checkpoint
    )
    run.options = options
    run.dist = distributed.setup(cfg.trainer.device)
    return run


def claim(run: Run, held: ExitStack) -> None:
    """Take the run folder (:mod:`ssl4gie.run.folder`): one writer (rank 0 holds the lock until ``held`` closes);
    a finished run of the same configuration there is :attr:`Run.done`, one of another configuration is refused
    (``overwrite=true`` replaces it). Then seed this process."""
    cfg = run.cfg
    if run.dist.is_main:
        held.enter_context(FolderLock(run.output_dir))
    run.done = check_folder(
        run.output_dir, run.fingerprint, run.options, bool(cfg.overwrite), earlier_replaceable=not run.train
    )
    if run.done is not None:
        log.info(
            "%s already holds a complete run of this configuration; nothing to do",
            run.output_dir / "metrics.json",
        )
        return
    if run.dist.is_main:
        record_identity(run.output_dir, run.fingerprint, run.options)
    seed_everything(cfg.seed + run.dist.rank)  # ranks augment differently; DDP broadcasts rank 0's weights
    torch.backends.cudnn.benchmark = not cfg.trainer.deterministic
    if cfg.trainer.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    # Predicting on a folder of frames reads no dataset (its root need not exist); the frames are listed and
    # checked before the model is built, as a dataset's root and layout are otherwise.
    if cfg.mode == "predict" and cfg.input:
        run.frames = list_frames(cfg.input)


def build(run: Run, trackers: Trackers) -> None:
    """The data reader (its root and layout checked), the model (its pretraining weights loaded in training) and
    the trainer; the trackers started on rank 0."""
    cfg, task = run.cfg, run.task
    (run.output_dir / "skipped.json").unlink(missing_ok=True)  # an input that was missing is here now
    if run.frames is None:
        run.reader = instantiate_checked(cfg.dataset)
    if not run.train and study_checkpoints.is_study_checkpoint(cfg.ckpt):
        task.use_study_model()  # so that the study's weights run exactly as they did
    # eval/predict: the checkpoint holds every tensor, so the row's weights are not loaded (pretraining.load)
    pretraining = cfg.pretraining
    if not run.train:
        pretraining = OmegaConf.create({**OmegaConf.to_container(pretraining, resolve=True), "load": False})
    model = task.build_model(cfg.backbone, pretraining, cfg.frozen, cfg.paths.weights_dir)
    run.trainer = Trainer(
        cfg.trainer,
        task,
        model,
        run.output_dir,
        cfg.seed,
        run.fingerprint,
        model_config(cfg, task, model),
        run.dist,
        train=run.train,  # evaluation builds no optimiser
    )
    if run.dist.is_main:  # trackers record what rank 0 writes: history rows, then metrics.json and figures
        trackers.loggers.extend(build_loggers(cfg.logger))
        trackers.start(run_info(cfg, run.fingerprint))
        run.trainer.loggers = [trackers]
    task.augment_on_device = run.trainer.augment_on_device  # the loader workers then leave it to the device
    run.facts = run_facts(run)


def model_config(cfg: DictConfig, task: Task, model: torch.nn.Module) -> dict[str, Any]:
    """What a checkpoint must match to be loaded into this model (checked in eval/predict), saved beside its
    weights."""
    return {
        "task": task.name,
        "backbone": cfg.backbone.name,
        "timm_name": cfg.backbone.timm_name,
        "tiny": bool(cfg.backbone.tiny),
        "input_size": task.input_size,
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


def run_facts(run: Run) -> dict[str, Any]:
    """What ``metrics.json`` records about the run beside its metrics (the results tables group by them)."""
    cfg, weights = run.cfg, run.weights
    return {
        "task": run.task.name,
        "dataset": cfg.dataset.name,
        "backbone": cfg.backbone.name,
        "pretraining": cfg.pretraining.name,
        "row": row_code(cfg),
        "seed": int(cfg.seed),
        "frozen": bool(cfg.frozen),
        "mode": cfg.mode,
        "fingerprint": run.fingerprint,
        "weights_file": None if weights.file is None else str(weights.file),
        "weights_sha256": weights.sha256,
        "weights_hub": weights.hub,
        "device": str(run.trainer.device),
        "world_size": run.dist.world_size,
        "monitor": run.task.monitor,
        **run.task.facts(),
        # the pretraining data of the row, for the results tables' overlap footnote and data-scale figure
        "pretraining_data_size": cfg.pretraining.get("data_size"),
        "pretraining_data_seen": list(cfg.pretraining.get("data_seen") or []),
    }
