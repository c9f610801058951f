"""DINO (v1) full training checkpoints, e.g. ``dino_resnet50_pretrain_full_checkpoint.pth``:
``{'student': {'module.backbone.*', 'module.head.*'}, 'teacher': {'[module.]backbone.*', '[module.]head.*'},
'optimizer', 'epoch', 'args', 'dino_loss', ...}``.

The teacher (the EMA of the student) is the network DINO evaluates (its ``eval_linear.py`` reads
``checkpoint_key=teacher``), so its backbone is kept; the student and both projection heads (an MLP and a
weight-normalised last layer) are dropped. The teacher carries ``module.`` when DINO wrapped it in DDP for SyncBN
(ResNets), and not otherwise (ViTs). Backbone-only releases (``dino_resnet50_pretrain.pth``,
``dino_deitsmall16_pretrain.pth``, ``dino_vitbase16_pretrain.pth``) are plain state dicts: :mod:`.plain`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ssl4gie.models.checkpoints.rules import (
    KEEP,
    PROJECTOR,
    STUDENT,
    TRAINING_STATE,
    Dropped,
    Rules,
    StateDict,
    apply_rules,
    tensor_dict,
)

NAME = "dino"
LAYOUT = "a DINO training checkpoint ({'teacher': {'backbone.*', 'head.*'}, 'student': ...})"
RULES: Rules = (("backbone.", KEEP), ("head.", PROJECTOR))


def _has_backbone(value: Any) -> bool:
    state = tensor_dict(value)
    return state is not None and any(k.removeprefix("module.").startswith("backbone.") for k in state)


def detect(obj: Mapping[str, Any]) -> bool:
    return _has_backbone(obj.get("teacher"))


def taken(obj: Mapping[str, Any]) -> str | None:
    """Which of the file's networks is loaded, for the receipt: always the teacher."""
    return "teacher"


def convert(obj: Mapping[str, Any]) -> tuple[StateDict, Dropped]:
    """Keep the teacher's ``backbone.*``; drop its head, the whole student and the training state."""
    state, dropped = apply_rules(obj, "teacher", RULES, "DINO teacher")
    student = obj.get("student")
    if isinstance(student, dict):
        dropped[TRAINING_STATE].remove("student")
        dropped[STUDENT] = [f"student.{k}" for k in student]
    if not dropped.get(TRAINING_STATE):
        dropped.pop(TRAINING_STATE, None)
    return state, dropped
