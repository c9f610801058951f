"""Loading a pretrained backbone file into a bare timm backbone, strictly, with a receipt."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor, nn

from ssl4gie.models.checkpoints import formats
from ssl4gie.models.checkpoints.io import CheckpointError, read_checkpoint
from ssl4gie.models.checkpoints.rules import StateDict, guess_architecture

logger = logging.getLogger("ssl4gie.models.checkpoints")

# timm names the classifier `fc` (ResNet) and `head` (ViT); a bare backbone (num_classes=0) has neither.
_CLASSIFIER_PREFIXES = ("fc.", "head.")
_FAMILY_LABEL = {"resnet": "ResNet", "vit": "ViT", "unknown": "unrecognised"}


@dataclass
class LoadReceipt:
    """What :func:`load_backbone_weights` did: tensors loaded, keys dropped by rule, tensors resampled."""

    path: str
    format: str
    loaded: int
    dropped: dict[str, list[str]] = field(default_factory=dict)
    resampled: list[str] = field(default_factory=list)
    taken: str | None = None  # which network of a two-network file was loaded ("teacher" for DINO / DINOv2)

    def summary(self) -> str:
        """One log line, e.g. ``loaded 318 backbone tensors from mocov3 file r-50-100ep.pth.tar; dropped by
        rule: 10 projector, ...`` (``loaded 161 teacher backbone tensors from dino file ...`` for DINO)."""
        which = f" {self.taken}" if self.taken else ""
        line = f"loaded {self.loaded}{which} backbone tensors from {self.format} file {Path(self.path).name}"
        rules = ", ".join(f"{len(keys)} {reason}" for reason, keys in self.dropped.items())
        line += f"; dropped by rule: {rules}" if rules else "; nothing dropped"
        if self.resampled:
            line += f"; resampled to the model's patch grid: {', '.join(self.resampled)}"
        return line


def _resample_pos_embed(state: StateDict, model: nn.Module, target: Tensor) -> bool:
    """Resample ``state['pos_embed']`` to the model's token grid in place; False if it cannot apply."""
    from timm.layers import resample_abs_pos_embed

    source = state["pos_embed"]
    patch_embed = getattr(model, "patch_embed", None)
    prefix = 0 if getattr(model, "no_embed_class", False) else getattr(model, "num_prefix_tokens", 1)
    grid = source.shape[1] - prefix if source.ndim == 3 else -1
    if (
        patch_embed is None
        or grid <= 0
        or math.isqrt(grid) ** 2 != grid
        or source.shape[-1] != target.shape[-1]
    ):
        return False  # not a square grid of the same width: left to the shape check, which names it
    resampled = resample_abs_pos_embed(source, list(patch_embed.grid_size), num_prefix_tokens=prefix)
    if resampled.shape != target.shape:
        return False
    state["pos_embed"] = resampled
    return True


def _examples(keys: Iterable[str], limit: int = 5) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def _register_tokens(sd: dict[str, Tensor]) -> int:
    token = sd.get("reg_token")
    return 0 if token is None else int(token.shape[1])


def _vit_shape_problem(state: StateDict, target: dict[str, Tensor], expected_arch: str) -> str | None:
    """A plain-words reason why a ViT file cannot fit a ViT model (register tokens, width, patch size), or None."""
    found, wanted = _register_tokens(state), _register_tokens(target)
    if found != wanted:
        return (
            f"the file has {found} register token(s) but backbone={expected_arch} was built with {wanted} "
            f"(backbone.registers={wanted}); set backbone.registers=auto (what the file has) or {found}"
        )
    source, model = state.get("patch_embed.proj.weight"), target.get("patch_embed.proj.weight")
    if source is None or model is None or source.ndim != 4:
        return None
    if source.shape[0] != model.shape[0]:
        return (
            f"the file is a ViT of width {source.shape[0]} but backbone={expected_arch} has width "
            f"{model.shape[0]}; pick the backbone the file was trained for"
        )
    if source.shape[-2:] != model.shape[-2:]:
        return (
            f"the file is a ViT with {source.shape[-2]}×{source.shape[-1]} patches but backbone={expected_arch} "
            f"has {model.shape[-2]}×{model.shape[-1]}; pick the backbone the file was trained for"
        )
    return None


def _match_to_model(state: StateDict, model: nn.Module, expected_arch: str) -> tuple[StateDict, list[str]]:
    """Check a converted state dict against ``model``; return it completed for a strict load, and the
    resampled keys. Raises :class:`CheckpointError` for anything the conversion rules do not explain."""
    target = model.state_dict()
    head = [k for k in target if k.startswith(_CLASSIFIER_PREFIXES)]
    if head:
        raise CheckpointError(
            f"the model has classifier parameters ({_examples(head)}); build the backbone with num_classes=0 "
            "(task heads are attached separately)."
        )
    found = guess_architecture(state)
    wanted = guess_architecture(target)
    looks = f"looks like a {_FAMILY_LABEL[found]} checkpoint"
    if "unknown" not in (found, wanted) and found != wanted:
        raise CheckpointError(
            f"the file {looks} but backbone={expected_arch}; pick the matching backbone or file."
        )
    if found == wanted == "vit" and (problem := _vit_shape_problem(state, target, expected_arch)):
        raise CheckpointError(f"does not match the backbone={expected_arch} model: {problem}.")
    state = dict(state)
    resampled = []
    source, wanted_pos = state.get("pos_embed"), target.get("pos_embed")
    regrid = source is not None and wanted_pos is not None and source.shape != wanted_pos.shape
    if regrid and _resample_pos_embed(state, model, wanted_pos):
        resampled.append("pos_embed")
    # BatchNorm step counters do not affect the forward pass; files saved without them keep the model's own.
    for key, value in target.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value
    missing, unexpected = target.keys() - state.keys(), state.keys() - target.keys()
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(target[k].shape)}"
        for k in sorted(state.keys() & target.keys())
        if state[k].shape != target[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"keys the model needs are missing from the file: {_examples(missing)}")
    if unexpected:
        problems.append(f"keys in the file are unknown to the model: {_examples(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch: {'; '.join(mismatched[:5])}")
    if problems:
        raise CheckpointError(
            f"does not match the backbone={expected_arch} model ({'; '.join(problems)}). After conversion to "
            f"timm names the file {looks}."
        )
    return state, resampled


def load_backbone_weights(model: nn.Module, path: str | os.PathLike[str], expected_arch: str) -> LoadReceipt:
    """Load any supported pretrained checkpoint into a bare timm backbone (``num_classes=0``), strictly.

    ``expected_arch`` is the configured backbone (``backbone.name``: "resnet50", "vit_b", "vit_s", "vit_b14");
    it only shapes error messages (the architecture check compares the file with the model itself). A ViT file
    whose register-token count, width or patch size differs from the model's is refused naming both. The only
    tolerated differences are a ``pos_embed`` of another token grid (resampled with timm and listed in
    ``receipt.resampled``) and BatchNorm ``num_batches_tracked`` counters missing from the file. Every tensor of ``model`` is overwritten; parameters keep their ``requires_grad`` (MoCo v3 ViT's
    frozen patch projection therefore becomes trainable in a fresh timm model). Logs the receipt at INFO.
    """
    obj = read_checkpoint(path)
    try:
        fmt = formats.detect_format(obj)
        converted, dropped = formats.CONVERTERS[fmt](obj)
        state, resampled = _match_to_model(converted, model, expected_arch)
    except CheckpointError as err:
        raise CheckpointError(f"Checkpoint {path}: {err}") from None
    model.load_state_dict(state, strict=True)
    receipt = LoadReceipt(str(path), fmt, len(converted), dropped, resampled, formats.taken(fmt, obj))
    logger.info(receipt.summary())
    return receipt
