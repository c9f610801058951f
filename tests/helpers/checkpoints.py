"""Checkpoint files in every official layout, fabricated from tiny timm models with the production key structure.

Shared by the converter contract tests, the pretraining-row tests and the study-file tests (study_file and the
study's ResNet depth decoder, also used by the depth study-protocol test).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import random
from collections.abc import Callable

import numpy as np
import timm
import torch
from timm.models.vision_transformer import Block
from torch import Tensor

from ssl4gie.models.checkpoints import (
    CLASSIFIER_HEAD,
    MAE_DECODER,
    MOMENTUM_ENCODER,
    PREDICTOR,
    PROJECTOR,
    TRAINING_STATE,
)
from ssl4gie.models.checkpoints.rules import MASK_TOKEN, QUEUE, STUDENT

ARCH = {"resnet": "resnet50", "vit": "vit_b"}


def tiny_backbone(family: str, img_size: int = 64, num_classes: int = 0) -> torch.nn.Module:
    """Tiny models from the production factories: same key structure as ResNet-50 / ViT-B."""
    if family == "resnet":
        return timm.create_model(
            "resnet50", layers=(1, 1, 1, 1), channels=(8, 16, 32, 64), num_classes=num_classes
        )
    return timm.create_model(
        "vit_base_patch16_224", embed_dim=32, depth=4, num_heads=2, img_size=img_size, num_classes=num_classes
    )


def random_like(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Values that differ from any fresh initialisation, so a skipped tensor cannot pass unnoticed."""
    return {k: torch.randn_like(v) if v.is_floating_point() else v + 7 for k, v in sd.items()}


def linear(name: str, out_dim: int, in_dim: int) -> dict[str, Tensor]:
    return {f"{name}.weight": torch.randn(out_dim, in_dim)}  # MoCo v3 / Barlow Twins MLPs use bias=False


def batchnorm(name: str, dim: int, affine: bool = True) -> dict[str, Tensor]:
    sd = {f"{name}.running_mean": torch.randn(dim), f"{name}.running_var": torch.rand(dim)}
    sd[f"{name}.num_batches_tracked"] = torch.tensor(100)
    if affine:
        sd.update({f"{name}.weight": torch.randn(dim), f"{name}.bias": torch.randn(dim)})
    return sd


def mlp(prefix: str, dims: list[int]) -> dict[str, Tensor]:
    """Linear-BN-ReLU MLP as MoCo v3 builds it: indices 0,1 | 3,4 | 6,7; last BN without affine."""
    sd: dict[str, Tensor] = {}
    for i, (d_in, d_out) in enumerate(itertools.pairwise(dims)):
        sd |= linear(f"{prefix}.{3 * i}", d_out, d_in)
        sd |= batchnorm(f"{prefix}.{3 * i + 1}", d_out, affine=i < len(dims) - 2)
    return sd


def prefixed(prefix: str, sd: dict[str, Tensor]) -> dict[str, Tensor]:
    return {prefix + k: v for k, v in sd.items()}


OPTIMIZER = {"state": {0: {"momentum_buffer": torch.zeros(3)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}
SCALER = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000}


# Each builder takes (family, source backbone state dict) and returns
# (checkpoint object as released, expected format, expected dropped keys by reason).
def mocov3(family: str, src: dict[str, Tensor]):
    width = 256 if family == "resnet" else 32  # tiny ResNet num_features / tiny ViT embed_dim
    head = "fc" if family == "resnet" else "head"
    dims = [width, 32, 16] if family == "resnet" else [width, 32, 32, 16]
    proj = mlp(head, dims)
    base = prefixed("module.base_encoder.", src | proj)
    momentum = prefixed("module.momentum_encoder.", random_like(src | proj))
    pred = prefixed("module.predictor.", mlp("predictor", [16, 32, 16]))
    top = {"epoch": 100, "arch": ARCH[family], "state_dict": base | momentum | pred}
    top |= {"optimizer": OPTIMIZER, "scaler": SCALER}
    dropped = {
        PROJECTOR: [f"module.base_encoder.{k}" for k in proj],
        MOMENTUM_ENCODER: list(momentum),
        PREDICTOR: list(pred),
        TRAINING_STATE: ["epoch", "arch", "optimizer", "scaler"],
    }
    return top, "mocov3", dropped


def plain(family: str, src: dict[str, Tensor]):
    """Re-saved MoCo v3 base encoder / Barlow Twins resnet50.pth / study's released backbones."""
    return dict(src), "plain", {}


def resaved_with_projector(family: str, src: dict[str, Tensor]):
    """The study README's re-save recipe keeps MoCo v3's projector (fc.N / head.N) in the plain file."""
    proj = mlp("fc", [256, 32, 16]) if family == "resnet" else mlp("head", [32, 32, 32, 16])
    return src | proj, "plain", {PROJECTOR: list(proj)}


def supervised(family: str, src: dict[str, Tensor]):
    """torchvision resnet50-19c8e357.pth or a timm ViT state dict, with its 1000-way classifier."""
    head = {"fc": torch.randn(10, 256)} if family == "resnet" else {"head": torch.randn(10, 32)}
    name, weight = next(iter(head.items()))
    cls = {f"{name}.weight": weight, f"{name}.bias": torch.randn(10)}
    return src | cls, "plain", {CLASSIFIER_HEAD: list(cls)}


def ddp_nested(family: str, src: dict[str, Tensor]):
    return {"state_dict": prefixed("module.", src), "epoch": 3}, "plain", {TRAINING_STATE: ["epoch"]}


def barlowtwins_full(family: str, src: dict[str, Tensor]):
    # projector: Linear-BN-ReLU, Linear-BN-ReLU, Linear; then `bn`, an affine-free BatchNorm on its output
    proj = linear("module.projector.0", 64, 256) | batchnorm("module.projector.1", 64)
    proj |= linear("module.projector.3", 64, 64) | batchnorm("module.projector.4", 64)
    proj |= linear("module.projector.6", 64, 64) | batchnorm("module.bn", 64, affine=False)
    top = {"epoch": 1000, "model": prefixed("module.backbone.", src) | proj, "optimizer": OPTIMIZER}
    return top, "barlowtwins_full", {PROJECTOR: list(proj), TRAINING_STATE: ["epoch", "optimizer"]}


def mae_decoder() -> dict[str, Tensor]:
    dec = {"mask_token": torch.randn(1, 1, 16), "decoder_pos_embed": torch.randn(1, 17, 16)}
    dec |= {"decoder_embed.weight": torch.randn(16, 32), "decoder_embed.bias": torch.randn(16)}
    for i in range(2):
        dec |= prefixed(f"decoder_blocks.{i}.", Block(dim=16, num_heads=2).state_dict())
    dec |= {"decoder_norm.weight": torch.randn(16), "decoder_norm.bias": torch.randn(16)}
    return dec | {"decoder_pred.weight": torch.randn(768, 16), "decoder_pred.bias": torch.randn(768)}


def mae_encoder(family: str, src: dict[str, Tensor]):
    return {"model": dict(src)}, "mae", {}


def mae_full(family: str, src: dict[str, Tensor]):
    dec = mae_decoder()
    return {"model": src | dec}, "mae", {MAE_DECODER: list(dec)}


def mae_own_training(family: str, src: dict[str, Tensor]):
    dec = mae_decoder()
    top = {"model": src | dec, "optimizer": OPTIMIZER, "epoch": 799, "scaler": SCALER}
    top["args"] = {"model": "mae_vit_base_patch16", "mask_ratio": 0.75}  # the real file holds a Namespace
    return top, "mae", {MAE_DECODER: list(dec), TRAINING_STATE: ["optimizer", "epoch", "scaler", "args"]}


Builder = Callable[[str, dict[str, Tensor]], tuple[dict, str, dict[str, list[str]]]]
LAYOUTS: list[tuple[str, str, Builder]] = [
    ("r-50-100ep.pth.tar", "resnet", mocov3),
    ("vit-b-300ep.pth.tar", "vit", mocov3),
    ("mocov3_resaved_resnet.pth", "resnet", plain),
    ("mocov3_resaved_vit.pth", "vit", plain),
    ("vit-b-resaved.pth", "vit", resaved_with_projector),
    ("r-50-resaved.pth", "resnet", resaved_with_projector),
    ("barlowtwins_resnet50.pth", "resnet", plain),
    ("checkpoint.pth", "resnet", barlowtwins_full),
    ("resnet50-19c8e357.pth", "resnet", supervised),
    ("vit_augreg.pth", "vit", supervised),
    ("ddp.pth", "resnet", ddp_nested),
    ("mae_pretrain_vit_base.pth", "vit", mae_encoder),
    ("mae_pretrain_vit_base_full.pth", "vit", mae_full),
    ("checkpoint-799.pth", "vit", mae_own_training),
]


# ----------------------------------- the study's finetuned files (the torch.save calls of its train_*.py scripts)
def study_file(path, model_state: dict, epoch=7, val_perf=0.8, test_perf=0.7) -> None:
    """A file with exactly the keys and types of the study's checkpoints (numpy float64 loss, numpy RNG tuple);
    ``epoch``, ``val_perf``, ``test_perf``: the training script's numbers it stores."""
    torch.save(
        {
            "epoch": epoch,
            "model_state_dict": model_state,
            "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
            "scaler_state_dict": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5},
            "loss": np.float64(0.25),
            "val_perf": val_perf,
            "test_perf": test_perf,
            "py_state": random.getstate(),
            "np_state": np.random.get_state(),
            "torch_state": torch.get_rng_state(),
        },
        path,
    )


def study_resnet_depth_names(ours: dict) -> dict:
    out = {}
    for key, value in ours.items():
        if key.startswith("encoder."):
            out[key.removeprefix("encoder.")] = value
        elif key.startswith("decoder.head."):
            out["output_conv." + key.removeprefix("decoder.head.")] = value
        else:
            new = "decoder_levels." + key.removeprefix("decoder.levels.")
            for a, b in (
                (".reduce.", ".chan_reduce."),
                (".residual.", ".process."),
                (".shortcut.", ".identity."),
            ):
                new = new.replace(a, b)
            out[new] = value
    return out


def ref_conv(sd: dict, x: torch.Tensor, name: str, **kw) -> torch.Tensor:
    """``F.conv2d`` with the weight (and bias, if any) that ``sd`` holds under ``name`` (functional references)."""
    import torch.nn.functional as F

    return F.conv2d(x, sd[f"{name}.weight"], sd.get(f"{name}.bias"), **kw)


def ref_bn(sd: dict, x: torch.Tensor, name: str) -> torch.Tensor:
    """Eval-mode BatchNorm (eps 1e-5) with the statistics and affine that ``sd`` holds under ``name``."""
    import torch.nn.functional as F

    stats = (sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"], sd[f"{name}.bias"])
    return F.batch_norm(x, *stats, False, 0.0, 1e-5)


def study_resnet_depth_forward(sd: dict, feats: list[torch.Tensor]) -> torch.Tensor:
    """The study's ResNet_from_Any depth decoder from its own key names (``Models/models.py``): per level,
    reduce (Conv1×1 + BN) the coarse map, ×2 bilinear (align_corners=True), concat (upsampled, skip), three
    bottlenecks; then the head."""
    import torch.nn.functional as F

    def conv(x, name, **kw):
        return ref_conv(sd, x, name, **kw)

    def bn(x, name):
        return ref_bn(sd, x, name)

    def block(x, name):
        p = f"{name}.process"
        r = F.relu(bn(conv(x, f"{p}.0"), f"{p}.1"))
        r = F.relu(bn(conv(r, f"{p}.3", padding=1), f"{p}.4"))
        r = bn(conv(r, f"{p}.6"), f"{p}.7")
        shortcut = (
            bn(conv(x, f"{name}.identity.0"), f"{name}.identity.1")
            if f"{name}.identity.0.weight" in sd
            else x
        )
        return F.relu(r + shortcut)

    up = {"scale_factor": 2.0, "mode": "bilinear", "align_corners": True}
    out = feats[3]
    for level, skip in enumerate((feats[2], feats[1], feats[0])):
        name = f"decoder_levels.{level}"
        x = torch.cat(
            [F.interpolate(bn(conv(out, f"{name}.chan_reduce.0"), f"{name}.chan_reduce.1"), **up), skip], 1
        )
        for j in range(3):
            x = block(x, f"{name}.blocks.{j}")
        out = x
    out = conv(F.interpolate(out, **up), "output_conv.1", padding=1)
    out = F.relu(conv(F.interpolate(out, **up), "output_conv.3", padding=1))
    return torch.sigmoid(conv(out, "output_conv.5"))


# --------------------------------------------------- DINO, DINOv2, MoCo v2, MAE training (GI foundation rows)
# Builders for the layouts of the GI foundation rows' published files. They take a backbone state dict in timm
# names (of any size) and return the file's object as published; the projection heads are small (their key
# names are what the converters see).
def dino_head(prefix: str, in_dim: int, hidden: int = 64, bottleneck: int = 16, out: int = 128):
    """DINO's head: MLP Linear-GELU-Linear-GELU-Linear (mlp.0/2/4, with biases) + weight-normalised last layer."""
    sd = {}
    for i, (d_in, d_out) in zip(
        (0, 2, 4), itertools.pairwise([in_dim, hidden, hidden, bottleneck]), strict=True
    ):
        sd[f"{prefix}mlp.{i}.weight"], sd[f"{prefix}mlp.{i}.bias"] = (
            torch.randn(d_out, d_in),
            torch.randn(d_out),
        )
    sd[f"{prefix}last_layer.weight_g"] = torch.ones(out, 1)
    sd[f"{prefix}last_layer.weight_v"] = torch.randn(out, bottleneck)
    return sd


def dino_full(teacher: dict[str, Tensor], student_conv1: Tensor, width: int, ddp_teacher: bool):
    """DINO's ``checkpoint.pth``: teacher (``module.`` only when DINO wrapped it for SyncBN: ResNets), student
    (always DDP). The student shares the teacher's tensors except ``conv1.weight`` / ``patch_embed.proj.weight``
    (``student_conv1``), so the file stays small and a swapped network is still caught."""
    first = "conv1.weight" if "conv1.weight" in teacher else "patch_embed.proj.weight"
    t_prefix = "module." if ddp_teacher else ""
    t_head, s_head = dino_head(f"{t_prefix}head.", width), dino_head("module.head.", width)
    student = prefixed("module.backbone.", {**teacher, first: student_conv1}) | s_head
    top = {
        "student": student,
        "teacher": prefixed(f"{t_prefix}backbone.", teacher) | t_head,
        "optimizer": OPTIMIZER,
        "epoch": 100,
        "args": {"arch": "resnet50", "out_dim": 128},  # the real file holds an argparse.Namespace
        "dino_loss": {"center": torch.zeros(1, 128)},
    }
    dropped = {
        PROJECTOR: list(t_head),
        STUDENT: [f"student.{k}" for k in student],
        TRAINING_STATE: ["optimizer", "epoch", "args", "dino_loss"],
    }
    return top, dropped


def dinov2_hub(timm_vit: dict[str, Tensor], registers: int = 0) -> dict[str, Tensor]:
    """``dinov2_vitb14[_reg4]_pretrain.pth`` from a timm DINOv2 ViT without registers (its pos_embed has the CLS
    slot, as DINOv2's): plus ``mask_token`` and, with registers, ``register_tokens``."""
    width = timm_vit["cls_token"].shape[-1]
    sd = {**timm_vit, "mask_token": torch.randn(1, width)}
    if registers:
        sd["register_tokens"] = torch.randn(1, registers, width)
    return sd


def dinov2_expected(hub: dict[str, Tensor]) -> dict[str, Tensor]:
    """What a hub file is in timm's names, written out independently of timm's converter: the mask token goes;
    with registers, ``reg_token`` = ``register_tokens``, the CLS slot of the table is added to ``cls_token`` and
    ``pos_embed`` keeps the patch part (timm's register ViTs embed patches only)."""
    out = {k: v for k, v in hub.items() if k not in ("mask_token", "register_tokens")}
    if "register_tokens" in hub:
        out["reg_token"] = hub["register_tokens"]
        out["cls_token"] = hub["cls_token"] + hub["pos_embed"][:, :1]
        out["pos_embed"] = hub["pos_embed"][:, 1:]
    return out


def chunked(sd: dict[str, Tensor], chunks: int) -> dict[str, Tensor]:
    """DINOv2 ``block_chunks``: ``blocks.<i>.`` -> ``blocks.<chunk>.<i>.`` (global block index kept)."""
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    size = -(-depth // chunks)
    out = {}
    for key, value in sd.items():
        if key.startswith("blocks."):
            i = int(key.split(".")[1])
            key = f"blocks.{i // size}.{key.split('.', 1)[1]}"
        out[key] = value
    return out


def dinov2_training(hub: dict[str, Tensor], chunks: int = 4):
    """A DINOv2 training checkpoint: ``{'model': {teacher.backbone.*, teacher.dino_head.*, teacher.ibot_head.*,
    student.*}, 'optimizer', 'iteration'}``, blocks in ``chunks`` chunks; the student shares the teacher's
    tensors but for its patch projection."""
    width = hub["cls_token"].shape[-1]
    backbone = chunked(hub, chunks)
    heads = dino_head("dino_head.", width) | dino_head("ibot_head.", width)
    student_backbone = {
        **backbone,
        "patch_embed.proj.weight": torch.randn_like(hub["patch_embed.proj.weight"]),
    }
    model = prefixed("teacher.", prefixed("backbone.", backbone) | heads)
    student = prefixed("student.", prefixed("backbone.", student_backbone) | heads)
    top = {"model": model | student, "optimizer": OPTIMIZER, "iteration": 124999}
    dropped = {
        MASK_TOKEN: ["teacher.backbone.mask_token"],
        PROJECTOR: [f"teacher.{k}" for k in heads],
        STUDENT: list(student),
        TRAINING_STATE: ["optimizer", "iteration"],
    }
    return top, dropped


def mocov2(resnet: dict[str, Tensor], width: int):
    """MoCo v2's ``moco_v2_800ep_pretrain.pth.tar``: query encoder with a 2-layer MLP ``fc`` (biases), key encoder
    (shares the query's tensors but for conv1), queue and pointer."""
    fc = {"fc.0.weight": torch.randn(width, width), "fc.0.bias": torch.randn(width)}
    fc |= {"fc.2.weight": torch.randn(128, width), "fc.2.bias": torch.randn(128)}
    query = prefixed("module.encoder_q.", resnet | fc)
    key = prefixed(
        "module.encoder_k.", {**resnet, "conv1.weight": torch.randn_like(resnet["conv1.weight"])} | fc
    )
    queue = {"module.queue": torch.randn(128, 256), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    top = {"epoch": 800, "arch": "resnet50", "state_dict": query | key | queue, "optimizer": OPTIMIZER}
    dropped = {
        PROJECTOR: [f"module.encoder_q.{k}" for k in fc],
        MOMENTUM_ENCODER: list(key),
        QUEUE: list(queue),
        TRAINING_STATE: ["epoch", "arch", "optimizer"],
    }
    return top, dropped


def write_weights(path, seed: int) -> str:
    """A tiny ResNet-50 backbone file as Barlow Twins publishes it (``plain``), written by rename as a download
    tool would; returns its sha256."""
    torch.manual_seed(seed)
    obj, _, _ = plain("resnet", tiny_backbone("resnet").state_dict())
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    torch.save(obj, partial)
    os.replace(partial, path)
    return hashlib.sha256(path.read_bytes()).hexdigest()
