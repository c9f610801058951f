"""Optimisers, parameter groups and per-step schedules shared by finetuning and pretraining, chosen by config.

* :class:`Lars`: SGD with momentum and layer-wise trust ratios, the rule of the MoCo v3 and Barlow Twins code.
  Written here because torch has no LARS; ``timm.optim.Lars`` differs in small ways (it adapts only groups with
  weight decay unless ``always_adapt``, and has its own options), and this one is easier to check against the recipe.
* :func:`param_groups`: which parameters get weight decay / trust-ratio adaptation and which learning-rate scale.
* :func:`adamw`, :func:`lars`: the optimisers of the ``trainer/optimizer`` config group (``_partial_`` targets).
* :class:`PlateauSchedule`, :class:`WarmupCosineSchedule`: the ``trainer/scheduler`` group; the per-step one, like
  :func:`warmup_cosine` and :func:`momentum_cosine`, is a pure function of the optimiser step (nothing to drift on
  resume).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ssl4gie.errors import ConfigError

log = logging.getLogger(__name__)


class Lars(torch.optim.Optimizer):
    """SGD with momentum and LARS trust ratios (You et al. 2017, as used by MoCo v3 and Barlow Twins).

    Per parameter ``p`` with gradient ``g``, in each group (options may differ per group):

    1. ``g ← g + weight_decay·p``;
    2. if ``lars_adapt``: ``g ← g · trust_coefficient·‖p‖/‖g‖``, with ratio 1 when either norm is 0;
    3. ``mu ← momentum·mu + g`` (``mu`` starts at 0), ``p ← p − lr·mu``.

    The recipes exempt 1-D parameters (biases, norms) from both weight decay and adaptation: put them in a group
    with ``weight_decay=0, lars_adapt=False`` (:func:`param_groups` does), which is then plain SGD with momentum.
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter] | Iterable[dict[str, Any]],
        lr: float,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        trust_coefficient: float = 0.001,
        lars_adapt: bool = True,
    ) -> None:
        if lr < 0 or weight_decay < 0 or not 0 <= momentum < 1 or trust_coefficient <= 0:
            raise ValueError(
                f"Lars needs lr >= 0, weight_decay >= 0, 0 <= momentum < 1 and trust_coefficient > 0; got lr={lr}, "
                f"weight_decay={weight_decay}, momentum={momentum}, trust_coefficient={trust_coefficient}"
            )
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            trust_coefficient=trust_coefficient,
            lars_adapt=lars_adapt,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """One update of every parameter that has a gradient; ``closure`` re-evaluates the loss (optional)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["weight_decay"] != 0:
                    g = g.add(p, alpha=group["weight_decay"])
                if group["lars_adapt"]:
                    p_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    # torch.where instead of a Python branch: no host-device sync per parameter.
                    ratio = torch.where(
                        (p_norm > 0) & (g_norm > 0),
                        group["trust_coefficient"] * p_norm / g_norm,
                        torch.ones_like(p_norm),
                    )
                    g = g.mul(ratio)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                mu = state["mu"]
                mu.mul_(group["momentum"]).add_(g)
                p.add_(mu, alpha=-group["lr"])
        return loss


def _is_1d(name: str, p: torch.Tensor) -> bool:
    """The exemption rule of MoCo v3 / Barlow Twins LARS and MAE AdamW (timm ``add_weight_decay``): 1-D tensors
    (BatchNorm/LayerNorm weights, biases) and anything named ``*.bias``. Tokens such as ``cls_token`` are 3-D and
    decay, as in MAE."""
    return p.ndim <= 1 or name == "bias" or name.endswith(".bias")


def param_groups(
    named_params: Iterable[tuple[str, nn.Parameter]], exclude_1d: bool, one_d_lr_scale: float = 1.0
) -> list[dict[str, Any]]:
    """Optimiser parameter groups of the parameters that require grad (the others are skipped).

    * ``exclude_1d=True`` (MoCo v3 LARS, Barlow Twins LARS, MAE AdamW): group ``weights`` (optimiser's weight
      decay, ``lr_scale=1``) and group ``no_decay`` for 1-D parameters and biases (``weight_decay=0``,
      ``lr_scale=one_d_lr_scale``; Barlow Twins: 0.0048/0.2), which LARS does not adapt.
    * ``exclude_1d=False`` (MoCo v3 ViT AdamW): one group ``all``, weight decay on every parameter.

    Every group carries ``name`` (for logging) and ``lr_scale`` (its lr = the schedule's lr × lr_scale); empty
    groups are left out.
    """
    if not exclude_1d and one_d_lr_scale != 1.0:
        raise ConfigError(
            f"optimizer.one_d_lr_scale={one_d_lr_scale} needs optimizer.exclude_1d=true (with exclude_1d=false all "
            "parameters share one group and one learning rate)"
        )
    trainable = [(name, p) for name, p in named_params if p.requires_grad]
    if not exclude_1d:
        groups = [{"name": "all", "params": [p for _, p in trainable], "lr_scale": 1.0}]
    else:
        groups = [
            {
                "name": "weights",
                "params": [p for n, p in trainable if not _is_1d(n, p)],
                "lr_scale": 1.0,
            },
            {
                "name": "no_decay",
                "params": [p for n, p in trainable if _is_1d(n, p)],
                "lr_scale": float(one_d_lr_scale),
                "weight_decay": 0.0,
            },
        ]
    return [g for g in groups if g["params"]]


def _groups(
    named_params: Iterable[tuple[str, nn.Parameter]], lr: float, exclude_1d: bool, one_d_lr_scale: float
) -> list[dict[str, Any]]:
    groups = param_groups(named_params, exclude_1d, one_d_lr_scale)
    if not groups:
        raise ConfigError("trainer.optimizer: the model has no trainable parameters (is everything frozen?)")
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    return groups


def _check_name(name: str, builds: str, kind: str) -> None:
    """A group's ``name`` is what it builds: ``trainer.<kind>.name=lars`` on the adamw group is a typo for the
    group choice, refused instead of silently building AdamW."""
    if name != builds:
        raise ConfigError(
            f"trainer.{kind}.name={name} does not match the {kind} that trainer/{kind}={builds} builds; choose "
            f"another {kind} with trainer/{kind}={name}"
        )


def _log_groups(optimizer: torch.optim.Optimizer, name: str) -> None:
    log.info(
        "optimizer %s: %s",
        name,
        ", ".join(
            f"{g['name']} {len(g['params'])} tensors lr×{g['lr_scale']:g} wd {g['weight_decay']:g}"
            for g in optimizer.param_groups
        ),
    )


def adamw(
    named_params: Iterable[tuple[str, nn.Parameter]],
    *,
    lr: float,
    weight_decay: float,
    betas: Sequence[float],
    exclude_1d: bool,
    one_d_lr_scale: float,
    name: str = "adamw",
    fused: bool = False,
) -> torch.optim.AdamW:
    """torch's AdamW over :func:`param_groups` of ``named_params``, each group at ``lr × lr_scale``
    (``trainer/optimizer=adamw``, a ``_partial_`` target: the trainer adds the parameters, ``lr``,
    ``weight_decay`` and ``fused``, torch's fused kernel)."""
    _check_name(name, "adamw", "optimizer")
    groups = _groups(named_params, float(lr), bool(exclude_1d), float(one_d_lr_scale))
    optimizer = torch.optim.AdamW(
        groups, lr=float(lr), betas=tuple(betas), weight_decay=float(weight_decay), fused=bool(fused)
    )
    _log_groups(optimizer, name)
    return optimizer


def lars(
    named_params: Iterable[tuple[str, nn.Parameter]],
    *,
    lr: float,
    weight_decay: float,
    momentum: float,
    trust_coefficient: float,
    exclude_1d: bool,
    one_d_lr_scale: float,
    name: str = "lars",
    fused: bool = False,
) -> Lars:
    """:class:`Lars` over :func:`param_groups` of ``named_params`` (``trainer/optimizer=lars``): the exempt group
    (1-D parameters and biases, ``exclude_1d``) is plain SGD with momentum. There is no fused kernel: ``fused`` is
    accepted and ignored, so that the trainer calls every optimiser alike."""
    _check_name(name, "lars", "optimizer")
    groups = _groups(named_params, float(lr), bool(exclude_1d), float(one_d_lr_scale))
    for g in groups:
        g["lars_adapt"] = g["name"] != "no_decay"
    optimizer = Lars(
        groups,
        lr=float(lr),
        weight_decay=float(weight_decay),
        momentum=float(momentum),
        trust_coefficient=float(trust_coefficient),
    )
    _log_groups(optimizer, name)
    return optimizer


def warmup_cosine(
    step: float, total_steps: float, warmup_steps: float, peak: float, final: float = 0.0
) -> float:
    """Linear warmup from 0 to ``peak`` over ``warmup_steps``, then a half cosine from ``peak`` to ``final`` at
    ``total_steps`` (held there after).

    ``lr(0) = 0`` (unless there is no warmup), ``lr(warmup_steps) = peak``, ``lr(total_steps) = final``. This is the
    per-iteration schedule of MoCo v3 and MAE (``final=0``) and of Barlow Twins
    (``final = 0.001·peak``: ``peak·q + final·(1 − q)`` with ``q = ½(1 + cos(π t))``, the same expression).
    """
    if step < warmup_steps:
        return peak * step / warmup_steps
    span = total_steps - warmup_steps
    t = min(1.0, (step - warmup_steps) / span) if span > 0 else 1.0
    return final + (peak - final) * 0.5 * (1.0 + math.cos(math.pi * t))


def momentum_cosine(step: float, total_steps: float, m0: float) -> float:
    """MoCo v3's momentum schedule ``1 − ½(1 + cos(π·step/total_steps))(1 − m0)``: ``m0`` at step 0 rising to 1."""
    t = min(1.0, step / total_steps) if total_steps > 0 else 1.0
    return 1.0 - 0.5 * (1.0 + math.cos(math.pi * t)) * (1.0 - m0)


class PlateauSchedule:
    """ReduceLROnPlateau on the task's validation metric, stepped after each validation (``trainer/scheduler=
    plateau``: the study's finetuning). A ``_partial_`` target: the trainer adds the optimiser and what the task and
    the run say (``monitor``, ``monitor_mode``, ``epochs``, ``peak_lr``)."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        monitor: str | None,
        monitor_mode: str,
        epochs: int,
        peak_lr: float,
        factor: float,
        patience: int,
        threshold: float,
        min_lr: float,
        eps: float,
        name: str = "plateau",
    ) -> None:
        _check_name(name, "plateau", "scheduler")
        if monitor is None:
            raise ConfigError(
                "trainer/scheduler=plateau needs a validation metric, which this task has not (task.monitor is "
                "null); use trainer/scheduler=warmup_cosine"
            )
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode=monitor_mode,
            factor=factor,
            patience=patience,
            threshold=threshold,
            min_lr=min_lr,
            eps=eps,
        )

    def start(self, steps_per_epoch: int) -> None:
        """Called once the number of optimiser steps per epoch is known; nothing to do per epoch."""

    def step_lr(self, step: int) -> float | None:
        """The learning rate set for optimiser step ``step``: None, it only changes after a validation."""
        return None

    def validated(self, value: float) -> None:
        self.scheduler.step(value)

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.scheduler.load_state_dict(state)


class WarmupCosineSchedule:
    """Per optimiser step, every group's lr = :func:`warmup_cosine` × the group's ``lr_scale`` (``trainer/scheduler=
    warmup_cosine``: the pretraining recipes): linear warmup from 0 over ``warmup_epochs`` (possibly fractional),
    then half a cosine from ``peak_lr`` down to ``final_lr_ratio × peak_lr``. The lr is recomputed from the step,
    so a resumed run continues the same curve; the state is only the last step applied."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        monitor: str | None,
        monitor_mode: str,
        epochs: int,
        peak_lr: float,
        warmup_epochs: float,
        final_lr_ratio: float,
        name: str = "warmup_cosine",
    ) -> None:
        _check_name(name, "warmup_cosine", "scheduler")
        if not 0 <= float(final_lr_ratio) <= 1:
            raise ConfigError(
                f"trainer.scheduler.final_lr_ratio={final_lr_ratio} must lie in [0, 1] (Barlow Twins: 0.001)"
            )
        if int(epochs) < 1:
            raise ConfigError(f"trainer.epochs={epochs}: the schedule needs at least one epoch")
        self.optimizer, self.epochs, self.peak = optimizer, int(epochs), float(peak_lr)
        self.warmup_epochs, self.final = float(warmup_epochs), float(final_lr_ratio) * float(peak_lr)
        self.total_steps, self.warmup_steps = 0, 0.0
        self.last_step: int | None = None

    def start(self, steps_per_epoch: int) -> None:
        """Fix the curve's length once the number of optimiser steps per epoch is known."""
        if steps_per_epoch < 1:
            raise ConfigError(
                f"trainer.scheduler: an epoch needs at least one optimiser step, got {steps_per_epoch}"
            )
        self.total_steps = steps_per_epoch * self.epochs
        self.warmup_steps = self.warmup_epochs * steps_per_epoch
        if self.warmup_steps < 0:
            raise ConfigError(f"trainer.scheduler.warmup_epochs={self.warmup_epochs:g} must be at least 0")
        if self.warmup_steps > self.total_steps:
            # A trial run shorter than the recipe's warmup runs as the official code runs it (MoCo v3's and MAE's
            # adjust_learning_rate, Barlow Twins' adjust_learning_rate: lr = peak · step / warmup while warming up)
            log.warning(
                "trainer.scheduler.warmup_epochs=%g is longer than the run (%d epochs): the schedule never leaves "
                "its warmup, the learning rate rises linearly to %.3g of its peak and no cosine decay follows",
                self.warmup_epochs,
                self.epochs,
                (self.total_steps - 1) / self.warmup_steps,
            )

    def lr(self, step: int) -> float:
        """The schedule's lr at ``step`` (before group scales)."""
        return warmup_cosine(step, self.total_steps, self.warmup_steps, self.peak, self.final)

    def step_lr(self, step: int) -> float:
        """Set every group's lr for optimiser step ``step`` (0-based); returns the unscaled lr."""
        lr = self.lr(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        self.last_step = step
        return lr

    def validated(self, value: float) -> None:
        """Nothing: the curve depends on the step only."""

    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self.last_step, "total_steps": self.total_steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the last step (and re-apply its lr); warns if the run length changed since the checkpoint. An
        empty state (a checkpoint of an earlier version) restores nothing: the next step sets its lr anyway."""
        if not state:
            return
        if state.get("total_steps") != self.total_steps:
            log.warning(
                "schedule resumed with %s total steps instead of the checkpoint's %s: the lr curve changes",
                self.total_steps,
                state.get("total_steps"),
            )
        self.last_step = state.get("last_step")
        if self.last_step is not None:
            self.step_lr(self.last_step)
