"""Views made on the device: the parameters the workers draw follow the official recipes' distributions, and a view
made from them equals the PIL pipeline's view with the same parameters, up to interpolation and rounding."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from scipy import stats
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import functional as F

from ssl4gie.data.collate import collate
from ssl4gie.data.device_views import (
    COLUMN,
    DeviceViews,
    EncodedFrame,
    blur_kernel_size,
    draw_crop,
    draw_params,
    gaussian_blur,
    read_encoded,
)
from ssl4gie.data.ssl_transforms import INTERPOLATIONS, ViewRecipe, byol_recipes, mae_recipes
from ssl4gie.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize
from ssl4gie.data.unlabelled import PretrainImages
from ssl4gie.errors import DatasetError

DRAWS = 3000
P_MIN = 1e-3  # a seeded statistical test: p-values below this mean the sampler is not the recipe's


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> list[Path]:
    from ssl4gie.data.synthetic import write_hyperkvasir_unlabelled

    root = write_hyperkvasir_unlabelled(
        tmp_path_factory.mktemp("frames"), count=6, seed=0, size_range=(160, 320)
    )
    return sorted(root.glob("**/*.jpg"))


def _draws(recipe: ViewRecipe, n: int = DRAWS, seed: int = 0) -> np.ndarray:
    torch.manual_seed(seed)
    return np.stack([draw_params(recipe) for _ in range(n)])


# ----------------------------------------------------------------------------------------- distributions
def _accepted_scale_cdf(s: np.ndarray, low: float) -> np.ndarray:
    """CDF of the area fraction of RandomResizedCrop(scale=(low, 1), ratio=(3/4, 4/3)) in a square frame: the
    scale is drawn uniformly and the draw kept if the crop fits, which it always does below 3/4 of the area and
    above with probability −ln s / ln(4/3) (the share of log aspects in [ln s, −ln s]); ten failures in a row, the
    only other outcome, have probability 2e-8."""

    def integral(u: np.ndarray) -> np.ndarray:  # ∫_low^u acceptance
        u = np.clip(u, low, 1.0)
        below = np.minimum(u, 0.75) - low
        above = np.where(u > 0.75, (u - u * np.log(u) - (0.75 - 0.75 * np.log(0.75))) / np.log(4 / 3), 0.0)
        return below + above

    return integral(np.asarray(s)) / integral(np.array(1.0))


@pytest.mark.parametrize("low", [0.2, 0.08])
def test_crops_follow_random_resized_crop_scale_and_ratio(low):
    """RandomResizedCrop(scale=(low, 1)): the area fraction has the distribution of a uniform draw kept when the
    crop fits (Kolmogorov-Smirnov against its exact CDF), the log aspect ratio is uniform on [ln 3/4, ln 4/3] where
    every aspect fits, and the crop lies inside the frame at a uniform position."""
    recipe = ViewRecipe(size=224, scale=(low, 1.0))
    height = width = 1000
    torch.manual_seed(1)
    crops = np.array([draw_crop(recipe, height, width) for _ in range(DRAWS)])
    top, left, h, w = crops.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()
    area = h * w / (height * width)
    assert area.min() >= low - 0.01 and area.max() <= 1.0
    assert stats.kstest(area, lambda s: _accepted_scale_cdf(s, low)).pvalue > P_MIN
    fits_any_aspect = area <= 0.7
    log_ratio = np.log(w[fits_any_aspect] / h[fits_any_aspect])
    lo, hi = math.log(3 / 4), math.log(4 / 3)
    assert stats.kstest(log_ratio, stats.uniform(lo, hi - lo).cdf).pvalue > P_MIN
    free = (width - w)[fits_any_aspect]  # left ~ U{0 .. width - w}
    assert stats.kstest(left[fits_any_aspect] / np.maximum(free, 1), stats.uniform(0, 1).cdf).pvalue > P_MIN
    # a wrong scale range is caught: the same draws against U[low, 1] unconditioned fail
    assert stats.kstest(area, stats.uniform(low, 1 - low).cdf).pvalue < P_MIN


@pytest.mark.parametrize(
    ("view", "recipe", "expected"),
    [
        (
            "MoCo/BT view 1",
            byol_recipes()[0],
            {"jitter": 0.8, "grayscale": 0.2, "blur": 1.0, "solarize": 0.0},
        ),
        (
            "MoCo/BT view 2",
            byol_recipes()[1],
            {"jitter": 0.8, "grayscale": 0.2, "blur": 0.1, "solarize": 0.2},
        ),
        ("MAE", mae_recipes()[0], {"jitter": 0.0, "grayscale": 0.0, "blur": 0.0, "solarize": 0.0}),
    ],
)
def test_each_step_fires_at_the_recipes_probability_per_view(view, recipe, expected):
    params = _draws(recipe)
    for step, p in {**expected, "flip": 0.5}.items():
        fired = int(params[:, COLUMN[step]].sum())
        if p in (0.0, 1.0):
            assert fired == p * DRAWS, (view, step)
        else:
            assert stats.binomtest(fired, DRAWS, p).pvalue > P_MIN, (view, step, fired / DRAWS)


def test_colour_jitter_factors_and_order_are_torchvisions():
    """ColorJitter(0.4, 0.4, 0.2, 0.1): brightness, contrast ~ U[0.6, 1.4], saturation ~ U[0.8, 1.2], hue ~
    U[-0.1, 0.1]; the order a uniformly random permutation of the four steps, per sample."""
    params = _draws(byol_recipes()[0])
    on = params[params[:, COLUMN["jitter"]] == 1]
    for name, (lo, hi) in {
        "brightness": (0.6, 1.4), "contrast": (0.6, 1.4), "saturation": (0.8, 1.2), "hue": (-0.1, 0.1),
    }.items():  # fmt: skip
        assert stats.kstest(on[:, COLUMN[name]], stats.uniform(lo, hi - lo).cdf).pvalue > P_MIN, name
    orders = on[:, [COLUMN[f"order{k}"] for k in range(4)]].astype(int)
    assert (np.sort(orders, axis=1) == np.arange(4)).all()  # permutations
    codes = orders @ np.array([64, 16, 4, 1])
    counts = np.unique(codes, return_counts=True)[1]
    assert len(counts) == 24 and stats.chisquare(counts).pvalue > P_MIN
    off = params[params[:, COLUMN["jitter"]] == 0]
    assert (off[:, COLUMN["brightness"] : COLUMN["saturation"] + 1] == 1).all() and (
        off[:, COLUMN["hue"]] == 0
    ).all()


def test_blur_sigma_is_uniform_between_0_1_and_2():
    params = _draws(byol_recipes()[0])  # blur p 1.0
    sigma = params[:, COLUMN["sigma"]]
    assert stats.kstest(sigma, stats.uniform(0.1, 1.9).cdf).pvalue > P_MIN


# --------------------------------------------------------------------------------------- PIL equivalence
def _pil_view(image: Image.Image, crop, p: np.ndarray, recipe: ViewRecipe) -> torch.Tensor:
    """The loader-worker pipeline's view with these parameters: torchvision's PIL functions and PIL's blur, the
    operations of the official code, rounded to uint8 after every step."""
    top, left, h, w = (int(v) for v in crop)
    size = [recipe.size, recipe.size]
    out = F.resized_crop(image, top, left, h, w, size, INTERPOLATIONS[recipe.interpolation], antialias=True)
    if p[COLUMN["jitter"]]:
        steps = [
            lambda i: F.adjust_brightness(i, float(p[COLUMN["brightness"]])),
            lambda i: F.adjust_contrast(i, float(p[COLUMN["contrast"]])),
            lambda i: F.adjust_saturation(i, float(p[COLUMN["saturation"]])),
            lambda i: F.adjust_hue(i, float(p[COLUMN["hue"]])),
        ]
        for k in range(4):
            out = steps[int(p[COLUMN[f"order{k}"]])](out)
    if p[COLUMN["grayscale"]]:
        out = F.rgb_to_grayscale(out, num_output_channels=3)
    if p[COLUMN["blur"]]:
        out = out.filter(ImageFilter.GaussianBlur(radius=float(p[COLUMN["sigma"]])))
    if p[COLUMN["solarize"]]:
        out = F.solarize(out, 128)
    if p[COLUMN["flip"]]:
        out = F.horizontal_flip(out)
    return normalize(F.pil_to_tensor(out))


def _levels(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| of two normalised views on the 0..255 scale."""
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((a - b) * std * 255).abs()


@pytest.mark.parametrize(
    ("name", "recipes"),
    [
        ("mocov3", byol_recipes(0.2, "bilinear", size=64)),
        ("barlowtwins", byol_recipes(0.08, "bicubic", size=64, flip_first=True)),
        ("mae", mae_recipes(size=64)),
    ],
)
def test_a_device_view_equals_the_pil_view_with_the_same_parameters(name, recipes, frames):
    """Per view: mean difference at most 3 grey levels of 255 and 99 % of the pixels within 8. What remains is
    arithmetic: PIL truncates to uint8 after each colour step (half a level down on average, each time), works in
    8-bit HSV for the hue and blurs with three box filters; the device keeps floats and convolves a Gaussian (each
    step alone: next test)."""
    views = DeviceViews(recipes)
    torch.manual_seed(0)
    samples = [views(read_encoded(f)) for f in frames]
    batch = collate(samples)
    out = views.apply(batch["frame"], batch["crops"], batch["params"])
    for v, key in enumerate(views.keys):
        assert out[key].shape == (len(frames), 3, 64, 64) and out[key].dtype == torch.float32
        for i, f in enumerate(frames):
            reference = _pil_view(
                Image.open(f).convert("RGB"), batch["crops"][i][v], batch["params"][i, v].numpy(), recipes[v]
            )
            diff = _levels(out[key][i], reference)
            assert diff.mean() <= 3.0 and diff.quantile(0.99) <= 8.0, (name, key, i, diff.mean(), diff.max())


def test_each_step_alone_matches_pil_within_rounding(frames):
    """One step at a time on the same 64² image: brightness, contrast, saturation within a grey level (PIL
    truncates to uint8), hue as close as torchvision's own tensor hue is to PIL's, the Gaussian blur within a
    level on average of PIL's box-blur approximation."""
    from ssl4gie.data.device_views import colour_jitter

    image = Image.open(frames[0]).convert("RGB").resize((64, 64))
    x = F.pil_to_tensor(image)[None].float() / 255

    def jitter(step: str, factor: float) -> torch.Tensor:
        p = torch.tensor(draw_params(ViewRecipe(size=64, scale=(1, 1))))[None]  # all steps off
        p[0, COLUMN["jitter"]], p[0, COLUMN[step]] = 1, factor
        p[0, COLUMN["order0"] : COLUMN["order3"] + 1] = torch.tensor([0, 1, 2, 3])
        return colour_jitter(x, p)[0] * 255

    pil = {
        "brightness": F.adjust_brightness,
        "contrast": F.adjust_contrast,
        "saturation": F.adjust_saturation,
    }
    for step, factor in [("brightness", 0.6), ("brightness", 1.4), ("contrast", 0.6), ("contrast", 1.4),
                         ("saturation", 0.8), ("saturation", 1.2)]:  # fmt: skip
        diff = (jitter(step, factor) - F.pil_to_tensor(pil[step](image, factor)).float()).abs()
        assert diff.mean() < 0.7 and diff.max() <= 1.0, (step, factor)
    for hue in (-0.1, 0.05):
        reference = F.pil_to_tensor(F.adjust_hue(image, hue)).float()
        ours = (jitter("hue", hue) - reference).abs()
        torchvision_tensor = (F.adjust_hue(x, hue)[0] * 255 - reference).abs()
        assert (
            ours.mean() <= torchvision_tensor.mean() + 0.05 and ours.max() <= torchvision_tensor.max() + 0.5
        )
    for sigma in (0.1, 1.0, 2.0):
        reference = F.pil_to_tensor(image.filter(ImageFilter.GaussianBlur(sigma))).float()
        diff = (gaussian_blur(x, torch.tensor([sigma]), blur_kernel_size(2.0))[0] * 255 - reference).abs()
        assert diff.mean() < 0.7, sigma


def test_cached_pixels_and_pil_images_take_the_same_path_as_jpeg_bytes(frames):
    """A cached frame (uint8 tensor) or a decoded PNG gives the same view as its JPEG bytes decoded on the device,
    given the same parameters."""
    views = DeviceViews(mae_recipes(size=32))
    encoded = read_encoded(frames[0])
    assert isinstance(encoded, EncodedFrame)
    pixels = F.pil_to_tensor(Image.open(frames[0]).convert("RGB"))
    torch.manual_seed(3)
    a = views(encoded)
    torch.manual_seed(3)
    b = views(pixels.permute(1, 2, 0).contiguous().permute(2, 0, 1))  # H×W×3 storage, as the cache
    assert np.array_equal(a["crops"], b["crops"]) and torch.equal(a["params"], b["params"])
    out = views.apply(
        [a["frame"], b["frame"]], np.stack([a["crops"], b["crops"]]), torch.stack([a["params"], b["params"]])
    )
    assert _levels(out["image"][0], out["image"][1]).max() <= 1.0  # libjpeg in both; decoders may round apart


def test_png_and_cmyk_are_decoded_in_the_worker_and_a_broken_file_is_named(tmp_path):
    png = tmp_path / "a.png"
    Image.new("RGB", (40, 30), (10, 200, 30)).save(png)
    cmyk = tmp_path / "c.jpg"
    Image.new("CMYK", (40, 30), (0, 50, 100, 0)).save(cmyk)
    grey = tmp_path / "g.jpg"
    Image.new("L", (40, 30), 90).save(grey)
    assert isinstance(read_encoded(png), Image.Image) and isinstance(read_encoded(cmyk), Image.Image)
    assert isinstance(read_encoded(grey), EncodedFrame)  # decode_jpeg makes RGB of a greyscale JPEG
    views = DeviceViews(mae_recipes(size=16))
    out = views.apply(
        *(lambda b: (b["frame"], b["crops"], b["params"]))(collate([views(read_encoded(grey))]))
    )
    assert out["image"].shape == (1, 3, 16, 16)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(grey.read_bytes()[:60])
    with pytest.raises(DatasetError, match="broken.jpg"):
        sample = views(read_encoded(broken))
        views.apply([sample["frame"]], sample["crops"][None], sample["params"][None], [str(broken)])
    not_an_image = tmp_path / "x.jpg"
    not_an_image.write_text("hello")
    with pytest.raises(DatasetError, match=r"x\.jpg"):
        read_encoded(not_an_image)


def test_through_the_dataset_and_loader_workers_views_are_normalised_and_seeded(frames):
    views = DeviceViews(byol_recipes(size=32))
    dataset = PretrainImages(frames, views, decode_size=None)
    sample = dataset[0]
    assert set(sample) == {"frame", "crops", "params", "meta"} and sample["frame"].ndim == 1  # bytes only

    def batch(seed: int) -> dict:
        loader = DataLoader(
            dataset,
            batch_size=3,
            num_workers=1,
            collate_fn=collate,
            generator=torch.Generator().manual_seed(seed),
        )
        b = next(iter(loader))
        return {**b, **views.apply(b["frame"], b["crops"], b["params"])}

    first, again, other = batch(0), batch(0), batch(1)
    assert torch.equal(first["view1"], again["view1"]) and not torch.equal(first["view1"], other["view1"])
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    pixels = first["view1"] * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + mean
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
