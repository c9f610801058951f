"""DINOv2 files, converted to timm's ViT layout with timm's own DINOv2 converter.

* Hub releases (``dinov2_vitb14_pretrain.pth``, ``dinov2_vitb14_reg4_pretrain.pth``): a bare backbone state dict
  with layer scale (``blocks.N.ls1.gamma`` / ``ls2.gamma``), ``mask_token`` and, with registers,
  ``register_tokens``; the position embedding is for 518² (37×37 patches + CLS).
* The teacher checkpoint that DINOv2's training writes at every evaluation (``train.py`` ``do_test``:
  ``<output_dir>/eval/training_<iteration>/teacher_checkpoint.pth``, a full state dict): ``{'teacher':
  {'backbone.*', 'dino_head.*', 'ibot_head.*'}}``; and a training checkpoint re-saved as a full state dict
  (``{'model': {'teacher.backbone.*', 'teacher.dino_head.*', 'teacher.ibot_head.*', 'student.*'}, ...}``). The
  teacher is kept (DINOv2 evaluates it). Backbones trained with ``block_chunks`` name their blocks
  ``blocks.<chunk>.<index>.*``; the index is the global block number, so the chunk level is removed.

The periodic training checkpoints themselves (``model_<iteration>.rank_<N>.pth``, one per GPU) are FSDP local
state dicts: each holds its rank's slice of the flattened parameters, pickled as ``ShardedTensor`` objects that only
an initialised process group of the same size can unpickle. They are refused with the file to pass instead
(:data:`ssl4gie.models.checkpoints.io.FSDP_SHARD`).

timm (``vision_transformer._convert_dinov2``) drops the mask token, renames SwiGLU weights and, for files with
registers, moves ``register_tokens`` to ``reg_token`` and folds the CLS slot of the position embedding into
``cls_token`` (timm's register models add position embeddings to patches only, ``no_embed_class``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ssl4gie.models.checkpoints.rules import (
    KEEP,
    MASK_TOKEN,
    PLAIN_RULES,
    PROJECTOR,
    STUDENT,
    Dropped,
    Rules,
    StateDict,
    apply_rules,
    guess_architecture,
    tensor_dict,
)

NAME = "dinov2"
LAYOUT = (
    "a DINOv2 hub file (ViT keys with blocks.N.ls1.gamma, mask_token, register_tokens), teacher checkpoint "
    "({'teacher': {'backbone.*', 'dino_head.*'}}: eval/training_<iteration>/teacher_checkpoint.pth) or training "
    "checkpoint re-saved as a full state dict ({'model': {'teacher.backbone.*', 'student.backbone.*', ...}})"
)
HEADS = ("dino_head.", "ibot_head.")
HUB_RULES: Rules = (("mask_token", MASK_TOKEN), *PLAIN_RULES)
TEACHER_RULES: Rules = (
    ("backbone.mask_token", MASK_TOKEN),
    ("backbone.", KEEP),
    *((head, PROJECTOR) for head in HEADS),
)
TRAINING_RULES: Rules = (
    ("teacher.backbone.mask_token", MASK_TOKEN),
    ("teacher.backbone.", KEEP),
    *((f"teacher.{head}", PROJECTOR) for head in HEADS),
    ("student.", STUDENT),
)
_CHUNKED = re.compile(r"^blocks\.\d+\.(\d+)\.")


def _is_dinov2_backbone(state: Mapping[str, Any]) -> bool:
    keys = [k.removeprefix("module.") for k in state]
    if guess_architecture(keys) != "vit" or any(k.startswith("decoder_") for k in keys):
        return False  # an MAE file with its decoder also has a mask token
    return any(k in ("mask_token", "register_tokens") or k.endswith(".ls1.gamma") for k in keys)


def _location(obj: Mapping[str, Any]) -> tuple[str, Rules] | None:
    """Where the backbone sits and the rules that pick it: hub file (top level, 'model' or 'state_dict'),
    training checkpoint ('model' with teacher./student.), or teacher checkpoint ('teacher')."""
    model = tensor_dict(obj.get("model"))
    if model is not None and any(k.startswith("teacher.backbone.") for k in model):
        return "model", TRAINING_RULES
    teacher = tensor_dict(obj.get("teacher"))
    if teacher is not None and any(k.startswith(HEADS) for k in teacher):
        return "teacher", TEACHER_RULES
    for where in ("", "model", "state_dict"):
        state = tensor_dict(obj.get(where) if where else obj)
        if state is not None and _is_dinov2_backbone(state):
            return where, HUB_RULES
    return None


def detect(obj: Mapping[str, Any]) -> bool:
    return _location(obj) is not None


def taken(obj: Mapping[str, Any]) -> str | None:
    """ "teacher" for training / teacher checkpoints, None for hub files (one network)."""
    location = _location(obj)
    return None if location is None or location[1] is HUB_RULES else "teacher"


def unchunk(state: StateDict) -> StateDict:
    """``blocks.<chunk>.<i>.*`` (DINOv2's ``block_chunks``) -> ``blocks.<i>.*``; other keys unchanged."""
    if not any(_CHUNKED.match(k) for k in state):
        return state
    return {_CHUNKED.sub(r"blocks.\1.", k): v for k, v in state.items()}


def convert(obj: Mapping[str, Any]) -> tuple[StateDict, Dropped]:
    from timm.models.vision_transformer import _convert_dinov2

    where, rules = _location(obj) or ("", HUB_RULES)
    state, dropped = apply_rules(obj, where, rules, "DINOv2")
    # timm's converter pops keys from what it is given: hand it a new dict so the caller's object stays intact
    return _convert_dinov2(unchunk(dict(state)), None), dropped
