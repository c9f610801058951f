"""Synthetic writers: exact real-dataset layouts, file modes, box/mask consistency, determinism, safe writes."""

import json
import logging
import re
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from ssl4gie.data import synthetic
from ssl4gie.data.synthetic import (
    C3VD_VIDEOS,
    HYPERKVASIR_CLASSES,
    main,
    write_c3vd,
    write_cvc_clinicdb,
    write_hyperkvasir,
    write_kvasir_seg,
    write_pranet_set,
)

# tiny but complete variants of each writer, used by the generic tests
WRITERS = {
    "kvasir_seg": lambda root, seed: write_kvasir_seg(root, n=4, seed=seed, size_range=(48, 80)),
    "cvc_clinicdb": lambda root, seed: write_cvc_clinicdb(root, n=5, seed=seed, size=(48, 40)),
    "pranet": lambda root, seed: write_pranet_set(root, n=4, seed=seed, size_range=(48, 80), rgb_masks=True),
    "hyperkvasir": lambda root, seed: write_hyperkvasir(
        root, {"polyps": 2, "z-line": 2}, seed=seed, size=(40, 32)
    ),
    "c3vd": lambda root, seed: write_c3vd(
        root, {"trans_t2_b_under_review/t2v2": 2}, seed=seed, size=(40, 32)
    ),
}


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_kvasir_seg_layout_masks_and_tight_boxes(tmp_path):
    root = write_kvasir_seg(tmp_path / "kvasir", n=6, seed=3, size_range=(64, 112))
    assert root == tmp_path / "kvasir"
    assert sorted(p.name for p in root.iterdir()) == ["images", "kavsir_bboxes.json", "masks"]
    stems = sorted(p.stem for p in (root / "images").glob("*.jpg"))
    assert len(stems) == 6
    assert stems == sorted(p.stem for p in (root / "masks").glob("*.jpg"))
    assert all(re.fullmatch(r"[a-z0-9]{25}", s) for s in stems)
    boxes = json.loads((root / "kavsir_bboxes.json").read_text())
    assert sorted(boxes) == stems

    soft_edges, sizes = False, set()
    for stem in stems:
        entry = boxes[stem]
        assert set(entry) == {"height", "width", "bbox"}
        image, mask = Image.open(root / "images" / f"{stem}.jpg"), Image.open(root / "masks" / f"{stem}.jpg")
        assert image.mode == mask.mode == "RGB"
        assert image.size == mask.size == (entry["width"], entry["height"])
        assert 64 <= image.width <= 112 and 64 <= image.height <= 112
        sizes.add(image.size)
        values = np.asarray(mask)
        soft_edges |= bool(np.any((values > 0) & (values < 255)))
        fg = values.mean(axis=2) > 127
        components, count = ndimage.label(fg)
        assert 1 <= count == len(entry["bbox"])
        found = sorted(
            (s[1].start, s[0].start, s[1].stop, s[0].stop) for s in ndimage.find_objects(components)
        )
        written = sorted((b["xmin"], b["ymin"], b["xmax"], b["ymax"]) for b in entry["bbox"])
        for box, (x0, y0, x1, y1) in zip(entry["bbox"], written, strict=True):
            assert box["label"] == "polyp"
            assert all(isinstance(box[k], int) for k in ("xmin", "ymin", "xmax", "ymax"))
            assert 0 <= x0 < x1 <= image.width and 0 <= y0 < y1 <= image.height
        # JPEG may move the 127 threshold crossing by a pixel at the mask's edge
        assert np.abs(np.array(found) - np.array(written)).max() <= 2
    assert soft_edges, "JPEG masks should have intermediate values near edges, like the real Kvasir-SEG"
    assert len(sizes) > 1 and any(w != h for w, h in sizes)


@pytest.mark.parametrize("ext", ["tif", "png"])
def test_cvc_clinicdb_layout_and_sequences(tmp_path, ext):
    root = write_cvc_clinicdb(tmp_path / "cvc", n=7, seed=0, ext=ext, size=(64, 48))
    expected = sorted(f"{i}.{ext}" for i in range(1, 8))
    assert sorted(p.name for p in (root / "Original").iterdir()) == expected
    assert sorted(p.name for p in (root / "Ground Truth").iterdir()) == expected
    for name in expected:
        image, mask = Image.open(root / "Original" / name), Image.open(root / "Ground Truth" / name)
        assert (image.mode, image.size, mask.mode, mask.size) == ("RGB", (64, 48), "L", (64, 48))
        values = np.unique(np.asarray(mask))
        assert set(values.tolist()) == {0, 255}
    # sequences are >= 4 frames, so frames 1 and 2 show the same scene: much closer than another scene
    other = write_cvc_clinicdb(tmp_path / "other", n=1, seed=1, ext=ext, size=(64, 48))
    frame = [np.asarray(Image.open(root / "Original" / f"{i}.{ext}"), dtype=float) for i in (1, 2)]
    unrelated = np.asarray(Image.open(other / "Original" / f"1.{ext}"), dtype=float)
    assert np.abs(frame[0] - frame[1]).mean() < 0.6 * np.abs(frame[0] - unrelated).mean()


def test_cvc_clinicdb_rejects_unknown_extension(tmp_path):
    with pytest.raises(ValueError, match="jpg"):
        write_cvc_clinicdb(tmp_path / "cvc", n=2, ext="jpg")
    assert not (tmp_path / "cvc").exists()


def test_hyperkvasir_tree_has_every_study_class_where_spec_puts_it(tmp_path):
    root = write_hyperkvasir(tmp_path / "hk", seed=0, size=(40, 32))
    study = {
        "lower-gi-tract/anatomical-landmarks": ["cecum", "ileum", "retroflex-rectum"],
        "upper-gi-tract/anatomical-landmarks": ["pylorus", "retroflex-stomach", "z-line"],
        "lower-gi-tract/pathological-findings": ["hemorrhoids", "polyps"]
        + [f"ulcerative-colitis-grade-{g}" for g in ("0-1", "1-2", "1", "2-3", "2", "3")],
        "upper-gi-tract/pathological-findings": [
            "barretts-short-segment",
            "barretts",
            "esophagitis-a",
            "esophagitis-b-d",
        ],
        "lower-gi-tract/quality-of-mucosal-views": ["bbps-0-1"],
        "lower-gi-tract/therapeutic-interventions": ["dyed-lifted-polyps"],
    }
    found = {p.relative_to(root / "labeled-images").as_posix() for p in root.glob("labeled-images/*/*/*")}
    assert found == {f"{parent}/{c}" for parent, classes in study.items() for c in classes}
    for folder in root.glob("labeled-images/*/*/*"):
        files = sorted(folder.iterdir())
        assert len(files) == 4
        for f in files:
            assert f.suffix == ".jpg" and uuid.UUID(f.stem).version == 4
            with Image.open(f) as im:
                assert (im.mode, im.size) == ("RGB", (40, 32))


def test_hyperkvasir_classes_are_learnable_and_subset_is_independent(tmp_path):
    names = [n for n, (_, cat) in HYPERKVASIR_CLASSES.items() if cat == "pathological-findings"]
    root = write_hyperkvasir(tmp_path / "hk", dict.fromkeys(names, 5), seed=0, size=(48, 40))

    def features(path):  # colour statistics + coarse layout: enough for a nearest-centroid classifier
        a = np.asarray(Image.open(path).resize((6, 5), Image.Resampling.BOX), dtype=float) / 255
        return np.concatenate([a.reshape(-1, 3).mean(0) * 4, a.ravel()])

    x = {
        n: np.stack([features(p) for p in sorted(root.glob(f"labeled-images/*/*/{n}/*.jpg"))]) for n in names
    }
    hits = 0
    for n in names:  # leave-one-out nearest centroid
        for i in range(len(x[n])):
            cents = {m: np.delete(x[m], i, 0).mean(0) if m == n else x[m].mean(0) for m in names}
            hits += min(cents, key=lambda m: np.linalg.norm(cents[m] - x[n][i])) == n
    assert hits / (5 * len(names)) > 0.4  # chance is 1/12

    alone = write_hyperkvasir(tmp_path / "alone", {"polyps": 5}, seed=0, size=(48, 40))
    assert [p.relative_to(alone).parts[1:4] for p in alone.glob("labeled-images/*/*/*")] == [
        ("lower-gi-tract", "pathological-findings", "polyps")
    ]
    assert _files(alone / "labeled-images/lower-gi-tract/pathological-findings/polyps") == _files(
        root / "labeled-images/lower-gi-tract/pathological-findings/polyps"
    )
    with pytest.raises(ValueError, match="polyp"):
        write_hyperkvasir(tmp_path / "bad", {"polyp": 1})


def test_c3vd_layout_modes_and_depth(tmp_path):
    videos = {"trans_t2_b_under_review/t2v2": 2, "cecum_t1_a_under_review/c1v1": 1}
    root = write_c3vd(tmp_path / "c3vd", videos, seed=0, size=(64, 48))
    assert sorted(p.relative_to(root).as_posix() for p in root.glob("*/*")) == sorted(videos)
    folder = root / "trans_t2_b_under_review/t2v2"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"000{k}_{kind}" for k in (0, 1) for kind in ("color.png", "depth.tiff", "occlusion.png")]
        + ["pose.txt"]
    )
    for k in (0, 1):
        color, depth = Image.open(folder / f"000{k}_color.png"), Image.open(folder / f"000{k}_depth.tiff")
        assert (color.mode, color.size, depth.mode, depth.size) == ("RGB", (64, 48), "I;16", (64, 48))
        d = np.asarray(depth)
        assert d.dtype == np.uint16
        valid = d[d > 0] / 65535 * 100  # millimetres
        assert 0 < (d == 0).sum() < 0.05 * d.size
        assert valid.min() >= 5 - 0.01 and valid.max() <= 90 + 0.01 and valid.max() - valid.min() > 40
        # the light is at the camera: the nearest quarter of the wall is brighter than the farthest quarter
        gray = np.asarray(color.convert("L"), dtype=float)
        near, far = np.quantile(valid, [0.25, 0.75])
        mm = d / 65535 * 100
        assert gray[(d > 0) & (mm <= near)].mean() > gray[(d > 0) & (mm >= far)].mean() + 30


def test_c3vd_default_has_the_22_study_videos(tmp_path):
    root = write_c3vd(tmp_path / "c3vd", seed=0, size=(16, 12))
    videos = sorted(p.relative_to(root).as_posix() for p in root.glob("*/*"))
    assert videos == sorted(C3VD_VIDEOS) and len(videos) == 22
    for split_video in ("trans_t2_b_under_review/t2v2", "cecum_t4_b_under_review/c4v3"):
        assert split_video in videos
    assert len(list(root.glob("*/*/*_color.png"))) == len(list(root.glob("*/*/*_depth.tiff"))) == 66
    with pytest.raises(ValueError, match="t2v2"):
        write_c3vd(tmp_path / "bad", {"t2v2": 1})


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_same_seed_same_bytes_other_seed_differs(tmp_path, name):
    write = WRITERS[name]
    first, again, other = (_files(write(tmp_path / d, seed)) for d, seed in (("a", 0), ("b", 0), ("c", 1)))
    assert first and first == again
    assert first != other


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_refuses_non_empty_root_and_accepts_empty_one(tmp_path, name):
    root = tmp_path / "data"
    root.mkdir()
    WRITERS[name](root, 0)  # an existing empty folder is fine
    before = _files(root)
    with pytest.raises(FileExistsError, match=re.escape(str(root))):
        WRITERS[name](root, 1)
    assert _files(root) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def failing_finish(rng, rgb):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return np.zeros(rgb.shape, np.uint8)

    monkeypatch.setattr(synthetic, "_finish", failing_finish)
    with pytest.raises(KeyboardInterrupt):
        write_kvasir_seg(tmp_path / "kvasir", n=5, size_range=(48, 64))
    assert list(tmp_path.iterdir()) == []


def test_cli_writes_dataset_and_reports_non_empty_folder(tmp_path, caplog):
    out = tmp_path / "cvc"
    with caplog.at_level(logging.INFO, logger="ssl4gie.data.synthetic"):
        assert main(["cvc_clinicdb", str(out), "--n", "3", "--seed", "2"]) == 0
    assert sorted(p.name for p in (out / "Original").iterdir()) == ["1.tif", "2.tif", "3.tif"]
    assert str(out) in caplog.text
    assert main(["cvc_clinicdb", str(out), "--n", "3"]) == 1
    assert "not empty" in caplog.text
