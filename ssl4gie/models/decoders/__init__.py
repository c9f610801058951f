"""Dense decoders built from feature-map channel counts (never from backbone names).

* :class:`DPT` — ViT patch-grid features → segmentation logits or depth in (0, 1) (SPEC §4.5).
* :class:`DeepLabV3Plus` — ResNet stride-4 + stride-16 features → segmentation logits (SPEC §4.7).
* :class:`ResNetDepthDecoder` — ResNet layer1..layer4 → depth in (0, 1) (SPEC §4.4).
"""

from ssl4gie.models.decoders.deeplabv3plus import DeepLabV3Plus
from ssl4gie.models.decoders.dpt import DPT
from ssl4gie.models.decoders.resnet_depth import ResNetDepthDecoder

__all__ = ["DPT", "DeepLabV3Plus", "ResNetDepthDecoder"]
