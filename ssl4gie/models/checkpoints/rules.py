"""The conversion machinery every format shares: rules that keep or drop keys by prefix, and what a state dict
looks like (ResNet or ViT) from its key names.

A rule is ``(prefix, outcome)``; the first rule whose prefix starts the (DDP-stripped) key decides. A key that no
rule matches is an error, so a converter can never drop something silently (STYLE habit 3).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from torch import Tensor

from ssl4gie.models.checkpoints.io import CheckpointError

StateDict = dict[str, Tensor]
Dropped = dict[str, list[str]]

# Reasons a key is dropped; they appear verbatim in receipts and log lines.
PROJECTOR = "projector"
PREDICTOR = "predictor"
MOMENTUM_ENCODER = "momentum encoder"
MAE_DECODER = "MAE decoder"
CLASSIFIER_HEAD = "classifier head"
TRAINING_STATE = "optimizer/training state"
STUDENT = "student (the EMA teacher is the one evaluated)"
MASK_TOKEN = "mask token"
QUEUE = "negative-key queue"
KEEP = None  # rule outcome: keep the tensor, with the rule's prefix stripped

Rules = tuple[tuple[str, str | None], ...]
# Plain backbones: a 1000-way classifier is fc/head.{weight,bias}; numbered fc.N / head.N are a kept SSL MLP.
PLAIN_RULES: Rules = (
    ("fc.weight", CLASSIFIER_HEAD),
    ("fc.bias", CLASSIFIER_HEAD),
    ("head.weight", CLASSIFIER_HEAD),
    ("head.bias", CLASSIFIER_HEAD),
    ("fc.", PROJECTOR),
    ("head.", PROJECTOR),
    ("", KEEP),
)


def guess_architecture(keys: Iterable[str]) -> str:
    """Return ``"resnet"``, ``"vit"`` or ``"unknown"`` from state-dict key names (prefixes are ignored)."""
    parts = {part for key in keys for part in key.split(".")}
    is_vit = bool(parts & {"cls_token", "pos_embed", "patch_embed"})
    is_resnet = "layer1" in parts and "bn1" in parts
    if is_vit == is_resnet:
        return "unknown"
    return "vit" if is_vit else "resnet"


def prefix_counts(obj: Mapping[str, Any], depth: int = 2, limit: int = 6) -> list[tuple[str, int]]:
    """The ``limit`` most common key prefixes (first ``depth`` dotted parts) of a loaded checkpoint, counting the
    tensors of top-level state dicts under their top-level name (``state_dict.module.encoder_q``)."""
    names = []
    for top, value in obj.items():
        if isinstance(value, Tensor):
            names.append(top)
        elif isinstance(value, dict):
            names += [f"{top}.{k}" for k, v in value.items() if isinstance(v, Tensor)]
    counts = Counter(".".join(name.split(".")[: depth + (0 if name in obj else 1)]) for name in names)
    return counts.most_common(limit)


def tensor_dict(value: Any) -> dict[str, Tensor] | None:
    """``value`` if it is a non-empty dict of tensors (a state dict), else None."""
    if isinstance(value, dict) and value and all(isinstance(v, Tensor) for v in value.values()):
        return value
    return None


def apply_rules(obj: Mapping[str, Any], where: str, rules: Rules, layout: str) -> tuple[StateDict, Dropped]:
    """Convert ``obj[where]`` (or ``obj`` itself when ``where`` is "") by ``rules``; other top-level entries
    are recorded as training state. Dropped keys are listed under their original names."""
    state: StateDict = {}
    dropped: Dropped = {}
    if where:
        others = [k for k in obj if k != where]
        if others:
            dropped[TRAINING_STATE] = others
    for key, value in (obj[where] if where else obj).items():
        name = key.removeprefix("module.")  # DDP wrapper prefix
        rule = next(((p, o) for p, o in rules if name.startswith(p)), None)
        if rule is None:
            expected = ", ".join(f"{p}*" for p, _ in rules)
            raise CheckpointError(f"unexpected key {key!r} in a {layout} checkpoint (expected {expected}).")
        prefix, outcome = rule
        if outcome is KEEP:
            state[name.removeprefix(prefix)] = value
        else:
            dropped.setdefault(outcome, []).append(key)
    return state, dropped
