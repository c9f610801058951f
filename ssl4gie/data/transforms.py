"""Image/target transforms of the study (SPEC 3), built on torchvision.transforms.v2.

Samples reach the transforms as uint8 tensors already resized to the network input (the decode-once cache does
the resize); everything here runs per epoch.
"""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(image: torch.Tensor) -> torch.Tensor:
    """uint8 C×H×W (or B×C×H×W) -> float, ImageNet-normalised (SPEC 2.2)."""
    mean = torch.tensor(IMAGENET_MEAN, device=image.device).view(-1, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=image.device).view(-1, 1, 1)
    return (image.float() / 255.0 - mean) / std


def photometric(blur: bool = True) -> v2.Transform:
    """The study's colour augmentation: ColorJitter(0.4, 0.5, 0.25, 0.01), then GaussianBlur(25, σ∈[0.001, 2])."""
    ops: list[v2.Transform] = [v2.ColorJitter(brightness=0.4, contrast=0.5, saturation=0.25, hue=0.01)]
    if blur:
        ops.append(v2.GaussianBlur(kernel_size=25, sigma=(0.001, 2.0)))
    return v2.Compose(ops)


class SegmentationTrainTransform:
    """SPEC 3.3: colour jitter + blur on the image, normalise, then joint flips and a random affine.

    The affine always applies: rotation U(−180°, 180°), translation up to 1/8 of the size, scale U(0.5, 1.5),
    x-shear U(−22.5°, 22.5°), nearest interpolation; outside pixels are −1.0 in the normalised image (as the study)
    and 0 in the mask. The mask stays soft (the study's bicubic-resized target for the Dice loss).
    """

    def __init__(self) -> None:
        self.photometric = photometric(blur=True)
        self.geometric = v2.Compose(
            [
                v2.RandomHorizontalFlip(0.5),
                v2.RandomVerticalFlip(0.5),
                v2.RandomAffine(
                    degrees=180.0,
                    translate=(0.125, 0.125),
                    scale=(0.5, 1.5),
                    shear=(-22.5, 22.5),
                    interpolation=v2.InterpolationMode.NEAREST,
                    fill={tv_tensors.Image: -1.0, tv_tensors.Mask: 0.0},
                ),
            ]
        )

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 3×H×W image and float 1×H×W mask in [0, 1] -> normalised image, transformed mask."""
        image = normalize(self.photometric(image))
        image, mask = self.geometric(tv_tensors.Image(image), tv_tensors.Mask(mask))
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)
