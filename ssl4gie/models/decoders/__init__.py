"""Dense decoders built from feature-map channel counts (never from backbone names).

* :class:`DPT` — ViT patch-grid features → segmentation logits or depth in (0, 1) (the study's
  ``Models/DPT_decoder.py``).
* :class:`DeepLabV3Plus` — ResNet stride-4 + stride-16 features → segmentation logits (smp 0.3.2's
  ``DeepLabV3Plus``).
* :class:`ResNetDepthDecoder` — ResNet layer1..layer4 → depth in (0, 1) (the study's ``ResNet_from_Any``).
"""

from ssl4gie.models.decoders.deeplabv3plus import DeepLabV3Plus
from ssl4gie.models.decoders.dpt import DPT
from ssl4gie.models.decoders.resnet_depth import ResNetDepthDecoder

__all__ = ["DPT", "DeepLabV3Plus", "ResNetDepthDecoder"]
