"""SimCLR v2 ResNets (google-research/simclr) after the one-off TensorFlow → PyTorch conversion by
SimCLRv2-Pytorch's ``convert.py`` (:data:`CONVERSION`): ``{'resnet': state dict, 'head': contrastive head}``.

Its ResNet names modules by position: ``net.0`` is the stem (``net.0.0`` 7×7 conv, ``net.0.1.0`` BatchNorm),
``net.1``–``net.4`` the four stages with ``blocks.<i>.net.<j>`` (conv 1×1, BN, conv 3×3 — stride here, as torchvision's
ResNet-50 v1.5 —, BN, conv 1×1, BN) and ``blocks.<i>.projection`` (1×1 conv + BN shortcut). Without selective
kernels (``sk0``) and at width 1× that is torchvision's ResNet-50 layer by layer; the names are mapped here. ``fc``
(the supervised head trained alongside) and the contrastive ``head`` are dropped. Files with selective kernels
(``sk1``) are another architecture and are refused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ssl4gie.models.checkpoints.io import CheckpointError
from ssl4gie.models.checkpoints.rules import (
    CLASSIFIER_HEAD,
    PROJECTOR,
    TRAINING_STATE,
    Dropped,
    StateDict,
    tensor_dict,
)
from ssl4gie.run.weights import SIMCLRV2_CONVERSION

NAME = "simclrv2"
LAYOUT = (
    "a SimCLR v2 ResNet converted by SimCLRv2-Pytorch's convert.py ({'resnet': {'net.0.0.weight', "
    "'net.<stage>.blocks.<i>.net.<j>.*', ...}, 'head': ...})"
)
CONVERSION = SIMCLRV2_CONVERSION  # the documented TensorFlow → PyTorch step (README: Pretrained weights)

_STEM = {"net.0.0.": "conv1.", "net.0.1.0.": "bn1."}
_BLOCK = re.compile(r"net\.([1-4])\.blocks\.(\d+)\.(.+)")
_IN_BLOCK = {
    "net.0.": "conv1.",
    "net.1.0.": "bn1.",
    "net.2.": "conv2.",
    "net.3.0.": "bn2.",
    "net.4.": "conv3.",
    "net.5.0.": "bn3.",
    "projection.shortcut.": "downsample.0.",
    "projection.bn.0.": "downsample.1.",
}


def detect(obj: Mapping[str, Any]) -> bool:
    resnet = tensor_dict(obj.get("resnet"))
    return resnet is not None and "net.0.0.weight" in resnet


def _torchvision_name(key: str) -> str | None:
    """The torchvision ResNet name of a SimCLRv2-Pytorch key; None for one that has none."""
    for prefix, new in _STEM.items():
        if key.startswith(prefix):
            return new + key.removeprefix(prefix)
    match = _BLOCK.fullmatch(key)
    if match is None:
        return None
    stage, block, rest = match.groups()
    for prefix, new in _IN_BLOCK.items():
        if rest.startswith(prefix):
            return f"layer{stage}.{block}.{new}{rest.removeprefix(prefix)}"
    return None


def convert(obj: Mapping[str, Any]) -> tuple[StateDict, Dropped]:
    """Rename ``resnet`` into torchvision's ResNet names; drop ``fc``, the contrastive head and anything else at
    the top level (the shapes are checked by the strict load that follows)."""
    resnet = tensor_dict(obj["resnet"])
    kernels = [k for k in resnet if ".main_conv." in k or ".mixing_conv." in k]
    if kernels:
        raise CheckpointError(
            f"this SimCLR v2 ResNet has selective kernels (sk1; e.g. {kernels[0]!r}), another architecture than "
            "ResNet-50: use an sk0 checkpoint (r50_1x_sk0)"
        )
    state: StateDict = {}
    dropped: Dropped = {}
    for key, value in resnet.items():
        if key.startswith("fc."):
            dropped.setdefault(CLASSIFIER_HEAD, []).append(f"resnet.{key}")
            continue
        name = _torchvision_name(key)
        if name is None:
            raise CheckpointError(f"unexpected key 'resnet.{key}' in a {LAYOUT} checkpoint")
        state[name] = value
    for top in obj:
        if top == "head":
            dropped.setdefault(PROJECTOR, []).extend(f"head.{k}" for k in (obj["head"] or {}))
        elif top != "resnet":
            dropped.setdefault(TRAINING_STATE, []).append(top)
    return state, dropped
