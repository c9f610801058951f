"""Pretraining views: the recipes of MoCo v3's ``main_moco.py``, Barlow Twins' ``main.py`` and MAE's
``main_pretrain.py`` (order, probabilities, crop ranges), per-view
behaviour on images whose answer is known, normalisation and seeding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ssl4gie.data.ssl_transforms import PILGaussianBlur, byol_views, mae_view, probe_view, to_pil
from ssl4gie.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ssl4gie.errors import ConfigError

SIZE = 32  # views are cheap at 32 px; the recipe does not depend on the size


def _uniform(value: tuple[int, int, int], h: int = 40, w: int = 48) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.uint8).view(3, 1, 1).expand(3, h, w).contiguous()


def _pixels(view: torch.Tensor) -> torch.Tensor:
    """Undo the ImageNet normalisation: values back on the 0..255 scale."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (view * std + mean) * 255


def _steps(compose: v2.Compose) -> list[tuple[str, float]]:
    """(name, probability) of each augmentation step, unwrapping RandomApply; the frame goes to PIL first and back
    to a uint8 tensor last."""
    transforms = compose.transforms
    assert transforms[0] is to_pil and isinstance(transforms[-1], v2.PILToTensor)
    out = []
    for t in transforms[1:-1]:
        if isinstance(t, v2.RandomApply):
            (inner,) = t.transforms
            out.append((type(inner).__name__, t.p))
        else:
            out.append((type(t).__name__, getattr(t, "p", 1.0)))
    return out


# The official recipes (MoCo v3's main_moco.py, Barlow Twins' main.py), written out step by step per view.
MOCO = [
    [("RandomResizedCrop", 1.0), ("ColorJitter", 0.8), ("RandomGrayscale", 0.2), ("PILGaussianBlur", 1.0),
     ("RandomHorizontalFlip", 0.5)],
    [("RandomResizedCrop", 1.0), ("ColorJitter", 0.8), ("RandomGrayscale", 0.2), ("PILGaussianBlur", 0.1),
     ("RandomSolarize", 0.2), ("RandomHorizontalFlip", 0.5)],
]  # fmt: skip
BARLOW = [[view[0], view[-1], *view[1:-1]] for view in MOCO]  # the flip right after the crop


@pytest.mark.parametrize(
    ("kwargs", "expected", "interpolation", "crop_min"),
    [
        ({"crop_min": 0.2}, MOCO, v2.InterpolationMode.BILINEAR, 0.2),  # MoCo v3 RN50
        ({"crop_min": 0.08}, MOCO, v2.InterpolationMode.BILINEAR, 0.08),  # MoCo v3 ViT
        ({"interpolation": "bicubic", "flip_first": True}, BARLOW, v2.InterpolationMode.BICUBIC, 0.08),
    ],
)
def test_two_view_recipes_match_the_official_ones(kwargs, expected, interpolation, crop_min):
    views = byol_views(size=224, **kwargs)
    for compose, steps in zip((views.first, views.second), expected, strict=True):
        assert _steps(compose) == steps
        crop = compose.transforms[1]
        assert tuple(crop.size) == (224, 224)
        assert crop.scale == (crop_min, 1.0) and crop.ratio == pytest.approx((3 / 4, 4 / 3))
        assert crop.interpolation == interpolation and crop.antialias
        applied = [t.transforms[0] for t in compose.transforms if isinstance(t, v2.RandomApply)]
        jitter = next(t for t in applied if isinstance(t, v2.ColorJitter))
        assert (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue) == (
            (0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1),
        )  # fmt: skip
        (blur,) = (t for t in applied if isinstance(t, PILGaussianBlur))
        assert blur.sigma == (0.1, 2.0)
    solarize = views.second.transforms[-3 if not kwargs.get("flip_first") else -2]
    assert isinstance(solarize, v2.RandomSolarize) and solarize.threshold == 128


def test_solarize_only_in_view_two_and_inverts_like_pil():
    # A uniform 220-grey frame: crop, contrast, saturation, hue, greyscale and blur leave it uniform and brightness
    # keeps it in [132, 255], so with solarize p = 1 in view 2 it must always come out inverted (<= 123).
    views = byol_views(crop_min=0.2, solarize_p=(0.0, 1.0), size=SIZE)
    image = _uniform((220, 220, 220))
    torch.manual_seed(0)
    for _ in range(40):
        out = views(image)
        assert _pixels(out["view1"]).min() > 130
        assert _pixels(out["view2"]).max() < 125
    # the threshold's meaning against PIL's ImageOps.solarize(threshold=128) on every grey level
    ramp = torch.arange(256, dtype=torch.uint8).view(1, 16, 16).expand(3, 16, 16).contiguous()
    pil = np.asarray(ImageOps.solarize(Image.fromarray(ramp.permute(1, 2, 0).numpy()), threshold=128))
    np.testing.assert_array_equal(F.solarize(ramp, 128).permute(1, 2, 0).numpy(), pil)


def test_jitter_and_greyscale_fire_at_the_recipe_rates():
    torch.manual_seed(1)
    n = 300
    views = byol_views(crop_min=0.5, solarize_p=(0.0, 0.0), size=8)
    grey_frame, red_frame = to_pil(_uniform((120, 120, 120))), to_pil(_uniform((230, 20, 20)))
    # grey frame: only the brightness jitter can change it (uniform: contrast, saturation, hue, blur do nothing)
    changed = sum(bool((views.first(grey_frame).float() - 120).abs().max() > 1.5) for _ in range(n))
    assert 0.68 < changed / n < 0.9  # p = 0.8, less the ~3 % of brightness factors within 1.25 % of 1
    # saturated red: colour jitter (saturation >= 0.8) cannot make it grey, so R = G = B means greyscale fired
    grey = 0
    for _ in range(n):
        px = views.second(red_frame).int()
        grey += bool((px.amax(0) - px.amin(0)).max() == 0)
    assert 0.12 < grey / n < 0.28  # p = 0.2


def test_views_are_normalised_shaped_and_seeded():
    image = torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8)
    views = byol_views(crop_min=0.2, size=SIZE)
    torch.manual_seed(3)
    a = views(image)
    torch.manual_seed(3)
    b = views(image)
    assert set(a) == {"view1", "view2"}
    for key in a:
        assert a[key].shape == (3, SIZE, SIZE) and a[key].dtype == torch.float32
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
        assert _pixels(a[key]).min() > -0.5 and _pixels(a[key]).max() < 255.5
    assert not torch.equal(a["view1"], a["view2"])
    one = mae_view(size=SIZE)(image)
    assert set(one) == {"image"} and one["image"].shape == (3, SIZE, SIZE)


def test_mae_view_recipe():
    ops = mae_view(size=224).ops.transforms
    assert ops[0] is to_pil and isinstance(ops[-1], v2.PILToTensor)
    assert [type(t).__name__ for t in ops[1:-1]] == ["RandomResizedCrop", "RandomHorizontalFlip"]
    assert ops[1].scale == (0.2, 1.0) and ops[1].interpolation == v2.InterpolationMode.BICUBIC
    assert ops[2].p == 0.5


def test_probe_view_is_a_plain_resize_ignoring_aspect():
    rng = np.random.default_rng(0)
    # smooth content, so that two good bicubic implementations agree closely
    small = rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)
    array = np.asarray(Image.fromarray(small).resize((90, 60), Image.Resampling.BICUBIC))
    image = torch.from_numpy(array.copy()).permute(2, 0, 1)
    out = probe_view(size=SIZE)(image)["image"]
    assert out.shape == (3, SIZE, SIZE)
    reference = np.asarray(Image.fromarray(array).resize((SIZE, SIZE), Image.Resampling.BICUBIC), np.float32)
    assert np.abs(_pixels(out).permute(1, 2, 0).numpy() - reference).mean() < 1.5
    torch.testing.assert_close(probe_view(size=SIZE)(image)["image"], out)  # deterministic
    flat = probe_view(size=SIZE)(_uniform((10, 128, 250)))["image"]
    expected = (torch.tensor([10, 128, 250]) / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(flat[:, 5, 5], expected.float(), rtol=0, atol=1e-5)


def test_blur_is_pils_with_a_uniform_sigma_and_the_input_is_never_written():
    rng = np.random.default_rng(2)
    array = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    array.flags.writeable = False  # like the memory-mapped cache
    frame = torch.from_numpy(array.copy()).permute(2, 0, 1)
    pil = to_pil(frame)
    np.testing.assert_array_equal(np.asarray(pil), array)
    torch.manual_seed(9)
    sigma = torch.empty(1).uniform_(0.1, 2.0).item()
    torch.manual_seed(9)
    ours = PILGaussianBlur((0.1, 2.0))(pil)
    np.testing.assert_array_equal(
        np.asarray(ours), np.asarray(pil.filter(ImageFilter.GaussianBlur(radius=sigma)))
    )
    before = frame.clone()
    views = byol_views(size=SIZE)
    for _ in range(5):
        views(frame)
    assert torch.equal(frame, before)
    # a PIL frame (the full-size decode path) gives the same views as the same pixels as a tensor
    torch.manual_seed(4)
    a = views(frame)
    torch.manual_seed(4)
    b = views(to_pil(frame))
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="uint8 3×H×W"):
        to_pil(frame.float())


@pytest.mark.parametrize(
    "kwargs",
    [{"interpolation": "nearest"}, {"blur_p": (1.0,)}, {"solarize_p": (0.0, 1.5)}, {"crop_min": 0.0}],
)
def test_bad_options_are_config_errors(kwargs):
    with pytest.raises(ConfigError, match=next(iter(kwargs)).split("_")[0]):
        byol_views(**kwargs)
