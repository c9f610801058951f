"""Optimisers, parameter groups and per-step schedules shared by finetuning and pretraining, chosen by config.

* :class:`Lars`: SGD with momentum and layer-wise trust ratios, the rule of the MoCo v3 and Barlow Twins code.
  Written here because torch has no LARS; ``timm.optim.Lars`` differs in small ways (it adapts only groups with
  weight decay unless ``always_adapt``, and has its own options), and this one is easier to check against the recipe.
* :func:`param_groups`: which parameters get weight decay / trust-ratio adaptation and which learning-rate scale.
* :func:`build_optimizer`: ``adamw`` or ``lars`` from an ``optimizer`` config.
* :func:`warmup_cosine`, :func:`momentum_cosine`, :class:`StepSchedule`: learning rate and momentum as pure
  functions of the optimiser step (nothing to drift on resume).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
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
      decay, ``lars_adapt=True``, ``lr_scale=1``) and group ``no_decay`` for 1-D parameters and biases
      (``weight_decay=0``, ``lars_adapt=False``, ``lr_scale=one_d_lr_scale``; Barlow Twins: 0.0048/0.2).
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
        groups = [{"name": "all", "params": [p for _, p in trainable], "lr_scale": 1.0, "lars_adapt": True}]
    else:
        groups = [
            {
                "name": "weights",
                "params": [p for n, p in trainable if not _is_1d(n, p)],
                "lr_scale": 1.0,
                "lars_adapt": True,
            },
            {
                "name": "no_decay",
                "params": [p for n, p in trainable if _is_1d(n, p)],
                "lr_scale": float(one_d_lr_scale),
                "weight_decay": 0.0,
                "lars_adapt": False,
            },
        ]
    return [g for g in groups if g["params"]]


_COMMON_KEYS = {"name", "lr", "weight_decay", "exclude_1d", "one_d_lr_scale"}


def _adamw(cfg: Mapping[str, Any], groups: list[dict[str, Any]], fused: bool) -> torch.optim.Optimizer:
    for g in groups:
        g.pop("lars_adapt", None)  # a LARS-only option; AdamW would keep it as a stray group key
    return torch.optim.AdamW(
        groups,
        lr=float(cfg["lr"]),
        betas=tuple(cfg.get("betas", (0.9, 0.999))),
        eps=float(cfg.get("eps", 1e-8)),
        weight_decay=float(cfg["weight_decay"]),
        fused=bool(fused),  # False: torch picks foreach on CUDA, as the trainer did before this module
    )


def _lars(cfg: Mapping[str, Any], groups: list[dict[str, Any]], fused: bool) -> torch.optim.Optimizer:
    return Lars(
        groups,
        lr=float(cfg["lr"]),
        weight_decay=float(cfg["weight_decay"]),
        momentum=float(cfg.get("momentum", 0.9)),
        trust_coefficient=float(cfg.get("trust_coefficient", 0.001)),
    )


# name -> (builder, the options it reads beyond the common ones)
OPTIMIZERS: dict[str, tuple[Callable[..., torch.optim.Optimizer], set[str]]] = {
    "adamw": (_adamw, {"betas", "eps"}),
    "lars": (_lars, {"momentum", "trust_coefficient"}),
}


def build_optimizer(
    cfg: Mapping[str, Any],
    named_params: Iterable[tuple[str, nn.Parameter]],
    fused: bool = False,
    option: str = "optimizer",
) -> torch.optim.Optimizer:
    """The optimiser ``cfg.name`` over :func:`param_groups` of ``named_params``, each group at ``cfg.lr × lr_scale``.

    ``cfg`` (a dict or DictConfig; ``option`` is its config path, for error messages): ``name`` (adamw | lars),
    ``lr``, ``weight_decay``, optional ``exclude_1d`` (default false), ``one_d_lr_scale`` (1.0); adamw: ``betas``
    (torch's 0.9, 0.999), ``eps``; lars: ``momentum`` (0.9), ``trust_coefficient`` (0.001). ``fused`` selects
    torch's fused AdamW kernel and is ignored by LARS.
    """
    name = cfg.get("name")
    if name not in OPTIMIZERS:
        raise ConfigError(f"{option}.name={name!r} is not valid; valid: {', '.join(sorted(OPTIMIZERS))}")
    builder, extra = OPTIMIZERS[name]
    missing = sorted(k for k in ("lr", "weight_decay") if cfg.get(k) is None)
    if missing:
        raise ConfigError(f"{option} ({name}) needs {', '.join(f'{option}.{k}' for k in missing)}")
    unknown = sorted(set(cfg) - _COMMON_KEYS - extra)
    if unknown:
        raise ConfigError(
            f"{option} ({name}) does not take {', '.join(unknown)}; valid: {', '.join(sorted(_COMMON_KEYS | extra))}"
        )
    groups = param_groups(
        named_params, bool(cfg.get("exclude_1d", False)), float(cfg.get("one_d_lr_scale", 1.0))
    )
    if not groups:
        raise ConfigError(f"{option}: the model has no trainable parameters (is everything frozen?)")
    for g in groups:
        g["lr"] = float(cfg["lr"]) * g["lr_scale"]
    optimizer = builder(cfg, groups, fused)
    log.info(
        "optimizer %s: %s",
        name,
        ", ".join(
            f"{g['name']} {len(g['params'])} tensors lr×{g['lr_scale']:g} wd {g['weight_decay']:g}"
            for g in optimizer.param_groups
        ),
    )
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


def _warmup_cosine_schedule(
    cfg: Mapping[str, Any], total_steps: int, steps_per_epoch: int, peak: float, option: str
):
    warmup_epochs = float(cfg.get("warmup_epochs", 0))
    ratio = float(cfg.get("final_lr_ratio", 0.0))
    warmup_steps = warmup_epochs * steps_per_epoch
    if warmup_steps < 0:
        raise ConfigError(f"{option}.warmup_epochs={warmup_epochs} must be at least 0")
    if warmup_steps > total_steps:
        # A trial run shorter than the recipe's warmup runs as the official code runs it (MoCo v3's and MAE's
        # adjust_learning_rate, Barlow Twins' adjust_learning_rate: lr = peak · step / warmup while warming up)
        log.warning(
            "%s.warmup_epochs=%g is longer than the run (%g epochs): the schedule never leaves its warmup, the "
            "learning rate rises linearly to %.3g of its peak and no cosine decay follows",
            option,
            warmup_epochs,
            total_steps / steps_per_epoch,
            (total_steps - 1) / warmup_steps,
        )
    if not 0 <= ratio <= 1:
        raise ConfigError(f"{option}.final_lr_ratio={ratio} must lie in [0, 1] (Barlow Twins: 0.001)")
    return lambda step: warmup_cosine(step, total_steps, warmup_steps, peak, ratio * peak)


# name -> (factory(cfg, total_steps, steps_per_epoch, peak, option) -> step -> lr, its options beyond ``name``)
SCHEDULES: dict[str, tuple[Callable[..., Callable[[float], float]], set[str]]] = {
    "warmup_cosine": (_warmup_cosine_schedule, {"warmup_epochs", "final_lr_ratio"}),
}


class StepSchedule:
    """Sets every group's lr to ``schedule(step) × group['lr_scale']`` before each optimiser step.

    ``cfg``: ``name`` (warmup_cosine) and its options (``warmup_epochs``, possibly fractional; ``final_lr_ratio``,
    the end lr as a fraction of the peak). The peak is ``peak_lr`` or, by default, the optimiser's base ``lr``
    (``cfg.lr`` of :func:`build_optimizer`). The state is only the last step applied; the lr is recomputed from the
    step, so a resumed run continues the same curve.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        cfg: Mapping[str, Any],
        steps_per_epoch: int,
        epochs: int,
        peak_lr: float | None = None,
        option: str = "scheduler",
    ) -> None:
        name = cfg.get("name")
        if name not in SCHEDULES:
            raise ConfigError(f"{option}.name={name!r} is not valid; valid: {', '.join(sorted(SCHEDULES))}")
        factory, keys = SCHEDULES[name]
        unknown = sorted(set(cfg) - keys - {"name"})
        if unknown:
            raise ConfigError(
                f"{option} ({name}) does not take {', '.join(unknown)}; valid: {', '.join(sorted(keys))}"
            )
        if steps_per_epoch < 1 or epochs < 1:
            raise ConfigError(
                f"{option}: need at least one epoch of at least one step, got {epochs} × {steps_per_epoch}"
            )
        self.optimizer = optimizer
        self.total_steps = steps_per_epoch * epochs
        self.peak = float(optimizer.defaults["lr"] if peak_lr is None else peak_lr)
        self._lr = factory(cfg, self.total_steps, steps_per_epoch, self.peak, option)
        self.last_step: int | None = None

    def lr(self, step: int) -> float:
        """The schedule's lr at ``step`` (before group scales)."""
        return self._lr(step)

    def apply(self, step: int) -> float:
        """Set every group's lr for optimiser step ``step`` (0-based); returns the unscaled lr."""
        lr = self._lr(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        self.last_step = step
        return lr

    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self.last_step, "total_steps": self.total_steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the last step (and re-apply its lr); warns if the run length changed since the checkpoint."""
        if state.get("total_steps") != self.total_steps:
            log.warning(
                "schedule resumed with %s total steps instead of the checkpoint's %s: the lr curve changes",
                self.total_steps,
                state.get("total_steps"),
            )
        self.last_step = state.get("last_step")
        if self.last_step is not None:
            self.apply(self.last_step)
