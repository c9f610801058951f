"""Image/target transforms of the study (its ``Data/dataloaders.py`` and ``Data/dataset.py``), built on
torchvision.transforms.v2.

Samples reach the transforms as uint8 tensors already resized to the network input (the decode-once cache does
the resize); everything here runs per epoch, per sample, in the loader workers, so its cost is measured by
``python -m ssl4gie.bench``.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(image: torch.Tensor) -> torch.Tensor:
    """uint8 C×H×W (or B×C×H×W) -> float, ImageNet-normalised (the study's ``transforms.Normalize``)."""
    mean = torch.tensor(IMAGENET_MEAN, device=image.device).view(-1, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=image.device).view(-1, 1, 1)
    return (image.float() / 255.0 - mean) / std


class PILColorJitter:
    """``v2.ColorJitter`` applied through PIL to a uint8 3×H×W tensor: PIL's integer colour operations, which the
    study applies (to its PIL images), and on one core faster than the tensor kernels (3 ms instead of 6 ms per 224²
    image, mostly the hue step). Anything else (float images, batches, GPU tensors) goes to the tensor kernels.
    """

    def __init__(self, brightness: float, contrast: float, saturation: float, hue: float) -> None:
        self.jitter = v2.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3 or image.device.type != "cpu":
            return self.jitter(image)
        pil = Image.fromarray(np.ascontiguousarray(image.permute(1, 2, 0).numpy()))
        return _like(torch.from_numpy(np.array(self.jitter(pil))).permute(2, 0, 1), image)


class SeparableGaussianBlur:
    """``v2.GaussianBlur(kernel_size, sigma)`` as two 1-D passes (along rows, then columns).

    A Gaussian kernel is the outer product of two 1-D kernels, so this equals torchvision's k×k convolution (same σ
    draw, same reflect padding) up to float rounding (at most 1 grey level, on < 0.01 % of pixels), with 2k instead
    of k² multiply-adds per pixel: 50 instead of 625 for the study's k = 25, which made the blur the costliest
    augmentation (19 ms of 31 ms per 224² sample on one core).
    """

    def __init__(self, kernel_size: int, sigma: tuple[float, float]) -> None:
        self.kernel_size, self.sigma = kernel_size, sigma

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        sigma = torch.empty(1).uniform_(*self.sigma).item()  # drawn as v2.GaussianBlur draws it
        out = image if image.is_floating_point() else image.float()  # no rounding between the passes
        out = F.gaussian_blur(out, [self.kernel_size, 1], [sigma, sigma])
        out = F.gaussian_blur(out, [1, self.kernel_size], [sigma, sigma])
        return _like(out if image.is_floating_point() else out.round_().clamp_(0, 255).to(image.dtype), image)


def _like(out: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """``out`` with the tv_tensors type of ``image`` (detection passes a ``tv_tensors.Image``)."""
    return tv_tensors.wrap(out, like=image) if isinstance(image, tv_tensors.TVTensor) else out


STUDY_JITTER = (0.4, 0.5, 0.25, 0.01)  # the study's ColorJitter(brightness, contrast, saturation, hue)
STUDY_BLUR_KERNEL, STUDY_BLUR_SIGMA = 25, (0.001, 2.0)  # and its GaussianBlur(25, σ ∈ [0.001, 2])


def photometric(blur: bool = True) -> v2.Compose:
    """The study's colour augmentation: ColorJitter(0.4, 0.5, 0.25, 0.01), then GaussianBlur(25, σ∈[0.001, 2])."""
    b, c, s, h = STUDY_JITTER
    ops: list = [PILColorJitter(brightness=b, contrast=c, saturation=s, hue=h)]
    if blur:
        ops.append(SeparableGaussianBlur(kernel_size=STUDY_BLUR_KERNEL, sigma=STUDY_BLUR_SIGMA))
    return v2.Compose(ops)


class StudyAffine:
    """The study's segmentation random affine (``Binary_segmentation/Data/dataset.py``), applied jointly to a
    float image and its float mask (any device, any batch dims).

    Each call draws angle U(−``degrees``, ``degrees``), translation (U(−t·W, t·W), U(−t·H, t·H)) px with
    t = ``translate``, scale U(``scale``) and x-shear U(−``shear``, ``shear``)°, in that order, from torch's global
    generator on the CPU (so a seed gives the same warp whichever device the tensors are on), and warps both with
    nearest interpolation; pixels from outside are ``image_fill`` in the image and ``mask_fill`` in the mask.

    The translation stays fractional, as in the study, which draws its own floats and passes them to torchvision's
    tensor ``affine``: ``v2.RandomAffine`` (like torchvision 0.10's ``RandomAffine``) would round it to whole
    pixels. ``v2.functional.affine`` itself keeps fractional translations on tensors, so it does the warp.
    """

    def __init__(
        self,
        degrees: float = 180.0,
        translate: float = 0.125,
        scale: tuple[float, float] = (0.5, 1.5),
        shear: float = 22.5,
        image_fill: float = -1.0,
        mask_fill: float = 0.0,
    ) -> None:
        self.degrees, self.translate, self.scale, self.shear = degrees, translate, scale, shear
        self.image_fill, self.mask_fill = image_fill, mask_fill

    def params(self, height: int, width: int) -> dict:
        """One draw: keyword arguments of ``v2.functional.affine`` (angle, translate, scale, shear)."""

        def uniform(low: float, high: float) -> float:
            return torch.empty(1).uniform_(low, high).item()

        angle = uniform(-self.degrees, self.degrees)
        tx = uniform(-self.translate * width, self.translate * width)
        ty = uniform(-self.translate * height, self.translate * height)
        scale = uniform(*self.scale)
        shear = uniform(-self.shear, self.shear)
        return {"angle": angle, "translate": [tx, ty], "scale": scale, "shear": [shear, 0.0]}

    def apply(
        self, image: torch.Tensor, mask: torch.Tensor, params: dict
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Warp ``image`` (…×C×H×W) and ``mask`` (…×M×H×W) with ``params``; same shapes and dtypes back."""
        c, m = image.shape[-3], mask.shape[-3]
        # One warp of image and mask stacked (nearest never mixes channels; the fill is per channel): one sampling
        # grid and one grid_sample instead of two.
        joint = torch.cat([image, mask.to(image.dtype)], dim=-3)
        fill = [self.image_fill] * c + [self.mask_fill] * m
        out = F.affine(joint, **params, interpolation=v2.InterpolationMode.NEAREST, fill=fill)
        warped_image, warped_mask = out.split([c, m], dim=-3)
        return warped_image, warped_mask.to(mask.dtype)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.apply(image, mask, self.params(*image.shape[-2:]))


class SegmentationTrainTransform:
    """The study's segmentation augmentation: colour jitter + blur on the image, normalise, then joint flips
    and a random affine.

    The affine always applies (:class:`StudyAffine`): rotation U(−180°, 180°), fractional translation up to 1/8 of
    the size, scale U(0.5, 1.5), x-shear U(−22.5°, 22.5°), nearest interpolation; outside pixels are −1.0 in the
    normalised image (as the study) and 0 in the mask. The mask stays soft (the study's bicubic-resized target for
    the Dice loss). Works on CPU and GPU tensors alike; random numbers come from torch's global CPU generator.
    """

    def __init__(self) -> None:
        self.photometric = photometric(blur=True)
        self.flips = v2.Compose([v2.RandomHorizontalFlip(0.5), v2.RandomVerticalFlip(0.5)])
        self.affine = StudyAffine()

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 3×H×W image and float 1×H×W mask in [0, 1] -> normalised image, transformed mask."""
        image = normalize(self.photometric(image))
        image, mask = self.flips(tv_tensors.Image(image), tv_tensors.Mask(mask))
        return self.affine(image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor))
