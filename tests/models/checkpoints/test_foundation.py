"""The GI foundation rows' checkpoint formats (DINO, DINOv2, MoCo v2, MAE training), as published, through the
public config path (``pretraining=<row> pretraining.checkpoint=FILE``): each file is built from a real-size
timm model renamed into the release's key structure, and every backbone tensor of the finetuning model is
compared with what the file holds. Refusals (wrong architecture, a missing tensor, register-count mismatch,
unknown layout, TensorFlow files) use tiny models.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import pytest
import timm
import torch
import torch.distributed as dist
from helpers import compose_config
from helpers.checkpoints import (
    OPTIMIZER,
    SCALER,
    chunked,
    dino_full,
    dino_head,
    dinov2_expected,
    dinov2_hub,
    dinov2_training,
    mae_decoder,
    mocov2,
    prefixed,
    random_like,
)
from helpers.spawn import spawn_ranks
from hydra.utils import instantiate
from timm.layers import resample_abs_pos_embed
from torch import nn

from ssl4gie.errors import ConfigError, Ssl4gieError
from ssl4gie.models.checkpoints import MAE_DECODER, PROJECTOR, TRAINING_STATE, CheckpointError
from ssl4gie.models.checkpoints.rules import STUDENT

IMAGE = 224


def real(name: str, **kwargs) -> dict[str, torch.Tensor]:
    """A real-size timm backbone's key names and shapes (from a meta-device model) filled with values no
    initialisation gives: a ramp per tensor, offset by its index (cheaper than random numbers at 86 M values)."""
    with torch.device("meta"):
        shapes = {
            k: (v.shape, v.dtype)
            for k, v in timm.create_model(name, num_classes=0, **kwargs).state_dict().items()
        }
    out = {}
    for i, (key, (shape, dtype)) in enumerate(shapes.items()):
        n = shape.numel()
        ramp = torch.arange(n, dtype=torch.float32).div_(max(n, 1)).add_(i + 1).reshape(shape)
        out[key] = ramp if dtype.is_floating_point else torch.full(shape, 7 + i, dtype=dtype)
    return out


@pytest.fixture(scope="module")
def sources() -> dict[str, dict[str, torch.Tensor]]:
    return {
        "resnet50": real("resnet50"),
        "vit_s": real("vit_small_patch16_224"),
        "vit_b": real("vit_base_patch16_224"),
        "vit_b14": real("vit_base_patch14_dinov2"),  # as DINOv2 publishes it: 518², 37×37 patches + CLS slot
    }


def build(row: str, backbone: str, path: Path, *extra: str, tiny: bool = False):
    """The classification model exactly as a run builds it; returns (model, composed config)."""
    overrides = [
        "task=classification",
        f"backbone={backbone}",
        f"pretraining={row}",
        f"pretraining.checkpoint={path}",
        f"task.input_size={64 if tiny else IMAGE}",
        f"paths.weights_dir={path.parent}",
        *(["backbone.tiny=true"] if tiny else []),
        *extra,
    ]
    cfg = compose_config(overrides)
    task = instantiate(cfg.task, _recursive_=False)
    return task.build_model(cfg.backbone, cfg.pretraining, False, cfg.paths.weights_dir), cfg


def resampled(pos_embed: torch.Tensor, prefix: int, grid: int) -> torch.Tensor:
    return resample_abs_pos_embed(pos_embed, [grid, grid], num_prefix_tokens=prefix)


def assert_every_tensor(encoder: torch.nn.Module, expected: dict[str, torch.Tensor], grid: int) -> None:
    loaded = encoder.state_dict()
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        if (
            key == "pos_embed" and value.shape != loaded[key].shape
        ):  # the file's grid, resampled to the task's
            prefix = 0 if encoder.no_embed_class else encoder.num_prefix_tokens
            value = resampled(value, prefix, grid)
        assert torch.equal(loaded[key], value), key


def _dino_resnet_full(src):
    obj, dropped = dino_full(src["resnet50"], torch.randn(64, 3, 7, 7), 2048, ddp_teacher=True)
    return obj, src["resnet50"], dropped


def _dino_backbone_only(src):
    return dict(src["vit_s"]), src["vit_s"], {}


def _dinov2_hub(src, registers=0):
    hub = dinov2_hub(src["vit_b14"], registers)
    return hub, dinov2_expected(hub), {"mask token": ["mask_token"]}


def _dinov2_training(src):
    hub = dinov2_hub(src["vit_b14"])
    obj, dropped = dinov2_training(hub)
    return obj, dinov2_expected(hub), dropped


def _mocov2(src):
    obj, dropped = mocov2(src["resnet50"], 2048)
    return obj, src["resnet50"], dropped


def _endovit_mae(src):
    decoder = mae_decoder()
    args = argparse.Namespace(model="mae_vit_base_patch16", mask_ratio=0.75, norm_pix_loss=True)
    obj = {
        "model": src["vit_b"] | decoder,
        "optimizer": OPTIMIZER,
        "epoch": 399,
        "scaler": SCALER,
        "args": args,
    }
    return (
        obj,
        src["vit_b"],
        {MAE_DECODER: list(decoder), TRAINING_STATE: ["optimizer", "epoch", "scaler", "args"]},
    )


def _backbone_prefixed(src):
    """A ResNet saved from a ``model.backbone`` wrapper under DDP, with its projection head."""
    head = {"module.head.0.weight": torch.randn(128, 2048), "module.head.0.bias": torch.randn(128)}
    obj = {"state_dict": prefixed("module.backbone.", src["resnet50"]) | head, "epoch": 100}
    return obj, src["resnet50"], {PROJECTOR: list(head), TRAINING_STATE: ["epoch"]}


# (id, row, backbone, builder, format, teacher taken, extra overrides, patch grid at 224)
CASES = [
    ("dino-full-resnet50", "gastronet5m_dinov1", "resnet50", _dino_resnet_full, "dino", "teacher", [], 0),
    ("dino-backbone-vit_s", "imagenet_dino", "vit_s", _dino_backbone_only, "plain", None, [], 14),
    (
        "dinov2-hub-reg4",
        "imagenet_dinov2_reg4",
        "vit_b14",
        lambda src: _dinov2_hub(src, registers=4),
        "dinov2",
        None,
        [],
        16,
    ),
    ("dinov2-training", "gastronet5m_dinov2", "vit_b14", _dinov2_training, "dinov2", "teacher", [], 16),
    ("mocov2", "gastronet5m_mocov2", "resnet50", _mocov2, "mocov2", None, [], 0),
    ("endovit-mae-training", "endovit_mae", "vit_b", _endovit_mae, "mae", None, [], 14),
    ("plain-module-backbone", "gastronet5m_simclrv2", "resnet50", _backbone_prefixed, "plain", None, [], 0),
]


@pytest.mark.slow  # real-size files: 4-13 s each on 2 shared cores (a ViT-B/14 file is 350 MB)
@pytest.mark.parametrize(
    ("row", "backbone", "layout", "fmt", "taken", "extra", "grid"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_published_layout_loads_every_tensor(
    tmp_path, caplog, sources, row, backbone, layout, fmt, taken, extra, grid
):
    obj, expected, dropped = layout(sources)
    path = tmp_path / "weights.pth"
    torch.save(obj, path)
    del obj
    with caplog.at_level(logging.INFO, logger="ssl4gie"):
        model, _ = build(row, backbone, path, *extra)
    assert_every_tensor(model.encoder, expected, grid)
    summary = next(r.getMessage() for r in caplog.records if "backbone tensors from" in r.getMessage())
    which = (
        f" {taken}" if (taken and fmt != "dinov2") or (fmt == "dinov2" and "teacher." in str(dropped)) else ""
    )
    assert f"loaded {len(expected)}{which} backbone tensors from {fmt} file weights.pth" in summary
    for reason, keys in dropped.items():
        assert f"{len(keys)} {reason}" in summary, reason
    if STUDENT in dropped:
        assert "teacher" in summary  # the receipt says which of the two networks was taken


def test_endovit_row_renormalises_inputs(tmp_path):
    """EndoViT's own mean/std: the classifier sees (pixels − μ_EndoViT) / σ_EndoViT, computed from raw pixels."""
    torch.manual_seed(0)
    vit = random_like(
        timm.create_model(
            "vit_base_patch16_224", num_classes=0, embed_dim=32, depth=4, num_heads=2
        ).state_dict()
    )
    torch.save(
        {"model": vit | mae_decoder(), "args": argparse.Namespace(norm_pix_loss=True)}, tmp_path / "e.pth"
    )
    model, _ = build("endovit_mae", "vit_b", tmp_path / "e.pth", tiny=True)
    model.eval()
    pixels = torch.rand(2, 3, 64, 64)
    imagenet = (pixels - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]
    ).view(1, 3, 1, 1)
    mean = torch.tensor([0.3464, 0.2280, 0.2228]).view(1, 3, 1, 1)  # EndoViT's model card
    std = torch.tensor([0.2520, 0.2128, 0.2093]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model.head(model.encoder((pixels - mean) / std))
        assert torch.allclose(model(imagenet), expected, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(model.head(model.encoder(imagenet)), expected, atol=1e-3)  # it matters
    assert (
        not model.encoder.pos_embed.requires_grad
    )  # MAE's sin-cos table stays frozen (train_pos_embed=false)
    assert "input_norm" not in str(list(model.state_dict()))  # checkpoints keep their keys


# ---------------------------------------------------------------------------------------- refusals (tiny)
def tiny_dinov2(registers: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    vit = timm.create_model("vit_base_patch14_dinov2", num_classes=0, embed_dim=32, depth=4, num_heads=2)
    return dinov2_hub(random_like(vit.state_dict()), registers)


def tiny_vit_s(width: int = 32) -> dict[str, torch.Tensor]:
    """backbone=vit_s's tiny variant (width 32); another width makes a wrong-architecture file."""
    vit = timm.create_model("vit_small_patch16_224", num_classes=0, embed_dim=width, depth=4, num_heads=2)
    return random_like(vit.state_dict())


def refused(tmp_path, obj, row, backbone, *extra, error=CheckpointError) -> str:
    torch.save(obj, tmp_path / "weights.pth")
    with pytest.raises(error) as err:
        build(row, backbone, tmp_path / "weights.pth", *extra, tiny=True)
    assert str(tmp_path / "weights.pth") in str(err.value) or error is not CheckpointError
    return str(err.value)


def _tiny_teacher_checkpoint():
    hub = tiny_dinov2()
    heads = dino_head("dino_head.", 32) | dino_head("ibot_head.", 32)
    obj = {"teacher": prefixed("backbone.", hub) | heads}
    return obj, dinov2_expected(hub), {"mask token": ["backbone.mask_token"], PROJECTOR: list(heads)}


def _tiny_dino_vit_full():
    vit = tiny_vit_s()
    obj, dropped = dino_full(vit, torch.randn_like(vit["patch_embed.proj.weight"]), 32, ddp_teacher=False)
    return obj, vit, dropped


def _tiny_hub():
    hub = tiny_dinov2()
    return hub, dinov2_expected(hub), {"mask token": ["mask_token"]}


# The same layouts in variants the real-size cases leave out (tiny: DINOv2 grid 4×4 at 64 px, ViT-S/16 4×4).
TINY_CASES = [
    ("dino-full-vit_s", "gastronet5m_dinov1", "vit_s", _tiny_dino_vit_full, "dino", "teacher"),
    ("dinov2-hub", "imagenet_dinov2", "vit_b14", _tiny_hub, "dinov2", None),
    (
        "dinov2-teacher-checkpoint",
        "gastronet5m_dinov2",
        "vit_b14",
        _tiny_teacher_checkpoint,
        "dinov2",
        "teacher",
    ),
]


@pytest.mark.parametrize(
    ("row", "backbone", "layout", "fmt", "taken"), [c[1:] for c in TINY_CASES], ids=[c[0] for c in TINY_CASES]
)
def test_more_layouts_load_every_tensor(tmp_path, caplog, row, backbone, layout, fmt, taken):
    obj, expected, dropped = layout()
    torch.save(obj, tmp_path / "weights.pth")
    with caplog.at_level(logging.INFO, logger="ssl4gie"):
        model, _ = build(row, backbone, tmp_path / "weights.pth", tiny=True)
    assert_every_tensor(model.encoder, expected, 4)
    which = f" {taken}" if taken else ""
    assert f"loaded {len(expected)}{which} backbone tensors from {fmt} file weights.pth" in caplog.text
    for reason, keys in dropped.items():
        assert f"{len(keys)} {reason}" in caplog.text, reason


def test_registers_auto_takes_the_files_count(tmp_path):
    torch.save(tiny_dinov2(registers=4), tmp_path / "weights.pth")
    model, cfg = build("gastronet5m_dinov2", "vit_b14", tmp_path / "weights.pth", tiny=True)
    assert cfg.backbone.registers == "auto" and model.encoder.reg_token.shape[1] == 4
    torch.save(tiny_dinov2(registers=0), tmp_path / "plain.pth")
    model, _ = build("gastronet5m_dinov2", "vit_b14", tmp_path / "plain.pth", tiny=True)
    assert model.encoder.reg_token is None


@pytest.mark.parametrize(("file_registers", "row"), [(4, "vb14_lvd_d2"), (0, "vb14_lvd_d2r")])
def test_register_count_mismatch_names_the_files_count(tmp_path, file_registers, row):
    message = refused(tmp_path, tiny_dinov2(file_registers), "imagenet_dinov2", "vit_b14", f"row={row}")
    wanted = 4 - file_registers
    assert f"the file has {file_registers} register token(s)" in message
    assert (
        f"built with {wanted}" in message
        and f"backbone.registers=auto (what the file has) or {file_registers}" in message
    )


@pytest.mark.parametrize(
    ("obj", "backbone", "row", "words"),
    [
        (lambda: tiny_vit_s(48), "vit_b", "imagenet_dino", "width 48 but backbone=vit_b has width 32"),
        (lambda: tiny_dinov2(), "vit_b", "endovit_mae", "14×14 patches but backbone=vit_b has 16×16"),
        (
            lambda: dino_full(
                timm.create_model(
                    "resnet50", layers=(1, 1, 1, 1), channels=(8, 16, 32, 64), num_classes=0
                ).state_dict(),
                torch.randn(8, 3, 7, 7),
                256,
                ddp_teacher=True,
            )[0],
            "vit_s",
            "gastronet5m_dinov1",
            "looks like a ResNet checkpoint but backbone=vit_s",
        ),
    ],
    ids=["vit_s-file-into-vit_b", "patch14-into-vit_b", "dino-resnet-into-vit_s"],
)
def test_wrong_architecture_is_refused(tmp_path, obj, backbone, row, words):
    assert words in refused(tmp_path, obj(), row, backbone)


@pytest.mark.parametrize(
    ("layout", "row", "backbone", "removed", "named"),
    [
        (
            lambda: dinov2_training(tiny_dinov2())[0],
            "gastronet5m_dinov2",
            "vit_b14",
            "teacher.backbone.blocks.2.2.ls1.gamma",
            "blocks.2.ls1.gamma",
        ),
        (
            lambda: mocov2(
                timm.create_model(
                    "resnet50", layers=(1, 1, 1, 1), channels=(8, 16, 32, 64), num_classes=0
                ).state_dict(),
                256,
            )[0],
            "gastronet5m_mocov2",
            "resnet50",
            "module.encoder_q.layer2.0.conv2.weight",
            "layer2.0.conv2.weight",
        ),
    ],
    ids=["dinov2-training", "mocov2"],
)
def test_one_missing_tensor_is_refused_naming_it(tmp_path, layout, row, backbone, removed, named):
    obj = layout()
    state = obj["model"] if "model" in obj else obj["state_dict"]
    del state[removed]
    message = refused(tmp_path, obj, row, backbone)
    assert "missing from the file" in message and named in message


def test_unrecognised_layout_lists_keys_prefixes_and_known_layouts(tmp_path):
    vit = tiny_vit_s()
    obj = {"net": prefixed("encoder.trunk.", {k.replace("blocks", "layers"): v for k, v in vit.items()})}
    obj["net"] = {
        k.replace("cls_token", "class_embedding").replace("pos_embed", "positional"): v
        for k, v in obj["net"].items()
    }
    obj["net"] = {k.replace("patch_embed", "stem"): v for k, v in obj["net"].items()}
    message = refused(tmp_path, obj, "imagenet_dino", "vit_s")
    assert "unrecognised checkpoint layout: top-level keys ['net']" in message
    assert "most common key prefixes net.encoder.trunk.* (" in message
    for family in ("mocov3", "mocov2", "barlowtwins_full", "dinov2", "dino", "mae", "plain"):
        assert f"{family}: " in message
    assert "Nothing was loaded" in message


def test_tensorflow_checkpoint_is_refused_with_the_conversion(tmp_path):
    prefix = tmp_path / "r50_1x_sk0" / "model.ckpt-250228"
    prefix.parent.mkdir()
    for suffix in (".index", ".data-00000-of-00001", ".meta"):
        Path(f"{prefix}{suffix}").write_bytes(b"\x00tf")
    for given in (prefix, Path(f"{prefix}.index")):
        with pytest.raises(Ssl4gieError, match="TensorFlow checkpoint") as err:
            build("gastronet5m_simclrv2", "resnet50", given, tiny=True)
        assert "python SimCLRv2-Pytorch/convert.py" in str(err.value)  # the documented conversion
        assert isinstance(err.value, ConfigError)


# --------------------------------------------------------------------- DINOv2's sharded training checkpoints
# DINOv2's own training output, written for real: 2 gloo processes wrap a DINOv2-layout model (teacher and student
# backbones in block chunks, DINO and iBOT heads, the losses' centre buffers) in FSDP as its train.py does
# (SHARD_GRAD_OP, use_orig_params=True, block chunks as inner units), save each rank's model_<iteration>.rank_<N>.pth
# as its FSDPCheckpointer does (LOCAL_STATE_DICT) and the teacher checkpoint as its do_test does (the teacher's full
# state dict under "teacher"). The per-rank files are refused with the file to pass instead; that file loads every
# backbone tensor.
WORLD, ITERATION, CHUNKS = 2, 9, 2


def _module(state: dict[str, torch.Tensor]) -> nn.Module:
    """A module tree whose parameters carry exactly ``state``'s names (dotted paths become submodules)."""
    root = nn.Module()
    for key, value in state.items():
        *path, name = key.split(".")
        module = root
        for part in path:
            if part not in module._modules:
                module.add_module(part, nn.Module())
            module = module._modules[part]
        module.register_parameter(name, nn.Parameter(value.clone()))
    return root


def _write(rank: int, out: str) -> None:
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp import ShardingStrategy, StateDictType

    dist.init_process_group("gloo", init_method=f"file://{out}/init", rank=rank, world_size=WORLD)
    try:
        hub = tiny_dinov2()
        width = hub["cls_token"].shape[-1]
        model = nn.Module()
        for network in ("student", "teacher"):
            parts = nn.ModuleDict(
                {
                    "backbone": _module(chunked(hub, CHUNKS)),
                    **{h: _module(dino_head("", width)) for h in ("dino_head", "ibot_head")},
                }
            )
            model.add_module(network, parts)
        for loss in ("dino_loss", "ibot_patch_loss"):
            model.add_module(loss, nn.Module())
            getattr(model, loss).register_buffer("center", torch.randn(1, 128))
        wrap = {
            "sharding_strategy": ShardingStrategy.SHARD_GRAD_OP,
            "use_orig_params": True,
            "device_id": torch.device("cpu"),
        }
        for network in (model.student, model.teacher):
            for chunk in range(CHUNKS):  # DINOv2 wraps its BlockChunk modules as FSDP units of their own
                network.backbone.blocks._modules[str(chunk)] = FSDP(
                    network.backbone.blocks._modules[str(chunk)], **wrap
                )
            for name in list(network.keys()):
                network[name] = FSDP(network[name], **wrap)
        with FSDP.state_dict_type(model, StateDictType.LOCAL_STATE_DICT):
            local = model.state_dict()
        torch.save(
            {"model": local, "optimizer": {}, "iteration": ITERATION},
            f"{out}/model_{ITERATION:07d}.rank_{rank}.pth",
        )
        teacher = model.teacher.state_dict()  # FSDP's default: the full state dict, on every rank
        if rank == 0:
            folder = Path(out) / "eval" / f"training_{ITERATION}"
            folder.mkdir(parents=True)
            torch.save({"teacher": teacher}, folder / "teacher_checkpoint.pth")
            torch.save(
                {"backbone_keys": sorted(k for k in teacher if k.startswith("backbone."))}, f"{out}/keys.pt"
            )
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def dinov2_output(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dinov2-train")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    spawn_ranks(_write, WORLD, str(out))
    return out


@pytest.mark.slow
def test_the_per_rank_files_are_what_fsdp_writes(dinov2_output):
    """Sanity of the fixture: each rank's file is a local state dict (flat shards, unreadable without a process
    group); the teacher checkpoint holds the whole teacher under DINOv2's names, block chunks included."""
    for rank in range(WORLD):
        with pytest.raises(Exception, match="ShardedTensor"):
            torch.load(dinov2_output / f"model_{ITERATION:07d}.rank_{rank}.pth", weights_only=True)
    keys = torch.load(dinov2_output / "keys.pt", weights_only=True)["backbone_keys"]
    assert "backbone.blocks.1.3.ls2.gamma" in keys and "backbone.mask_token" in keys


@pytest.mark.slow
@pytest.mark.parametrize("rank", range(WORLD))
def test_a_per_rank_training_file_is_refused_naming_the_file_to_pass(dinov2_output, rank, tmp_path):
    path = dinov2_output / f"model_{ITERATION:07d}.rank_{rank}.pth"
    with pytest.raises(CheckpointError) as err:
        build("gastronet5m_dinov2", "vit_b14", path, tiny=True)
    message = str(err.value)
    assert str(path) in message and "eval/training_<iteration>/teacher_checkpoint.pth" in message
    assert "sharded (FSDP)" in message


@pytest.mark.slow
def test_the_teacher_checkpoint_of_the_same_run_loads_every_backbone_tensor(dinov2_output, caplog):
    path = dinov2_output / "eval" / f"training_{ITERATION}" / "teacher_checkpoint.pth"
    with caplog.at_level(logging.INFO, logger="ssl4gie"):
        model, _ = build("gastronet5m_dinov2", "vit_b14", path, tiny=True)
    expected = dinov2_expected(tiny_dinov2())
    assert_every_tensor(model.encoder, expected, 4)
    assert (
        f"loaded {len(expected)} teacher backbone tensors from dinov2 file teacher_checkpoint.pth"
        in caplog.text
    )
