"""The table of backbone checkpoint formats: one module per family, each a pair of pure functions
``detect(obj) -> bool`` and ``convert(obj) -> (timm state dict, dropped keys by reason)``, tried in order."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

from ssl4gie.models.checkpoints import barlowtwins, mae, mocov3, plain
from ssl4gie.models.checkpoints.io import CheckpointError
from ssl4gie.models.checkpoints.rules import Dropped, StateDict

# Order matters: the first family whose detect() accepts the file converts it (an MAE ViT under 'model' would
# also pass plain's test; a Barlow Twins training file is not a plain state dict).
FAMILIES = (mocov3, barlowtwins, mae, plain)
CONVERTERS: dict[str, Callable[[Mapping[str, Any]], tuple[StateDict, Dropped]]] = {
    family.NAME: family.convert for family in FAMILIES
}


def detect_format(obj: Mapping[str, Any]) -> str:
    """Name the layout of a loaded checkpoint from its contents: mocov3, barlowtwins_full, mae or plain.

    A ``module.`` DDP prefix is accepted everywhere. Raises :class:`CheckpointError` listing the top-level keys
    and sample tensor keys when no layout fits.
    """
    for family in FAMILIES:
        if family.detect(obj):
            return family.NAME
    samples = [f"{top}.{k}" for top, v in obj.items() if isinstance(v, dict) for k in list(v)[:3]]
    samples += [k for k, v in obj.items() if isinstance(v, Tensor)]
    raise CheckpointError(
        f"unrecognised checkpoint layout: top-level keys {list(obj)[:10]}, sample keys {samples[:6]}; "
        f"{plain.EXPECTED_LAYOUTS}."
    )


def to_timm_state_dict(obj: Mapping[str, Any]) -> tuple[StateDict, Dropped]:
    """Convert any supported checkpoint into ``(backbone state dict in timm names, dropped keys by reason)``.

    Pure: tensors are not copied or modified, and ``obj`` is left untouched.
    """
    return CONVERTERS[detect_format(obj)](obj)
