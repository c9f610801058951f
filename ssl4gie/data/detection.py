"""Polyp detection on Kvasir-SEG boxes: the reader of the published layout, the study's box augmentation, the
square canvas of the ViT detector, and the torch Dataset (as the study's
``Object_detection/Data/dataset.py``).

Box coordinates are pixel *edges* (torchvision's xyxy): a box covering columns 10..19 has ``xmin=10, xmax=20``,
so a valid box satisfies ``0 <= xmin < xmax <= width`` (same for y). Images are decoded per item: their native
sizes vary (332×487 up to 1920×1072), so the fixed-shape decode-once cache of the other tasks does not apply.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ssl4gie.data.readers import Reader, list_images, log_hidden, open_image, require_dir
from ssl4gie.data.synthetic import write_kvasir_seg
from ssl4gie.data.transforms import photometric
from ssl4gie.errors import DatasetError

log = logging.getLogger(__name__)

#: Names of the box file, in order of preference: as Kvasir-SEG ships it, then the name the study's code opens.
BOX_FILES = ("kavsir_bboxes.json", "bounding-boxes.json")
#: A box edge up to this many pixels outside its image is clipped to the border (with a warning); further out is
#: an error. One pixel covers the inclusive-coordinate convention (``xmax == width`` read as the last column + 1).
BORDER_TOLERANCE = 1.0
POLYP = 1  # label of every box; 0 is torchvision's background class
COORDS = ("xmin", "ymin", "xmax", "ymax")


@dataclass(frozen=True)
class DetectionItem:
    name: str
    image: Path
    boxes: np.ndarray  # float32 N×4 xyxy in pixel edges, inside the image
    size: tuple[int, int]  # (height, width) of the image file


def read_box_file(path: Path) -> dict[str, list[list[float]]]:
    """Image id -> list of ``[xmin, ymin, xmax, ymax]`` from a Kvasir-SEG box file (structure in PLATFORM.md)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"cannot read box file {path}: {e}") from e
    if not isinstance(data, dict):
        raise DatasetError(
            f"box file {path} must hold a JSON object keyed by image id, found {type(data).__name__}"
        )
    boxes = {}
    for image_id, entry in data.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("bbox"), list):
            raise DatasetError(
                f"box file {path}: entry '{image_id}' has no \"bbox\" list (expected "
                f'{{"bbox": [{{"xmin": .., "ymin": .., "xmax": .., "ymax": ..}}, ...]}})'
            )
        coords = []
        for box in entry["bbox"]:
            try:
                coords.append([float(box[k]) for k in COORDS])
            except (TypeError, KeyError, ValueError) as e:
                raise DatasetError(
                    f"box file {path}: a box of image '{image_id}' is {box!r}; expected numeric "
                    f"keys {', '.join(COORDS)}"
                ) from e
        boxes[image_id] = coords
    return boxes


def check_boxes(boxes: list[list[float]], height: int, width: int, where: str) -> tuple[np.ndarray, int]:
    """Validate one image's boxes against its size; returns (float32 N×4 array, number of boxes clipped).

    Edges at most :data:`BORDER_TOLERANCE` px outside the image are clipped to it; further out, or a box with
    ``xmax <= xmin`` / ``ymax <= ymin`` (after clipping), is a DatasetError naming ``where``.
    """
    array = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    limits = np.array([width, height, width, height], dtype=np.float32)
    for box in array:
        if (box < -BORDER_TOLERANCE).any() or (box > limits + BORDER_TOLERANCE).any():
            raise DatasetError(
                f"{where}: box {box.tolist()} (xmin, ymin, xmax, ymax) lies outside the "
                f"{width}×{height} image by more than {BORDER_TOLERANCE:g} px"
            )
    clipped = np.clip(array, 0, limits)
    n_clipped = int((clipped != array).any(axis=1).sum())
    for box, original in zip(clipped, array, strict=True):
        if box[2] <= box[0] or box[3] <= box[1]:
            raise DatasetError(
                f"{where}: box {original.tolist()} (xmin, ymin, xmax, ymax) is empty: "
                f"need xmax > xmin and ymax > ymin"
            )
    return clipped, n_clipped


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, UnidentifiedImageError) as e:
        raise DatasetError(f"cannot read image {path}: {e}. Replace or remove the file.") from e
    return height, width


class KvasirDetection(Reader):
    """Kvasir-SEG's polyp boxes: ``<root>/images/<id>.jpg`` and ``<root>/kavsir_bboxes.json`` (or
    ``bounding-boxes.json``, the name the study's code reads).

    ``items`` follows the sorted image list, so ``splits()`` is the study's split and equals the segmentation
    split of the same folder. Every image needs an entry in the box file; entries without an image are ignored
    (with a warning). ``synthetic={n:.., seed:..}`` writes synthetic data in this layout when ``root`` is missing.
    ``train_fraction``, ``fraction_seed``, ``folds``, ``fold``, ``fold_seed``: as for Kvasir-SEG's segmentation
    reader, so the same options give the same images (:class:`ssl4gie.data.splits.SplitOptions`).
    """

    title = "Kvasir-SEG"
    layout = "<root>/images/<id>.jpg and <root>/kavsir_bboxes.json (or bounding-boxes.json)"
    layout_name = "kvasir_det"

    def __init__(self, root: str, name: str, task: str = "detection", **options: Any) -> None:
        super().__init__(root, name, task, **options)
        self.box_file = self._find_box_file()
        self.items = self._read()

    @staticmethod
    def synthetic_writer() -> Callable[..., Path]:
        return write_kvasir_seg

    def _find_box_file(self) -> Path:
        for candidate in BOX_FILES:
            if (self.root / candidate).is_file():
                return self.root / candidate
        raise DatasetError(
            f"{self.root} has no box file: expected {' or '.join(BOX_FILES)} beside images/ "
            f"(Kvasir-SEG ships kavsir_bboxes.json at the top of the archive)"
        )

    def _read(self) -> list[DetectionItem]:
        hidden: list[Path] = []
        images = list_images(require_dir(self.root, "images", self.title, self.layout), hidden)
        log_hidden(hidden, self.root / "images")
        if not images:
            raise DatasetError(f"no images in {self.root / 'images'} (expected {self.layout})")
        boxes = read_box_file(self.box_file)
        items, n_clipped = [], 0
        for path in images:
            if path.stem not in boxes:
                raise DatasetError(f"image {path} has no entry '{path.stem}' in the box file {self.box_file}")
            height, width = image_size(path)
            array, clipped = check_boxes(
                boxes.pop(path.stem), height, width, f"box file {self.box_file}, image '{path.stem}'"
            )
            n_clipped += clipped
            items.append(DetectionItem(path.stem, path, array, (height, width)))
        if n_clipped:
            log.warning(
                "%s: clipped %d box(es) reaching up to %g px beyond the image border",
                self.box_file,
                n_clipped,
                BORDER_TOLERANCE,
            )
        if boxes:
            log.warning(
                "%s: %d entr(ies) without an image in %s are ignored (e.g. '%s')",
                self.box_file,
                len(boxes),
                self.root / "images",
                next(iter(boxes)),
            )
        return items


# ---------------------------------------------------------------------------------------------- box geometry
def rot90(
    image: torch.Tensor, boxes: tv_tensors.BoundingBoxes
) -> tuple[torch.Tensor, tv_tensors.BoundingBoxes]:
    """Rotate 90° counter-clockwise (``torch.rot90`` from the H axis towards the W axis), boxes following.

    With the pre-rotation width W, as the study's ``Object_detection/Data/dataset.py``:
    xmin' = ymin, xmax' = ymax, ymin' = W − xmax, ymax' = W − xmin. torchvision.transforms.v2 has no exact
    rot90 (``rotate(expand=True)`` resamples), hence this function.
    """
    height, width = boxes.canvas_size
    x0, y0, x1, y1 = boxes.as_subclass(torch.Tensor).unbind(-1)
    rotated = torch.stack([y0, width - x1, y1, width - x0], dim=-1)
    out = tv_tensors.wrap(torch.rot90(image.as_subclass(torch.Tensor), 1, dims=(-2, -1)), like=image)
    return out, tv_tensors.BoundingBoxes(rotated, format="XYXY", canvas_size=(width, height))


class DetectionTrainTransform:
    """The study's detection augmentation (``Object_detection/Data/``): ColorJitter + GaussianBlur(25) on the
    image, then each with p = 0.5 and in this order: rot90 counter-clockwise, horizontal flip, vertical flip
    (boxes follow). Randomness from torch's generator; ``p`` is the probability of each geometric step (0.5 in
    the study)."""

    def __init__(self, p: float = 0.5) -> None:
        self.photometric = photometric(blur=True)
        self.p = p

    def __call__(
        self, image: tv_tensors.Image, boxes: tv_tensors.BoundingBoxes
    ) -> tuple[tv_tensors.Image, tv_tensors.BoundingBoxes]:
        image = self.photometric(image)
        if torch.rand(()) < self.p:
            image, boxes = rot90(image, boxes)
        if torch.rand(()) < self.p:
            image, boxes = F.horizontal_flip(image), F.horizontal_flip(boxes)
        if torch.rand(()) < self.p:
            image, boxes = F.vertical_flip(image), F.vertical_flip(boxes)
        return image, boxes


CANVAS_RULES = ("fit", "study")


def to_canvas(
    image: tv_tensors.Image, boxes: tv_tensors.BoundingBoxes, size: int, rule: str = "fit"
) -> tuple[tv_tensors.Image, tv_tensors.BoundingBoxes, dict]:
    """Place the image on a ``size``×``size`` zero canvas, centred, shrinking it first if a side exceeds ``size``.

    ``rule="fit"`` scales down just enough to fit (bicubic, antialiased), so a 1920×1072 image becomes 1024×572.
    ``rule="study"`` is the study's step (``Object_detection/Data/dataset.py``): an image with a side >
    ``size`` gets one zero row at the bottom if its height is odd and one zero column at the right if its
    width is odd, then is halved (bicubic, antialiased; 1920×1072 becomes 960×536), boxes halved; an image
    still too large after that is an error. Returns
    the mapping ``{"scale": (sx, sy), "offset": (left, top)}``: canvas = original · scale + offset (see
    :func:`from_canvas`).
    """
    height, width = image.shape[-2:]
    new_h, new_w = height, width
    if rule == "study" and (height > size or width > size):
        image = F.pad(image, [0, 0, width % 2, height % 2], fill=0)  # no shift of box coordinates
        new_h, new_w = (height + height % 2) // 2, (width + width % 2) // 2
        if new_h > size or new_w > size:
            raise DatasetError(
                f"a {height}×{width} image does not fit task.canvas_size={size} after the study's halving "
                "(task.protocol=study); use task.protocol=ssl4gie, which scales it to fit"
            )
        image = F.resize(image, [new_h, new_w], interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
        boxes = tv_tensors.wrap(boxes.as_subclass(torch.Tensor) / 2, like=boxes, canvas_size=(new_h, new_w))
        left, top = (size - new_w) // 2, (size - new_h) // 2
        padding = [left, top, size - new_w - left, size - new_h - top]
        image, boxes = F.pad(image, padding, fill=0), F.pad(boxes, padding)
        return image, boxes, {"scale": (0.5, 0.5), "offset": (left, top)}
    if height > size or width > size:
        factor = min(size / height, size / width)
        new_h, new_w = max(1, min(size, round(height * factor))), max(1, min(size, round(width * factor)))
        image = F.resize(image, [new_h, new_w], interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
        boxes = F.resize(boxes, [new_h, new_w])
    left, top = (size - new_w) // 2, (size - new_h) // 2
    padding = [left, top, size - new_w - left, size - new_h - top]
    image, boxes = F.pad(image, padding, fill=0), F.pad(boxes, padding)
    return image, boxes, {"scale": (new_w / width, new_h / height), "offset": (left, top)}


def from_canvas(boxes: torch.Tensor, canvas: dict, orig_size: tuple[int, int]) -> torch.Tensor:
    """Map N×4 xyxy boxes from the canvas back to the original image frame, clipped to the image."""
    sx, sy = canvas["scale"]
    left, top = canvas["offset"]
    scale = boxes.new_tensor([sx, sy, sx, sy])
    offset = boxes.new_tensor([left, top, left, top])
    height, width = orig_size
    return ((boxes - offset) / scale).clamp(min=boxes.new_zeros(4), max=boxes.new_tensor([width, height] * 2))


IDENTITY_CANVAS = {"scale": (1.0, 1.0), "offset": (0, 0)}


class DetectionDataset(Dataset):
    """Samples of one split: ``{"image", "target", "meta"}`` (+ ``"target_native"`` when not training).

    ``image``: float 3×H×W in [0, 1] (the detector normalises); native size, or the ``canvas_size`` square when
    given (ViT). ``target``: ``{"boxes": float N×4 xyxy in the image's frame, "labels": int64 N}``.
    ``target_native``: the same in the original file's frame, for metrics. ``meta``: ``name``, ``index``,
    ``image_path``, ``orig_size`` (H, W) and ``canvas`` (scale/offset, see :func:`to_canvas`).
    """

    def __init__(
        self,
        reader: KvasirDetection,
        indices: list[int],
        train: bool,
        canvas_size: int | None,
        canvas_rule: str = "fit",
    ) -> None:
        self.items = [reader.items[i] for i in indices]
        self.indices, self.train, self.canvas_size = list(indices), train, canvas_size
        self.canvas_rule = canvas_rule
        self.transform = DetectionTrainTransform() if train else None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        item = self.items[i]
        pixels = torch.from_numpy(np.array(open_image(item.image, "RGB"))).permute(2, 0, 1)
        if tuple(pixels.shape[-2:]) != item.size:
            raise DatasetError(
                f"image {item.image} changed since the dataset was read ({item.size} -> "
                f"{tuple(pixels.shape[-2:])}); restart the run"
            )
        image = tv_tensors.Image(pixels)
        boxes = tv_tensors.BoundingBoxes(torch.from_numpy(item.boxes), format="XYXY", canvas_size=item.size)
        if self.transform is not None:
            image, boxes = self.transform(image, boxes)
        canvas = dict(IDENTITY_CANVAS)
        if self.canvas_size is not None:
            image, boxes, canvas = to_canvas(image, boxes, self.canvas_size, self.canvas_rule)
        labels = torch.full((len(item.boxes),), POLYP, dtype=torch.int64)
        sample = {
            "image": image.as_subclass(torch.Tensor).float() / 255.0,
            "target": {"boxes": boxes.as_subclass(torch.Tensor).float(), "labels": labels},
            "meta": {
                "name": item.name,
                "index": self.indices[i],
                "image_path": str(item.image),
                "orig_size": item.size,
                "canvas": canvas,
            },
        }
        if not self.train:
            sample["target_native"] = {"boxes": torch.from_numpy(item.boxes.copy()), "labels": labels.clone()}
        return sample
