"""Backbone initialisation per pretraining row (random, supervised ImageNet, MoCo v3, Barlow Twins, MAE)."""

from __future__ import annotations

import logging

from omegaconf import DictConfig
from torch import nn

log = logging.getLogger(__name__)


def load_pretrained(
    encoder: nn.Module, pretraining: DictConfig, backbone: DictConfig, weights_dir: str, input_size: int
):
    """Initialise ``encoder`` as the pretraining row says; returns the load receipt (None for random init)."""
    if pretraining.name == "random":
        log.info("backbone %s: random initialisation (timm defaults)", backbone.name)
        return None
    raise NotImplementedError(pretraining.name)
