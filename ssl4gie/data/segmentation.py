"""Segmentation datasets: readers of Kvasir-SEG, CVC-ClinicDB and the PraNet polyp sets as published, and the
torch Dataset.

Images and masks are paired **by file name** (stem), never by sorted position; the split indices refer to the
image list sorted by file name, as in the study's ``Binary_segmentation/train_segmentation.py``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ssl4gie.data import cache as decoded_cache
from ssl4gie.data import layouts
from ssl4gie.data.readers import Reader, list_images, log_hidden, open_image, require_dir
from ssl4gie.data.transforms import SegmentationTrainTransform, normalize
from ssl4gie.errors import DatasetError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmentationItem:
    name: str
    image: Path
    mask: Path


class SegmentationFolders(Reader):
    """A dataset with one folder of images and one folder of masks that share file names; the options are those of
    every reader (:class:`~ssl4gie.data.readers.Reader`), the split the study's seeded 80/10/10 over the sorted
    image list."""

    image_dir = ""
    mask_dir = ""

    def __init__(self, root: str, name: str, task: str = "segmentation", **options: Any) -> None:
        self.layout = (
            f"<root>/{self.image_dir}/<id>.<jpg|png|tif> and <root>/{self.mask_dir}/<id>.<jpg|png|tif>"
        )
        super().__init__(root, name, task, **options)
        self._find_dirs()
        self.items = self._pair()

    def _find_dirs(self) -> None:
        """Set ``image_dir`` / ``mask_dir`` to the names this copy uses (the class's names by default)."""

    def _pair(self) -> list[SegmentationItem]:
        hidden: list[Path] = []
        images = list_images(require_dir(self.root, self.image_dir, self.title, self.layout), hidden)
        masks = list_images(require_dir(self.root, self.mask_dir, self.title, self.layout), hidden)
        log_hidden(hidden, self.root)
        if not images:
            raise DatasetError(f"no images in {self.root / self.image_dir} (expected {self.layout})")
        by_stem = {}
        for mask in masks:
            if mask.stem in by_stem:
                raise DatasetError(f"two masks for image id '{mask.stem}': {by_stem[mask.stem]} and {mask}")
            by_stem[mask.stem] = mask
        items = []
        for image in images:
            mask = by_stem.pop(image.stem, None)
            if mask is None:
                raise DatasetError(
                    f"image {image} has no mask: expected {self.root / self.mask_dir / image.stem}.*"
                )
            items.append(SegmentationItem(image.stem, image, mask))
        if by_stem:
            orphan = next(iter(by_stem.values()))
            raise DatasetError(
                f"mask {orphan} has no image: expected {self.root / self.image_dir / orphan.stem}.*"
                f" ({len(by_stem)} unpaired mask(s))"
            )
        return items


class KvasirSeg(SegmentationFolders):
    title = "Kvasir-SEG"
    image_dir = "images"
    mask_dir = "masks"
    layout_name = "kvasir_seg"

    @staticmethod
    def synthetic_writer():
        from ssl4gie.data.synthetic import write_kvasir_seg

        return write_kvasir_seg


class CVCClinicDB(SegmentationFolders):
    """CVC-ClinicDB as released (``Original/``, ``Ground Truth/``), or Kaggle's copy whose root holds ``PNG/`` and
    ``TIF/`` with those two folders each: ``TIF/`` is read (the original's format) and the log says so."""

    title = "CVC-ClinicDB"
    image_dir = "Original"
    mask_dir = "Ground Truth"
    layout_name = "cvc_clinicdb"

    @staticmethod
    def synthetic_writer():
        from ssl4gie.data.synthetic import write_cvc_clinicdb

        return write_cvc_clinicdb


class PraNetFolders(KvasirSeg):
    """A polyp set in the layout it circulates in with PraNet: ``<root>/images/*.png`` and ``<root>/masks/*.png``
    with the same file names (the five test sets ``TestDataset/<name>`` and ``TrainDataset``).

    Kvasir-SEG's layout, so Kvasir-SEG's reader: pairing by file name, masks binarised at half intensity after
    conversion to greyscale (these masks are PNG 0/255, some RGB). ``title`` names the set in errors and logs.
    The default ``split`` is ``all`` (these are evaluation sets); ``split=study`` trains on them as on any other.
    Copies with singular ``image/`` + ``mask/`` folders are read too, and a test archive that unpacked doubly
    nested (``TestDataset/TestDataset/<set>``) is found from the expected ``TestDataset/<set>``.
    """

    layout_name = "pranet_set"

    def __init__(self, root: str, name: str, title: str, split: str = "all", **kwargs) -> None:
        self.title = title
        super().__init__(root, name, split=split, **kwargs)

    def _find_dirs(self) -> None:
        self.image_dir, self.mask_dir = layouts.pair_dirs(self.root, self.title)

    @staticmethod
    def synthetic_writer():
        from ssl4gie.data.synthetic import write_pranet_set

        return write_pranet_set


def decode_pair(item: SegmentationItem, size: int) -> dict[str, np.ndarray]:
    """Image (S×S×3 uint8) and soft mask (S×S uint8) resized as the study: bicubic, aspect ratio ignored."""
    image = open_image(item.image, "RGB")
    mask = open_image(item.mask, "L")
    if image.size != mask.size:
        raise DatasetError(
            f"mask {item.mask} is {mask.size[0]}×{mask.size[1]} but image {item.image} is "
            f"{image.size[0]}×{image.size[1]}: a mask must have its image's size"
        )
    image = image.resize((size, size), Image.Resampling.BICUBIC)
    mask = mask.resize((size, size), Image.Resampling.BICUBIC)
    return {"image": np.asarray(image), "mask": np.asarray(mask)}


MASK_RULES = ("ssl4gie", "study")
# torchvision's rgb_to_grayscale weights, which the study's Grayscale applies to ToTensor's [0, 1] floats
_STUDY_LUMA = np.array([0.2989, 0.587, 0.114], dtype=np.float32)


def native_mask(item: SegmentationItem, rule: str = "ssl4gie") -> torch.Tensor:
    """The mask at its native resolution as a bool H×W tensor, binarised at half intensity (JPEG masks are not
    exactly 0/255). ``rule="ssl4gie"``: PIL's "L" conversion > 127. ``rule="study"``: the study's eval reading
    (``get_test_dataloader`` in ``Binary_segmentation/Data/dataloaders.py``): RGB / 255 in float32,
    torchvision's luma weights, > 0.5; the two differ only for coloured pixels whose luma lies within rounding
    of the threshold."""
    if rule == "study":
        rgb = np.asarray(open_image(item.mask, "RGB"), dtype=np.float32) / np.float32(255)
        r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
        luma = r * _STUDY_LUMA[0] + g * _STUDY_LUMA[1] + b * _STUDY_LUMA[2]  # torchvision's order of the sum
        return torch.from_numpy(luma > 0.5)
    if rule != "ssl4gie":
        raise ValueError(f"mask rule must be one of {MASK_RULES}, got {rule!r}")
    return torch.from_numpy(np.asarray(open_image(item.mask, "L")) > 127)


class SegmentationDataset(Dataset):
    """Samples ``{"image", "target", "meta"}`` (+ ``"target_native"`` for evaluation) of one split.

    ``image``: float 3×S×S, ImageNet-normalised; ``target``: float 1×S×S soft mask in [0, 1];
    ``target_native``: bool H×W mask at the file's resolution, for metrics (as the study's
    ``eval_segmentation.py``).
    """

    def __init__(
        self,
        reader: SegmentationFolders,
        indices: list[int],
        size: int,
        train: bool,
        cache_dir: str | None,
        progress: bool = True,
        device_augment: bool = False,
        mask_rule: str = "ssl4gie",
    ) -> None:
        """``device_augment``: leave training samples un-augmented uint8 (the task augments them on the GPU).
        ``mask_rule``: how ``target_native`` is binarised (:func:`native_mask`)."""
        self.mask_rule = mask_rule
        self.items = [reader.items[i] for i in indices]
        self.indices, self.size, self.train = list(indices), size, train
        self.transform = SegmentationTrainTransform() if train and not device_augment else None
        self.device_augment = train and device_augment
        self.samples = decoded_cache.DecodedSamples(
            reader.items,
            size,
            decode_pair,
            cache_dir,
            reader.name,
            files=[p for it in reader.items for p in (it.image, it.mask)],
            settings={"size": size, "resize": "bicubic"},
            fields={"image": ((size, size, 3), "uint8"), "mask": ((size, size), "uint8")},
            progress=progress,
        )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        item = self.items[i]
        arrays = self.samples[self.indices[i]]
        image = torch.from_numpy(np.array(arrays["image"])).permute(2, 0, 1)  # copy: the cache is read-only
        mask = torch.from_numpy(np.array(arrays["mask"], dtype=np.float32) / 255.0)[None]
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        elif not self.device_augment:
            image = normalize(image)
        sample = {
            "image": image,
            "target": mask,
            "meta": {"name": item.name, "index": self.indices[i], "image_path": str(item.image)},
        }
        if not self.train:
            sample["target_native"] = native_mask(item, self.mask_rule)
        return sample
