"""The study's finetuned files as its ``train_*.py`` scripts save them (``torch.save`` into
``Trained models/``): read with weights_only=True and the numpy types of ``loss`` / ``np_state`` allowed,
converted into ssl4gie's model, evaluated with ``mode=eval``; predictions compared with an independent
implementation of the study's classifier on the same weights."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from helpers import compose_config, task_overrides
from helpers.checkpoints import (
    random_like,
    ref_bn,
    study_file,
    study_resnet_depth_forward,
    study_resnet_depth_names,
    tiny_backbone,
)
from helpers.study import (
    SIZE,
    SMP_NAMES,
    independent_probabilities,
    smp_deeplab_forward,
    study_classifier_state,
)

from ssl4gie.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ssl4gie.models.checkpoints import CheckpointError
from ssl4gie.models.checkpoints.study import detect_kind
from ssl4gie.run.pipeline import execute
from ssl4gie.utils.conf import instantiate_checked


@pytest.mark.parametrize("backbone, family", [("resnet50", "resnet"), ("vit_b", "vit")])
def test_study_classification_file_evaluates_as_their_model(backbone, family, tmp_paths, tmp_path, caplog):
    overrides = task_overrides("classification", tmp_paths, f"backbone={backbone}")
    classes = list(compose_config(overrides).dataset.classes)
    state = study_classifier_state(family, len(classes))
    path = tmp_path / f"Classification_{backbone}.pt"
    study_file(path, state)
    assert detect_kind(state) == ("classification", family)
    with caplog.at_level("INFO"):
        execute(compose_config([*overrides, "mode=eval", f"ckpt={path}"], tmp_path / "eval"))
    dropped = (
        "1 MAE decoder position embedding (unused by the study's finetuned model), "
        if family == "vit"
        else ""
    )
    tensors = len(state) - (family == "vit")
    label = {"resnet": "ResNet-50", "vit": "ViT-B"}[family]
    assert (
        f"loaded {tensors} tensors from the study's classification {label} model file {path.name}; dropped by "
        f"rule: {dropped}9 optimizer/training state" in caplog.text
    )
    rows = pd.read_csv(tmp_path / "eval" / "per_image_test.csv")
    reader = instantiate_checked(compose_config(overrides).dataset)
    paths = [str(reader.items[i].image) for i in rows["index"]]
    expected = independent_probabilities(family, state, paths)
    got = rows[[f"p_{c}" for c in classes]].to_numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)

    # and on a folder of your own frames (mode=predict input=DIR): the same probabilities for the same images
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, image in enumerate(paths):
        (frames / f"frame {i}.jpg").write_bytes(Path(image).read_bytes())
    execute(
        compose_config([*overrides, "mode=predict", f"ckpt={path}", f"input={frames}"], tmp_path / "predict")
    )
    predicted = pd.read_csv(tmp_path / "predict" / "predictions" / "predictions.csv").sort_values("file")
    order = np.argsort([f"frame {i}.jpg" for i in range(len(paths))])
    np.testing.assert_allclose(predicted[[f"p_{c}" for c in classes]].to_numpy(), expected[order], atol=1e-5)


def test_wrong_task_wrong_backbone_and_truncated_study_files_are_refused(tmp_paths, tmp_path):
    overrides = task_overrides("classification", tmp_paths)
    classes = len(compose_config(overrides).dataset.classes)
    path = tmp_path / "resnet_classifier.pt"
    study_file(path, study_classifier_state("resnet", classes))
    seg = task_overrides("segmentation", tmp_paths, "mode=eval", f"ckpt={path}")
    with pytest.raises(
        CheckpointError,
        match="looks like the study's classification ResNet-50 model, not the study's segmentation",
    ):
        execute(compose_config(seg, tmp_path / "seg"))
    vit = [*overrides, "backbone=vit_b", "mode=eval", f"ckpt={path}"]
    with pytest.raises(
        CheckpointError, match="classification ResNet-50 model, not the study's classification ViT-B"
    ):
        execute(compose_config(vit, tmp_path / "vit"))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(Exception, match="truncated"):
        execute(compose_config([*overrides, "mode=eval", f"ckpt={truncated}"], tmp_path / "cut"))


def test_a_study_files_stored_numbers_come_out_as_plain_numbers_exactly(tmp_path):
    from ssl4gie.models.checkpoints.study import read_study_file, stored_numbers

    # as the scripts save them: Python numbers (a detector's mAP by its item()), here one numpy value too
    path = tmp_path / "stored.pth"
    study_file(path, {"lin_head.weight": torch.zeros(1)}, epoch=12, val_perf=np.float64(0.1 + 0.2))
    assert stored_numbers(read_study_file(path)) == {"epoch": 12, "val_perf": 0.1 + 0.2, "test_perf": 0.7}
    assert all(type(v) in (int, float) for v in stored_numbers(read_study_file(path)).values())
    tensor = stored_numbers({"epoch": 3, "val_perf": torch.tensor(0.25), "test_perf": torch.tensor([0.5])})
    assert tensor == {"epoch": 3, "val_perf": 0.25, "test_perf": 0.5}
    assert stored_numbers({"epoch": 3, "test_perf": "n/a"}) == {"epoch": 3}  # not a number: left out


def test_study_files_of_the_other_kinds_are_recognised_by_their_keys():
    assert detect_kind(
        {"rpn.head.conv.weight": 0, "backbone.body.layer1.0.bn1.weight": 0, "backbone.body.conv1.weight": 0}
    ) == ("detection", "resnet")
    assert detect_kind(
        {"encoder.layer1.0.bn1.weight": 0, "encoder.conv1.weight": 0, "segmentation_head.0.weight": 0}
    ) == ("segmentation", "resnet")
    vit = {"cls_token": 0, "pos_embed": 0, "patch_embed.proj.weight": 0}
    assert detect_kind({**vit, "decoder.output_conv.1.weight": 0, "decoder.output_conv.4.weight": 0}) == (
        "segmentation",
        "vit",
    )
    assert detect_kind({**vit, "decoder.output_conv.2.weight": 0, "decoder.output_conv.4.weight": 0}) == (
        "depth",
        "vit",
    )
    assert detect_kind(
        {"layer1.0.bn1.weight": 0, "conv1.weight": 0, "decoder_levels.0.chan_reduce.0.weight": 0}
    ) == ("depth", "resnet")


# ------------------------------------------------------------------------------------------ ViT-B + DPT (dense)
def study_dpt_names(ours: dict) -> dict:
    """ssl4gie's EncoderDecoder keys -> the study's (``Models/models.py``), for fabricating a file in their
    layout."""
    renames = [("decoder.head.", "decoder.output_conv.")]
    for level in range(1, 5):
        renames += [
            (f"decoder.reassemble.{level - 1}.", f"decoder.act_postprocess{level}2."),
            (f"decoder.project.{level - 1}.", f"decoder.layer{level}_rn."),
            (f"decoder.fusion.{level - 1}.skip_unit.", f"decoder.refinenet{level}.resConfUnit1."),
            (f"decoder.fusion.{level - 1}.unit.", f"decoder.refinenet{level}.resConfUnit2."),
            (f"decoder.fusion.{level - 1}.out_conv.", f"decoder.refinenet{level}.out_conv."),
        ]
    out = {}
    for key, value in ours.items():
        new = key.removeprefix("encoder.") if key.startswith("encoder.") else None
        for a, b in renames:
            if key.startswith(a):
                new = b + key.removeprefix(a)
        out[new] = value
    return out


def study_dpt_forward(sd: dict, feats: list[torch.Tensor], head: str) -> torch.Tensor:
    """The study's DPT, computed from its own key names with functional ops (``Models/DPT_decoder.py``):
    reassemble, project, refinenet 4 → 1 (resConfUnit1 on the skip input, resConfUnit2 after the sum, ×2
    bilinear align_corners=True, 1×1 out_conv), then the head."""
    import torch.nn.functional as F

    def w(name):
        return sd[f"decoder.{name}.weight"]

    def b(name):
        return sd.get(f"decoder.{name}.bias")

    def bn(x, name):
        return ref_bn(sd, x, f"decoder.{name}")

    def rcu(x, name):
        out = F.conv2d(F.relu(x), w(f"{name}.conv1"), b(f"{name}.conv1"), padding=1)
        if f"decoder.{name}.bn1.weight" in sd:
            out = bn(out, f"{name}.bn1")
        out = F.conv2d(F.relu(out), w(f"{name}.conv2"), b(f"{name}.conv2"), padding=1)
        if f"decoder.{name}.bn2.weight" in sd:
            out = bn(out, f"{name}.bn2")
        return out + x

    def fuse(level, x, skip=None, size=None):
        if skip is not None:
            x = x + rcu(skip, f"refinenet{level}.resConfUnit1")
        x = rcu(x, f"refinenet{level}.resConfUnit2")
        x = F.interpolate(
            x, size=size, scale_factor=None if size else 2.0, mode="bilinear", align_corners=True
        )
        return F.conv2d(x, w(f"refinenet{level}.out_conv"), b(f"refinenet{level}.out_conv"))

    f1, f2, f3, f4 = feats
    a1 = F.conv_transpose2d(
        F.conv2d(f1, w("act_postprocess12.0"), b("act_postprocess12.0")),
        w("act_postprocess12.1"),
        b("act_postprocess12.1"),
        stride=4,
    )
    a2 = F.conv_transpose2d(
        F.conv2d(f2, w("act_postprocess22.0"), b("act_postprocess22.0")),
        w("act_postprocess22.1"),
        b("act_postprocess22.1"),
        stride=2,
    )
    a3 = F.conv2d(f3, w("act_postprocess32.0"), b("act_postprocess32.0"))
    a4 = F.conv2d(
        F.conv2d(f4, w("act_postprocess42.0"), b("act_postprocess42.0")),
        w("act_postprocess42.1"),
        b("act_postprocess42.1"),
        stride=2,
        padding=1,
    )
    l1, l2, l3, l4 = (
        F.conv2d(a, w(f"layer{i}_rn"), padding=1) for i, a in enumerate((a1, a2, a3, a4), start=1)
    )
    path = fuse(4, l4, size=l3.shape[-2:])
    path = fuse(3, path, l3, size=l2.shape[-2:])
    path = fuse(2, path, l2, size=l1.shape[-2:])
    path = fuse(1, path, l1)
    up = {"scale_factor": 2.0, "mode": "bilinear", "align_corners": True}
    if head == "segmentation":
        out = F.relu(bn(F.conv2d(path, w("output_conv.0"), None, padding=1), "output_conv.1"))
        return F.interpolate(F.conv2d(out, w("output_conv.4"), b("output_conv.4")), **up)
    out = F.interpolate(F.conv2d(path, w("output_conv.0"), b("output_conv.0"), padding=1), **up)
    out = F.relu(F.conv2d(out, w("output_conv.2"), b("output_conv.2"), padding=1))
    return torch.sigmoid(F.conv2d(out, w("output_conv.4"), b("output_conv.4")))


@pytest.mark.parametrize("task", ["segmentation", "depth"])
def test_study_vit_dense_file_equals_their_dpt(task, tmp_paths, tmp_path, caplog):
    from ssl4gie.models.backbone import intermediates
    from ssl4gie.models.checkpoints.study import check_against
    from ssl4gie.run.checkpoint import read_model_checkpoint

    overrides = task_overrides(task, tmp_paths, "backbone=vit_b")
    cfg = compose_config(overrides)
    model = instantiate_checked(cfg.task, _recursive_=False).build_model(
        cfg.backbone, cfg.pretraining, False, str(tmp_path)
    )
    torch.manual_seed(1)
    study = study_dpt_names(
        {k: v for k, v in random_like(model.state_dict()).items() if "num_batches_tracked" not in k}
    )
    for key, value in list(study.items()):  # the coarsest block's unit that never runs is in their files
        if key.startswith("decoder.refinenet3.resConfUnit1."):
            study[key.replace("refinenet3", "refinenet4")] = torch.randn_like(value)
    study["decoder_pos_embed"] = torch.zeros(1, 17, 16)
    for key in [k for k in study if k.endswith("running_var")]:
        study[key] = study[key].abs() + 0.5
    path = tmp_path / f"{task}_vit.pt"
    study_file(path, study)
    assert detect_kind(study) == (task, "vit")

    ckpt = read_model_checkpoint(path, task, "vit")
    check_against(model, ckpt["model"], path)
    model.load_state_dict(ckpt["model"], strict=False)
    assert "1 MAE decoder position embedding" in ckpt["receipt"]
    assert "DPT fusion unit the study never runs" in ckpt["receipt"]
    model.eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        ours = model(x)
        vit = tiny_backbone("vit", img_size=SIZE)
        vit.load_state_dict({k: v for k, v in study.items() if not k.startswith("decoder")})
        vit.eval()
        feats = intermediates(vit, x, model.indices)
        theirs = study_dpt_forward(study, feats, task)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)

    with caplog.at_level("INFO"):  # and through the command line
        execute(compose_config([*overrides, "mode=eval", f"ckpt={path}"], tmp_path / "eval"))
    assert f"from the study's {task} ViT-B model file {path.name}" in caplog.text


# ------------------------------------------------------------------------------------------ ResNet-50 depth
def test_study_resnet_depth_file_equals_their_decoder(tmp_paths, tmp_path, caplog):
    from ssl4gie.models.checkpoints.study import check_against
    from ssl4gie.run.checkpoint import read_model_checkpoint

    overrides = task_overrides("depth", tmp_paths, "backbone=resnet50")
    cfg = compose_config(overrides)
    model = instantiate_checked(cfg.task, _recursive_=False).build_model(
        cfg.backbone, cfg.pretraining, False, str(tmp_path)
    )
    torch.manual_seed(2)
    study = study_resnet_depth_names(random_like(model.state_dict()))
    for key in [k for k in study if k.endswith("running_var")]:
        study[key] = study[key].abs() + 0.5
    path = tmp_path / "depth_resnet.pt"
    study_file(path, study)
    assert detect_kind(study) == ("depth", "resnet")
    ckpt = read_model_checkpoint(path, "depth", "resnet")
    check_against(model, ckpt["model"], path)
    model.load_state_dict(ckpt["model"], strict=False)
    model.eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        encoder = tiny_backbone("resnet")
        encoder.load_state_dict(
            {k: v for k, v in study.items() if not k.startswith(("decoder_levels", "output_conv"))}
        )
        encoder.eval()
        feats = encoder.forward_intermediates(x, indices=[1, 2, 3, 4], intermediates_only=True)
        torch.testing.assert_close(model(x), study_resnet_depth_forward(study, feats), atol=1e-5, rtol=1e-4)
    with caplog.at_level("INFO"):
        execute(compose_config([*overrides, "mode=eval", f"ckpt={path}"], tmp_path / "eval"))
    assert f"from the study's depth ResNet-50 model file {path.name}" in caplog.text


def test_study_resnet_segmentation_file_equals_smp_deeplabv3plus(tmp_paths, tmp_path, caplog):
    from ssl4gie.models.checkpoints.study import check_against
    from ssl4gie.run.checkpoint import read_model_checkpoint

    overrides = task_overrides("segmentation", tmp_paths, "backbone=resnet50")
    cfg = compose_config(overrides)
    model = instantiate_checked(cfg.task, _recursive_=False).build_model(
        cfg.backbone, cfg.pretraining, False, str(tmp_path)
    )
    torch.manual_seed(3)
    study = {}
    for key, value in random_like(model.state_dict()).items():
        old, new = next((o, n) for o, n in SMP_NAMES if key.startswith(o))
        study[new + key.removeprefix(old)] = value.abs() + 0.5 if key.endswith("running_var") else value
    path = tmp_path / "segmentation_resnet.pt"
    study_file(path, study)
    assert detect_kind(study) == ("segmentation", "resnet")
    ckpt = read_model_checkpoint(path, "segmentation", "resnet")
    check_against(model, ckpt["model"], path)
    model.load_state_dict(ckpt["model"], strict=False)
    model.eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        encoder = tiny_backbone("resnet")
        for (
            conv
        ) in encoder.layer4.modules():  # smp's output stride 16: every layer4 conv at stride 1, dilation 2
            if isinstance(conv, torch.nn.Conv2d):
                k = conv.kernel_size[0]
                conv.stride, conv.dilation, conv.padding = (1, 1), (2, 2), ((k // 2) * 2, (k // 2) * 2)
        encoder.load_state_dict(
            {k.removeprefix("encoder."): v for k, v in study.items() if k.startswith("encoder.")}
        )
        encoder.eval()
        layer1, layer4 = encoder.forward_intermediates(x, indices=[1, 4], intermediates_only=True)
        torch.testing.assert_close(model(x), smp_deeplab_forward(study, layer1, layer4), atol=1e-5, rtol=1e-4)
    with caplog.at_level("INFO"):
        execute(compose_config([*overrides, "mode=eval", f"ckpt={path}"], tmp_path / "eval"))
    assert f"from the study's segmentation ResNet-50 model file {path.name}" in caplog.text


# --------------------------------------------------------------------------------- ResNet-50-FPN Faster R-CNN
@pytest.mark.slow
def test_study_resnet_detector_file_equals_torchvisions_model(tmp_paths, tmp_path, caplog):
    """Their torchvision 0.10 Faster R-CNN (version-1 FPN / RPN names, FrozenBatchNorm) against torchvision's own
    model built as the study built it, which upgrades the version-1 names itself."""
    from torchvision.models import resnet50
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.misc import FrozenBatchNorm2d

    from ssl4gie.models.checkpoints.study import check_against
    from ssl4gie.run.checkpoint import read_model_checkpoint

    size = {"min_size": 64, "max_size": 128, "box_score_thresh": 0.0}  # random weights score low
    reference = FasterRCNN(
        _resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), 5),
        num_classes=2,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
        **size,
    )
    torch.manual_seed(4)
    study = {}
    # torchvision's own initialisation (randn everywhere would overflow 50 layers), frozen statistics made non-trivial
    for key, value in reference.state_dict().items():
        if key.endswith(("running_var", "bn1.weight", "bn2.weight", "bn3.weight")):
            value = torch.rand_like(value) * 0.2 + 0.9
        elif key.endswith(("running_mean", "bn1.bias", "bn2.bias", "bn3.bias")):
            value = torch.randn_like(value) * 0.01
        key = key.replace(".0.weight", ".weight").replace(".0.bias", ".bias") if ".fpn." in key else key
        study[key.replace("rpn.head.conv.0.0.", "rpn.head.conv.")] = value  # torchvision 0.10's names
    assert "backbone.fpn.inner_blocks.0.weight" in study and "rpn.head.conv.weight" in study
    path = tmp_path / "detection_resnet.pt"
    study_file(path, study)
    assert detect_kind(study) == ("detection", "resnet")

    overrides = [
        o
        for o in task_overrides("detection", tmp_paths)
        if not o.startswith(("task.fpn_channels", "task.rois", "backbone.tiny"))
    ]
    overrides += [
        "task.min_size=64",
        "task.max_size=128",
        "task.score_threshold=0.0",
        "mode=eval",
        f"ckpt={path}",
    ]
    with caplog.at_level(
        "INFO"
    ):  # through the command line: the study's frozen BatchNorm is picked for their file
        execute(compose_config(overrides, tmp_path / "eval"))
    assert "the study's detector: frozen BatchNorm" in caplog.text
    assert f"from the study's detection ResNet-50 model file {path.name}" in caplog.text

    cfg = compose_config(overrides)
    task = instantiate_checked(cfg.task, _recursive_=False)
    task.use_study_model()
    model = task.build_model(cfg.backbone, cfg.pretraining, False, str(tmp_path))
    ckpt = read_model_checkpoint(path, "detection", "resnet")
    check_against(model, ckpt["model"], path)
    model.load_state_dict(ckpt["model"], strict=False)
    reference.load_state_dict(study)  # a plain dict has no version metadata: torchvision renames the v1 keys
    images = [torch.rand(3, 80, 112), torch.rand(3, 128, 96)]
    model.eval(), reference.eval()
    with torch.no_grad():
        ours, theirs = model(images), reference(images)
    for a, b in zip(ours, theirs, strict=True):
        assert len(b["boxes"]) > 0
        torch.testing.assert_close(a["boxes"], b["boxes"], atol=1e-3, rtol=1e-4)
        torch.testing.assert_close(a["scores"], b["scores"], atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------ ViT-B ViTDet
# ssl4gie's ViT detector names -> the study's (their ViTDet_FPN fpn1..fpn4 are strides 32, 16, 8, 4).
STUDY_FPN = {"stride32": "fpn1", "stride16": "fpn2", "stride8": "fpn3", "stride4": "fpn4"}


def study_vit_detector_names(ours: dict) -> dict:
    study = {}
    for key, value in ours.items():
        if key.startswith("backbone.encoder."):
            key = "backbone." + key.removeprefix("backbone.encoder.")
        elif key.startswith("backbone.fpn."):
            level, rest = key.removeprefix("backbone.fpn.").split(".", 1)
            key = f"backbone.fpn.{STUDY_FPN[level]}.{rest}"
        study[key.replace("rpn.head.conv.0.0.", "rpn.head.conv.")] = value  # torchvision 0.10's names
    return study


class StudyViTDet(torch.nn.Module):
    """The study's ViT detector backbone written from its key names: patch embedding, the 14×14 table's patch part
    interpolated to the canvas grid every forward, blocks whose windowed attention permutes the tokens explicitly
    (their ``WindowedAttention``), the final norm, and ``ViTDet_FPN`` with whole-tensor LayerNorms."""

    def __init__(self, sd: dict, heads: int, global_blocks: list[int], window: int) -> None:
        super().__init__()
        self.sd, self.heads, self.global_blocks, self.window = sd, heads, global_blocks, window
        self.out_channels = sd["backbone.fpn.fpn2.0.weight"].shape[0]

    def attention(self, x, name, window):
        b, n, c = x.shape
        s = int(n**0.5)
        idxs = torch.arange(n).reshape(s, s)
        perm = torch.cat(
            [
                idxs[i : i + window, j : j + window].reshape(-1)
                for i in range(0, s, window)
                for j in range(0, s, window)
            ]
        )
        windows = n // window**2
        x = x[:, perm]
        qkv = F.linear(x, self.sd[f"{name}.qkv.weight"], self.sd[f"{name}.qkv.bias"])
        q, k, v = qkv.reshape(b, windows, window**2, 3, self.heads, c // self.heads).permute(3, 0, 1, 4, 2, 5)
        attn = ((q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5).softmax(-1)
        x = (attn @ v).transpose(2, 3).reshape(b, n, c)[:, torch.argsort(perm)]
        return F.linear(x, self.sd[f"{name}.proj.weight"], self.sd[f"{name}.proj.bias"])

    def forward(self, images):
        sd = self.sd

        def ln(x, name, eps=1e-6):
            return F.layer_norm(x, sd[f"{name}.weight"].shape, sd[f"{name}.weight"], sd[f"{name}.bias"], eps)

        def conv(x, name, **kw):
            return F.conv2d(x, sd[f"{name}.weight"], sd[f"{name}.bias"], **kw)

        def up(x, name):
            return F.conv_transpose2d(x, sd[f"{name}.weight"], sd[f"{name}.bias"], stride=2)

        x = conv(images, "backbone.patch_embed.proj", stride=16)
        b, c, g, _ = x.shape
        x = x.flatten(2).transpose(1, 2)
        table = sd["backbone.pos_embed"]
        source = int((table.shape[1] - 1) ** 0.5)
        grid = table[:, 1:].transpose(1, 2).reshape(1, c, source, source)
        pos = F.interpolate(grid, size=(g, g), mode="bilinear", align_corners=True)
        x = x + pos.reshape(1, c, g * g).transpose(1, 2)
        depth = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("backbone.blocks."))
        for i in range(depth):
            name = f"backbone.blocks.{i}"
            window = g if i in self.global_blocks else self.window  # one window: global attention
            x = x + self.attention(ln(x, f"{name}.norm1"), f"{name}.attn", window)
            h = F.gelu(
                F.linear(ln(x, f"{name}.norm2"), sd[f"{name}.mlp.fc1.weight"], sd[f"{name}.mlp.fc1.bias"])
            )
            x = x + F.linear(h, sd[f"{name}.mlp.fc2.weight"], sd[f"{name}.mlp.fc2.bias"])
        x = ln(x, "backbone.norm").transpose(1, 2).reshape(b, c, g, g)

        def conv_ln(y, level, first):  # Conv1×1 LN Conv3×3 LN from module index ``first``
            y = ln(conv(y, f"{level}.{first}"), f"{level}.{first + 1}", 1e-5)
            return ln(conv(y, f"{level}.{first + 2}", padding=1), f"{level}.{first + 3}", 1e-5)

        fpn = "backbone.fpn.fpn"
        l1 = conv_ln(F.max_pool2d(x, 2), f"{fpn}1", 1)
        l2 = conv_ln(x, f"{fpn}2", 0)
        l3 = conv_ln(up(x, f"{fpn}3.0"), f"{fpn}3", 1)
        l4 = up(F.gelu(ln(up(x, f"{fpn}4.0"), f"{fpn}4.1", 1e-5)), f"{fpn}4.3")
        l4 = conv_ln(l4, f"{fpn}4", 4)
        pool = F.max_pool2d(l1, kernel_size=1, stride=2)
        return OrderedDict([("0", l4), ("1", l3), ("2", l2), ("3", l1), ("pool", pool)])


def test_study_vit_detector_file_equals_their_vitdet(tmp_paths, tmp_path, caplog):
    """Their ViT detector (CLS token deleted, 1×(1+14²)×C table kept and interpolated per forward, windowed
    attention, whole-(C,H,W) LayerNorm pyramid with conv biases) on a tiny ViT at a 128² canvas (8×8 tokens,
    4×4 windows): evaluated through ``mode=eval ckpt=FILE`` and compared with :class:`StudyViTDet` inside
    torchvision's Faster R-CNN. The study's global blocks are the last of each quarter of ViT-B ([2, 5, 8, 11]);
    for the 4-block tiny ViT that rule leaves no windowed block, so the file's model has global attention in
    block 3 only (task.global_blocks=[3]), which exercises the windows."""
    from torchvision.models.detection import FasterRCNN

    from ssl4gie.models.checkpoints.study import check_against
    from ssl4gie.run.checkpoint import read_model_checkpoint

    overrides = [
        *task_overrides("detection", tmp_paths),
        "backbone=vit_b",
        "task.score_threshold=0.0",
        "mode=eval",
    ]
    cfg = compose_config(overrides)
    task = instantiate_checked(cfg.task, _recursive_=False)
    task.use_study_model()
    model = task.build_model(cfg.backbone, cfg.pretraining, False, str(tmp_path))
    torch.manual_seed(5)
    # the model's own initialisation, perturbed so that every LN affine, bias and table entry is non-trivial
    ours = {k: v + 0.05 * torch.randn_like(v) for k, v in model.state_dict().items()}
    study = study_vit_detector_names(ours)
    assert study["backbone.pos_embed"].shape == (
        1,
        1 + 14 * 14,
        32,
    )  # the pretraining-size table, CLS slot kept
    assert study["backbone.fpn.fpn1.2.weight"].shape == (16, 4, 4)  # LayerNorm((C, H, W)) at stride 32
    assert "backbone.fpn.fpn3.1.bias" in study and "rpn.head.conv.weight" in study
    study["backbone.decoder_pos_embed"] = torch.zeros(1, 197, 16)  # MAE-derived files carry it
    path = tmp_path / "detection_vit.pt"
    study_file(path, study)
    assert detect_kind(study) == ("detection", "vit")

    with caplog.at_level("INFO"):  # through the command line: the study's variants are picked for their file
        execute(compose_config([*overrides, f"ckpt={path}"], tmp_path / "eval"))
    assert "the study's detector on a ViT: task.pyramid_norm=study, task.pos_embed=study" in caplog.text
    assert f"from the study's detection ViT-B model file {path.name}" in caplog.text
    assert "1 MAE decoder position embedding" in caplog.text

    ckpt = read_model_checkpoint(path, "detection", "vit")
    check_against(model, ckpt["model"], path)
    model.load_state_dict(ckpt["model"], strict=False)
    heads = cfg.backbone.tiny_kwargs.num_heads
    reference = FasterRCNN(
        StudyViTDet(study, heads, global_blocks=[3], window=4),
        num_classes=2,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
        min_size=128,
        max_size=128,
        box_score_thresh=0.0,
    )
    reference.load_state_dict({k: v for k, v in study.items() if k.startswith(("rpn.", "roi_heads."))})
    images = [torch.rand(3, 128, 128), torch.rand(3, 128, 128)]
    model.eval(), reference.eval()
    with torch.no_grad():
        mine, theirs = model(images), reference(images)
        # the backbones alone, on the same normalised batch: every pyramid level
        batch, _ = reference.transform(images)
        for level, (a, b) in enumerate(
            zip(
                model.backbone(batch.tensors).values(),
                reference.backbone(batch.tensors).values(),
                strict=True,
            )
        ):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=f"pyramid level {level}")
    for a, b in zip(mine, theirs, strict=True):
        assert len(b["boxes"]) > 0
        torch.testing.assert_close(a["boxes"], b["boxes"], atol=1e-3, rtol=1e-4)
        torch.testing.assert_close(a["scores"], b["scores"], atol=1e-4, rtol=1e-4)


def test_a_study_vit_detector_file_at_another_canvas_names_its_canvas(tmp_paths, tmp_path):
    from ssl4gie.models.checkpoints.study import check_against

    def study_model(canvas):
        cfg = compose_config(
            [*task_overrides("detection", tmp_paths), "backbone=vit_b", f"task.canvas_size={canvas}"]
        )
        task = instantiate_checked(cfg.task, _recursive_=False)
        task.use_study_model()
        return task.build_model(cfg.backbone, cfg.pretraining, False, str(tmp_path))

    state = study_model(64).state_dict()
    with pytest.raises(CheckpointError, match="trained at a 64² canvas: set task.canvas_size=64"):
        check_against(study_model(128), state, "f.pt")


def test_study_pyramid_norm_is_only_valid_at_its_canvas():
    from ssl4gie.errors import ConfigError
    from ssl4gie.models.detection import SimpleFeaturePyramid

    fpn = SimpleFeaturePyramid(8, 4, norm="study", grid=(4, 4))
    assert fpn.stride4[1].weight.shape == (8, 8, 8) and fpn.stride32[2].weight.shape == (4, 2, 2)
    assert fpn.stride16[0].bias is not None  # the study's convs keep their bias
    with pytest.raises(
        ConfigError, match="task.pyramid_norm=study: the whole-map LayerNorms are built for a 4×4"
    ):
        fpn(torch.zeros(1, 8, 6, 6))
    with pytest.raises(ConfigError, match="task.pyramid_norm='batch' is not valid; valid: channel, study"):
        SimpleFeaturePyramid(8, 4, norm="batch")
