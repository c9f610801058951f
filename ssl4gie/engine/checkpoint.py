"""Checkpoints: written atomically, read with ``weights_only=True`` (a checkpoint is data, never code)."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from ssl4gie.errors import Ssl4gieError


def read_run_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load an ssl4gie checkpoint (``best.pt`` / ``last.pt``) safely; clear errors for missing/corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise Ssl4gieError(f"checkpoint {path} does not exist (option ckpt)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise Ssl4gieError(
            f"checkpoint {path} holds pickled Python objects, which are refused (loaded with "
            f"weights_only=True): {str(e).splitlines()[0]}"
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise Ssl4gieError(f"checkpoint {path} is truncated or not a PyTorch checkpoint: {e}") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
        raise Ssl4gieError(
            f"{path} is not an ssl4gie run checkpoint (expected keys 'model' and 'model_config', "
            f"found {sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__}). "
            f"Pretrained backbone files go in pretraining.checkpoint, not ckpt."
        )
    return ckpt
