"""Backbones come from timm; ssl4gie only chooses the model name and its keyword arguments from config."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import timm
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

log = logging.getLogger(__name__)


def create_backbone(cfg: DictConfig, input_size: int, **extra) -> nn.Module:
    """A bare timm backbone (no classifier) for ``cfg`` = the ``backbone`` config group.

    ``backbone.tiny=true`` shrinks it with ``tiny_kwargs`` (fewer blocks/channels, same key names) for CPU tests.
    ``extra`` comes from the task (e.g. ``output_stride=16`` for DeepLabV3+).
    """
    kwargs = OmegaConf.to_container(cfg.timm_kwargs, resolve=True) or {}
    if cfg.get("tiny", False):
        kwargs.update(OmegaConf.to_container(cfg.tiny_kwargs, resolve=True))
    if cfg.get("img_size_kwarg"):
        kwargs[cfg.img_size_kwarg] = input_size
    kwargs.update(extra)
    return timm.create_model(cfg.timm_name, pretrained=False, num_classes=0, **kwargs)


def evenly_spaced_indices(encoder: nn.Module, count: int = 4) -> list[int]:
    """The last block of each of ``count`` equal parts of the network (2, 5, 8, 11 for a 12-block ViT, SPEC 4.5)."""
    n = len(encoder.feature_info)
    return [round((k + 1) * n / count) - 1 for k in range(count)]


def intermediates(encoder: nn.Module, x: torch.Tensor, indices: Sequence[int]) -> list[torch.Tensor]:
    """Raw (un-normalised) NCHW outputs of the given stages/blocks, via timm's common ``forward_intermediates``."""
    return encoder.forward_intermediates(x, indices=list(indices), norm=False, intermediates_only=True)


@torch.no_grad()
def feature_channels(encoder: nn.Module, indices: Sequence[int], input_size: int) -> list[int]:
    """Channel counts of the chosen intermediates, by running a dummy input (decoders are built from shapes)."""
    was_training = encoder.training
    encoder.eval()
    feats = intermediates(encoder, torch.zeros(1, 3, input_size, input_size), indices)
    encoder.train(was_training)
    return [f.shape[1] for f in feats]


class BackboneModel(nn.Module):
    """Base of every model built on a timm ``encoder``: the study's ``--frozen`` in one place.

    With ``frozen=True`` the encoder's parameters get no gradients and its normalisation statistics stay fixed (it
    is kept in eval mode), so the backbone is bit-identical after training; only the head/decoder learns.
    """

    def __init__(self, encoder: nn.Module, frozen: bool = False) -> None:
        super().__init__()
        self.encoder, self.frozen = encoder, frozen
        if frozen:
            encoder.requires_grad_(False)

    def train(self, mode: bool = True) -> BackboneModel:
        super().train(mode)
        if self.frozen:
            self.encoder.eval()
        return self

    def encoder_grad(self):
        """Context for the encoder's forward: no autograd graph when it is frozen."""
        return torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen)

    def freeze_unused(self, example: torch.Tensor) -> list[str]:
        """Make the parameters that the forward pass never uses non-trainable; return their names.

        A dense decoder reads un-normalised intermediates, so e.g. a ViT's final ``norm`` gets no gradient.
        DistributedDataParallel requires a gradient for every trainable parameter in every step (else "Expected to
        have finished reduction in the prior iteration"); marking the unused ones non-trainable keeps their keys in
        the state dict (pretrained and study checkpoints still load) without paying ``find_unused_parameters``
        on every step. Found by one forward/backward of ``example`` in eval mode (no statistics change).
        """
        was_training = self.training
        self.eval()
        with torch.enable_grad():
            self(example).float().sum().backward()
        unused = [n for n, p in self.named_parameters() if p.requires_grad and p.grad is None]
        for name, p in self.named_parameters():
            p.grad = None
            if name in unused:
                p.requires_grad_(False)
        self.train(was_training)
        if unused:
            log.info(
                "%d parameter tensor(s) the model never uses are not trained: %s",
                len(unused),
                ", ".join(unused),
            )
        return unused


class EncoderDecoder(BackboneModel):
    """A timm encoder and a dense decoder fed with the encoder's intermediates; output at the input's size."""

    def __init__(
        self, encoder: nn.Module, decoder: nn.Module, indices: Sequence[int], frozen: bool = False
    ) -> None:
        super().__init__(encoder, frozen)
        self.decoder, self.indices = decoder, list(indices)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.encoder_grad():
            feats = intermediates(self.encoder, x, self.indices)
        return self.decoder(feats, out_size=tuple(x.shape[-2:]))
