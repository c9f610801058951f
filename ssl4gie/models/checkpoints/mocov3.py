"""MoCo v3 ``.pth.tar`` training checkpoints: ``{'state_dict': {'module.base_encoder.*', 'module.momentum_encoder.*',
'module.predictor.*'}, ...}``. The base encoder is kept minus its projector (ResNet ``fc`` 2-layer MLP / ViT ``head``
3-layer MLP, which MoCo v3 put in place of the classifier)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ssl4gie.models.checkpoints.rules import (
    KEEP,
    MOMENTUM_ENCODER,
    PREDICTOR,
    PROJECTOR,
    Dropped,
    Rules,
    StateDict,
    apply_rules,
    tensor_dict,
)

NAME = "mocov3"
LAYOUT = "a MoCo v3 .pth.tar ({'state_dict': {'module.base_encoder.*', 'module.momentum_encoder.*', ...}})"
RULES: Rules = (
    ("base_encoder.fc.", PROJECTOR),
    ("base_encoder.head.", PROJECTOR),
    ("base_encoder.", KEEP),
    ("momentum_encoder.", MOMENTUM_ENCODER),
    ("predictor.", PREDICTOR),
)


def detect(obj: Mapping[str, Any]) -> bool:
    state = tensor_dict(obj.get("state_dict"))
    return state is not None and any(k.removeprefix("module.").startswith("base_encoder.") for k in state)


def convert(obj: Mapping[str, Any]) -> tuple[StateDict, Dropped]:
    """Keep ``module.base_encoder.*`` minus its projector (fc.* / head.*)."""
    return apply_rules(obj, "state_dict", RULES, "MoCo v3")
