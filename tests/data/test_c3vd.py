"""The C3VD reader on synthetic data in the real layouts: split table, folder namings, bad inputs, preprocessing."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssl4gie.data.c3vd import (
    C3VD,
    DEPTH_SCALE,
    STUDY_TABLE,
    C3VDDataset,
    DepthTrainTransform,
    PadGeometry,
    decode_frame,
    load_split_table,
)
from ssl4gie.data.synthetic import C3VD_VIDEOS, write_c3vd
from ssl4gie.errors import ConfigError, DatasetError

STUDY_SPLIT = {"test": ["t2v2", "c4v3"], "val": ["t4v1", "c2v3"]}


def _write(root: Path, frames: int = 1, size: tuple[int, int] = (20, 16)) -> Path:
    return write_c3vd(root, dict.fromkeys(C3VD_VIDEOS, frames), seed=0, size=size)


def _videos_per_split(reader: C3VD) -> dict[str, list[str]]:
    out = {}
    for split, indices in reader.splits().items():
        out[split] = list(dict.fromkeys(reader.items[i].video for i in indices))  # first-seen order
    return out


@pytest.fixture(scope="module")
def study_root(tmp_path_factory) -> Path:
    return _write(tmp_path_factory.mktemp("c3vd") / "C3VD")


def test_split_table_is_the_study_split() -> None:
    table = load_split_table("study")
    assert len(table) == 22
    assert {f"{e.sequence}_under_review/{e.code}" for e in table} == set(C3VD_VIDEOS)
    by_split = {s: [e.code for e in table if e.split == s] for s in ("train", "val", "test")}
    assert by_split["test"] == STUDY_SPLIT["test"] and by_split["val"] == STUDY_SPLIT["val"]
    assert len(by_split["train"]) == 18


def test_study_layout_splits_by_video(study_root: Path) -> None:
    reader = C3VD(str(study_root))
    videos = _videos_per_split(reader)
    assert videos["test"] == ["t2v2", "c4v3"]  # the study's evaluation order
    assert videos["val"] == ["t4v1", "c2v3"]
    assert len(videos["train"]) == 18 and not set(videos["train"]) & {"t2v2", "c4v3", "t4v1", "c2v3"}
    assert len(reader.items) == 22
    assert reader.items[0].name == "t2v2_0000" and reader.items[0].depth.name == "0000_depth.tiff"


def test_current_release_naming_gives_the_same_split(study_root: Path, tmp_path: Path) -> None:
    # One folder per video holding the frames (the current release), e.g. "cecum_t1_a/"; also one that kept the
    # early suffix at depth 1, and one inside an unrelated parent folder, named by its video code only.
    root = tmp_path / "C3VD"
    for key in C3VD_VIDEOS:
        sequence, code = key.split("/")
        dest = {"t2v2": sequence, "c1v1": f"release/{code}"}.get(code, sequence.removesuffix("_under_review"))
        shutil.copytree(study_root / key, root / dest)
    reader = C3VD(str(root))
    assert _videos_per_split(reader) == _videos_per_split(C3VD(str(study_root)))
    assert [f.name for f in reader.items] == [f.name for f in C3VD(str(study_root)).items]


def test_frames_are_sorted_numerically(tmp_path: Path) -> None:
    root = _write(tmp_path / "C3VD", frames=3)
    folder = root / "trans_t2_b_under_review/t2v2"
    for old, new in (("0000", "10"), ("0001", "2"), ("0002", "9")):
        for kind in ("color.png", "depth.tiff"):
            (folder / f"{old}_{kind}").rename(folder / f"{new}_{kind}")
    reader = C3VD(str(root))
    test = [reader.items[i].name for i in reader.splits()["test"]]
    assert test[:3] == ["t2v2_0002", "t2v2_0009", "t2v2_0010"]  # named as the zero-padded release names them


def test_unknown_video_is_reported_and_excluded(study_root: Path, tmp_path: Path, caplog) -> None:
    root = tmp_path / "C3VD"
    shutil.copytree(study_root, root)
    shutil.copytree(root / "cecum_t1_a_under_review/c1v1", root / "mystery_t9_z")
    shutil.copytree(root / "cecum_t1_a_under_review/c1v1", root / "trans_t2_b_under_review/t2v1")  # two rows
    with caplog.at_level(logging.WARNING, logger="ssl4gie.data.c3vd"):
        reader = C3VD(str(root))
    assert "mystery_t9_z" in caplog.text and "trans_t2_b_under_review/t2v1" in caplog.text
    assert len(reader.items) == 22 and not any("mystery" in str(f.image) for f in reader.items)
    with pytest.raises(DatasetError, match="mystery_t9_z"):
        C3VD(str(root), unknown_videos="error")
    with pytest.raises(ConfigError, match="unknown_videos=maybe"):
        C3VD(str(root), unknown_videos="maybe")


def test_one_video_twice_is_an_error(study_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "C3VD"
    shutil.copytree(study_root, root)
    shutil.copytree(root / "cecum_t1_a_under_review/c1v1", root / "cecum_t1_a")
    with pytest.raises(DatasetError, match="both video c1v1"):
        C3VD(str(root))


def test_custom_split_table(study_root: Path, tmp_path: Path) -> None:
    table = tmp_path / "split.yaml"
    text = STUDY_TABLE.read_text()
    table.write_text(text.replace("code: c1v1, split: train", "code: c1v1, split: test"))
    reader = C3VD(str(study_root), split=str(table))
    assert _videos_per_split(reader)["test"] == ["t2v2", "c4v3", "c1v1"]
    (tmp_path / "bad.yaml").write_text("videos:\n  - {sequence: a, code: b, split: holdout}\n")
    with pytest.raises(ConfigError, match="holdout"):
        C3VD(str(study_root), split=str(tmp_path / "bad.yaml"))
    with pytest.raises(ConfigError, match="dataset.split=nope"):
        C3VD(str(study_root), split="nope")


def _eight_bit(path: Path) -> None:
    code = np.asarray(Image.open(path))
    Image.fromarray((code // 257).astype(np.uint8)).save(path)  # a "preview" copy: mode L


def test_eight_bit_depth_is_an_error(tmp_path: Path) -> None:
    root = _write(tmp_path / "C3VD", frames=2)
    second = root / "desc_t4_a_under_review/d4v2/0001_depth.tiff"
    _eight_bit(second)
    reader = C3VD(str(root))  # only each video's first depth file is checked up front
    frame = next(f for f in reader.items if f.depth == second)
    with pytest.raises(DatasetError, match=r"0001_depth\.tiff has PIL mode 'L' \(8-bit\)"):
        decode_frame(frame, 16)
    _eight_bit(root / "desc_t4_a_under_review/d4v2/0000_depth.tiff")
    with pytest.raises(DatasetError, match=r"d4v2/0000_depth\.tiff has PIL mode 'L'"):
        C3VD(str(root))


def test_colour_frame_without_depth_is_an_error(study_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "C3VD"
    shutil.copytree(study_root, root)
    (root / "sigmoid_t2_a_under_review/s2v1/0000_depth.tiff").unlink()
    with pytest.raises(DatasetError, match=r"s2v1/0000_color\.png has no depth file"):
        C3VD(str(root))


def test_missing_root_and_empty_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"C3VD not found: .*nowhere.*durrlab\.github\.io/C3VD"):
        C3VD(str(tmp_path / "nowhere"), download="https://durrlab.github.io/C3VD/")
    (tmp_path / "empty" / "notes").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no C3VD video folders"):
        C3VD(str(tmp_path / "empty"))


def test_pad_geometry_offsets_and_round_trip() -> None:
    g = PadGeometry(1350, 1080)
    assert (g.side, g.left, g.top) == (1350, 0, 135)  # the study's make_square offset
    portrait = PadGeometry(5, 8)
    assert (portrait.side, portrait.left, portrait.top) == (8, 1, 0)  # int((8 - 5) / 2)
    rng = np.random.default_rng(0)
    for geometry in (PadGeometry(9, 6), PadGeometry(6, 9), PadGeometry(7, 7)):
        native = rng.integers(1, 65535, (geometry.height, geometry.width)).astype(np.uint16)
        square = geometry.pad(native)
        assert (square > 0).sum() == native.size  # the frame and zeros only
        assert np.array_equal(geometry.crop(torch.from_numpy(square.astype(np.int32))).numpy(), native)
    # to_native: a map that is linear along x at network resolution comes back linear, cropped at the offset
    g = PadGeometry(12, 8)
    ramp = torch.linspace(0, 1, 24).repeat(24, 1)  # 24×24 "network output"
    native = g.to_native(ramp[None])
    assert native.shape == (1, 8, 12)
    expected = torch.nn.functional.interpolate(ramp[None, None], size=(12, 12), mode="bilinear")[0, 0, 2:10]
    assert torch.allclose(native[0], expected)
    with pytest.raises(ValueError, match="12×12 canvas"):
        g.crop(torch.zeros(10, 10))


def test_decode_pads_then_resizes(study_root: Path) -> None:
    frame = C3VD(str(study_root)).items[0]
    native = np.asarray(Image.open(frame.depth))
    g = PadGeometry(native.shape[1], native.shape[0])
    same = decode_frame(frame, g.side)  # no resize: the padded canvas itself
    assert np.array_equal(g.crop(torch.from_numpy(same["depth"].astype(np.int32))).numpy(), native)
    assert same["depth"][: g.top].max() == 0 and same["image"][: g.top].max() == 0  # black padding
    small = decode_frame(frame, 10)
    assert small["image"].shape == (10, 10, 3) and small["depth"].dtype == np.uint16
    assert set(np.unique(small["depth"])) <= set(np.unique(same["depth"]))  # nearest: no new depth values


def test_dataset_samples(study_root: Path, tmp_path: Path) -> None:
    reader = C3VD(str(study_root))
    test = reader.splits()["test"]
    cached = C3VDDataset(reader, test, 16, train=False, native=True, cache_dir=str(tmp_path), progress=False)
    plain = C3VDDataset(reader, test, 16, train=False, native=True, cache_dir=None)
    sample = cached[0]
    assert sample["image"].shape == (3, 16, 16) and sample["target"].shape == (1, 16, 16)
    assert torch.equal(sample["image"], plain[0]["image"]) and torch.equal(
        sample["target"], plain[0]["target"]
    )
    code = decode_frame(reader.items[test[0]], 16)["depth"]
    assert torch.equal(sample["target"][0], torch.from_numpy(code.astype(np.float32) / DEPTH_SCALE))
    assert sample["target"].min() >= 0 and sample["target"].max() <= 1 and (sample["target"] == 0).any()
    native = np.asarray(Image.open(reader.items[test[0]].depth)).astype(np.float32) / 65535
    assert torch.equal(sample["target_native"], torch.from_numpy(native))
    assert sample["meta"]["geometry"] == PadGeometry(20, 16) and sample["meta"]["video"] == "t2v2"
    train = C3VDDataset(reader, reader.splits()["train"], 16, train=True, native=False, cache_dir=None)
    assert "target_native" not in train[0] and train[0]["image"].dtype == torch.float32


def test_train_transform_flips_image_and_depth_together() -> None:
    torch.manual_seed(0)
    transform = DepthTrainTransform()
    image = torch.zeros(3, 8, 8, dtype=torch.uint8)
    image[:, 1, 2] = 255
    depth = torch.zeros(1, 8, 8)
    depth[0, 1, 2] = 0.5
    seen = set()
    for _ in range(24):
        out_image, out_depth = transform(image, depth)
        bright = int(out_image.sum(0).flatten().argmax())
        assert bright == int(out_depth[0].flatten().argmax())
        assert out_depth.sum() == 0.5  # depth values are moved, never changed
        seen.add(bright)
    assert seen == {1 * 8 + 2, 1 * 8 + 5, 6 * 8 + 2, 6 * 8 + 5}  # all four flip combinations occur


def test_split_all_puts_every_frame_in_test_and_test_is_the_study_split(study_root: Path) -> None:
    study = C3VD(str(study_root))
    every = C3VD(str(study_root), split="all")
    assert every.splits() == {"train": [], "val": [], "test": list(range(len(study.items)))}
    assert C3VD(str(study_root), split="test").splits() == study.splits()
