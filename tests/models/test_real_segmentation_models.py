"""The real ResNet-50 + DeepLabV3+ and ViT-B + DPT, as the default config builds them: one forward at 224×224."""

from __future__ import annotations

import pytest
import torch
from helpers import compose_config

from ssl4gie.tasks.segmentation import SegmentationTask

# Decoder + head parameters: smp 0.3.2's DeepLabV3+ (verified against smp, see
# tests/models/decoders/test_decoders.py) and the study's DPT (Models/DPT_decoder.py: 20,328,641) minus its
# never-used fusion-4 residual unit (1,180,672 parameters).
pytestmark = pytest.mark.slow  # real-size ResNet-50 and ViT-B: 4-15 s each on 2 cores

DEEPLAB_PARAMS = 3_169_553
DPT_PARAMS = 20_328_641 - 1_180_672


@pytest.mark.parametrize(
    ("backbone", "decoder_params", "encoder_params"),
    [("resnet50", DEEPLAB_PARAMS, 23_508_032), ("vit_b", DPT_PARAMS, 85_798_656)],
)
def test_real_model_forward(backbone, decoder_params, encoder_params):
    cfg = compose_config([f"backbone={backbone}"])
    task = SegmentationTask(**{k: v for k, v in cfg.task.items() if k != "_target_"})
    model = task.build_model(cfg.backbone, cfg.pretraining, False, cfg.paths.weights_dir).eval()
    assert sum(p.numel() for p in model.decoder.parameters()) == decoder_params
    assert sum(p.numel() for p in model.encoder.parameters()) == encoder_params
    if backbone == "vit_b":
        assert model.indices == [2, 5, 8, 11]  # DPT hooks of the study
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 224, 224))
    assert logits.shape == (2, 1, 224, 224) and torch.isfinite(logits).all()
