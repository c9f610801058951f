"""Pretrained backbones written in the formats the finetuning grid reads (those the study's ``utils.py`` and
``Models/models.py`` load).

* ResNet-50 (MoCo v3, Barlow Twins): a plain torchvision state dict, no ``fc.*``, no prefix -- the form of
  Barlow Twins' released ``resnet50.pth`` (timm's ResNet key names are torchvision's).
* ViT-B (MoCo v3): timm ViT names, no ``head.*`` (the projector).
* MAE: ``{"model": state_dict}`` with the ``MaskedAutoencoderViT`` names, encoder and decoder, as the official
  ``mae_pretrain_vit_base_full.pth``; the finetuning reader drops the decoder by rule.

Each export is a pure function of the module given: the caller picks which encoder to export (for MoCo v3 the base
encoder, never the momentum one). Tensors are detached CPU copies, so a later optimiser step cannot change an
export in flight. These files are the *outputs*; the resumable training checkpoint is the engine's business.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ssl4gie.engine.distributed import unwrap
from ssl4gie.models.checkpoints import guess_architecture
from ssl4gie.ssl.mae import MaskedAutoencoder
from ssl4gie.utils.io import save_torch

StateDict = dict[str, Tensor]
MAE_DECODER_NAMES = (
    "mask_token",
    "decoder_embed",
    "decoder_pos_embed",
    "decoder_blocks",
    "decoder_norm",
    "decoder_pred",
)


def _cpu_state(module: nn.Module, drop_prefix: str) -> StateDict:
    return {
        k: v.detach().cpu().clone()
        for k, v in unwrap(module).state_dict().items()
        if not k.startswith(drop_prefix)
    }


def _expect(state: StateDict, family: str, what: str) -> StateDict:
    found = guess_architecture(state)
    if found != family:
        raise ValueError(f"{what} expects a timm {family} backbone, but the module's keys look {found}")
    return state


def export_resnet(encoder: nn.Module) -> StateDict:
    """Plain torchvision ResNet-50 state dict of ``encoder`` (a timm ``resnet50``): every tensor except ``fc.*``
    (a classifier or MoCo v3's projector MLP), no prefix. Raises ValueError for a non-ResNet module."""
    return _expect(_cpu_state(encoder, "fc."), "resnet", "export_resnet")


def export_vit(encoder: nn.Module) -> StateDict:
    """timm ViT state dict of ``encoder``: every tensor except ``head.*`` (MoCo v3's 3-layer projector sits
    there). ``pos_embed`` is included (fixed or not). Raises ValueError for a non-ViT module."""
    return _expect(_cpu_state(encoder, "head."), "vit", "export_vit")


def export_mae(model: MaskedAutoencoder) -> dict[str, StateDict]:
    """``{"model": encoder tensors (timm names, no head) + mask_token + decoder_* tensors}``, the official
    ``MaskedAutoencoderViT`` layout (150 encoder tensors + 104 decoder tensors for ViT-B/16 dec512d8b)."""
    model = unwrap(model)
    if not isinstance(model, MaskedAutoencoder):
        raise TypeError(f"export_mae expects a MaskedAutoencoder, got {type(model).__name__}")
    state = export_vit(model.encoder)
    decoder = _cpu_state(model, "encoder.")
    unknown = [k for k in decoder if not k.startswith(MAE_DECODER_NAMES)]
    if unknown:  # a new submodule would otherwise leak into the file under a name the readers do not expect
        raise ValueError(f"unexpected MAE tensors outside the encoder and decoder: {unknown[:5]}")
    return {"model": state | decoder}


def write_export(obj: StateDict | dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """``torch.save`` ``obj`` to ``path`` atomically (a temporary name, then a rename); returns the path."""
    return save_torch(path, obj)
