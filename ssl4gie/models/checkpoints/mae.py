"""MAE files ``{'model': ...}``: the encoder-only release (``mae_pretrain_vit_base.pth``), ``_full`` files with the
decoder, and MAE training checkpoints (``args`` namespace, optimiser state). The encoder already uses timm's ViT
names; the mask token and the decoder are dropped."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ssl4gie.models.checkpoints.rules import (
    MAE_DECODER,
    PLAIN_RULES,
    Dropped,
    Rules,
    StateDict,
    apply_rules,
    guess_architecture,
    tensor_dict,
)

NAME = "mae"
LAYOUT = "an MAE file ({'model': ViT keys, with or without the decoder, optimizer and args})"
RULES: Rules = (("mask_token", MAE_DECODER), ("decoder_", MAE_DECODER), *PLAIN_RULES)


def detect(obj: Mapping[str, Any]) -> bool:
    """Any ViT state dict under ``'model'`` (same conversion as plain, plus the decoder rules)."""
    model = tensor_dict(obj.get("model"))
    return model is not None and guess_architecture(k.removeprefix("module.") for k in model) == "vit"


def convert(obj: Mapping[str, Any]) -> tuple[StateDict, Dropped]:
    return apply_rules(obj, "model", RULES, "MAE")
