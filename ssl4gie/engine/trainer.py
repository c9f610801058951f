"""The training engine: one loop for every task, finetuning and pretraining. It only needs
``task.training_step(...)["loss"]``, ``task.predict`` and ``task.evaluator`` (and, optionally,
``task.augment_batch`` for augmentation on the device and ``task.on_step`` for state a task updates per optimiser
step, e.g. a momentum encoder's coefficient).

Optimiser and learning-rate schedule are configuration (:mod:`ssl4gie.engine.optim`): AdamW + ReduceLROnPlateau
on the validation metric for finetuning (the study's), LARS or AdamW with per-step warmup + cosine for pretraining.
Scalars a training step returns besides ``loss`` (loss terms, monitors) are averaged per epoch into the history.

Distributed data parallel when the environment describes a process group (SLURM job or torchrun): the effective
batch size stays ``trainer.batch_size`` (micro-batch = batch_size / (accum_steps · world size), accum_steps chosen
from the task's ``trainer.micro_batch`` ceiling), validation runs on rank 0 and its monitored value is broadcast, a
stop signal is agreed on by all ranks at a step boundary, and only rank 0 writes checkpoints (with every rank's RNG
state). Evaluation runs in fp32 whatever the training precision (``trainer.eval_precision``).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ssl4gie.data.collate import collate
from ssl4gie.data.sampler import EpochSampler
from ssl4gie.engine import distributed
from ssl4gie.engine.checkpoint import read_run_checkpoint
from ssl4gie.engine.device import (
    resolve_accumulation,
    resolve_device,
    resolve_eval_precision,
    resolve_precision,
    resolve_switch,
    resolve_workers,
)
from ssl4gie.errors import ConfigError, Ssl4gieError
from ssl4gie.loggers.base import RunLogger
from ssl4gie.tasks.base import Evaluator, Task
from ssl4gie.utils import signals
from ssl4gie.utils.io import save_torch
from ssl4gie.utils.seed import SeedPerItem, rng_state, seed_everything, seed_worker, set_rng_state
from ssl4gie.utils.signals import STOP_SIGNALS

log = logging.getLogger(__name__)


def to_device(value: Any, device: torch.device) -> Any:
    """Move tensors inside nested dicts/lists to ``device`` (``meta`` stays as is)."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {k: (v if k == "meta" else to_device(v, device)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(to_device(v, device) for v in value)
    return value


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _has_trainable_batchnorm(model: nn.Module) -> bool:
    """BatchNorm whose batch statistics shape training (FrozenBatchNorm and frozen encoders excluded)."""
    return any(
        isinstance(m, nn.modules.batchnorm._BatchNorm)
        and m.track_running_stats
        and any(p.requires_grad for p in m.parameters(recurse=False))
        for m in model.modules()
    )


class Trainer:
    """Fits ``model`` with AdamW + ReduceLROnPlateau (the study's ``train_*.py``), keeping ``last.pt`` and
    ``best.pt`` in ``output_dir``.

    ``fingerprint`` identifies the experiment; a ``last.pt`` with another fingerprint in the same folder is refused
    instead of being resumed into a different experiment.
    """

    def __init__(
        self,
        cfg: DictConfig,
        task: Task,
        model: nn.Module,
        output_dir: Path,
        seed: int,
        fingerprint: str,
        model_config: dict,
        dist_env: distributed.DistEnv | None = None,
        train: bool = True,
    ) -> None:
        self.cfg, self.task, self.output_dir, self.seed = cfg, task, Path(output_dir), seed
        self.fingerprint, self.model_config = fingerprint, model_config
        self.dist = dist_env or distributed.DistEnv()
        device = resolve_device(cfg.device)
        if device.type == "cuda" and self.dist.enabled:
            device = torch.device("cuda", self.dist.local_rank)
        self.device = device
        self.dtype = resolve_precision(cfg.precision, self.device)
        self.eval_dtype = resolve_eval_precision(cfg.eval_precision, self.dtype)
        self.num_workers = resolve_workers(cfg.num_workers)
        self.accum_steps, self.micro_batch = resolve_accumulation(
            int(cfg.batch_size), cfg.accum_steps, cfg.micro_batch, self.dist.world_size
        )
        if not task.exact_accumulation:
            self._check_no_accumulation(cfg)
        self.eval_batch = int(cfg.eval_batch_size or self.micro_batch)
        sync_bn = self.dist.enabled and self.device.type == "cuda" and _has_batchnorm(model)
        if self.accum_steps > 1 or self.dist.world_size > 1:
            log.info(
                "batch %d = %d per process × %d accumulation steps × %d processes",
                cfg.batch_size,
                self.micro_batch,
                self.accum_steps,
                self.dist.world_size,
            )
        bn_batch = self.micro_batch * (self.dist.world_size if sync_bn else 1)
        if self.dist.is_main and bn_batch < cfg.batch_size and _has_trainable_batchnorm(model):
            log.warning(
                "BatchNorm normalises over %d images per forward pass, not the study's %d (micro-batch %d%s; "
                "accumulation keeps the effective batch for the gradients, not for BatchNorm statistics): results "
                "can differ from the study's. Raise trainer.micro_batch if memory allows%s",
                bn_batch,
                cfg.batch_size,
                self.micro_batch,
                f" × {self.dist.world_size} GPUs with SyncBatchNorm" if sync_bn else "",
                "" if sync_bn or not self.dist.enabled else " (SyncBatchNorm needs GPUs)",
            )

        self.channels_last = resolve_switch(cfg.channels_last, "channels_last", self.device)
        self.augment_on_device = resolve_switch(cfg.gpu_augment, "gpu_augment", self.device)
        if sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # the study's SyncBN (needs GPUs)
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model  # the bare module: state dicts, evaluation
        self.train_model: nn.Module = model
        self.optimizer: torch.optim.Optimizer | None = None
        self.schedule = None
        if train:
            self._for_training(cfg, task, model)
        self.val_every = int(cfg.val_every)
        if self.val_every < 1:
            raise ConfigError(f"trainer.val_every={self.val_every} must be at least 1")
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        if self.scaler.is_enabled():
            log.info("fp16 autocast with dynamic loss scaling (torch.amp.GradScaler)")
        self.epoch, self.step_in_epoch, self.best, self.best_epoch, self.history = 0, 0, None, None, []
        self.global_step = 0  # optimiser steps taken: the position in a per-step schedule
        self.steps_per_epoch = 1  # set by fit() from the loader (benchmarks run train_epoch directly)
        self.generator = torch.Generator()
        self.stop_signal: int | None = None
        self._batches = None  # the training epoch's loader iterator (its workers end with a stop)
        # the running sums of the epoch's training scalars, kept in a mid-epoch last.pt (one per rank)
        self._epoch_sums: dict[str, Any] = {}
        self._resumed_sums: list[dict] = []
        # experiment trackers (ssl4gie.loggers), set by the CLI on rank 0: each gets every history row
        self.loggers: list[RunLogger] = []

    def _for_training(self, cfg: DictConfig, task: Task, model: nn.Module) -> None:
        """What only training needs (evaluation builds none of it): the DDP wrapper, ``torch.compile``, and the
        optimiser and schedule of the trainer/optimizer and trainer/scheduler config groups (``_partial_``
        targets, completed with what the trainer and the task know)."""
        if self.dist.enabled:
            self.train_model = DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if cfg.compile:
            self.train_model = torch.compile(self.train_model, backend=cfg.compile_backend)
        fused = resolve_switch(cfg.fused_optimizer, "fused_optimizer", self.device)
        self.optimizer = instantiate(cfg.optimizer)(
            task.trainable_parameters(model),
            lr=float(cfg.lr),
            weight_decay=float(cfg.weight_decay),
            fused=fused,
        )
        self.schedule = instantiate(cfg.scheduler)(
            self.optimizer,
            monitor=task.monitor,
            monitor_mode=task.monitor_mode,
            epochs=int(cfg.epochs),
            peak_lr=float(cfg.lr),
        )

    def _check_no_accumulation(self, cfg: DictConfig) -> None:
        """A task whose loss couples the images of a batch (contrastive negatives, a cross-correlation, BatchNorm
        statistics) cannot split its batch into accumulated micro-batches without changing what it computes: the
        whole per-process batch goes through one forward pass, or the run stops here with what to do instead."""
        per_rank = int(cfg.batch_size) // self.dist.world_size
        if cfg.accum_steps != "auto" and int(cfg.accum_steps) > 1:
            raise ConfigError(
                f"trainer.accum_steps={cfg.accum_steps}: {self.task.accumulation_note} Use trainer.accum_steps=auto"
                " (one forward pass per optimiser step)"
            )
        self.accum_steps, self.micro_batch = 1, per_rank
        ceiling = int(cfg.micro_batch)
        if per_rank > ceiling:
            raise ConfigError(
                f"trainer.batch_size={cfg.batch_size} over {self.dist.world_size} process(es) is {per_rank} images "
                f"per forward pass, above trainer.micro_batch={ceiling} (what a 48 GB GPU holds for this recipe), "
                f"and {self.task.accumulation_note} Spread the batch over more GPUs (hydra.launcher.gpus_per_node), "
                f"lower trainer.batch_size (the learning rate follows the recipe's linear scaling rule; README: "
                f"Pretraining), or raise trainer.micro_batch if your GPU holds more"
            )

    # ----------------------------------------------------------------------------------------------------- data
    def loader(self, dataset: Dataset, train: bool) -> DataLoader:
        """Training: this rank's shuffled share in micro-batches. Evaluation: in order, ``trainer.eval_batch_size``
        (default: the micro-batch; detection evaluates one image at a time, as the study)."""
        sampler = None
        if train:
            sampler = EpochSampler(
                len(dataset),
                self.seed,
                self.dist.world_size,
                self.dist.rank,
                self.micro_batch,
                drop_last=len(dataset) >= self.micro_batch * self.dist.world_size,
            )
        workers = self.num_workers
        return DataLoader(
            SeedPerItem(dataset) if train else dataset,
            batch_size=self.micro_batch if train else self.eval_batch,
            sampler=sampler,
            shuffle=False,
            num_workers=workers,
            collate_fn=collate,
            worker_init_fn=seed_worker,
            generator=self.generator,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=self.cfg.prefetch_factor if workers else None,
            persistent_workers=False,
        )

    def autocast(self, dtype: torch.dtype | None = None):
        dtype = self.dtype if dtype is None else dtype
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype != torch.float32)

    def _prepare(self, batch: dict, train: bool = False) -> dict:
        """Move ``batch`` to the device; in training, let the task augment it there (outside autocast: sampling
        grids and colour operations in fp32, whatever ``trainer.precision``); then channels_last if enabled."""
        batch = to_device(batch, self.device)
        if train:
            with torch.autocast(self.device.type, enabled=False):
                batch = self.task.augment_batch(batch)
        if self.channels_last and isinstance(batch.get("image"), torch.Tensor) and batch["image"].ndim == 4:
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        return batch

    # --------------------------------------------------------------------------------------------- checkpoints
    def weights_state(self) -> dict:
        """What ``best.pt`` holds: the weights and what eval/predict need, no optimiser/scheduler/scaler/RNG."""
        return {
            "model": self.model.state_dict(),
            "epoch": self.epoch,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "history": self.history,
            "fingerprint": self.fingerprint,
            "model_config": self.model_config,
            "task_state": self.task.extra_state(),
        }

    def state(self, rng: list[dict] | None = None, sums: list[dict] | None = None) -> dict:
        """What ``last.pt`` holds: everything to resume, including one RNG state per rank (``rng``) and, mid-epoch,
        each rank's running sums of the epoch's training scalars (``sums``)."""
        return {
            **self.weights_state(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "rng": rng if rng is not None else [rng_state()],
            "epoch_sums": sums if sums is not None else [self._running_sums()],
        }

    def _running_sums(self) -> dict:
        """This rank's sums of the unfinished epoch (empty at an epoch boundary), as plain numbers."""
        if not self.step_in_epoch or not self._epoch_sums:
            return {}
        return {
            "loss": float(self._epoch_sums["loss"]),
            "count": int(self._epoch_sums["count"]),
            "scalars": {k: float(v) for k, v in self._epoch_sums["scalars"].items()},
        }

    def save(self, last: bool = True, best: bool = False) -> None:
        """Rank 0 writes ``best.pt`` (weights only) and/or ``last.pt`` (full state), atomically; every rank takes
        part (its RNG state goes into ``last.pt``) and waits for the files."""
        rng = distributed.gather_objects(rng_state(), self.dist) if last else None
        sums = distributed.gather_objects(self._running_sums(), self.dist) if last else None
        if self.dist.is_main:
            if best:  # first: a last.pt on disk always has its best.pt
                save_torch(self.output_dir / "best.pt", self.weights_state())
            if last:
                save_torch(self.output_dir / "last.pt", self.state(rng, sums))
        distributed.barrier(self.dist)

    def _rank_seed(self, epoch: int) -> int:
        """A seed of (seed, epoch, rank): the same after a resume, different for every epoch and rank."""
        return ((self.seed * 100_003 + epoch) * 4096 + self.dist.rank) % 2**63

    def _restore_rng(self, saved: list[dict] | dict) -> None:
        """This rank's generators as saved; re-seeded from (seed, rank, epoch) if the world size changed."""
        saved = [saved] if isinstance(saved, dict) else list(saved)
        if len(saved) == self.dist.world_size:
            set_rng_state(saved[self.dist.rank])
            if self.dist.enabled:
                log.info("restored the RNG state of each of %d ranks", len(saved))
            return
        seed_everything(self._rank_seed(self.epoch))
        log.warning(
            "last.pt holds the RNG states of %d process(es) but this run has %d: generators re-seeded from "
            "(seed, epoch, rank); the run continues, but not bit-identically to an uninterrupted one",
            len(saved),
            self.dist.world_size,
        )

    def resume(self) -> bool:
        """Continue from ``last.pt`` in the run folder, if there is one. Returns whether it resumed."""
        path = self.output_dir / "last.pt"
        if not path.exists():
            return False
        ckpt = read_run_checkpoint(path)
        if ckpt.get("fingerprint") != self.fingerprint:
            raise Ssl4gieError(
                f"{path} belongs to a run with a different configuration; it is not resumed. Use "
                f"another run folder (hydra.run.dir=...) or remove {self.output_dir} to start over"
            )
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.schedule.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.best, self.best_epoch = ckpt["epoch"], ckpt["best"], ckpt["best_epoch"]
        self.step_in_epoch = ckpt.get("step_in_epoch", 0)
        self.global_step = ckpt.get("global_step", 0)
        self.history = list(ckpt["history"])
        self._restore_rng(ckpt["rng"])
        sums = ckpt.get("epoch_sums") or []
        self._resumed_sums = [sums[self.dist.rank]] if len(sums) == self.dist.world_size else []
        where = f"epoch {self.epoch}/{self.cfg.epochs}"
        if self.step_in_epoch:
            where = f"step {self.step_in_epoch} of epoch {self.epoch + 1}/{self.cfg.epochs}"
        if self.task.monitor is None:
            log.info("resumed from %s after %s (optimiser step %d)", path, where, self.global_step)
        else:
            log.info(
                "resumed from %s after %s (best %s %.4f at epoch %s)",
                path,
                where,
                self.task.monitor,
                self.best if self.best is not None else math.nan,
                self.best_epoch,
            )
        return True

    # ------------------------------------------------------------------------------------------------- signals
    def _on_signal(self, signum, frame) -> None:
        self.stop_signal = signum  # acted on at the next step boundary, where the state is consistent

    def _agreed_stop_signal(self) -> int:
        """The stop signal any rank has received (0: none), the same on every rank.

        Ranks receive a signal at different moments (or only some of them do); each acting on its own flag would
        leave the others waiting in the next all-reduce. One tiny all-reduce per optimiser step makes every rank
        save and exit at the same step.
        """
        return distributed.max_over_ranks(self.stop_signal or 0, self.dist, self.device)

    def _stop_now(self, signum: int) -> None:
        """Save a mid-epoch ``last.pt``, end the loader workers, then let the previous handler take the signal:
        submitit's (checkpoint and requeue on its ``SIGUSR2``; log and carry on for SIGTERM, after which this
        raises ``SystemExit``), or the default action, so that the process ends *by the signal* as a shell,
        ``timeout`` or SLURM expect (exit status 128 + the signal's number in a shell)."""
        log.warning(
            "received %s%s: saving last.pt at step %d of epoch %d",
            signal.Signals(signum).name,
            "" if self.stop_signal == signum else " (on another rank)",
            self.step_in_epoch,
            self.epoch + 1,
        )
        self.save(last=True)
        self._end_workers()
        if self.stop_signal != signum:  # this rank got no signal itself: stop with the others
            raise SystemExit(128 + signum)
        previous = self._previous_handlers.get(signum, signal.SIG_DFL)
        if (
            previous is signal.default_int_handler
        ):  # Python's Ctrl-C: a KeyboardInterrupt traceback; end by SIGINT
            previous = signal.SIG_DFL
        signal.signal(signum, previous)
        if callable(previous):
            previous(signum, None)
        else:
            os.kill(os.getpid(), signum)  # default action: terminate, as if we had not intercepted it
        raise SystemExit(128 + signum)  # a handler that returned, or an ignored signal: still stop here

    def _end_workers(self) -> None:
        """End the training loader's workers now, through torch's own shutdown of its iterator: they ignore the stop
        signals, and an exit that left them running would wait for them at interpreter exit."""
        batches, self._batches = self._batches, None
        shutdown = getattr(batches, "_shutdown_workers", None)  # a multi-process iterator (torch >= 1.0)
        if shutdown is not None:
            shutdown()

    # ---------------------------------------------------------------------------------------------------- loop
    def fit(self, train_set: Dataset, val_set: Dataset) -> None:
        """Train until ``trainer.epochs``, validating every epoch; resumes automatically from ``last.pt``."""
        resumed = self.resume()
        train_loader = self.loader(train_set, train=True)
        # A loss that couples a batch's images needs whole batches (the last incomplete one is dropped)
        whole = not self.task.exact_accumulation
        if len(train_loader) < self.accum_steps or (
            whole and len(train_set) < self.micro_batch * self.dist.world_size
        ):
            raise ConfigError(
                f"the train split has {len(train_set)} samples: too few for trainer.batch_size="
                f"{self.cfg.batch_size}{' (one optimiser step needs a whole batch)' if whole else ''}; lower "
                "trainer.batch_size or add data"
            )
        self.steps_per_epoch = len(train_loader) // self.accum_steps
        self.schedule.start(self.steps_per_epoch)
        if not resumed and self.cfg.val_at_start:
            self._validate_at_start(val_set)
        # A signal the process was started ignoring (e.g. SIGINT in a background job) stays ignored. None: a handler
        # installed outside Python, which cannot be put back; the default action stands in for it.
        self._previous_handlers = {
            s: signal.signal(s, self._on_signal) or signal.SIG_DFL
            for s in STOP_SIGNALS
            if signal.getsignal(s) is not signal.SIG_IGN
        }
        try:
            while self.epoch < self.cfg.epochs:
                self._run_epoch(train_loader, val_set)
        finally:
            for s, handler in self._previous_handlers.items():
                signal.signal(s, handler)

    def _validate_at_start(self, val_set: Dataset) -> None:
        """``trainer.val_at_start``: the validation metrics of the initial weights as history row ``epoch 0``,
        the baseline a monitor (e.g. a kNN probe) must beat."""
        val_metrics: dict[str, float] = {}
        if self.dist.is_main:
            model = self.task.baseline_model(self.eval_model(), self.device)
            val_metrics, _, _ = self.evaluate(val_set, "val", model=model)
            log.info(
                "epoch 0 (initial weights)  %s", "  ".join(f"{k} {v:.4f}" for k, v in val_metrics.items())
            )
        self._record({"epoch": 0, "step": 0, **val_metrics})
        distributed.barrier(self.dist)

    def _record(self, row: dict[str, Any]) -> None:
        """Append ``row`` to the history (``history.csv``) and hand the same dict to the trackers (rank 0)."""
        self.history.append(row)
        if self.dist.is_main:
            for tracker in self.loggers:
                tracker.log_epoch(row)

    def _run_epoch(self, train_loader: DataLoader, val_set: Dataset) -> None:
        epoch = self.epoch + 1
        # Worker seeds: the same after a resume, different on each rank (ranks must not augment alike).
        self.generator.manual_seed(self._rank_seed(epoch))
        train_loader.sampler.set_epoch(epoch, skip=self.step_in_epoch * self.micro_batch)
        start = time.perf_counter()
        train_stats = self.train_epoch(train_loader, epoch)
        self.epoch, self.step_in_epoch = epoch, 0
        validate = epoch % self.val_every == 0 or epoch == int(self.cfg.epochs)
        value, improved = None, False
        val_metrics: dict[str, float] = {}
        if validate and self.dist.is_main:
            val_metrics, _, _ = self.evaluate(val_set, "val")
        if validate and self.task.monitor is not None:
            if self.dist.is_main:
                value = val_metrics[self.task.monitor]
            value = distributed.broadcast_float(value, self.dist, self.device)
            self.schedule.validated(value)
            improved = self.best is None or (
                value > self.best if self.task.monitor_mode == "max" else value < self.best
            )
            if improved:
                self.best, self.best_epoch = value, self.epoch
        lr = self.optimizer.param_groups[0]["lr"]
        self._record(
            {
                "epoch": self.epoch,
                "step": self.global_step,
                **train_stats,
                **val_metrics,
                "lr": lr,
                "epoch_time_s": time.perf_counter() - start,
            }
        )
        self.save(last=True, best=improved)
        terms = "  ".join(
            f"{k} {v:.4g}" for k, v in train_stats.items() if k not in ("train/loss", "train/data_wait")
        )
        shown = "  ".join(f"{k} {v:.4f}" for k, v in val_metrics.items() if k != self.task.monitor)
        monitor = f"  {self.task.monitor} {value:.4f}{' *' if improved else ''}" if value is not None else ""
        log.info(
            "epoch %d/%d  train/loss %.4f%s%s%s  lr %.2e  data wait %.0f%%  (%.1f s)",
            self.epoch,
            self.cfg.epochs,
            train_stats["train/loss"],
            f"  {terms}" if terms else "",
            monitor,
            f"  {shown}" if shown and self.task.monitor is None else "",
            lr,
            100 * train_stats["train/data_wait"],
            time.perf_counter() - start,
        )

    def _begin_step(self) -> dict[str, float]:
        """Before an optimiser step's first micro-batch: the per-step learning rate and the task's own state."""
        values = {}
        if (lr := self.schedule.step_lr(self.global_step)) is not None:
            values["lr"] = lr
        total = int(self.cfg.epochs) * self.steps_per_epoch
        values.update(self.task.on_step(self.global_step, total))
        return values

    def train_epoch(self, loader: DataLoader, epoch: int) -> dict[str, float]:
        """One pass over ``loader``; returns the epoch means of the loss and of every other scalar the training
        step returned (``train/<name>``), the values :meth:`Task.on_step` set (last of the epoch), and the share
        of time spent waiting for data."""
        self.train_model.train()
        accum = self.accum_steps
        total, count, data_time = 0.0, 0, 0.0
        sums: dict[str, torch.Tensor] = {}  # other scalars, summed on the device (no sync per step)
        if self._resumed_sums:  # resumed mid-epoch: the epoch's means include the steps before the stop
            resumed = self._resumed_sums.pop()
            total, count = resumed.get("loss", 0.0), resumed.get("count", 0)
            sums = {k: torch.tensor(v, device=self.device) for k, v in resumed.get("scalars", {}).items()}
        self._epoch_sums = {"loss": total, "count": count, "scalars": sums}  # what a mid-epoch last.pt keeps
        step_values: dict[str, float] = {}
        self.optimizer.zero_grad(set_to_none=True)
        start = tick = time.perf_counter()
        with signals.held():  # workers start with the stop signals held back, until they ignore them
            self._batches = iter(loader)
        bar = tqdm(
            self._batches,
            total=len(loader),
            desc=f"epoch {epoch}/{self.cfg.epochs}",
            leave=False,
            disable=None if self.cfg.progress and self.dist.is_main else True,
        )
        for batch in bar:
            data_time += time.perf_counter() - tick
            if count % accum == 0:
                step_values = self._begin_step()
            batch = self._prepare(batch, train=True)
            with self.autocast():
                out = self.task.training_step(self.train_model, batch)
            loss = out["loss"]
            if not torch.isfinite(loss):
                raise Ssl4gieError(
                    f"training loss is {loss.item()} at epoch {epoch}, step {count + 1}; "
                    f"try a lower trainer.lr or trainer.precision=fp32"
                )
            self.scaler.scale(loss / accum).backward()
            count += 1
            total += loss.item()
            for name, value in out.items():
                if name != "loss" and isinstance(value, torch.Tensor) and value.ndim == 0:
                    sums[name] = sums.get(name, 0.0) + value.detach().float()
            self._epoch_sums.update(loss=total, count=count)
            if count % accum == 0:
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.step_in_epoch += accum
                self.global_step += 1
                if signum := self._agreed_stop_signal():
                    self._stop_now(signum)
            bar.set_postfix(loss=f"{total / count:.4f}", **{k: f"{v:.3g}" for k, v in step_values.items()})
            tick = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)  # a trailing incomplete accumulation is dropped
        elapsed = time.perf_counter() - start
        stats = {"train/loss": distributed.mean_over_ranks(total / max(count, 1), self.dist, self.device)}
        for name, value in sums.items():
            stats[f"train/{name}"] = distributed.mean_over_ranks(
                float(value) / max(count, 1), self.dist, self.device
            )
        stats.update({f"train/{k}": v for k, v in step_values.items() if k != "lr"})
        stats["train/data_wait"] = data_time / max(elapsed, 1e-9)
        return stats

    def eval_model(self, model: nn.Module | None = None) -> nn.Module:
        """The model a path that only this process takes may run (validation, the epoch-0 baseline, the kNN
        probe, figures, exports, test, predict): ``model`` (default: the trained one) without DDP wrapper and
        with plain BatchNorm for SyncBatchNorm, sharing the weights (:func:`distributed.local_model`). Every
        rank-0-only forward pass goes through here, so none of them issues a collective the other ranks never
        join."""
        return distributed.local_model(self.model if model is None else model)

    @torch.no_grad()
    def evaluate(
        self,
        dataset: Dataset,
        split: str,
        keep: int = 0,
        save_dir: Path | None = None,
        evaluator: Evaluator | None = None,
        model: nn.Module | None = None,
    ) -> tuple[dict[str, float], list[dict], list[dict]]:
        """Metrics of ``split`` as ``{"<split>/<metric>": value}``, per-image rows, and ``keep`` items to draw.

        Runs on the bare model in this process (rank 0 under DDP), in ``trainer.eval_precision`` (fp32 by
        default, as the study), one ``trainer.eval_batch_size`` batch at a time. ``evaluator`` replaces the
        task's (``keep`` and ``save_dir`` are then its own), e.g. ``Task.frame_predictor`` on frames; ``model``
        replaces the trained model (e.g. :meth:`Task.baseline_model`); either runs as :meth:`eval_model` gives it."""
        model = self.eval_model(model)
        model.eval()
        if evaluator is None:
            evaluator = self.task.evaluator(keep=keep, save_dir=save_dir)
        for batch in tqdm(
            self.loader(dataset, train=False),
            desc=f"{split}",
            leave=False,
            disable=None if self.cfg.progress else True,
        ):
            batch = self._prepare(batch)
            with self.autocast(self.eval_dtype):
                outputs = self.task.predict(model, batch)
            evaluator.process(batch, outputs)
        metrics, rows = evaluator.compute()
        return {f"{split}/{k}": float(v) for k, v in metrics.items()}, rows, evaluator.kept
