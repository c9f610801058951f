"""Plain torchvision / timm backbone state dicts (bare, or under ``'state_dict'`` / ``'model'``), e.g. torchvision's
``resnet50-19c8e357.pth``, Barlow Twins' released ``resnet50.pth`` or DINO's backbone-only releases; a 1000-way
classifier is dropped. Keys may carry a DDP ``module.`` prefix and/or a ``backbone.`` prefix (frameworks that keep
the encoder as ``model.backbone``); with ``backbone.``, the other top-level modules of such a file (``head``,
``neck``, ``projector``, ``fc``) are its projection head."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ssl4gie.models.checkpoints.io import CheckpointError
from ssl4gie.models.checkpoints.rules import (
    PLAIN_RULES,
    PROJECTOR,
    Dropped,
    Rules,
    StateDict,
    apply_rules,
    guess_architecture,
    tensor_dict,
)

NAME = "plain"
LAYOUT = (
    "a plain ResNet / ViT state dict (optionally under 'state_dict' or 'model', keys optionally prefixed "
    "'module.' and/or 'backbone.')"
)
BACKBONE_PREFIX = "backbone."
BACKBONE_RULES: Rules = (
    *((BACKBONE_PREFIX + prefix, outcome) for prefix, outcome in PLAIN_RULES),
    *((head, PROJECTOR) for head in ("head.", "neck.", "projector.", "fc.")),
)


def location(obj: Mapping[str, Any]) -> str | None:
    """Where a plain backbone state dict sits: "" for the top level, or "state_dict" / "model"; None if absent."""
    for where in ("", "state_dict", "model"):
        sd = tensor_dict(obj.get(where) if where else obj)
        if sd is not None and guess_architecture(k.removeprefix("module.") for k in sd) != "unknown":
            return where
    return None


def detect(obj: Mapping[str, Any]) -> bool:
    return location(obj) is not None


def convert(obj: Mapping[str, Any]) -> tuple[StateDict, Dropped]:
    """Strip ``module.`` / ``backbone.`` prefixes; drop a classifier head (and, with ``backbone.``, the heads)."""
    where = location(obj)
    if where is None:
        raise CheckpointError(f"no ResNet or ViT state dict found; expected {LAYOUT}.")
    state = obj[where] if where else obj
    prefixed = any(k.removeprefix("module.").startswith(BACKBONE_PREFIX) for k in state)
    return apply_rules(obj, where, BACKBONE_RULES if prefixed else PLAIN_RULES, "plain state dict")
