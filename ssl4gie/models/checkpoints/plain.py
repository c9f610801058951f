"""Plain torchvision / timm backbone state dicts (bare, or under ``'state_dict'`` / ``'model'``), e.g. torchvision's
``resnet50-19c8e357.pth`` or Barlow Twins' released ``resnet50.pth``; a 1000-way classifier is dropped."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ssl4gie.models.checkpoints.io import CheckpointError
from ssl4gie.models.checkpoints.rules import (
    PLAIN_RULES,
    Dropped,
    StateDict,
    apply_rules,
    guess_architecture,
    tensor_dict,
)

NAME = "plain"
EXPECTED_LAYOUTS = (
    "expected a MoCo v3 .pth.tar ({'state_dict': {'module.base_encoder.*', ...}}), a Barlow Twins checkpoint.pth "
    "({'model': {'module.backbone.*', ...}}), an MAE file ({'model': ViT keys}) or a plain ResNet-50 / ViT-B "
    "state dict (optionally under 'state_dict' or 'model')"
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
    """Drop a classifier head if present."""
    where = location(obj)
    if where is None:
        raise CheckpointError(f"no ResNet or ViT state dict found; {EXPECTED_LAYOUTS}.")
    return apply_rules(obj, where, PLAIN_RULES, "plain state dict")
