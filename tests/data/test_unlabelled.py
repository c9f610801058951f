"""Unlabelled-frame readers and the pretraining dataset, on trees in the real layouts written by the synthetic
writer: file lists, layout errors, odd image modes, corrupt files, the decode-once cache and the views it feeds."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import compose_config
from PIL import Image
from torch.utils.data import DataLoader

from ssl4gie.data import unlabelled
from ssl4gie.data.collate import collate
from ssl4gie.data.ssl_transforms import byol_views, mae_view, probe_view
from ssl4gie.data.synthetic import main as synthetic_main
from ssl4gie.data.synthetic import write_hyperkvasir_unlabelled
from ssl4gie.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ssl4gie.data.unlabelled import (
    HyperKvasirUnlabelled,
    ImageFolder,
    PretrainImages,
    bench_views,
    crop_source_pixels,
    fitted_size,
    pretrain_dataset,
    read_resized,
)
from ssl4gie.errors import ConfigError, DatasetError, DatasetMissing
from ssl4gie.utils.conf import instantiate_checked

IMAGES = "unlabeled-images/images"
DOWNLOAD = "https://datasets.simula.no/downloads/hyper-kvasir/hyper-kvasir-unlabeled-images.zip"
APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        "  # a macOS resource fork: no image
SIZE = 32  # view size in these tests


@pytest.fixture(scope="module")
def hk_root(tmp_path_factory) -> Path:
    """12 synthetic frames of 64–200 px in the release layout (written once for the module; never modified)."""
    return write_hyperkvasir_unlabelled(tmp_path_factory.mktemp("hk") / "hyper-kvasir", count=12, seed=0,
                                        size_range=(64, 200))  # fmt: skip


def _pixels(view: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (view * std + mean) * 255


def _cache_entries(cache_dir: Path) -> list[Path]:
    return sorted(p for p in cache_dir.iterdir() if p.is_dir())


# --- the synthetic writer --------------------------------------------------------------------------------------


def test_writer_makes_the_release_layout_with_varied_rgb_jpegs(hk_root, tmp_path):
    files = sorted((hk_root / IMAGES).iterdir())
    assert len(files) == 12 and all(f.suffix == ".jpg" for f in files)
    sizes = set()
    for f in files:
        with Image.open(f) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            assert 64 <= im.width <= 200 and 64 <= im.height <= 200
            sizes.add(im.size)
            # GI-looking: red dominates green and blue over the frame
            r, g, b = np.asarray(im, np.float32).reshape(-1, 3).mean(0)
            assert r > g and r > b
    assert len(sizes) == 12 and len({w > h for w, h in sizes}) == 2  # varied sizes, portrait and landscape
    again = write_hyperkvasir_unlabelled(tmp_path / "again", count=12, seed=0, size_range=(64, 200))
    assert [f.read_bytes() for f in files] == [f.read_bytes() for f in sorted((again / IMAGES).iterdir())]
    other = write_hyperkvasir_unlabelled(tmp_path / "other", count=12, seed=1, size_range=(64, 200))
    assert {f.name for f in files}.isdisjoint(f.name for f in (other / IMAGES).iterdir())


def test_writer_cli(tmp_path):
    assert synthetic_main(["hyperkvasir_unlabelled", str(tmp_path / "out"), "--n", "2", "--seed", "3"]) == 0
    assert len(list((tmp_path / "out" / IMAGES).glob("*.jpg"))) == 2


# --- HyperKvasir-unlabelled reader -----------------------------------------------------------------------------


def test_config_writes_and_reads_a_synthetic_tree(tmp_path):
    cfg = compose_config(
        [
            "dataset=hyperkvasir_unlabelled",
            f"paths.data_dir={tmp_path}",
            "dataset.synthetic={count: 5, seed: 0}",
        ]
    )
    assert cfg.dataset.task == "pretrain" and cfg.dataset.decode_size is None  # full size by default
    assert cfg.dataset.download == DOWNLOAD
    reader = instantiate_checked(cfg.dataset)
    assert isinstance(reader, HyperKvasirUnlabelled) and reader.name == "hyperkvasir_unlabelled"
    assert reader.root == tmp_path / "hyper-kvasir" and len(reader) == 5
    assert reader.files == sorted((tmp_path / "hyper-kvasir" / IMAGES).glob("*.jpg"))
    # the labelled readers' interface, for tools reading any dataset config (leakage check)
    assert [item.image for item in reader.items] == reader.files and reader.items[0].name == reader.files[
        0
    ].stem
    assert reader.splits() == {"train": [0, 1, 2, 3, 4]}


def test_reader_lists_jpgs_sorted_and_skips_hidden_and_other_files(hk_root, tmp_path, caplog):
    root = tmp_path / "hk"
    (root / IMAGES).mkdir(parents=True)
    names = sorted(p.name for p in (hk_root / IMAGES).iterdir())
    for name in reversed(names):  # creation order is not the listing order
        (root / IMAGES / name).write_bytes((hk_root / IMAGES / name).read_bytes())
    (root / IMAGES / f"._{names[0]}").write_bytes(APPLEDOUBLE)
    (root / IMAGES / "Thumbs.db").write_bytes(b"\0")
    (root / IMAGES / "upper.JPG").write_bytes((hk_root / IMAGES / names[1]).read_bytes())
    with caplog.at_level(logging.INFO, logger="ssl4gie.data"):
        reader = HyperKvasirUnlabelled(str(root), "hk", expected_count=99417)
    assert [p.name for p in reader.files] == sorted([*names, "upper.JPG"])
    assert len(reader) == 13 and reader.decode_size is None
    assert "Thumbs.db" in caplog.text and "hidden" in caplog.text
    assert "the release has 99417" in caplog.text


def test_reader_errors_name_the_folder_and_the_layout(tmp_path):
    with pytest.raises(DatasetMissing, match="unlabeled-images/images/\\*.jpg") as missing:
        HyperKvasirUnlabelled(str(tmp_path / "nowhere"), "hk", download=DOWNLOAD)
    assert str(tmp_path / "nowhere") in str(missing.value) and DOWNLOAD in str(missing.value)
    wrong = tmp_path / "wrong"
    (wrong / "labeled-images").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no 'unlabeled-images/images/' folder.*labeled-images"):
        HyperKvasirUnlabelled(str(wrong), "hk")
    (wrong / IMAGES).mkdir(parents=True)
    (wrong / IMAGES / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match=f"{wrong / IMAGES} has no .jpg images"):
        HyperKvasirUnlabelled(str(wrong), "hk")
    with pytest.raises(ConfigError, match="decode_size"):
        HyperKvasirUnlabelled(str(wrong), "hk", decode_size=8)


# --- image_folder reader ---------------------------------------------------------------------------------------


def _save(path: Path, array: np.ndarray, mode: str | None = None, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(path, **kwargs)
    return path


def test_image_folder_recurses_sorted_by_relative_path_skipping_hidden(tmp_path, caplog):
    rgb = np.full((40, 50, 3), 120, np.uint8)
    wanted = ["a/z.jpg", "a/b/c/deep.PNG", "b.tif", "b/x.bmp", "m/n.jpeg", "top.jpg"]
    for rel in wanted:
        _save(tmp_path / "root" / rel, rgb)
    _save(tmp_path / "root" / ".cache" / "thumb.jpg", rgb)  # hidden folder: never entered
    _save(tmp_path / "root" / "a" / ".hidden.jpg", rgb)
    (tmp_path / "root" / "a" / "._z.jpg").write_bytes(APPLEDOUBLE)
    (tmp_path / "root" / "m" / "readme.txt").write_text("not an image")
    with caplog.at_level(logging.INFO, logger="ssl4gie.data"):
        reader = ImageFolder(str(tmp_path / "root"), "frames")
    rel = [p.relative_to(tmp_path / "root").as_posix() for p in reader.files]
    assert rel == sorted(wanted) and len(reader) == len(wanted)
    assert "hidden" in caplog.text


def test_image_folder_errors(tmp_path):
    cfg = compose_config(["dataset=image_folder"])
    assert cfg.dataset.root is None and cfg.dataset.task == "pretrain"
    with pytest.raises(ConfigError, match="pass dataset.root=DIR"):
        instantiate_checked(cfg.dataset)
    with pytest.raises(DatasetMissing, match=str(tmp_path / "absent")):
        ImageFolder(str(tmp_path / "absent"), "frames")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "a.txt").write_text("x")
    _save(tmp_path / "empty" / ".hidden" / "a.jpg", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DatasetError, match=f"{tmp_path / 'empty'} has no images.*\\.jpg, \\.jpeg, \\.png"):
        ImageFolder(str(tmp_path / "empty"), "frames")


def test_image_folder_synthetic_via_config(tmp_path):
    cfg = compose_config(
        ["dataset=image_folder", f"dataset.root={tmp_path / 'f'}", "dataset.synthetic={count: 3}"]
    )
    assert len(instantiate_checked(cfg.dataset)) == 3


# --- decoding: modes, sizes, corrupt files ---------------------------------------------------------------------


def test_greyscale_alpha_palette_and_cmyk_images_become_rgb(tmp_path):
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, (30, 44, 3), dtype=np.uint8)
    grey = _save(tmp_path / "root" / "grey.jpg", np.full((30, 44), 77, np.uint8))
    alpha = np.dstack([colour, np.full((30, 44), 10, np.uint8)])
    rgba = _save(tmp_path / "root" / "alpha.png", alpha)
    cmyk = _save(
        tmp_path / "root" / "cmyk.jpg", np.full((30, 44, 3), (200, 40, 60), np.uint8), "CMYK", quality=95
    )
    palette = _save(tmp_path / "root" / "pal.png", colour, "P")
    reader = ImageFolder(str(tmp_path / "root"), "modes")
    with Image.open(grey) as g, Image.open(rgba) as a, Image.open(cmyk) as c:
        assert (g.mode, a.mode, c.mode) == ("L", "RGBA", "CMYK")
    for cache_dir in (tmp_path / "cache", None):
        ds = PretrainImages(
            reader.files, None, decode_size=64, cache_dir=cache_dir, dataset="modes", progress=False
        )
        frames = {Path(ds[i]["meta"]["image_path"]).name: ds[i]["image"] for i in range(len(ds))}
        assert all(f.shape == (3, 30, 44) and f.dtype == torch.uint8 for f in frames.values())
        assert (frames["grey.jpg"] - 77).abs().max() <= 1
        np.testing.assert_array_equal(frames["alpha.png"].permute(1, 2, 0).numpy(), colour)  # alpha dropped
        assert (frames["cmyk.jpg"].float().mean((1, 2)) - torch.tensor([200.0, 40, 60])).abs().max() < 4
        expected = np.asarray(Image.open(palette).convert("RGB"))
        np.testing.assert_array_equal(frames["pal.png"].permute(1, 2, 0).numpy(), expected)


def test_cached_frames_keep_aspect_and_match_a_full_decode(hk_root, tmp_path):
    files = sorted((hk_root / IMAGES).glob("*.jpg"))
    ds = PretrainImages(files, None, decode_size=96, cache_dir=tmp_path, dataset="hk", progress=False)
    assert len(ds) == len(files)
    for i, f in enumerate(files):
        with Image.open(f) as im:
            full = im.convert("RGB")
        h, w = fitted_size(full.height, full.width, 96)
        assert max(h, w) == min(96, max(full.size)) and abs(h / w - full.height / full.width) < 0.05
        frame = ds[i]["image"]
        assert frame.shape == (3, h, w)
        # the stored frame is the valid region; the rest of the S×S slot is the zero padding
        assert (
            int(ds.arrays["image"][i, h:, :].max(initial=0)) == 0
            and int(ds.arrays["image"][i, :, w:].max(initial=0)) == 0
        )
        # DCT-domain downscaling + bicubic agrees with a full decode + bicubic to about a grey level
        reference = np.asarray(full.resize((w, h), Image.Resampling.BICUBIC), np.float32)
        assert np.abs(frame.permute(1, 2, 0).numpy() - reference).mean() < 1.5
    small = files[0]
    with Image.open(small) as im:
        assert read_resized(small, 512).shape[:2] == (im.height, im.width)  # never enlarged


def _with_corrupt(hk_root: Path, tmp_path: Path) -> tuple[list[Path], Path]:
    root = tmp_path / "corrupt"
    (root / IMAGES).mkdir(parents=True)
    for p in sorted((hk_root / IMAGES).glob("*.jpg"))[:5]:
        (root / IMAGES / p.name).write_bytes(p.read_bytes())
    good = sorted((root / IMAGES).glob("*.jpg"))
    bad = root / IMAGES / "broken.jpg"
    bad.write_bytes(good[0].read_bytes()[:300])  # a truncated JPEG: the header parses, the data ends early
    return sorted([*good, bad], key=lambda p: p.name), bad


def test_corrupt_file_is_left_out_of_the_cache_with_one_warning(hk_root, tmp_path, caplog):
    files, bad = _with_corrupt(hk_root, tmp_path)
    with caplog.at_level(logging.WARNING, logger="ssl4gie.data"):
        ds = PretrainImages(files, None, 64, tmp_path / "cache", "bad", progress=False)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert (
        len(warnings) == 1 and "1 of 6" in warnings[0].getMessage() and str(bad) in warnings[0].getMessage()
    )
    assert len(ds) == 5 and ds.skipped == [bad]
    assert bad not in [Path(ds[i]["meta"]["image_path"]) for i in range(len(ds))]
    (entry,) = _cache_entries(tmp_path / "cache")
    assert (entry / "skipped.txt").read_text() == f"{bad}\n"


def test_full_size_frames_that_do_not_decode_are_found_once_and_left_out(hk_root, tmp_path, caplog):
    """At full size nothing is decoded ahead of training, but a one-time reduced decode of every frame finds the
    bad ones (a truncated JPEG included), so that one bad frame does not stop a run at some step."""
    files, bad = _with_corrupt(hk_root, tmp_path)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(files[0].read_bytes()[:400])
    files = sorted([*files, truncated])
    with caplog.at_level(logging.WARNING, logger="ssl4gie.data"):
        ds = PretrainImages(files, None, None, tmp_path / "cache", "bad", progress=False)
    assert sorted(ds.skipped) == sorted([bad, truncated]) and len(ds) == 5
    assert "2 of 7" in caplog.text
    (entry,) = _cache_entries(tmp_path / "cache")
    assert sorted((entry / "skipped.txt").read_text().split()) == sorted([str(bad), str(truncated)])


@pytest.mark.parametrize("decode_size", [None, 64])
def test_corrupt_file_is_a_clear_error_without_the_cache(hk_root, tmp_path, decode_size):
    files, bad = _with_corrupt(hk_root, tmp_path)
    ds = PretrainImages(files, byol_views(size=SIZE), decode_size, cache_dir=None, dataset="bad")
    assert len(ds) == 6
    with pytest.raises(DatasetError, match=f"cannot read image {bad}"):
        ds[files.index(bad)]


# --- samples and views -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("cached", [True, False])
def test_samples_have_fixed_keys_shapes_and_batch(hk_root, tmp_path, cached):
    reader = HyperKvasirUnlabelled(str(hk_root), "hk", decode_size=96)
    cache_dir = str(tmp_path) if cached else None
    two = pretrain_dataset(reader, byol_views(crop_min=0.2, size=SIZE), cache_dir, progress=False)
    one = pretrain_dataset(reader, mae_view(size=SIZE), cache_dir, progress=False)
    probe = pretrain_dataset(reader, probe_view(size=SIZE), cache_dir, progress=False)
    assert len(two) == len(one) == len(reader) == 12
    sample = two[4]
    assert set(sample) == {"view1", "view2", "meta"}
    assert sample["meta"] == {"name": reader.files[4].stem, "index": 4, "image_path": str(reader.files[4])}
    for key in ("view1", "view2"):
        assert sample[key].shape == (3, SIZE, SIZE) and sample[key].dtype == torch.float32
    assert not torch.equal(sample["view1"], sample["view2"])
    assert set(one[0]) == {"image", "meta"} and one[0]["image"].shape == (3, SIZE, SIZE)
    torch.testing.assert_close(probe[2]["image"], probe[2]["image"])  # deterministic
    batch = next(iter(DataLoader(two, batch_size=4, collate_fn=collate)))
    assert batch["view1"].shape == batch["view2"].shape == (4, 3, SIZE, SIZE)
    assert [m["index"] for m in batch["meta"]] == [0, 1, 2, 3]


def test_same_seed_same_views_other_seed_other_views(hk_root, tmp_path):
    reader = HyperKvasirUnlabelled(str(hk_root), "hk", decode_size=96)
    ds = pretrain_dataset(reader, byol_views(size=SIZE), str(tmp_path), progress=False)

    def draw(seed: int) -> dict:
        torch.manual_seed(
            seed
        )  # what the engine's worker seeding does before each worker's first __getitem__
        return ds[7]

    a, b, c = draw(11), draw(11), draw(12)
    for key in ("view1", "view2"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
        assert not torch.equal(a[key], c[key])


def test_crops_never_see_the_padding(tmp_path):
    # A very wide frame in a uniform colour: its cached slot is 96×24 valid + 72 rows of black padding. Without
    # solarize, nothing in the recipe can turn (200, 200, 200) dark (brightness >= 0.6 gives >= 120), so any pixel
    # below that came from the padding.
    path = _save(tmp_path / "root" / "wide.jpg", np.full((50, 200, 3), 200, np.uint8), quality=100)
    reader = ImageFolder(str(tmp_path / "root"), "wide", decode_size=96)
    seen = []
    recorder = PretrainImages(
        reader.files, lambda image: seen.append(image) or {}, 96, tmp_path / "cache", "wide"
    )
    recorder[0]
    assert (
        seen[0].shape == (3, 24, 96) and int(seen[0].min()) >= 195
    )  # the view gets exactly the valid region
    views = byol_views(crop_min=0.08, solarize_p=(0.0, 0.0), size=SIZE)
    for transform in (views, mae_view(size=SIZE), probe_view(size=SIZE)):
        ds = PretrainImages([path], transform, 96, tmp_path / "cache", "wide", progress=False)
        torch.manual_seed(0)
        for _ in range(25):
            sample = ds[0]
            for key in set(sample) - {"meta"}:
                assert _pixels(sample[key]).min() > 115, f"padding leaked into {key}"


def test_cache_is_reused_and_a_changed_file_gives_a_new_one(hk_root, tmp_path, monkeypatch):
    root = tmp_path / "frames"
    (root / "sub").mkdir(parents=True)
    sources = sorted((hk_root / IMAGES).glob("*.jpg"))[:4]
    for p in sources:
        (root / "sub" / p.name).write_bytes(p.read_bytes())
    reader = ImageFolder(str(root), "frames", decode_size=64)
    first = pretrain_dataset(reader, None, str(tmp_path / "cache"), progress=False)
    before = [first[i]["image"] for i in range(4)]

    def never(path, size):
        raise AssertionError(f"{path} decoded again: the cache should have been reused")

    with monkeypatch.context() as m:
        m.setattr(unlabelled, "decode_frame", never)
        again = pretrain_dataset(
            ImageFolder(str(root), "frames", decode_size=64), None, str(tmp_path / "cache")
        )
        assert all(torch.equal(again[i]["image"], before[i]) for i in range(4))
    assert len(_cache_entries(tmp_path / "cache")) == 1
    # replace one file's content with another frame (and a later mtime): a new cache with the new pixels
    changed = reader.files[1]
    changed.write_bytes(sources[3].read_bytes())
    st = os.stat(changed)
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    rebuilt = pretrain_dataset(
        ImageFolder(str(root), "frames", decode_size=64), None, str(tmp_path / "cache")
    )
    assert len(_cache_entries(tmp_path / "cache")) == 2
    assert torch.equal(rebuilt[1]["image"], before[3]) and torch.equal(rebuilt[0]["image"], before[0])
    # another decode size is another cache too
    pretrain_dataset(ImageFolder(str(root), "frames", decode_size=48), None, str(tmp_path / "cache"))
    assert len(_cache_entries(tmp_path / "cache")) == 3


def test_full_size_path_decodes_every_access(hk_root, tmp_path):
    files = sorted((hk_root / IMAGES).glob("*.jpg"))[:2]
    ds = PretrainImages(files, None, decode_size=None, cache_dir=tmp_path, dataset="full")
    (entry,) = _cache_entries(tmp_path)
    assert {p.name for p in entry.glob("*.npy")} == {"hw.npy"}  # the checked sizes only, no pixels
    with Image.open(files[0]) as im:
        np.testing.assert_array_equal(ds[0]["image"].permute(1, 2, 0).numpy(), np.asarray(im.convert("RGB")))


def test_crop_source_resolution_numbers():
    # a 1280×1024 frame at decode_size 320 is 320×256: a crop of a fraction s of the area is cut from 4× fewer
    # pixels per side than in the full frame
    full, cached = crop_source_pixels(1024, 1280, 320, 0.2)
    assert full == pytest.approx((0.2 * 1024 * 1280) ** 0.5) and cached == pytest.approx(
        (0.2 * 256 * 320) ** 0.5
    )
    assert full / cached == pytest.approx(4.0)


def test_bench_views_reports_both_paths(hk_root):
    files = sorted((hk_root / IMAGES).glob("*.jpg"))
    result = bench_views(n=12, workers=0, batch_size=4, files=files, decode_size=96,
                         views=byol_views(size=SIZE))  # fmt: skip
    assert result["cache_total"] > 0 and result["jpeg_total"] > 0 and result["workers"] == 0
    assert result["speedup"] == pytest.approx(result["cache_total"] / result["jpeg_total"])
