"""Barlow Twins training checkpoints ``checkpoint.pth``: ``{'model': {'module.backbone.*', 'module.projector.*',
'module.bn.*'}, ...}``. (The released ``resnet50.pth`` is a plain torchvision state dict: :mod:`.plain`.)"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ssl4gie.models.checkpoints.rules import (
    KEEP,
    PROJECTOR,
    Dropped,
    Rules,
    StateDict,
    apply_rules,
    tensor_dict,
)

NAME = "barlowtwins_full"
LAYOUT = "a Barlow Twins checkpoint.pth ({'model': {'module.backbone.*', 'module.projector.*'}})"
# Barlow Twins' `bn` is the affine-free BatchNorm on the projector output, part of the projection head.
RULES: Rules = (("backbone.", KEEP), ("projector.", PROJECTOR), ("bn.", PROJECTOR))


def detect(obj: Mapping[str, Any]) -> bool:
    model = tensor_dict(obj.get("model"))
    return model is not None and any(k.removeprefix("module.").startswith("backbone.") for k in model)


def convert(obj: Mapping[str, Any]) -> tuple[StateDict, Dropped]:
    """Keep ``module.backbone.*``; drop the projector and its output BatchNorm."""
    return apply_rules(obj, "model", RULES, "Barlow Twins")
