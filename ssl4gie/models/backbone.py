"""Backbones come from timm; ssl4gie only chooses the model name and its keyword arguments from config."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import timm
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ssl4gie.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ssl4gie.errors import ConfigError

log = logging.getLogger(__name__)

REGISTER_CHOICES = "auto, 0, 4 (or another count of register tokens)"


def register_count(cfg: DictConfig) -> int | None:
    """``backbone.registers`` as a number (None for a backbone without the option).

    ``auto`` must have been resolved from the weights first (:func:`ssl4gie.models.pretrained.resolve_backbone`).
    """
    value = cfg.get("registers")
    if value is None:
        return None
    if value == "auto":
        raise ConfigError(
            f"backbone.registers=auto (backbone={cfg.name}) is resolved from the weights file when the model is "
            "built; build it through the task, or give the count"
        )
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"backbone.registers={value} is not valid; valid: {REGISTER_CHOICES}")
    return value


def _build(cfg: DictConfig, input_size: int, **extra) -> nn.Module:
    kwargs = OmegaConf.to_container(cfg.timm_kwargs, resolve=True) or {}
    if registers := register_count(cfg):
        kwargs.update(OmegaConf.to_container(cfg.get("register_kwargs") or {}, resolve=True))
        kwargs["reg_tokens"] = registers
    if cfg.get("tiny", False):
        kwargs.update(OmegaConf.to_container(cfg.tiny_kwargs, resolve=True))
    if cfg.get("img_size_kwarg"):
        kwargs[cfg.img_size_kwarg] = input_size
    kwargs.update(extra)
    return timm.create_model(cfg.timm_name, pretrained=False, num_classes=0, **kwargs)


def create_backbone(cfg: DictConfig, input_size: int, **extra) -> nn.Module:
    """A bare timm backbone (no classifier) for ``cfg`` = the ``backbone`` config group.

    ``backbone.tiny=true`` shrinks it with ``tiny_kwargs`` (fewer blocks/channels, same key names) for CPU tests.
    ``backbone.registers=N`` (N > 0) adds N register tokens with ``register_kwargs`` (timm's layout of DINOv2 with
    registers: ``reg_tokens=N``, position embedding on patches only). ``extra`` comes from the task (e.g.
    ``output_stride=16`` for DeepLabV3+). A ViT input size that is not a multiple of the patch is logged.
    """
    model = _build(cfg, input_size, **extra)
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if patch is not None and input_size % patch[0]:
        log.warning(
            "input size %d is not a multiple of backbone=%s's %d-px patch: the last %d pixels of each side are "
            "not seen (choose task.input_size as a multiple of %d)",
            input_size,
            cfg.name,
            patch[0],
            input_size % patch[0],
            patch[0],
        )
    return model


def patch_size(cfg: DictConfig) -> int | None:
    """The ViT patch side of backbone ``cfg`` (None for a CNN), read from the timm model built on the meta
    device (no memory, no initialisation cost)."""
    with torch.device("meta"):
        patch = getattr(getattr(_build(cfg, 224), "patch_embed", None), "patch_size", None)
    return None if patch is None else int(patch[0])


class InputNorm(nn.Module):
    """Re-normalises ImageNet-normalised images (what every dataset reader gives, as the study's
    ``Data/dataloaders.py``) to a pretraining row's own ``mean`` / ``std`` (e.g. EndoViT's):
    ``(x·σ_in + μ_in − μ) / σ``, one affine map per channel.

    The constants are non-persistent buffers: model checkpoints keep their keys, and they follow ``.to(device)``.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ConfigError(
                f"pretraining.normalize needs 3 means and 3 positive stds (RGB), got mean {list(mean)}, "
                f"std {list(std)}"
            )
        source_mean, source_std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        mean_t, std_t = torch.tensor([float(m) for m in mean]), torch.tensor([float(s) for s in std])
        self.register_buffer("scale", (source_std / std_t).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", ((source_mean - mean_t) / std_t).view(1, 3, 1, 1), persistent=False)
        self.mean, self.std = mean_t.tolist(), std_t.tolist()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.to(x.dtype) + self.shift.to(x.dtype)

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std} (from ImageNet's)"


def input_norm(normalize: Mapping[str, Any] | None) -> InputNorm | None:
    """:class:`InputNorm` for a row's ``pretraining.normalize`` (``{mean, std}``), or None (ImageNet's, as is)."""
    if not normalize:
        return None
    if "mean" not in normalize or "std" not in normalize:
        raise ConfigError(f"pretraining.normalize={dict(normalize)} needs both mean and std (3 values each)")
    return InputNorm(list(normalize["mean"]), list(normalize["std"]))


def evenly_spaced_indices(encoder: nn.Module, count: int = 4) -> list[int]:
    """The last block of each of ``count`` equal parts of the network (2, 5, 8, 11 for a 12-block
    ViT, the study's DPT hooks)."""
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
    ``norm`` (:func:`input_norm` of the row) maps the ImageNet-normalised inputs to the row's own normalisation
    before the encoder; subclasses call :meth:`prepare` on their input.
    """

    def __init__(self, encoder: nn.Module, frozen: bool = False, norm: InputNorm | None = None) -> None:
        super().__init__()
        self.encoder, self.frozen = encoder, frozen
        self.input_norm = norm
        if frozen:
            encoder.requires_grad_(False)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's input: ``x`` re-normalised for the row (unchanged for ImageNet-normalised rows)."""
        return x if self.input_norm is None else self.input_norm(x)

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
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        indices: Sequence[int],
        frozen: bool = False,
        norm: InputNorm | None = None,
    ) -> None:
        super().__init__(encoder, frozen, norm)
        self.decoder, self.indices = decoder, list(indices)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.encoder_grad():
            feats = intermediates(self.encoder, self.prepare(x), self.indices)
        return self.decoder(feats, out_size=tuple(x.shape[-2:]))
