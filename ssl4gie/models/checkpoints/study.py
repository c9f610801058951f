"""The study's finetuned model files, as its training scripts saved them into ``Trained models/``
(``torch.save`` at the end of each ``train_*.py``).

Each file is a dict ``epoch, model_state_dict, optimizer_state_dict, scaler_state_dict, loss, val_perf, test_perf,
py_state, np_state, torch_state``; ``loss`` is a numpy float64 and ``np_state`` a numpy RNG tuple, so the file is
read with ``weights_only=True`` and exactly the numpy types those two need allow-listed (:func:`read_study_file`),
memory-mapped so that a 2.7 GB file is not held twice. ``model_state_dict`` is the bare model's state dict, whose
key layout tells the model kind (:func:`detect_kind`); a pure converter per kind maps it onto ssl4gie's model.

Converted so far: classification (ResNet-50 and ViT-B: the backbone's keys plus ``lin_head.*``), ViT-B + DPT
segmentation and depth, ResNet-50 depth, ResNet-50 segmentation (smp 0.3.2 DeepLabV3+) and the ResNet-50-FPN
detector (torchvision 0.10 names; built with the study's always-frozen BatchNorm) and the ViT-B detector (built
with ``task.pyramid_norm=study`` and ``task.pos_embed=study``: whole-(C,H,W) LayerNorm pyramid, 1×197×768 table
interpolated to the canvas on every forward).
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssl4gie.models.checkpoints.io import CheckpointError
from ssl4gie.models.checkpoints.rules import Dropped, StateDict, guess_architecture

KEYS = (
    "epoch",
    "model_state_dict",
    "optimizer_state_dict",
    "scaler_state_dict",
    "loss",
    "val_perf",
    "test_perf",
)
UNUSED_MAE_POS = "MAE decoder position embedding (unused by the study's finetuned model)"
TRAINING_STATE = "optimizer/training state"


def _numpy_globals() -> list:
    """What ``loss`` (a numpy float64) and ``np_state`` (MT19937 state: a uint32 array) need to unpickle, under the
    names numpy 1 (the study's environment) and numpy 2 pickle them with; nothing else."""
    core = getattr(np, "_core", None) or np.core
    # numpy >= 1.25 pickles a dtype with its class (Float64DType for loss, UInt32DType for the MT19937 keys)
    allowed: list = [np.ndarray, np.dtype, type(np.dtype(np.float64)), type(np.dtype(np.uint32))]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed += [
            (core.multiarray.scalar, f"{module}.scalar"),
            (core.multiarray._reconstruct, f"{module}._reconstruct"),
        ]
    return allowed


STORED = ("epoch", "val_perf", "test_perf")  # the training script's numbers at the epoch it kept


def stored_numbers(obj: Mapping[str, Any]) -> dict[str, int | float]:
    """The file's own ``epoch``, ``val_perf`` and ``test_perf`` as plain Python numbers, exactly as stored (a
    one-element tensor or numpy scalar by its ``item()``, e.g. the detection script's ``mAP.item()``); a key the
    file lacks is left out."""
    out = {}
    for key in STORED:
        value = obj.get(key)
        size = value.numel() if isinstance(value, torch.Tensor) else getattr(value, "size", None)
        if isinstance(value, torch.Tensor | np.ndarray | np.generic) and size == 1:
            value = value.item()
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = value
    return out


def is_study_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is one of the study's files (read memory-mapped; any read problem: False, and the real
    reader reports it)."""
    try:
        read_study_file(path)
    except CheckpointError:
        return False
    return True


def is_study_file(obj: Mapping[str, Any]) -> bool:
    """A dict as the study's training scripts save it (and not an ssl4gie run checkpoint)."""
    return isinstance(obj.get("model_state_dict"), dict) and "epoch" in obj and "model_config" not in obj


def read_study_file(path: str | Path) -> dict[str, Any]:
    """Load a study file onto the CPU (memory-mapped, ``weights_only=True`` with the numpy types of ``loss`` and
    ``np_state`` allowed). Raises :class:`CheckpointError` naming the file for a truncated or foreign file."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"checkpoint {path} holds pickled Python objects beyond the study's numpy RNG state and loss, which "
            f"are refused: {str(err).splitlines()[0][:200]}"
        ) from err
    except Exception as err:  # truncated, not a zip, not a torch file
        raise CheckpointError(
            f"checkpoint {path} is truncated or not a PyTorch checkpoint ({type(err).__name__}: "
            f"{str(err).strip()[:160]}); download it again and compare its size"
        ) from err
    if not isinstance(obj, dict) or not is_study_file(obj):
        raise CheckpointError(
            f"{path} is not one of the study's finetuned model files (expected keys {KEYS})"
        )
    return obj


def detect_kind(state: Mapping[str, Any]) -> tuple[str, str]:
    """``(task, family)`` of a study ``model_state_dict`` from its key names (the study's model
    classes in ``Models/models.py``, smp and torchvision); family is
    ``resnet`` / ``vit`` / ``unknown``, task ``classification`` / ``segmentation`` / ``depth`` / ``detection`` /
    ``unknown``."""
    keys = list(state)
    if any(k.startswith(("rpn.", "roi_heads.")) for k in keys):
        backbone = [
            k.removeprefix("backbone.").removeprefix("body.") for k in keys if k.startswith("backbone.")
        ]
        return "detection", guess_architecture(backbone)
    family = guess_architecture(keys)
    if any(k.startswith("lin_head.") for k in keys):
        return "classification", family
    if any(k.startswith("segmentation_head.") for k in keys):
        return "segmentation", guess_architecture(k.removeprefix("encoder.") for k in keys)
    if any(k.startswith(("decoder_levels.", "output_conv.")) for k in keys):
        return "depth", family
    if any(k.startswith("decoder.output_conv.") for k in keys):
        # the DPT head: conv, BN, final conv at 0/1/4 for segmentation; conv, conv, conv at 0/2/4 for depth
        return (
            "depth" if any(k.startswith("decoder.output_conv.2.") for k in keys) else "segmentation"
        ), family
    return "unknown", family


def describe(task: str, family: str) -> str:
    label = {"resnet": "ResNet-50", "vit": "ViT-B"}.get(family, "unrecognised-backbone")
    return f"the study's {task} {label} model" if task != "unknown" else f"an unrecognised {label} model"


def classification_to_ssl4gie(state: Mapping[str, Any]) -> tuple[StateDict, Dropped]:
    """Study classifier (backbone keys + ``lin_head``) -> ssl4gie's :class:`Classifier` (``encoder.*`` +
    ``head.*``). MAE-derived models also carry the unused ``decoder_pos_embed``, dropped by rule."""
    out: StateDict = {}
    dropped: Dropped = {}
    for key, value in state.items():
        if key == "decoder_pos_embed":
            dropped.setdefault(UNUSED_MAE_POS, []).append(key)
        elif key.startswith("lin_head."):
            out["head." + key.removeprefix("lin_head.")] = value
        else:
            out["encoder." + key] = value
    return out, dropped


UNUSED_DPT_UNIT = "DPT fusion unit the study never runs (refinenet4.resConfUnit1)"
# The study's DPT names -> ssl4gie's (ssl4gie.models.decoders.DPT): reassemble level L = act_postprocess{L}2,
# projection = layer{L}_rn, fusion block L = refinenet{L} (resConfUnit1 on the skip input, resConfUnit2 after the
# sum), head = output_conv (the same module indices: conv/BN/final conv at 0/1/4, or conv/conv/conv at 0/2/4).
_DPT_RENAMES = (
    *((f"decoder.act_postprocess{level}2.", f"decoder.reassemble.{level - 1}.") for level in range(1, 5)),
    *((f"decoder.layer{level}_rn.", f"decoder.project.{level - 1}.") for level in range(1, 5)),
    *(
        (f"decoder.refinenet{level}.resConfUnit1.", f"decoder.fusion.{level - 1}.skip_unit.")
        for level in range(1, 5)
    ),
    *(
        (f"decoder.refinenet{level}.resConfUnit2.", f"decoder.fusion.{level - 1}.unit.")
        for level in range(1, 5)
    ),
    *(
        (f"decoder.refinenet{level}.out_conv.", f"decoder.fusion.{level - 1}.out_conv.")
        for level in range(1, 5)
    ),
    ("decoder.output_conv.", "decoder.head."),
)


def dense_vit_to_ssl4gie(state: Mapping[str, Any]) -> tuple[StateDict, Dropped]:
    """Study ViT-B + DPT (segmentation or depth): the ViT's keys at the top level and ``decoder.*`` in the study's
    DPT names -> ssl4gie's :class:`EncoderDecoder` (``encoder.*`` + ``decoder.*`` in ssl4gie's DPT names). The
    unit of the coarsest fusion block that never runs, and an MAE model's ``decoder_pos_embed``, are dropped."""
    out: StateDict = {}
    dropped: Dropped = {}
    for key, value in state.items():
        if key == "decoder_pos_embed":
            dropped.setdefault(UNUSED_MAE_POS, []).append(key)
        elif key.startswith("decoder.refinenet4.resConfUnit1."):
            dropped.setdefault(UNUSED_DPT_UNIT, []).append(key)
        elif key.startswith("decoder."):
            old, new = next(((o, n) for o, n in _DPT_RENAMES if key.startswith(o)), (key, key))
            if old == key:
                raise CheckpointError(f"unexpected decoder key {key!r} in the study's DPT model")
            out[new + key.removeprefix(old)] = value
        else:
            out["encoder." + key] = value
    return out, dropped


# The study's ResNet depth decoder (ResNet_from_Any, dense="depth") -> ssl4gie's ResNetDepthDecoder: the same
# module indices inside each Sequential (conv/BN/ReLU/conv/BN/ReLU/conv/BN; up/conv/up/conv/ReLU/conv/Sigmoid).
_RESNET_DEPTH_RENAMES = (
    ("decoder_levels.", "decoder.levels."),
    ("output_conv.", "decoder.head."),
)
_RESNET_DEPTH_PARTS = (
    (".chan_reduce.", ".reduce."),
    (".process.", ".residual."),
    (".identity.", ".shortcut."),
)


def resnet_depth_to_ssl4gie(state: Mapping[str, Any]) -> tuple[StateDict, Dropped]:
    """Study ResNet-50 depth model: torchvision ResNet keys + ``decoder_levels.*`` + ``output_conv.*`` ->
    ssl4gie's :class:`EncoderDecoder` (``encoder.*`` + ``decoder.levels.*`` / ``decoder.head.*``)."""
    out: StateDict = {}
    for key, value in state.items():
        prefix = next(((o, n) for o, n in _RESNET_DEPTH_RENAMES if key.startswith(o)), None)
        if prefix is None:
            out["encoder." + key] = value
            continue
        new = prefix[1] + key.removeprefix(prefix[0])
        for old_part, new_part in _RESNET_DEPTH_PARTS:
            new = new.replace(old_part, new_part)
        out[new] = value
    return out, {}


# smp 0.3.2's DeepLabV3Plus names -> ssl4gie's DeepLabV3Plus (ssl4gie.models.decoders.deeplabv3plus); the first
# rule whose prefix matches applies. The encoders share torchvision's names (smp deletes the classifier).
_SMP_RENAMES = (
    ("decoder.aspp.0.convs.4.1.", "decoder.aspp.branches.4.conv."),  # image pooling: pool, conv, BN, ReLU
    ("decoder.aspp.0.convs.4.2.", "decoder.aspp.branches.4.bn."),
    ("decoder.aspp.0.convs.", "decoder.aspp.branches."),
    ("decoder.aspp.0.project.", "decoder.aspp.project."),
    ("decoder.aspp.1.", "decoder.aspp_out.0."),  # separable conv after ASPP, then its BN
    ("decoder.aspp.2.", "decoder.aspp_out.1."),
    ("decoder.block1.", "decoder.low_proj."),
    ("decoder.block2.", "decoder.fuse."),
    ("segmentation_head.0.", "decoder.head."),
    ("encoder.", "encoder."),
)


def smp_deeplabv3plus_to_ssl4gie(state: Mapping[str, Any]) -> tuple[StateDict, Dropped]:
    """Study ResNet-50 segmentation model (smp 0.3.2 ``DeepLabV3Plus``: ``encoder.*``, ``decoder.*``,
    ``segmentation_head.*``) -> ssl4gie's :class:`EncoderDecoder` with its DeepLabV3+ decoder."""
    out: StateDict = {}
    for key, value in state.items():
        old, new = next(((o, n) for o, n in _SMP_RENAMES if key.startswith(o)), (None, None))
        if old is None:
            raise CheckpointError(f"unexpected key {key!r} in the study's smp DeepLabV3+ model")
        out[new + key.removeprefix(old)] = value
    return out, {}


def resnet_detector_to_ssl4gie(state: Mapping[str, Any]) -> tuple[StateDict, Dropped]:
    """Study ResNet-50-FPN Faster R-CNN (torchvision 0.10 names) -> the same model in today's torchvision names:
    version-1 FPN blocks ``{inner,layer}_blocks.{i}.{weight,bias}`` and RPN head ``conv.{weight,bias}`` became
    ``...{i}.0.*`` and ``conv.0.0.*`` (Conv2dNormActivation); everything else is unchanged."""
    out: StateDict = {}
    for key, value in state.items():
        parts = key.split(".")
        if key.startswith(("backbone.fpn.inner_blocks.", "backbone.fpn.layer_blocks.")) and len(parts) == 5:
            key = ".".join([*parts[:4], "0", parts[4]])
        elif key in ("rpn.head.conv.weight", "rpn.head.conv.bias"):
            key = f"rpn.head.conv.0.0.{parts[-1]}"
        out[key] = value
    return out, {}


# The study's ViTDet_FPN levels -> ssl4gie's SimpleFeaturePyramid: fpn1..4 are strides 32, 16, 8, 4, and every
# module index inside the Sequentials is the same (MaxPool/ConvT first, no LN after a single ConvT).
_VIT_FPN_LEVELS = {"fpn1": "stride32", "fpn2": "stride16", "fpn3": "stride8", "fpn4": "stride4"}


def vit_detector_to_ssl4gie(state: Mapping[str, Any]) -> tuple[StateDict, Dropped]:
    """Study ViT-B Faster R-CNN (``backbone.<ViT keys>``, ``backbone.fpn.fpn{1..4}.*``, torchvision 0.10
    ``rpn.*`` / ``roi_heads.*``) -> ssl4gie's ViT detector built with the study's variants (``backbone.encoder.*``,
    ``backbone.fpn.stride{4,8,16,32}.*``; ``pos_embed`` keeps its 1×(1+G²)×C shape). The RPN head conv becomes
    ``conv.0.0.*``; an MAE model's ``backbone.decoder_pos_embed`` is dropped by rule."""
    out: StateDict = {}
    dropped: Dropped = {}
    for key, value in state.items():
        if key == "backbone.decoder_pos_embed":
            dropped.setdefault(UNUSED_MAE_POS, []).append(key)
        elif key.startswith("backbone.fpn."):
            level, rest = key.removeprefix("backbone.fpn.").split(".", 1)
            if level not in _VIT_FPN_LEVELS:
                raise CheckpointError(f"unexpected pyramid key {key!r} in the study's ViT detector")
            out[f"backbone.fpn.{_VIT_FPN_LEVELS[level]}.{rest}"] = value
        elif key.startswith("backbone."):
            out["backbone.encoder." + key.removeprefix("backbone.")] = value
        elif key in ("rpn.head.conv.weight", "rpn.head.conv.bias"):
            out[f"rpn.head.conv.0.0.{key.rsplit('.', 1)[-1]}"] = value
        else:
            out[key] = value
    return out, dropped


CONVERTERS = {
    ("detection", "resnet"): resnet_detector_to_ssl4gie,
    ("detection", "vit"): vit_detector_to_ssl4gie,
    ("segmentation", "resnet"): smp_deeplabv3plus_to_ssl4gie,
    ("depth", "resnet"): resnet_depth_to_ssl4gie,
    ("classification", "resnet"): classification_to_ssl4gie,
    ("classification", "vit"): classification_to_ssl4gie,
    ("segmentation", "vit"): dense_vit_to_ssl4gie,
    ("depth", "vit"): dense_vit_to_ssl4gie,
}


def to_ssl4gie(obj: Mapping[str, Any], task: str, family: str, path: str | Path) -> tuple[StateDict, Dropped]:
    """The file's model weights in ssl4gie's key names for ``task`` / ``family`` (the current config), and the
    keys dropped by rule (the training state included). A file of another kind is an error naming what it is."""
    state = obj["model_state_dict"]
    found_task, found_family = detect_kind(state)
    if (found_task, found_family) != (task, family):
        raise CheckpointError(
            f"checkpoint {path} looks like {describe(found_task, found_family)}, not {describe(task, family)}: "
            f"choose the matching task= and backbone= (or the matching file)"
        )
    if (task, family) not in CONVERTERS:
        readable = ", ".join(describe(*kind).removeprefix("the study's ") for kind in CONVERTERS)
        raise CheckpointError(
            f"checkpoint {path} is {describe(task, family)}; ssl4gie converts the study's {readable} files so far"
        )
    converted, dropped = CONVERTERS[task, family](state)
    others = [k for k in obj if k != "model_state_dict"]
    return converted, {**dropped, TRAINING_STATE: others}


def check_against(model: torch.nn.Module, state: Mapping[str, Any], path: str | Path) -> None:
    """Every key of ``model`` in ``state`` with its shape, and nothing else (BatchNorm step counters aside); else a
    :class:`CheckpointError` naming the keys."""
    target = model.state_dict()
    missing = [k for k in target if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in target]
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(target[k].shape)}"
        for k in state
        if k in target and state[k].shape != target[k].shape
    ]
    problems = [
        f"{what}: {', '.join(keys[:5])}{f', ... ({len(keys)} in all)' if len(keys) > 5 else ''}"
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched))
        if keys
    ]
    if problems:
        raise CheckpointError(
            f"checkpoint {path} does not fit the configured model ({'; '.join(problems)}){_canvas_hint(state)}"
        )


def _canvas_hint(state: Mapping[str, Any]) -> str:
    # The study's ViT detector (whole-map LayerNorms) fits one canvas only: say which, from its stride-16 LN.
    norm, patch = (
        state.get("backbone.fpn.stride16.1.weight"),
        state.get("backbone.encoder.patch_embed.proj.weight"),
    )
    if norm is None or patch is None or norm.dim() != 3:
        return ""
    canvas = norm.shape[-1] * patch.shape[-1]
    return (
        f"; its whole-map LayerNorm pyramid was trained at a {canvas}² canvas: set task.canvas_size={canvas}"
    )
