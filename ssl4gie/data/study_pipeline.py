"""The study's per-sample segmentation pipeline (``Binary_segmentation/Data/``), re-created as the baseline of
``python -m ssl4gie.bench``.

Not used for training: it exists so that the benchmark can compare our decode-once pipeline with what the study
does for every sample of every epoch — open and decode the JPEGs, resize them with PIL, colour-jitter and blur the
PIL image, convert to tensors, normalise, then flip and warp image and mask together. Same input size and the same
augmentation distributions as :class:`ssl4gie.data.transforms.SegmentationTrainTransform`; only where and how
often the work happens differs. Written with ``torchvision.transforms`` (v1), the API the study used.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from ssl4gie.data.segmentation import SegmentationItem
from ssl4gie.data.transforms import IMAGENET_MEAN, IMAGENET_STD

# The study's train augmentation values (``Binary_segmentation/Data/dataloaders.py`` and ``dataset.py``).
JITTER = {"brightness": 0.4, "contrast": 0.5, "saturation": 0.25, "hue": 0.01}
BLUR_KERNEL, BLUR_SIGMA = 25, (0.001, 2.0)
MAX_ANGLE, MAX_TRANSLATE, SCALE, MAX_SHEAR = 180.0, 1 / 8, (0.5, 1.5), 22.5


class StudySegmentationDataset(Dataset):
    """Samples ``{"image", "target", "meta"}`` like :class:`~ssl4gie.data.segmentation.SegmentationDataset`, made
    the study's way: every ``__getitem__`` decodes both files from disk.

    ``image``: float 3×S×S, ImageNet-normalised; ``target``: float 1×S×S soft mask (bicubic-resized, luma grey).
    Random draws use Python's ``random`` (flips, affine) and torch's RNG (jitter, blur), as the study's code.
    """

    def __init__(self, items: Sequence[SegmentationItem], size: int, train: bool) -> None:
        self.items, self.size, self.train = list(items), size, train
        self.jitter = T.ColorJitter(**JITTER)
        self.blur = T.GaussianBlur(BLUR_KERNEL, sigma=BLUR_SIGMA)
        self.normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        item = self.items[i]
        size = (self.size, self.size)
        image = Image.open(item.image).convert("RGB").resize(size, Image.Resampling.BICUBIC)
        # The study keeps the mask in its decoded mode (RGB for Kvasir-SEG's JPEG masks) through the resize and
        # turns it grey only as a tensor (``transforms.Grayscale``), so it pays for a 3-channel resize.
        mask = Image.open(item.mask)
        mask = mask.resize(size, Image.Resampling.BICUBIC)
        if self.train:
            # On the PIL image: PIL colour ops; the blur goes PIL -> uint8 tensor -> 2-D conv -> PIL inside torchvision.
            image = self.blur(self.jitter(image))
        image = self.normalize(TF.to_tensor(image))
        target = TF.to_tensor(mask)
        if target.shape[0] == 3:
            target = TF.rgb_to_grayscale(target)
        if self.train:
            image, target = self._geometric(image, target)
        return {"image": image, "target": target, "meta": {"name": item.name, "image_path": str(item.image)}}

    def _geometric(self, image: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Joint hflip p=0.5, vflip p=0.5, then an affine warp that always applies (nearest; fill −1 / 0)."""
        if random.random() < 0.5:
            image, target = TF.hflip(image), TF.hflip(target)
        if random.random() < 0.5:
            image, target = TF.vflip(image), TF.vflip(target)
        limit = MAX_TRANSLATE * self.size
        params = {
            "angle": random.uniform(-MAX_ANGLE, MAX_ANGLE),
            # Fractional pixels, unrounded, as the study passes them to TF.affine
            # (``Binary_segmentation/Data/dataset.py``).
            "translate": [random.uniform(-limit, limit), random.uniform(-limit, limit)],
            "scale": random.uniform(*SCALE),
            "shear": [random.uniform(-MAX_SHEAR, MAX_SHEAR), 0.0],
            "interpolation": T.InterpolationMode.NEAREST,
        }
        return TF.affine(image, **params, fill=[-1.0]), TF.affine(target, **params, fill=[0.0])
