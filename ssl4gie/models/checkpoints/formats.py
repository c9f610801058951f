"""The table of backbone checkpoint formats: one module per family, each a pair of pure functions
``detect(obj) -> bool`` and ``convert(obj) -> (timm state dict, dropped keys by reason)``, tried in order.

A family module also names itself (``NAME``), describes its layout for error messages (``LAYOUT``) and, when the
file holds two networks of which one is kept (DINO's teacher and student), says which (``taken(obj)``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ssl4gie.models.checkpoints import barlowtwins, dino, dinov2, mae, mocov2, mocov3, plain, simclrv2
from ssl4gie.models.checkpoints.io import CheckpointError
from ssl4gie.models.checkpoints.rules import Dropped, StateDict, prefix_counts

# Order matters: the first family whose detect() accepts the file converts it. DINOv2 comes before DINO (a DINOv2
# teacher checkpoint also has a teacher backbone) and MAE (a DINOv2 backbone under 'model' would pass MAE's test);
# plain, which accepts any ResNet / ViT state dict, comes last.
FAMILIES = (mocov3, mocov2, barlowtwins, simclrv2, dinov2, dino, mae, plain)
CONVERTERS: dict[str, Callable[[Mapping[str, Any]], tuple[StateDict, Dropped]]] = {
    family.NAME: family.convert for family in FAMILIES
}
_TAKEN = {family.NAME: family.taken for family in FAMILIES if hasattr(family, "taken")}
KNOWN_LAYOUTS = "; ".join(f"{family.NAME}: {family.LAYOUT}" for family in FAMILIES)


def detect_format(obj: Mapping[str, Any]) -> str:
    """Name the layout of a loaded checkpoint from its contents (a key of :data:`CONVERTERS`).

    A ``module.`` DDP prefix is accepted everywhere. Raises :class:`CheckpointError` listing the top-level keys,
    sample tensor keys, the most common key prefixes and the known layouts when no layout fits.
    """
    for family in FAMILIES:
        if family.detect(obj):
            return family.NAME
    samples = [f"{top}.{k}" for top, v in obj.items() if isinstance(v, dict) for k in list(v)[:3]]
    samples += [k for k, v in obj.items() if not isinstance(v, dict)]
    prefixes = ", ".join(f"{prefix}.* ({n})" for prefix, n in prefix_counts(obj)) or "none (no tensors)"
    raise CheckpointError(
        f"unrecognised checkpoint layout: top-level keys {list(obj)[:10]}, sample keys {samples[:6]}, most "
        f"common key prefixes {prefixes}. Known layouts: {KNOWN_LAYOUTS}. Nothing was loaded."
    )


def taken(fmt: str, obj: Mapping[str, Any]) -> str | None:
    """Which network of a two-network file a ``fmt`` conversion keeps (``"teacher"``), or None."""
    return _TAKEN[fmt](obj) if fmt in _TAKEN else None


def to_timm_state_dict(obj: Mapping[str, Any]) -> tuple[StateDict, Dropped]:
    """Convert any supported checkpoint into ``(backbone state dict in timm names, dropped keys by reason)``.

    Pure: tensors are not copied or modified, and ``obj`` is left untouched.
    """
    return CONVERTERS[detect_format(obj)](obj)
