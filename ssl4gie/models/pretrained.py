"""Backbone initialisation per pretraining row: random, supervised ImageNet (timm hub or a local file), and the
self-supervised releases (MoCo v2/v3, Barlow Twins, MAE, DINO, DINOv2, ...) read as published by
:mod:`ssl4gie.models.checkpoints`.

Where the weights come from, in order: ``pretraining.checkpoint`` (an explicit file), ``paths.weights_dir/<files.
<backbone>>`` (the documented file name of the row), then timm's hub tag (``hub.<backbone>``) where the row has one
(:func:`ssl4gie.run.weights.weights_file`, shared with the run fingerprint and the run-folder tag).
"""

from __future__ import annotations

import logging
from pathlib import Path

import timm
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from ssl4gie.errors import ConfigError
from ssl4gie.models.checkpoints import LoadReceipt, load_backbone_weights, read_checkpoint, to_timm_state_dict
from ssl4gie.models.checkpoints.io import CheckpointError
from ssl4gie.run.weights import weights_file  # one lookup for the loader, the fingerprint and the run folder

log = logging.getLogger(__name__)
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
# What timm asks the Hugging Face hub for, in this order (timm/models/_hub.py, load_state_dict_from_hf)
HUB_FILES = ("model.safetensors", "pytorch_model.bin")


def _file_registers(path: Path) -> int:
    """Register tokens in a weights file, read as the loader reads it (``reg_token`` after conversion)."""
    try:
        state, _ = to_timm_state_dict(read_checkpoint(path))
    except CheckpointError as err:
        raise CheckpointError(f"Checkpoint {path}: {err}") from None
    token = state.get("reg_token")
    return 0 if token is None else int(token.shape[1])


def resolve_backbone(backbone: DictConfig, pretraining: DictConfig, weights_dir: str | Path) -> DictConfig:
    """``backbone`` with ``registers: auto`` replaced by a count; unchanged for backbones without the option.

    ``auto`` = what the weights have: the count in the weights file the row loads, else (timm hub weights, or
    ``pretraining.load=false`` in eval/predict, whose checkpoint must match the row) the row's declared
    ``registers.<backbone>``, else 0 (random initialisation). Called by every task before building its encoder.
    """
    if backbone.get("registers") != "auto":
        return backbone
    declared = (pretraining.get("registers") or {}).get(backbone.name, 0)
    count, source = int(declared), f"pretraining={pretraining.name}'s registers.{backbone.name}"
    if pretraining.get("load", True) and pretraining.pretrained:
        path = weights_file(pretraining, backbone, weights_dir)
        if path is not None:
            count, source = _file_registers(path), str(path)
    log.info("backbone.registers=auto: %d register token(s), as %s has", count, source)
    resolved = OmegaConf.create(OmegaConf.to_container(backbone, resolve=True))
    with open_dict(resolved):
        resolved.registers = count
    return resolved


def _hub_source(tag: str) -> dict:
    """``timm.create_model`` keyword arguments that load ``tag`` with at most one network attempt per file.

    Left alone, huggingface_hub retries an unreachable hub five times per file with backoff (about 23 s, with a
    warning each time) and timm asks for two files. Here: a file already in the local Hugging Face cache is handed to
    timm as a local file (no network at all); otherwise one request, without retries, asks the hub for the file's
    metadata; only when the hub answers does timm download (a missing file, HTTP 404, moves on to the next name).
    Raises what that one request raised (no network, offline mode, a proxy's refusal).
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_url, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError

    hub_id = getattr(timm.models.get_pretrained_cfg(tag), "hf_hub_id", None)
    if not hub_id:  # a plain URL: torch.hub downloads it in one attempt
        return {}
    repo_id, _, revision = hub_id.partition("@")
    for filename in HUB_FILES:
        cached = try_to_load_from_cache(repo_id, filename, revision=revision or None)
        if isinstance(cached, str):
            return {"pretrained_cfg_overlay": {"file": cached}}
    for filename in HUB_FILES:
        try:
            get_hf_file_metadata(
                hf_hub_url(repo_id, filename, revision=revision or None), retry_on_errors=False
            )
        except EntryNotFoundError:
            continue
        break
    return {}


def _fetch_hint(pretraining: DictConfig, backbone: DictConfig) -> str:
    """How to get a row's weights onto a machine without network: the fetch command where the row exists."""
    row = f"{backbone.get('code', '')}-{pretraining.get('code', '')}".lower().replace("-", "_")
    url = (pretraining.get("urls") or {}).get(backbone.name)
    download = f"download {url}" if url else "download it"
    if (CONF_DIR / "row" / f"{row}.yaml").is_file():
        return f"`python -m ssl4gie.fetch row={row}` (or {download}) on a machine with network, then copy the file"
    return download


def _from_hub(
    encoder: nn.Module, tag: str, pretraining: DictConfig, backbone: DictConfig, weights_dir: str | Path
) -> str:
    """Copy timm's pretrained weights for ``tag`` into ``encoder`` (timm resamples position embeddings itself)."""
    kwargs = {"num_classes": 0}
    if backbone.get("img_size_kwarg"):
        kwargs[backbone.img_size_kwarg] = encoder.patch_embed.img_size[0]
    try:
        source = timm.create_model(tag, pretrained=True, **kwargs, **_hub_source(tag))
    except Exception as e:  # no network, hub down, proxy: tell the user exactly which file to put where
        reason = (str(e).strip().splitlines() or [""])[0]
        raise ConfigError(
            f"could not download timm weights '{tag}' for pretraining={pretraining.name} backbone={backbone.name} "
            f"({type(e).__name__}: {reason}). Without network, put the weights file at "
            f"{Path(weights_dir) / pretraining.files.get(backbone.name)} (paths.weights_dir, read before the hub): "
            f"{_fetch_hint(pretraining, backbone)}; or pass pretraining.checkpoint=PATH"
        ) from None
    missing, unexpected = encoder.load_state_dict(source.state_dict(), strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"timm weights '{tag}' do not fit backbone={backbone.name} (backbone.tiny must be false): "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return f"loaded {len(source.state_dict())} backbone tensors from timm hub weights '{tag}'"


def load_pretrained(
    encoder: nn.Module,
    pretraining: DictConfig,
    backbone: DictConfig,
    weights_dir: str | Path,
    input_size: int | None = None,
) -> LoadReceipt | None:
    """Initialise ``encoder`` (a bare timm backbone) as the pretraining row says and log the load receipt.

    ``backbone`` must be the one ``encoder`` was built from (after :func:`resolve_backbone`). MoCo v3 / MAE ViTs
    keep their fixed sin-cos position embedding frozen (``train_pos_embed: false``, the study's
    setting); the patch projection is trainable (MoCo v3 pretrained it frozen, the study finetunes it).

    ``pretraining.load=false`` (set by ``mode=eval|predict``, whose checkpoint holds every tensor) builds the
    backbone without reading any weights file or the hub; the row then only names the run.
    """
    if not pretraining.get("load", True):
        log.info(
            "backbone %s: weights come from the checkpoint; pretraining=%s only names the row",
            backbone.name,
            pretraining.name,
        )
        return None
    if not pretraining.pretrained:
        log.info(
            "backbone %s: random initialisation (%s)", backbone.name, backbone.get("random_init", "timm")
        )
        return None
    path = weights_file(pretraining, backbone, weights_dir)
    receipt = None
    if path is None:
        log.info(
            "backbone %s: %s",
            backbone.name,
            _from_hub(encoder, pretraining.hub[backbone.name], pretraining, backbone, weights_dir),
        )
    else:
        receipt = load_backbone_weights(encoder, path, expected_arch=backbone.name)
    for p in encoder.parameters():
        p.requires_grad_(True)
    pos_embed = getattr(encoder, "pos_embed", None)
    if isinstance(pos_embed, nn.Parameter) and not pretraining.get("train_pos_embed", True):
        pos_embed.requires_grad_(False)
        log.info(
            "backbone %s: position embedding kept frozen (pretraining.train_pos_embed=false)", backbone.name
        )
    return receipt
