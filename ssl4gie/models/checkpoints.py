"""Read official pretrained checkpoints and convert them into timm backbone key names.

Every pretraining framework of the study ships its weights in its own layout (SPEC section 14): MoCo v3
``.pth.tar`` training checkpoints, Barlow Twins ``resnet50.pth`` / ``checkpoint.pth``, MAE ``{'model': ...}``
files, and plain torchvision / timm state dicts. The backbones themselves are always timm models, so each
layout gets a small *pure* converter into timm's key names (STYLE habit 2), and every load ends with a
:class:`LoadReceipt` that says how many tensors were loaded and which were dropped by which rule (habit 3).
Anything the rules do not explain -- a missing, unexpected or mis-shaped key -- is an error, never a warning.

Files are read with ``torch.load(weights_only=True)`` only: a checkpoint that needs arbitrary pickled Python
objects is refused with an explanation, never loaded with ``weights_only=False``.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import pickle
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ssl4gie.errors import Ssl4gieError

logger = logging.getLogger(__name__)

StateDict = dict[str, Tensor]
Dropped = dict[str, list[str]]

# Reasons a key is dropped; they appear verbatim in receipts and log lines.
PROJECTOR = "projector"
PREDICTOR = "predictor"
MOMENTUM_ENCODER = "momentum encoder"
MAE_DECODER = "MAE decoder"
CLASSIFIER_HEAD = "classifier head"
TRAINING_STATE = "optimizer/training state"
_KEEP = None  # rule outcome: keep the tensor, with the rule's prefix stripped

# A rule is (prefix, outcome); the first rule whose prefix starts the (DDP-stripped) key decides. A key that no
# rule matches is an error, so a converter can never drop something silently.
Rules = tuple[tuple[str, str | None], ...]
# Plain backbones: a 1000-way classifier is fc/head.{weight,bias}; numbered fc.N / head.N are a kept SSL MLP.
_PLAIN_RULES: Rules = (
    ("fc.weight", CLASSIFIER_HEAD),
    ("fc.bias", CLASSIFIER_HEAD),
    ("head.weight", CLASSIFIER_HEAD),
    ("head.bias", CLASSIFIER_HEAD),
    ("fc.", PROJECTOR),
    ("head.", PROJECTOR),
    ("", _KEEP),
)
# MoCo v3 replaces the ResNet fc (2-layer MLP) / ViT head (3-layer MLP) of the base encoder by its projector.
_MOCOV3_RULES: Rules = (
    ("base_encoder.fc.", PROJECTOR),
    ("base_encoder.head.", PROJECTOR),
    ("base_encoder.", _KEEP),
    ("momentum_encoder.", MOMENTUM_ENCODER),
    ("predictor.", PREDICTOR),
)
# Barlow Twins' `bn` is the affine-free BatchNorm on the projector output, part of the projection head.
_BARLOWTWINS_RULES: Rules = (("backbone.", _KEEP), ("projector.", PROJECTOR), ("bn.", PROJECTOR))
_MAE_RULES: Rules = (("mask_token", MAE_DECODER), ("decoder_", MAE_DECODER), *_PLAIN_RULES)

# timm names the classifier `fc` (ResNet) and `head` (ViT); a bare backbone (num_classes=0) has neither.
_CLASSIFIER_PREFIXES = ("fc.", "head.")
_ARCH_FAMILY = {"resnet50": "resnet", "vit_b": "vit"}
_FAMILY_LABEL = {"resnet": "ResNet", "vit": "ViT", "unknown": "unrecognised"}
_EXPECTED_LAYOUTS = (
    "expected a MoCo v3 .pth.tar ({'state_dict': {'module.base_encoder.*', ...}}), a Barlow Twins checkpoint.pth "
    "({'model': {'module.backbone.*', ...}}), an MAE file ({'model': ViT keys}) or a plain ResNet-50 / ViT-B "
    "state dict (optionally under 'state_dict' or 'model')"
)


class CheckpointError(Ssl4gieError, ValueError):
    """A checkpoint file cannot be used as asked; the message names the file and says what was expected."""


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint file onto the CPU without executing pickled code.

    ``.safetensors`` files are read with safetensors; everything else with ``torch.load(weights_only=True)``.
    Raises :class:`CheckpointError` for a missing file, a truncated or non-PyTorch file, a file that needs
    pickled Python objects (refused, never retried unsafely), or a top level that is not a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"Checkpoint file {path} does not exist or is not a file; check the weights path."
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file  # timm depends on safetensors

            obj: Any = load_file(path, device="cpu")
        else:
            # MAE training checkpoints keep their argparse.Namespace under 'args': a plain attribute bag, safe to
            # allow; everything else that needs a Python global is still refused by the weights-only unpickler.
            with torch.serialization.safe_globals([argparse.Namespace]):
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found is None:  # the weights-only unpickler also rejects garbage bytes
            raise _corrupt(path, err) from err
        raise CheckpointError(
            f"Checkpoint {path} contains pickled Python objects ({found.group(1)}) that would have to be executed "
            "to load it; ssl4gie refuses to run code from checkpoint files (torch.load weights_only=True). "
            "If you trust the file, re-save just its tensors once, e.g. "
            "`ckpt = torch.load(path, weights_only=False); torch.save({'model': ckpt['model']}, new_path)`."
        ) from err
    except Exception as err:  # torch reports corrupt files as OSError, RuntimeError, EOFError, KeyError, ...
        raise _corrupt(path, err) from err
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"Checkpoint {path} holds a {type(obj).__name__}; expected a dict (a state dict, or a training "
            "checkpoint that holds one)."
        )
    return obj


def _corrupt(path: Path, err: Exception) -> CheckpointError:
    return CheckpointError(
        f"Checkpoint {path} could not be read: it looks truncated or corrupt, or is not a PyTorch checkpoint "
        f"({type(err).__name__}: {str(err).strip()[:200]}). Download it again and compare its size."
    )


def guess_architecture(keys: Iterable[str]) -> str:
    """Return ``"resnet"``, ``"vit"`` or ``"unknown"`` from state-dict key names (prefixes are ignored)."""
    parts = {part for key in keys for part in key.split(".")}
    is_vit = bool(parts & {"cls_token", "pos_embed", "patch_embed"})
    is_resnet = "layer1" in parts and "bn1" in parts
    if is_vit == is_resnet:
        return "unknown"
    return "vit" if is_vit else "resnet"


def _tensor_dict(value: Any) -> dict[str, Tensor] | None:
    """``value`` if it is a non-empty dict of tensors (a state dict), else None."""
    if isinstance(value, dict) and value and all(isinstance(v, Tensor) for v in value.values()):
        return value
    return None


def _plain_location(obj: Mapping[str, Any]) -> str | None:
    """Where a plain backbone state dict sits: "" for the top level, or "state_dict" / "model"; None if absent."""
    for where in ("", "state_dict", "model"):
        sd = _tensor_dict(obj.get(where) if where else obj)
        if sd is not None and guess_architecture(k.removeprefix("module.") for k in sd) != "unknown":
            return where
    return None


def detect_format(obj: Mapping[str, Any]) -> str:
    """Name the layout of a loaded checkpoint from its contents: mocov3, barlowtwins_full, mae or plain.

    Any ViT state dict under ``'model'`` is reported as "mae" (same conversion as plain, plus decoder rules);
    a ``module.`` DDP prefix is accepted everywhere.

    Raises :class:`CheckpointError` listing the top-level keys and sample tensor keys when no layout fits.
    """
    state = _tensor_dict(obj.get("state_dict"))
    if state is not None and any(k.removeprefix("module.").startswith("base_encoder.") for k in state):
        return "mocov3"
    model = _tensor_dict(obj.get("model"))
    if model is not None:
        keys = [k.removeprefix("module.") for k in model]
        if any(k.startswith("backbone.") for k in keys):
            return "barlowtwins_full"
        if guess_architecture(keys) == "vit":
            return "mae"
    if _plain_location(obj) is not None:
        return "plain"
    samples = [f"{top}.{k}" for top, v in obj.items() if isinstance(v, dict) for k in list(v)[:3]]
    samples += [k for k, v in obj.items() if isinstance(v, Tensor)]
    raise CheckpointError(
        f"unrecognised checkpoint layout: top-level keys {list(obj)[:10]}, sample keys {samples[:6]}; "
        f"{_EXPECTED_LAYOUTS}."
    )


def _apply_rules(obj: Mapping[str, Any], where: str, rules: Rules, layout: str) -> tuple[StateDict, Dropped]:
    """Convert ``obj[where]`` (or ``obj`` itself when ``where`` is "") by ``rules``; other top-level entries
    are recorded as training state. Dropped keys are listed under their original names."""
    state: StateDict = {}
    dropped: Dropped = {}
    if where:
        others = [k for k in obj if k != where]
        if others:
            dropped[TRAINING_STATE] = others
    for key, value in (obj[where] if where else obj).items():
        name = key.removeprefix("module.")  # DDP wrapper prefix
        rule = next(((p, o) for p, o in rules if name.startswith(p)), None)
        if rule is None:
            expected = ", ".join(f"{p}*" for p, _ in rules)
            raise CheckpointError(f"unexpected key {key!r} in a {layout} checkpoint (expected {expected}).")
        prefix, outcome = rule
        if outcome is _KEEP:
            state[name.removeprefix(prefix)] = value
        else:
            dropped.setdefault(outcome, []).append(key)
    return state, dropped


def mocov3_to_timm(obj: Mapping[str, Any]) -> tuple[StateDict, Dropped]:
    """MoCo v3 .pth.tar: keep ``module.base_encoder.*`` minus its projector (fc.* / head.*)."""
    return _apply_rules(obj, "state_dict", _MOCOV3_RULES, "MoCo v3")


def barlowtwins_to_timm(obj: Mapping[str, Any]) -> tuple[StateDict, Dropped]:
    """Barlow Twins checkpoint.pth: keep ``module.backbone.*``; drop projector and its output BatchNorm."""
    return _apply_rules(obj, "model", _BARLOWTWINS_RULES, "Barlow Twins")


def mae_to_timm(obj: Mapping[str, Any]) -> tuple[StateDict, Dropped]:
    """MAE ``{'model': ...}``: the encoder already uses timm ViT names; drop mask token and decoder."""
    return _apply_rules(obj, "model", _MAE_RULES, "MAE")


def plain_to_timm(obj: Mapping[str, Any]) -> tuple[StateDict, Dropped]:
    """Plain backbone state dict (bare, or under 'state_dict' / 'model'): drop a classifier head if present."""
    where = _plain_location(obj)
    if where is None:
        raise CheckpointError(f"no ResNet or ViT state dict found; {_EXPECTED_LAYOUTS}.")
    return _apply_rules(obj, where, _PLAIN_RULES, "plain state dict")


_CONVERTERS: dict[str, Callable[[Mapping[str, Any]], tuple[StateDict, Dropped]]] = {
    "mocov3": mocov3_to_timm,
    "barlowtwins_full": barlowtwins_to_timm,
    "mae": mae_to_timm,
    "plain": plain_to_timm,
}


def to_timm_state_dict(obj: Mapping[str, Any]) -> tuple[StateDict, Dropped]:
    """Convert any supported checkpoint into ``(backbone state dict in timm names, dropped keys by reason)``.

    Pure: tensors are not copied or modified, and ``obj`` is left untouched.
    """
    return _CONVERTERS[detect_format(obj)](obj)


@dataclass
class LoadReceipt:
    """What :func:`load_backbone_weights` did: tensors loaded, keys dropped by rule, tensors resampled."""

    path: str
    format: str
    loaded: int
    dropped: dict[str, list[str]] = field(default_factory=dict)
    resampled: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One log line, e.g. ``loaded 318 backbone tensors from mocov3 file r-50-100ep.pth.tar; dropped by
        rule: 10 projector, ...``."""
        line = f"loaded {self.loaded} backbone tensors from {self.format} file {Path(self.path).name}"
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
    wanted = _ARCH_FAMILY.get(expected_arch) or guess_architecture(target)
    looks = f"looks like a {_FAMILY_LABEL[found]} checkpoint"
    if "unknown" not in (found, wanted) and found != wanted:
        raise CheckpointError(
            f"the file {looks} but backbone={expected_arch}; pick the matching backbone or file."
        )
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

    ``expected_arch`` is the configured backbone ("resnet50" or "vit_b"); it only shapes error messages and the
    architecture check. The only tolerated differences are a ``pos_embed`` of another token grid (resampled with
    timm and listed in ``receipt.resampled``) and BatchNorm ``num_batches_tracked`` counters missing from the
    file. Every tensor of ``model`` is overwritten; parameters keep their ``requires_grad`` (MoCo v3 ViT's
    frozen patch projection therefore becomes trainable in a fresh timm model). Logs the receipt at INFO.
    """
    obj = read_checkpoint(path)
    try:
        fmt = detect_format(obj)
        converted, dropped = _CONVERTERS[fmt](obj)
        state, resampled = _match_to_model(converted, model, expected_arch)
    except CheckpointError as err:
        raise CheckpointError(f"Checkpoint {path}: {err}") from None
    model.load_state_dict(state, strict=True)
    receipt = LoadReceipt(str(path), fmt, len(converted), dropped, resampled)
    logger.info(receipt.summary())
    return receipt
