"""Reading checkpoint files safely: ``torch.load(weights_only=True)`` (or safetensors), clear errors.

A checkpoint that needs arbitrary pickled Python objects is refused with an explanation, never loaded with
``weights_only=False``; the few plain types official files carry are allow-listed by name.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from ssl4gie.errors import Ssl4gieError
from ssl4gie.run.weights import TENSORFLOW_CONVERSION, is_tensorflow_checkpoint

#: Classes that only a sharded (FSDP ``LOCAL_STATE_DICT``) training checkpoint pickles.
FSDP_SHARD_GLOBALS = ("torch.distributed._shard.", "torch.distributed.remote_device")
FSDP_SHARD = (
    "Checkpoint {path} is one GPU's shard of a sharded (FSDP) training checkpoint, such as DINOv2's "
    "model_<iteration>.rank_<N>.pth (its training code saves each rank's local, flattened slice of the parameters); "
    "it cannot be read on its own. Pass the teacher checkpoint the same training writes at every evaluation, "
    "<output_dir>/eval/training_<iteration>/teacher_checkpoint.pth, or a released backbone file "
    "(e.g. dinov2_vitb14_pretrain.pth)"
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
    if is_tensorflow_checkpoint(path):
        raise CheckpointError(
            f"Checkpoint {path} is a TensorFlow checkpoint (SimCLR v1/v2 and other TensorFlow releases); ssl4gie "
            f"reads PyTorch files only. {TENSORFLOW_CONVERSION}"
        )
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
        if found.group(1).startswith(FSDP_SHARD_GLOBALS):
            raise CheckpointError(FSDP_SHARD.format(path=path)) from err
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
