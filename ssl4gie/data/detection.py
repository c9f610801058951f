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
from collections.abc import Callable, Sequence
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

from ssl4gie.data.device_views import (
    COLUMN,
    EncodedFrame,
    colour_jitter,
    draw_params,
    gaussian_blur,
    read_encoded,
)
from ssl4gie.data.readers import Reader, list_images, log_hidden, open_image, require_dir
from ssl4gie.data.ssl_transforms import ViewRecipe
from ssl4gie.data.synthetic import write_kvasir_seg
from ssl4gie.data.transforms import STUDY_BLUR_KERNEL, STUDY_BLUR_SIGMA, STUDY_JITTER, photometric
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
def rot90_boxes(boxes: tv_tensors.BoundingBoxes) -> tv_tensors.BoundingBoxes:
    """The boxes of an image rotated 90° counter-clockwise (:func:`rot90`)."""
    height, width = boxes.canvas_size
    x0, y0, x1, y1 = boxes.as_subclass(torch.Tensor).unbind(-1)
    rotated = torch.stack([y0, width - x1, y1, width - x0], dim=-1)
    return tv_tensors.BoundingBoxes(rotated, format="XYXY", canvas_size=(width, height))


def rot90(
    image: torch.Tensor, boxes: tv_tensors.BoundingBoxes
) -> tuple[torch.Tensor, tv_tensors.BoundingBoxes]:
    """Rotate 90° counter-clockwise (``torch.rot90`` from the H axis towards the W axis), boxes following.

    With the pre-rotation width W, as the study's ``Object_detection/Data/dataset.py``:
    xmin' = ymin, xmax' = ymax, ymin' = W − xmax, ymax' = W − xmin. torchvision.transforms.v2 has no exact
    rot90 (``rotate(expand=True)`` resamples), hence this function.
    """
    out = tv_tensors.wrap(torch.rot90(image.as_subclass(torch.Tensor), 1, dims=(-2, -1)), like=image)
    return out, rot90_boxes(boxes)


def move_boxes(boxes: tv_tensors.BoundingBoxes, geometry: Sequence[bool]) -> tv_tensors.BoundingBoxes:
    """Boxes after the train transform's geometric steps that ``geometry`` (rot90, hflip, vflip) switches on."""
    rotate, hflip, vflip = geometry
    if rotate:
        boxes = rot90_boxes(boxes)
    if hflip:
        boxes = F.horizontal_flip(boxes)
    if vflip:
        boxes = F.vertical_flip(boxes)
    return boxes


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


@dataclass(frozen=True)
class CanvasPlan:
    """How an image goes onto the square canvas (:func:`canvas_plan`): zero columns/rows added at the right/bottom
    first (``odd_pad``, the study's rule), resized to ``resized`` (h, w; bicubic, antialiased), zero ``padding``
    (left, top, right, bottom) around it; ``mapping`` = ``{"scale": (sx, sy), "offset": (left, top)}`` with
    canvas = original · scale + offset."""

    odd_pad: tuple[int, int]
    resized: tuple[int, int]
    padding: tuple[int, int, int, int]
    mapping: dict


def canvas_plan(height: int, width: int, size: int, rule: str = "fit") -> CanvasPlan:
    """The plan of :func:`to_canvas` for a ``height``×``width`` image (its rules there)."""
    odd_pad = (0, 0)
    new_h, new_w = height, width
    if rule == "study" and (height > size or width > size):
        odd_pad = (width % 2, height % 2)  # no shift of box coordinates
        new_h, new_w = (height + height % 2) // 2, (width + width % 2) // 2
        if new_h > size or new_w > size:
            raise DatasetError(
                f"a {height}×{width} image does not fit task.canvas_size={size} after the study's halving "
                "(task.protocol=study); use task.protocol=ssl4gie, which scales it to fit"
            )
        scale = (0.5, 0.5)
    else:
        if height > size or width > size:
            factor = min(size / height, size / width)
            new_h, new_w = max(1, min(size, round(height * factor))), max(1, min(size, round(width * factor)))
        scale = (new_w / width, new_h / height)
    left, top = (size - new_w) // 2, (size - new_h) // 2
    padding = (left, top, size - new_w - left, size - new_h - top)
    return CanvasPlan(odd_pad, (new_h, new_w), padding, {"scale": scale, "offset": (left, top)})


def canvas_image(image: torch.Tensor, plan: CanvasPlan) -> torch.Tensor:
    """``image`` (… × H × W, uint8 or float, any device) placed on the canvas as ``plan`` says."""
    if any(plan.odd_pad):
        image = F.pad(image, [0, 0, *plan.odd_pad], fill=0)
    if tuple(image.shape[-2:]) != plan.resized:
        image = F.resize(
            image, list(plan.resized), interpolation=v2.InterpolationMode.BICUBIC, antialias=True
        )
    return F.pad(image, list(plan.padding), fill=0)


def canvas_boxes(boxes: tv_tensors.BoundingBoxes, plan: CanvasPlan) -> tv_tensors.BoundingBoxes:
    """``boxes`` in the canvas frame of ``plan`` (canvas = original · scale + offset)."""
    sx, sy = plan.mapping["scale"]
    left, top = plan.mapping["offset"]
    plain = boxes.as_subclass(torch.Tensor)
    moved = plain * torch.tensor([sx, sy, sx, sy], dtype=plain.dtype) + torch.tensor(
        [left, top, left, top], dtype=plain.dtype
    )
    size = (
        plan.resized[0] + plan.padding[1] + plan.padding[3],
        plan.resized[1] + plan.padding[0] + plan.padding[2],
    )
    return tv_tensors.BoundingBoxes(moved, format="XYXY", canvas_size=size)


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
    plan = canvas_plan(*image.shape[-2:], size, rule)
    placed = tv_tensors.wrap(canvas_image(image.as_subclass(torch.Tensor), plan), like=image)
    return placed, canvas_boxes(boxes, plan), plan.mapping


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
        device_augment: bool = False,
    ) -> None:
        self.items = [reader.items[i] for i in indices]
        self.indices, self.train, self.canvas_size = list(indices), train, canvas_size
        self.canvas_rule = canvas_rule
        self.transform = DetectionTrainTransform() if train else None
        self.device_augment = bool(train and device_augment)

    def __len__(self) -> int:
        return len(self.items)

    def _meta(self, i: int, canvas: dict) -> dict:
        item = self.items[i]
        return {
            "name": item.name,
            "index": self.indices[i],
            "image_path": str(item.image),
            "orig_size": item.size,
            "canvas": canvas,
        }

    def _device_sample(self, i: int) -> dict:
        """A training sample for augmentation on the device (:func:`augment_on_device`): the JPEG's bytes (other
        formats decoded here), the photometric parameters (``params``, :data:`ssl4gie.data.device_views.PARAMS`)
        and the geometric steps drawn (``geometry``: rot90, hflip, vflip), with the boxes already moved by them
        and placed on the canvas; ``meta["plan"]`` tells the device where the image goes."""
        item = self.items[i]
        source = read_encoded(item.image)
        if isinstance(source, EncodedFrame):
            frame, size = source.data, (source.height, source.width)
        else:
            frame = torch.from_numpy(np.asarray(source)).permute(2, 0, 1).contiguous()
            size = tuple(frame.shape[-2:])
        if size != item.size:
            raise DatasetError(
                f"image {item.image} changed since the dataset was read ({item.size} -> {size}); restart the run"
            )
        params = torch.from_numpy(draw_params(STUDY_PHOTOMETRIC))
        geometry = np.array([bool(torch.rand(()) < self.transform.p) for _ in range(3)])
        boxes = tv_tensors.BoundingBoxes(torch.from_numpy(item.boxes), format="XYXY", canvas_size=item.size)
        boxes = move_boxes(boxes, geometry)
        plan, canvas = None, dict(IDENTITY_CANVAS)
        if self.canvas_size is not None:
            plan = canvas_plan(*boxes.canvas_size, self.canvas_size, self.canvas_rule)
            boxes, canvas = canvas_boxes(boxes, plan), plan.mapping
        labels = torch.full((len(item.boxes),), POLYP, dtype=torch.int64)
        return {
            "frame": frame,
            "params": params,
            "geometry": geometry,
            "target": {"boxes": boxes.as_subclass(torch.Tensor).float(), "labels": labels},
            "meta": {**self._meta(i, canvas), "plan": plan},
        }

    def __getitem__(self, i: int) -> dict:
        if self.device_augment:
            return self._device_sample(i)
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
            "meta": self._meta(i, canvas),
        }
        if not self.train:
            sample["target_native"] = {"boxes": torch.from_numpy(item.boxes.copy()), "labels": labels.clone()}
        return sample


#: The study's photometric steps (:func:`ssl4gie.data.transforms.photometric`) as a view recipe for the device: colour
#: jitter and blur on every image. No crop (the detector sees the whole image; the recipe's crop fields are unused)
#: and no flip here: the flips and the rotation are the box geometry's (``geometry``).
STUDY_PHOTOMETRIC = ViewRecipe(
    size=1,
    scale=(1.0, 1.0),
    jitter_p=1.0,
    jitter=STUDY_JITTER,
    blur_p=1.0,
    blur_sigma=STUDY_BLUR_SIGMA,
    flip_p=0.0,
)


def augment_on_device(
    image: torch.Tensor, params: torch.Tensor, geometry: Sequence[bool], plan: CanvasPlan | None
) -> torch.Tensor:
    """The study's training augmentation of one decoded image (uint8 3×H×W, any device) with the parameters a
    worker drew (:meth:`DetectionDataset._device_sample`): colour jitter in its random order, the 25-tap Gaussian
    blur (reflected borders, as torchvision's), rot90 / flips, then the canvas. Float 3×h×w in [0, 1]; the
    photometric steps keep floats where the worker path rounds to uint8 in between."""
    x = image[None].float() / 255
    p = params[None].float()
    x = colour_jitter(x, p)
    x = gaussian_blur(x, p[:, COLUMN["sigma"]], STUDY_BLUR_KERNEL, border="reflect")[0]
    rotate, hflip, vflip = (bool(g) for g in geometry)
    if rotate:
        x = torch.rot90(x, 1, dims=(-2, -1))
    if hflip:
        x = x.flip(-1)
    if vflip:
        x = x.flip(-2)
    if plan is not None:
        x = canvas_image(x, plan).clamp_(0, 1)  # bicubic overshoots
    return x
