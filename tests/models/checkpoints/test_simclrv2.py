"""SimCLR v2 after the documented TensorFlow → PyTorch conversion (SimCLRv2-Pytorch's convert.py): a real-size file
in that tool's layout loads into timm's ResNet-50 and computes what the file's own network computes; TensorFlow
checkpoints and selective-kernel (sk1) files are refused with what to do."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers.checkpoints import ref_bn, ref_conv
from omegaconf import OmegaConf

from ssl4gie.errors import ConfigError
from ssl4gie.models.backbone import create_backbone
from ssl4gie.models.checkpoints import load_backbone_weights
from ssl4gie.models.checkpoints.io import CheckpointError
from ssl4gie.run.weights import weights_file
from ssl4gie.utils.conf import CONF_DIR
from ssl4gie.utils.io import save_torch

LAYERS = (3, 4, 6, 3)


def _bn(prefix: str, dim: int) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.weight": torch.rand(dim) + 0.5,
        f"{prefix}.bias": torch.randn(dim) * 0.1,
        f"{prefix}.running_mean": torch.randn(dim) * 0.1,
        f"{prefix}.running_var": torch.rand(dim) + 0.5,
        f"{prefix}.num_batches_tracked": torch.tensor(1000),
    }


def _conv(name: str, out: int, inp: int, k: int) -> dict[str, torch.Tensor]:
    return {f"{name}.weight": torch.randn(out, inp, k, k) * (2 / (inp * k * k)) ** 0.5}


def simclrv2_r50_1x_sk0() -> dict:
    """The converter's output for r50_1x_sk0, built from its network's structure: a stem (``net.0``: 7×7 conv,
    BatchNormRelu, max-pool) and four stages of bottleneck blocks (``net.<s>.blocks.<b>``: ``net`` = 1×1 conv,
    BatchNormRelu, 3×3 conv with the stride, BatchNormRelu, 1×1 conv, BatchNorm; the first block's ``projection`` =
    strided 1×1 conv + BatchNorm), ``fc`` the supervised head, ``head`` the 3-layer contrastive head."""
    sd = {**_conv("net.0.0", 64, 3, 7), **_bn("net.0.1.0", 64)}
    inp = 64
    for s, n in enumerate(LAYERS, start=1):
        planes = 64 * 2 ** (s - 1)
        for b in range(n):
            p = f"net.{s}.blocks.{b}"
            sd |= _conv(f"{p}.net.0", planes, inp, 1) | _bn(f"{p}.net.1.0", planes)
            sd |= _conv(f"{p}.net.2", planes, planes, 3) | _bn(f"{p}.net.3.0", planes)
            sd |= _conv(f"{p}.net.4", 4 * planes, planes, 1) | _bn(f"{p}.net.5.0", 4 * planes)
            if b == 0:
                sd |= _conv(f"{p}.projection.shortcut", 4 * planes, inp, 1) | _bn(
                    f"{p}.projection.bn.0", 4 * planes
                )
            inp = 4 * planes
    sd |= {"fc.weight": torch.randn(1000, 2048) * 0.01, "fc.bias": torch.zeros(1000)}
    head = {"layers.0.weight": torch.randn(2048, 2048) * 0.01, **_bn("layers.1", 2048)}
    return {"resnet": sd, "head": head}


def simclrv2_forward(sd: dict, x: torch.Tensor) -> torch.Tensor:
    """The converted network's forward from its own key names (eval mode), global-average pooled."""
    x = F.relu(ref_bn(sd, ref_conv(sd, x, "net.0.0", stride=2, padding=3), "net.0.1.0"))
    x = F.max_pool2d(x, 3, 2, 1)
    for s, n in enumerate(LAYERS, start=1):
        for b in range(n):
            p, stride = f"net.{s}.blocks.{b}", 2 if (b == 0 and s > 1) else 1
            y = F.relu(ref_bn(sd, ref_conv(sd, x, f"{p}.net.0"), f"{p}.net.1.0"))
            y = F.relu(ref_bn(sd, ref_conv(sd, y, f"{p}.net.2", stride=stride, padding=1), f"{p}.net.3.0"))
            y = ref_bn(sd, ref_conv(sd, y, f"{p}.net.4"), f"{p}.net.5.0")
            short = x
            if b == 0:
                short = ref_bn(
                    sd, ref_conv(sd, x, f"{p}.projection.shortcut", stride=stride), f"{p}.projection.bn.0"
                )
            x = F.relu(short + y)
    return x.mean(dim=(2, 3))


def test_a_converted_simclrv2_file_loads_every_tensor_and_computes_the_same_features(tmp_path):
    obj = simclrv2_r50_1x_sk0()
    path = tmp_path / "r50_1x_sk0.pth"
    save_torch(path, obj)
    row = OmegaConf.load(CONF_DIR / "pretraining" / "gastronet5m_simclrv2.yaml")
    row.checkpoint = str(path)
    backbone = OmegaConf.load(CONF_DIR / "backbone" / "resnet50.yaml")
    assert weights_file(row, backbone, tmp_path) == path
    encoder = create_backbone(backbone, 224)
    receipt = load_backbone_weights(encoder, path, expected_arch="resnet50")
    assert receipt.format == "simclrv2" and receipt.loaded == len(encoder.state_dict()) == 318
    assert sorted(receipt.dropped) == ["classifier head", "projector"]
    encoder.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(encoder(x), simclrv2_forward(obj["resnet"], x), rtol=1e-4, atol=1e-4)


def test_selective_kernels_and_tensorflow_checkpoints_are_refused_with_what_to_do(tmp_path):
    obj = simclrv2_r50_1x_sk0()
    obj["resnet"]["net.1.blocks.0.net.2.main_conv.0.weight"] = torch.zeros(1)
    save_torch(tmp_path / "sk1.pth", obj)
    with pytest.raises(CheckpointError, match="selective kernels"):
        load_backbone_weights(
            create_backbone(OmegaConf.load(CONF_DIR / "backbone" / "resnet50.yaml"), 224),
            tmp_path / "sk1.pth",
            expected_arch="resnet50",
        )
    (tmp_path / "model.ckpt-250228.index").write_bytes(b"")
    row = OmegaConf.load(CONF_DIR / "pretraining" / "gastronet5m_simclrv2.yaml")
    row.checkpoint = str(tmp_path / "model.ckpt-250228")
    with pytest.raises(ConfigError, match="SimCLRv2-Pytorch/convert.py") as e:
        weights_file(row, OmegaConf.load(CONF_DIR / "backbone" / "resnet50.yaml"), tmp_path)
    assert "git clone https://github.com/Separius/SimCLRv2-Pytorch" in str(e.value)
