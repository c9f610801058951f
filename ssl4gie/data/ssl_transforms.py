"""Views for self-supervised pretraining (the recipes of MoCo v3's ``main_moco.py``, Barlow Twins' ``main.py``
and MAE's ``main_pretrain.py``), built in the loader workers.

Every view object maps one RGB frame — a uint8 3×H×W tensor (the valid region of a cached frame) or a PIL
image (a frame decoded at full size) — to the tensors of one sample, under fixed keys, and draws its random
numbers from torch's global generator only (so ``torch.manual_seed`` before a ``__getitem__`` fixes the views,
and the engine's worker seeding covers it):

* :func:`byol_views` -> :class:`TwoViews`: ``{"view1", "view2"}``, the asymmetric BYOL recipe of MoCo v3 and
  Barlow Twins;
* :func:`mae_view` -> :class:`OneView`: ``{"image"}``, MAE's crop + flip;
* :func:`probe_view` -> :class:`OneView`: ``{"image"}``, the plain evaluation resize for probes.

The steps are torchvision.transforms.v2 transforms applied to a PIL image, then ``PILToTensor`` and the
ImageNet normalisation: the official pipelines' own operations (PIL's crop-resize, colour, grey-scale and
solarize functions, torchvision's parameter draws), and on one core faster than the tensor kernels (measured
on a shared 2-core machine: 60 vs 100 ms per two-view sample from a 320-px frame, mostly hue and blur). The
blur is PIL's ``GaussianBlur(radius=σ)``, as in the official code (:class:`PILGaussianBlur`, 5 ms per 224²
view): ``v2.GaussianBlur`` needs a fixed kernel (23 taps to cover ±3σ at σ = 2 with margin) and convolves it
as a 23×23 kernel (~280 ms here; separably still ~22 ms). The input frame is converted to PIL once (a copy of
the valid region only, never a write to the cache).

The two-view recipes, as parameters of :func:`byol_views` (not branches):

============== ================================ =====================================
               MoCo v3 (``main_moco.py``)        Barlow Twins (``main.py``)
============== ================================ =====================================
crop_min       0.2 (RN50) / 0.08 (ViT)          0.08 (torchvision default)
interpolation  bilinear                          bicubic
flip_first     False: flip after solarize        True: flip right after the crop
blur_p         (1.0, 0.1)                        (1.0, 0.1)
solarize_p     (0.0, 0.2)                        (0.0, 0.2)
============== ================================ =====================================

The flip's position changes only which random numbers go to which step, not the distribution of the views:
every later step (colour jitter, greyscale, Gaussian blur, solarize) commutes with a horizontal flip.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageFilter
from torchvision.transforms import v2

from ssl4gie.data.transforms import normalize
from ssl4gie.errors import ConfigError

#: Accepted ``interpolation`` names -> torchvision modes.
INTERPOLATIONS = {
    "bilinear": v2.InterpolationMode.BILINEAR,
    "bicubic": v2.InterpolationMode.BICUBIC,
}
BLUR_SIGMA = (0.1, 2.0)
SOLARIZE_THRESHOLD = 128
CROP_RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop's default aspect range, used by all three recipes
JITTER = (0.4, 0.4, 0.2, 0.1)  # ColorJitter(brightness, contrast, saturation, hue) of the BYOL recipe


@dataclass(frozen=True)
class ViewRecipe:
    """One view of a frame as data: the steps of the official pipeline and their probabilities, in the official
    order RandomResizedCrop(``size``, ``scale``, ``ratio``, ``interpolation``) → colour jitter (``jitter``: the
    ColorJitter strengths, p ``jitter_p``) → greyscale (p ``grayscale_p``) → PIL Gaussian blur (σ ~
    U[``blur_sigma``], p ``blur_p``) → solarize (threshold 128, p ``solarize_p``) → horizontal flip (p
    ``flip_p``; ``flip_first``: right after the crop, Barlow Twins' order). A step with p 0 is left out.

    The loader-worker views (:func:`worker_views`) and the device views
    (:class:`ssl4gie.data.device_views.DeviceViews`) are both built from these, so they cannot drift apart.
    """

    size: int
    scale: tuple[float, float]
    interpolation: str = "bilinear"
    jitter_p: float = 0.0
    grayscale_p: float = 0.0
    blur_p: float = 0.0
    solarize_p: float = 0.0
    flip_p: float = 0.5
    flip_first: bool = False
    ratio: tuple[float, float] = CROP_RATIO
    jitter: tuple[float, float, float, float] = JITTER
    blur_sigma: tuple[float, float] = BLUR_SIGMA

    def __post_init__(self) -> None:
        _mode(self.interpolation)
        if not 0.0 < self.scale[0] <= self.scale[1] <= 1.0:
            raise ConfigError(f"crop scale must satisfy 0 < min <= max <= 1, got {list(self.scale)}")


def _mode(interpolation: str | v2.InterpolationMode) -> v2.InterpolationMode:
    if isinstance(interpolation, v2.InterpolationMode):
        return interpolation
    if interpolation not in INTERPOLATIONS:
        raise ConfigError(
            f"interpolation={interpolation!r} is not valid for the pretraining views; valid: "
            f"{', '.join(INTERPOLATIONS)}"
        )
    return INTERPOLATIONS[interpolation]


def _check_probability(name: str, values: Sequence[float]) -> tuple[float, float]:
    pair = tuple(float(v) for v in values)
    if len(pair) != 2 or not all(0.0 <= p <= 1.0 for p in pair):
        raise ConfigError(f"{name} must be two probabilities in [0, 1] (view 1, view 2), got {list(values)}")
    return pair  # type: ignore[return-value]


def _crop(recipe: ViewRecipe) -> v2.RandomResizedCrop:
    return v2.RandomResizedCrop(
        recipe.size,
        scale=recipe.scale,
        ratio=recipe.ratio,
        interpolation=_mode(recipe.interpolation),
        antialias=True,
    )


def to_pil(image: torch.Tensor | Image.Image) -> Image.Image:
    """A uint8 3×H×W RGB tensor (any strides, e.g. a read-only cache view) as a PIL RGB image; PIL passes through.

    The pixels are copied (PIL copies strided input), so the source is never written to.
    """
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a uint8 3×H×W RGB tensor, got {image.dtype} {tuple(image.shape)}")
    return Image.fromarray(np.ascontiguousarray(image.permute(1, 2, 0).numpy()))


class PILGaussianBlur:
    """PIL's ``ImageFilter.GaussianBlur(radius=σ)`` with σ ~ U[``sigma``] drawn from torch's generator: the official
    recipes' blur (PIL approximates the Gaussian by three box blurs, with no kernel-size cut-off)."""

    def __init__(self, sigma: tuple[float, float] = BLUR_SIGMA) -> None:
        self.sigma = sigma

    def __call__(self, image: Image.Image) -> Image.Image:
        sigma = torch.empty(1).uniform_(*self.sigma).item()
        return image.filter(ImageFilter.GaussianBlur(radius=sigma))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sigma={self.sigma})"


def _view_ops(recipe: ViewRecipe) -> v2.Compose:
    """One view's steps: frame -> PIL -> augmented uint8 3×size×size tensor (normalised afterwards)."""
    flip = v2.RandomHorizontalFlip(recipe.flip_p)
    ops: list = []
    # p = 0 leaves the step out, as the official code has no solarize step in view 1 at all
    if recipe.jitter_p > 0:
        b, c, s, h = recipe.jitter
        ops.append(
            v2.RandomApply([v2.ColorJitter(brightness=b, contrast=c, saturation=s, hue=h)], p=recipe.jitter_p)
        )
    if recipe.grayscale_p > 0:
        ops.append(v2.RandomGrayscale(p=recipe.grayscale_p))
    if recipe.blur_p > 0:
        ops.append(v2.RandomApply([PILGaussianBlur(recipe.blur_sigma)], p=recipe.blur_p))
    if recipe.solarize_p > 0:
        ops.append(v2.RandomSolarize(threshold=SOLARIZE_THRESHOLD, p=recipe.solarize_p))
    steps = [_crop(recipe), flip, *ops] if recipe.flip_first else [_crop(recipe), *ops, flip]
    return v2.Compose([to_pil, *steps, v2.PILToTensor()])


class TwoViews:
    """Two differently augmented views of one frame: ``{"view1": float 3×S×S, "view2": float 3×S×S}``.

    Both are ImageNet-normalised. ``view1`` uses the first entry of ``blur_p`` / ``solarize_p``, ``view2`` the
    second. Input: a uint8 3×H×W RGB tensor or a PIL image, of any size.
    """

    keys = ("view1", "view2")

    def __init__(self, first: v2.Compose, second: v2.Compose, recipes: tuple[ViewRecipe, ...] = ()) -> None:
        self.first, self.second = first, second
        self.recipes = recipes

    def __call__(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"view1": normalize(self.first(image)), "view2": normalize(self.second(image))}


class OneView:
    """One view of one frame: ``{"image": float 3×S×S}``, ImageNet-normalised; input as :class:`TwoViews`."""

    keys = ("image",)

    def __init__(self, ops: v2.Transform, recipes: tuple[ViewRecipe, ...] = ()) -> None:
        self.ops = ops
        self.recipes = recipes

    def __call__(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"image": normalize(self.ops(image))}


def byol_recipes(
    crop_min: float = 0.08,
    interpolation: str = "bilinear",
    blur_p: Sequence[float] = (1.0, 0.1),
    solarize_p: Sequence[float] = (0.0, 0.2),
    size: int = 224,
    flip_first: bool = False,
) -> tuple[ViewRecipe, ViewRecipe]:
    """The asymmetric two-view recipe (MoCo v3's ``main_moco.py``, Barlow Twins' ``main.py``), per view:

    RandomResizedCrop(size, scale=(crop_min, 1), ratio=(3/4, 4/3), ``interpolation``) → ColorJitter(0.4, 0.4,
    0.2, 0.1) with p 0.8 → RandomGrayscale p 0.2 → PIL Gaussian blur σ ~ U[0.1, 2] with p ``blur_p[view]`` →
    solarize (threshold 128) with p ``solarize_p[view]`` → horizontal flip p 0.5 (``flip_first``: right after the
    crop, Barlow Twins' order) → ImageNet normalisation. MoCo v3: defaults with crop_min 0.2 (RN50) or 0.08 (ViT);
    Barlow Twins: ``interpolation="bicubic", flip_first=True`` (see the module docstring's table).
    """
    blur = _check_probability("blur_p", blur_p)
    solarize = _check_probability("solarize_p", solarize_p)
    first, second = (
        ViewRecipe(
            size=size,
            scale=(float(crop_min), 1.0),
            interpolation=interpolation,
            jitter_p=0.8,
            grayscale_p=0.2,
            blur_p=blur[v],
            solarize_p=solarize[v],
            flip_first=flip_first,
        )
        for v in range(2)
    )
    return first, second


def mae_recipes(
    size: int = 224, crop_scale: Sequence[float] = (0.2, 1.0), interpolation: str = "bicubic"
) -> tuple[ViewRecipe]:
    """MAE's pretraining view (``main_pretrain.py``): RandomResizedCrop(size, scale=crop_scale, ratio=(3/4, 4/3),
    bicubic) → horizontal flip p 0.5 → ImageNet normalisation."""
    low, high = (float(s) for s in crop_scale)
    return (ViewRecipe(size=size, scale=(low, high), interpolation=interpolation),)


def worker_views(recipes: Sequence[ViewRecipe]) -> TwoViews | OneView:
    """The views of ``recipes`` made in the loader workers (PIL): :class:`TwoViews` for two, :class:`OneView`
    for one."""
    recipes = tuple(recipes)
    if len(recipes) == 2:
        return TwoViews(*(_view_ops(r) for r in recipes), recipes=recipes)
    if len(recipes) == 1:
        return OneView(_view_ops(recipes[0]), recipes=recipes)
    raise ValueError(f"expected one or two view recipes, got {len(recipes)}")


def byol_views(
    crop_min: float = 0.08,
    interpolation: str = "bilinear",
    blur_p: Sequence[float] = (1.0, 0.1),
    solarize_p: Sequence[float] = (0.0, 0.2),
    size: int = 224,
    flip_first: bool = False,
) -> TwoViews:
    """:func:`byol_recipes` made in the loader workers."""
    return worker_views(byol_recipes(crop_min, interpolation, blur_p, solarize_p, size, flip_first))


def mae_view(
    size: int = 224, crop_scale: Sequence[float] = (0.2, 1.0), interpolation: str = "bicubic"
) -> OneView:
    """:func:`mae_recipes` made in the loader workers."""
    return worker_views(mae_recipes(size, crop_scale, interpolation))


def probe_view(size: int = 224) -> OneView:
    """Evaluation view for probes: resize to size×size ignoring the aspect ratio (as the study's classification
    evaluation: PIL bicubic), then ImageNet normalisation. Deterministic."""
    resize = v2.Resize((size, size), interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
    return OneView(v2.Compose([to_pil, resize, v2.PILToTensor()]))
