"""Batches are dicts with fixed keys: ``image``, ``target``, ``meta`` (+ task extras)."""

from __future__ import annotations

from typing import Any

import torch


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors that share a shape; keep everything else (meta dicts, native-size targets) as lists."""
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if isinstance(values[0], torch.Tensor) and all(v.shape == values[0].shape for v in values):
            batch[key] = torch.stack(values)
        else:
            batch[key] = values
    return batch
