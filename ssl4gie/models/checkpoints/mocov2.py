"""MoCo v1/v2 training checkpoints (facebookresearch/moco, e.g. ``moco_v2_800ep_pretrain.pth.tar``):
``{'epoch', 'arch', 'state_dict': {'module.encoder_q.*', 'module.encoder_k.*', 'module.queue',
'module.queue_ptr'}, 'optimizer'}``. The query encoder is a torchvision ResNet whose ``fc`` is MoCo v2's 2-layer
MLP (``fc.0``, ``fc.2``; MoCo v1: a single ``fc``); it is kept minus that projector. The key encoder (the momentum
twin) and the queue of negative keys are dropped."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ssl4gie.models.checkpoints.rules import (
    KEEP,
    MOMENTUM_ENCODER,
    PROJECTOR,
    QUEUE,
    Dropped,
    Rules,
    StateDict,
    apply_rules,
    tensor_dict,
)

NAME = "mocov2"
LAYOUT = "a MoCo v2 .pth.tar ({'state_dict': {'module.encoder_q.*', 'module.encoder_k.*', 'module.queue'}})"
RULES: Rules = (
    ("encoder_q.fc.", PROJECTOR),
    ("encoder_q.", KEEP),
    ("encoder_k.", MOMENTUM_ENCODER),
    ("queue", QUEUE),  # queue and queue_ptr
)


def detect(obj: Mapping[str, Any]) -> bool:
    state = tensor_dict(obj.get("state_dict"))
    return state is not None and any(k.removeprefix("module.").startswith("encoder_q.") for k in state)


def convert(obj: Mapping[str, Any]) -> tuple[StateDict, Dropped]:
    """Keep ``module.encoder_q.*`` minus its ``fc`` MLP."""
    return apply_rules(obj, "state_dict", RULES, "MoCo v2")
