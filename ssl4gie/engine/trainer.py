"""The training engine: one loop for every task. It only needs ``task.training_step(...)["loss"]``,
``task.predict`` and ``task.evaluator``."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ssl4gie.data.collate import collate
from ssl4gie.engine.checkpoint import read_run_checkpoint
from ssl4gie.engine.device import resolve_device, resolve_precision, resolve_workers
from ssl4gie.errors import ConfigError, Ssl4gieError
from ssl4gie.tasks.base import Task
from ssl4gie.utils.io import save_torch
from ssl4gie.utils.seed import rng_state, seed_worker, set_rng_state

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


class Trainer:
    """Fits ``model`` with AdamW + ReduceLROnPlateau (SPEC 5.1), keeping ``last.pt`` and ``best.pt`` in ``output_dir``.

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
    ) -> None:
        self.cfg, self.task, self.output_dir, self.seed = cfg, task, Path(output_dir), seed
        self.fingerprint, self.model_config = fingerprint, model_config
        self.device = resolve_device(cfg.device)
        self.dtype = resolve_precision(cfg.precision, self.device)
        self.num_workers = resolve_workers(cfg.num_workers)
        if cfg.batch_size % cfg.accum_steps:
            raise ConfigError(
                f"trainer.batch_size={cfg.batch_size} is not divisible by "
                f"trainer.accum_steps={cfg.accum_steps}"
            )
        self.micro_batch = cfg.batch_size // cfg.accum_steps
        self.model = model.to(self.device)
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer,
            mode=task.monitor_mode,
            factor=cfg.scheduler.factor,
            patience=cfg.scheduler.patience,
            threshold=cfg.scheduler.threshold,
            min_lr=cfg.scheduler.min_lr,
            eps=cfg.scheduler.get("eps", 1e-8),
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.epoch, self.best, self.best_epoch, self.history = 0, None, None, []
        self.generator = torch.Generator()

    # ----------------------------------------------------------------------------------------------------- data
    def loader(self, dataset: Dataset, train: bool) -> DataLoader:
        drop_last = train and len(dataset) > self.micro_batch  # never drop a whole tiny split
        return DataLoader(
            dataset,
            batch_size=self.micro_batch,
            shuffle=train,
            drop_last=drop_last,
            num_workers=self.num_workers,
            collate_fn=collate,
            worker_init_fn=seed_worker,
            generator=self.generator,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    # --------------------------------------------------------------------------------------------- checkpoints
    def state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "history": self.history,
            "rng": rng_state(),
            "fingerprint": self.fingerprint,
            "model_config": self.model_config,
            "task_state": self.task.extra_state(),
        }

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
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.best, self.best_epoch = ckpt["epoch"], ckpt["best"], ckpt["best_epoch"]
        self.history = list(ckpt["history"])
        set_rng_state(ckpt["rng"])
        log.info(
            "resumed from %s after epoch %d/%d (best %s %.4f at epoch %s)",
            path,
            self.epoch,
            self.cfg.epochs,
            self.task.monitor,
            self.best if self.best is not None else math.nan,
            self.best_epoch,
        )
        return True

    # ---------------------------------------------------------------------------------------------------- loop
    def fit(self, train_set: Dataset, val_set: Dataset) -> None:
        """Train until ``trainer.epochs``, validating every epoch; resumes automatically from ``last.pt``."""
        self.resume()
        train_loader = self.loader(train_set, train=True)
        if len(train_loader) < self.cfg.accum_steps:
            raise ConfigError(
                f"the train split has {len(train_set)} samples: too few for trainer.batch_size="
                f"{self.cfg.batch_size}"
            )
        while self.epoch < self.cfg.epochs:
            self.epoch += 1
            self.generator.manual_seed(self.seed * 100_003 + self.epoch)  # same shuffling after a resume
            start = time.perf_counter()
            train_stats = self.train_epoch(train_loader)
            val_metrics, _, _ = self.evaluate(val_set, "val")
            value = val_metrics[self.task.monitor]
            self.scheduler.step(value)
            improved = self.best is None or (
                value > self.best if self.task.monitor_mode == "max" else value < self.best
            )
            if improved:
                self.best, self.best_epoch = value, self.epoch
            self.history.append(
                {
                    "epoch": self.epoch,
                    **train_stats,
                    **val_metrics,
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "epoch_time_s": time.perf_counter() - start,
                }
            )
            state = self.state()
            if improved:
                save_torch(self.output_dir / "best.pt", state)
            save_torch(self.output_dir / "last.pt", state)  # after best.pt: a resumed run always has its best
            log.info(
                "epoch %d/%d  train/loss %.4f  %s %.4f%s  lr %.1e  data wait %.0f%%  (%.1f s)",
                self.epoch,
                self.cfg.epochs,
                train_stats["train/loss"],
                self.task.monitor,
                value,
                " *" if improved else "",
                self.optimizer.param_groups[0]["lr"],
                100 * train_stats["train/data_wait"],
                time.perf_counter() - start,
            )

    def train_epoch(self, loader: DataLoader) -> dict[str, float]:
        self.model.train()
        accum = self.cfg.accum_steps
        total, count, data_time = 0.0, 0, 0.0
        self.optimizer.zero_grad(set_to_none=True)
        start = tick = time.perf_counter()
        bar = tqdm(
            loader,
            desc=f"epoch {self.epoch}/{self.cfg.epochs}",
            leave=False,
            disable=None if self.cfg.progress else True,
        )
        for step, batch in enumerate(bar, 1):
            data_time += time.perf_counter() - tick
            batch = to_device(batch, self.device)
            with self.autocast():
                out = self.task.training_step(self.model, batch)
            loss = out["loss"]
            if not torch.isfinite(loss):
                raise Ssl4gieError(
                    f"training loss is {loss.item()} at epoch {self.epoch}, step {step}; "
                    f"try a lower trainer.lr or trainer.precision=fp32"
                )
            self.scaler.scale(loss / accum).backward()
            if step % accum == 0:
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
            total += loss.item()
            count += 1
            bar.set_postfix(loss=f"{total / count:.4f}")
            tick = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)  # a trailing incomplete accumulation is dropped
        elapsed = time.perf_counter() - start
        return {"train/loss": total / max(count, 1), "train/data_wait": data_time / max(elapsed, 1e-9)}

    @torch.no_grad()
    def evaluate(
        self, dataset: Dataset, split: str, keep: int = 0, save_dir: Path | None = None
    ) -> tuple[dict[str, float], list[dict], list[dict]]:
        """Metrics of ``split`` as ``{"<split>/<metric>": value}``, per-image rows, and ``keep`` items to draw."""
        self.model.eval()
        evaluator = self.task.evaluator(keep=keep, save_dir=save_dir)
        for batch in tqdm(
            self.loader(dataset, train=False),
            desc=f"{split}",
            leave=False,
            disable=None if self.cfg.progress else True,
        ):
            batch = to_device(batch, self.device)
            with self.autocast():
                outputs = self.task.predict(self.model, batch)
            evaluator.process(batch, outputs)
        metrics, rows = evaluator.compute()
        return {f"{split}/{k}": float(v) for k, v in metrics.items()}, rows, evaluator.kept
