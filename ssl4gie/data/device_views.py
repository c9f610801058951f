"""Pretraining views made on the device: loader workers read encoded frames and draw each view's parameters; the
device decodes the batch at full resolution and applies the parameters per sample, outside autocast.

The work is split where it is cheapest:

* **worker** (:meth:`DeviceViews.__call__`): the file's bytes (a JPEG is not decoded: its header gives the size;
  other formats, and CMYK JPEGs, are decoded here) or a cached frame, and every random number of every view, drawn
  with torchvision's own parameter samplers (``RandomResizedCrop.get_params``, ``ColorJitter.get_params``) and
  torch's generator, so the distributions are the official pipelines' by construction and the engine's worker
  seeding fixes them. A sample is ``{"frame", "crops", "params"}``: the encoded bytes (uint8 numpy, stays on the
  host: ``torchvision.io.decode_jpeg`` reads its input from host memory) or pixels (uint8 3×H×W tensor),
  ``crops`` (V×4 int numpy: top, left, height, width per view; the host slices with them) and ``params`` (V×K
  float32 tensor, :data:`PARAMS` columns; it travels to the device with the batch).
* **device** (:meth:`DeviceViews.apply`): one ``decode_jpeg`` call for the batch (nvJPEG on CUDA), then per view:
  crop-and-resize per sample (torch's antialiased ``interpolate``, which follows PIL's filters), and the
  photometric steps on the whole batch with per-sample factors and per-sample on/off flags (``torch.where``), so
  nothing waits for the GPU: colour jitter in each sample's own random order (kornia's torchvision-formula
  functions ``adjust_brightness_accumulative``, ``adjust_contrast_with_mean_subtraction``,
  ``adjust_saturation_with_gray_subtraction``, ``adjust_hue``), greyscale (ITU-R 601 luma, as PIL), Gaussian
  blur with a per-sample σ (kornia's per-sample kernels, replicated borders as PIL's box blurs), solarize
  (threshold 128/255), horizontal flip, ImageNet normalisation.

The flip is applied last whatever the recipe's ``flip_first``: every other photometric step commutes with it.
What differs from the PIL pipeline is arithmetic: floats throughout instead of rounding to uint8 after every step,
a Gaussian kernel instead of PIL's three box blurs, and hue in float HSV instead of PIL's 8-bit HSV; the tests
bound the difference.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as nnf
from kornia.enhance import (
    adjust_brightness_accumulative,
    adjust_contrast_with_mean_subtraction,
    adjust_hue,
    adjust_saturation_with_gray_subtraction,
)
from kornia.filters import filter2d_separable, get_gaussian_kernel1d
from PIL import Image, UnidentifiedImageError
from torchvision import transforms as tv1
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

from ssl4gie.data.ssl_transforms import SOLARIZE_THRESHOLD, ViewRecipe
from ssl4gie.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ssl4gie.errors import DatasetError

#: Columns of a view's ``params`` row (photometric; the crop box travels separately, see the module docstring).
PARAMS = (
    "flip", "jitter", "brightness", "contrast", "saturation", "hue", "order0", "order1", "order2", "order3",
    "grayscale", "blur", "sigma", "solarize",
)  # fmt: skip
COLUMN = {name: i for i, name in enumerate(PARAMS)}
#: ``order<k>`` holds the index of the k-th colour step: torchvision's ColorJitter numbering.
JITTER_STEPS = ("brightness", "contrast", "saturation", "hue")
BLUR_RADIUS_SIGMAS = 4


@dataclass(frozen=True)
class EncodedFrame:
    """A frame as its file's bytes, not decoded: ``data`` (uint8, 1-D) and the size from the header."""

    data: np.ndarray
    height: int
    width: int


def read_encoded(path: Path) -> EncodedFrame | Image.Image:
    """``path`` as the device path takes it: an RGB or greyscale JPEG as its bytes (only the header is parsed),
    anything else (PNG, TIFF, CMYK JPEG ...) decoded here as a PIL RGB image. A file that is no image is a
    DatasetError naming it."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
        with Image.open(io.BytesIO(data.tobytes())) as image:
            if image.format == "JPEG" and image.mode in ("RGB", "L"):
                return EncodedFrame(data, image.height, image.width)
            image.load()
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise DatasetError(f"cannot read image {path}: {e}. Replace or remove the file.") from e


# ------------------------------------------------------------------------------------------------ worker side
def draw_crop(recipe: ViewRecipe, height: int, width: int) -> tuple[int, int, int, int]:
    """(top, left, height, width) of RandomResizedCrop(``recipe.scale``, ``recipe.ratio``) in a frame of this size:
    torchvision's own sampler (10 tries, then the central crop), torch's generator."""
    frame = torch.zeros(()).expand(1, height, width)  # only the size is read; nothing is allocated
    top, left, h, w = tv1.RandomResizedCrop.get_params(frame, list(recipe.scale), list(recipe.ratio))
    return int(top), int(left), int(h), int(w)


def draw_params(recipe: ViewRecipe) -> np.ndarray:
    """One view's photometric parameters (:data:`PARAMS`), drawn as the official pipeline's steps draw them: an
    on/off flag per step at its probability, ColorJitter's factors and order (``ColorJitter.get_params``), blur σ
    ~ U[``blur_sigma``]. Steps with probability 0 draw nothing (and stay off)."""
    row = np.zeros(len(PARAMS), np.float32)
    row[COLUMN["brightness"] : COLUMN["saturation"] + 1] = 1.0  # neutral factors
    row[COLUMN["sigma"]] = recipe.blur_sigma[0]
    if recipe.jitter_p > 0 and torch.rand(()) < recipe.jitter_p:
        b, c, s, h = recipe.jitter
        order, *factors = tv1.ColorJitter.get_params([1 - b, 1 + b], [1 - c, 1 + c], [1 - s, 1 + s], [-h, h])
        row[COLUMN["jitter"]] = 1.0
        row[COLUMN["brightness"] : COLUMN["hue"] + 1] = factors
        row[COLUMN["order0"] : COLUMN["order3"] + 1] = order.numpy()
    for flag, p in (("grayscale", recipe.grayscale_p), ("blur", recipe.blur_p)):
        row[COLUMN[flag]] = float(p > 0 and torch.rand(()) < p)
    if row[COLUMN["blur"]]:
        row[COLUMN["sigma"]] = torch.empty(1).uniform_(*recipe.blur_sigma).item()
    row[COLUMN["solarize"]] = float(recipe.solarize_p > 0 and torch.rand(()) < recipe.solarize_p)
    row[COLUMN["flip"]] = float(torch.rand(()) < recipe.flip_p)
    return row


class DeviceViews:
    """The views of ``recipes`` (one, or two for the BYOL pair) made on the device; ``keys`` name them in the
    batch (``view1``/``view2`` or ``image``, as the loader-worker views of :mod:`ssl4gie.data.ssl_transforms`).

    Called in a loader worker on a frame (:class:`EncodedFrame`, a PIL image, or a cached uint8 3×h×w tensor) it
    returns the sample's ``frame``, ``crops`` and ``params``; :meth:`apply` turns a batch of those into views.
    """

    encoded = True  # the dataset hands over undecoded JPEG files (read_encoded)

    def __init__(self, recipes: Sequence[ViewRecipe], keys: Sequence[str] | None = None) -> None:
        self.recipes = tuple(recipes)
        self.keys = tuple(keys or (("view1", "view2") if len(self.recipes) == 2 else ("image",)))
        if len(self.keys) != len(self.recipes):
            raise ValueError(f"{len(self.recipes)} recipes but {len(self.keys)} keys")

    def __call__(self, source: EncodedFrame | Image.Image | torch.Tensor) -> dict:
        if isinstance(source, EncodedFrame):
            frame, height, width = source.data, source.height, source.width
        elif isinstance(source, Image.Image):
            frame = torch.from_numpy(np.asarray(source.convert("RGB"))).permute(2, 0, 1).contiguous()
            height, width = frame.shape[-2:]
        else:  # a cached frame's valid region (a read-only view): a copy of its own
            frame = source.clone(memory_format=torch.contiguous_format)
            height, width = frame.shape[-2:]
        crops = np.array([draw_crop(r, height, width) for r in self.recipes], np.int64)
        params = torch.from_numpy(np.stack([draw_params(r) for r in self.recipes]))
        return {"frame": frame, "crops": crops, "params": params}

    # ------------------------------------------------------------------------------------------ device side
    @torch.no_grad()
    def apply(
        self,
        frames: Sequence[np.ndarray | torch.Tensor] | torch.Tensor,
        crops: Sequence[np.ndarray] | np.ndarray,
        params: torch.Tensor,
        names: Sequence[str] | None = None,
    ) -> dict[str, torch.Tensor]:
        """The views of a batch: ``{key: float B×3×S×S}``, ImageNet-normalised, on ``params``' device.

        ``frames``: per sample the encoded bytes (uint8 numpy, host) or the pixels (uint8 3×H×W tensor, any
        device); ``crops``: per sample V×4 (top, left, height, width); ``params``: B×V×K (:data:`PARAMS`).
        ``names`` (the files, for error messages) default to the positions."""
        device = params.device
        images = decode_frames(frames, device, names)
        crops = np.asarray(np.stack(list(crops)) if not isinstance(crops, np.ndarray) else crops)
        return {
            key: view_batch(images, crops[:, v], params[:, v].float(), recipe)
            for v, (key, recipe) in enumerate(zip(self.keys, self.recipes, strict=True))
        }


# ------------------------------------------------------------------------------------------------ device side
def decode_frames(
    frames: Sequence[np.ndarray | torch.Tensor] | torch.Tensor,
    device: torch.device,
    names: Sequence[str] | None,
) -> list[torch.Tensor]:
    """uint8 3×H×W RGB tensors on ``device``: encoded JPEGs decoded in one ``decode_jpeg`` call (nvJPEG on CUDA),
    pixels moved. If the batch call fails, each file is decoded alone (on the CPU, any format), and one that still
    fails is a DatasetError naming it."""
    frames = list(frames.unbind(0)) if isinstance(frames, torch.Tensor) else list(frames)
    out: list[torch.Tensor | None] = [f.to(device) if isinstance(f, torch.Tensor) else None for f in frames]
    encoded = [i for i, f in enumerate(frames) if not isinstance(f, torch.Tensor)]
    if encoded:
        data = [torch.from_numpy(np.asarray(frames[i], dtype=np.uint8)) for i in encoded]
        try:
            decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:
            decoded = [
                _decode_one(d, device, names[i] if names else f"frame {i}")
                for d, i in zip(data, encoded, strict=True)
            ]
        for i, image in zip(encoded, decoded, strict=True):
            out[i] = image
    return out  # type: ignore[return-value]


def _decode_one(data: torch.Tensor, device: torch.device, name: str) -> torch.Tensor:
    try:
        return decode_image(data, mode=ImageReadMode.RGB).to(device)
    except RuntimeError as e:
        raise DatasetError(f"cannot decode image {name}: {e}. Replace or remove the file.") from e


def crop_resize(
    images: Sequence[torch.Tensor], crops: np.ndarray, size: int, interpolation: str
) -> torch.Tensor:
    """Each image's crop box resized to size×size: float B×3×S×S in [0, 1]. torch's antialiased ``interpolate``
    (PIL's filters: bilinear = triangle, bicubic = Keys a = −0.5, support scaled when shrinking), per sample,
    since boxes and frames differ in size."""
    views = []
    for image, (top, left, height, width) in zip(images, crops.tolist(), strict=True):
        crop = image[None, :, top : top + height, left : left + width].float()
        views.append(nnf.interpolate(crop, size=(size, size), mode=interpolation, antialias=True))
    return torch.cat(views).clamp_(0, 255).div_(255)


def _where(flag: torch.Tensor, changed: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.where(flag.bool()[:, None, None, None], changed, x)


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(1).expand_as(x)  # ITU-R 601-2, as PIL's convert("L")


def colour_jitter(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """ColorJitter with per-sample factors, each sample in its own order (``order0..3``); samples whose
    ``jitter`` flag is 0 are unchanged."""
    on = p[:, COLUMN["jitter"]]
    steps = (
        lambda x: adjust_brightness_accumulative(x, p[:, COLUMN["brightness"]]),
        lambda x: adjust_contrast_with_mean_subtraction(x, p[:, COLUMN["contrast"]]),
        lambda x: adjust_saturation_with_gray_subtraction(x, p[:, COLUMN["saturation"]]),
        lambda x: adjust_hue(x, p[:, COLUMN["hue"]] * 2 * math.pi),  # torchvision: turns; kornia: radians
    )
    for position in range(len(JITTER_STEPS)):
        which = p[:, COLUMN[f"order{position}"]]
        for index, step in enumerate(steps):
            x = _where(on * (which == index), step(x), x)
    return x


def blur_kernel_size(sigma_max: float) -> int:
    """The odd kernel size that covers ±4σ of the largest σ (PIL's box blurs have no cut-off; ±4σ leaves out 6e-5
    of the mass)."""
    return 2 * math.ceil(BLUR_RADIUS_SIGMAS * sigma_max) + 1


def gaussian_blur(
    x: torch.Tensor, sigma: torch.Tensor, kernel_size: int, border: str = "replicate"
) -> torch.Tensor:
    """Per-sample Gaussian blur of standard deviation ``sigma`` (B,) with a ``kernel_size`` kernel, separable:
    ``replicate`` borders as PIL's box blurs, ``reflect`` as torchvision's ``gaussian_blur``."""
    kernel = get_gaussian_kernel1d(kernel_size, sigma[:, None])
    return filter2d_separable(x, kernel, kernel, border_type=border)


def view_batch(
    images: Sequence[torch.Tensor], crops: np.ndarray, p: torch.Tensor, recipe: ViewRecipe
) -> torch.Tensor:
    """One view of every image of the batch (see the module docstring), ImageNet-normalised."""
    x = crop_resize(images, crops, recipe.size, recipe.interpolation)
    if recipe.jitter_p > 0:
        x = colour_jitter(x, p)
    if recipe.grayscale_p > 0:
        x = _where(p[:, COLUMN["grayscale"]], _gray(x), x)
    if recipe.blur_p > 0:
        blurred = gaussian_blur(x, p[:, COLUMN["sigma"]], blur_kernel_size(recipe.blur_sigma[1]))
        x = _where(p[:, COLUMN["blur"]], blurred, x)
    if recipe.solarize_p > 0:
        threshold = SOLARIZE_THRESHOLD / 255
        x = _where(p[:, COLUMN["solarize"]], torch.where(x >= threshold, 1 - x, x), x)
    x = _where(p[:, COLUMN["flip"]], x.flip(-1), x)
    # Python scalars, not tensors: a tensor made from host values on a GPU waits for every queued kernel
    return torch.stack(
        [(x[:, c] - m) / s for c, (m, s) in enumerate(zip(IMAGENET_MEAN, IMAGENET_STD, strict=True))], 1
    )
