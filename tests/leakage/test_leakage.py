"""Leakage check: planted near-duplicates (rescaled, recompressed, lightly cropped copies of synthetic GI-like
images) are found, distinct images give no pair, splits of a dataset config are reported, the search is exact."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

pytest.importorskip("imagehash")

from ssl4gie.data.segmentation import KvasirSeg
from ssl4gie.data.synthetic import write_kvasir_seg
from ssl4gie.leakage import PAIR_COLUMNS, check
from ssl4gie.leakage.__main__ import main
from ssl4gie.leakage.bench import bench, near_copy
from ssl4gie.leakage.hashing import close_pairs, hamming

SIZES = (160, 240)


def plant_copies(originals: list[Path], folder: Path, seed: int = 0) -> dict[str, str]:
    """Rescaled (×0.5-1.5), cropped (≤ 3 % a side), JPEG-recompressed (quality 40-75) copies; copy → original."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    planted = {}
    for k, original in enumerate(originals):
        with Image.open(original) as image:
            copy = near_copy(image.convert("RGB"), rng)
        name = f"copy{k:02d}.jpg"
        copy.save(folder / name, quality=int(rng.integers(40, 76)))
        planted[name] = original.name
    return planted


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("leakage")
    a = write_kvasir_seg(root / "a", n=24, seed=1, size_range=SIZES)
    other = write_kvasir_seg(root / "other", n=16, seed=2, size_range=SIZES)
    return {"a": a / "images", "other": other / "images", "root": root}


def test_planted_near_duplicates_are_found_and_nothing_else(sets, tmp_path):
    originals = sorted(sets["a"].glob("*.jpg"))[::3]  # 8 of the 24
    b = tmp_path / "b"
    planted = plant_copies(originals, b)
    for image in sorted(sets["other"].glob("*.jpg"))[:8]:  # and 8 unrelated images
        shutil.copy(image, b / image.name)
    pairs = check(str(sets["a"]), str(b), tmp_path / "out", progress=False)
    assert list(pairs.columns) == list(PAIR_COLUMNS)
    assert dict(zip(pairs["name_b"], pairs["name_a"], strict=True)) == planted
    assert pairs["distance"].is_monotonic_increasing and (pairs["distance"] <= 56).all()
    written = pd.read_csv(tmp_path / "out" / "pairs.csv", keep_default_na=False)
    assert len(written) == 8 and set(written["name_b"]) == set(planted)
    assert (tmp_path / "out" / "pairs.png").stat().st_size > 0
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # atomic: no temp left


def test_distinct_images_give_no_pair(sets, tmp_path):
    pairs = check(str(sets["a"]), str(sets["other"]), tmp_path / "out", progress=False)
    assert pairs.empty
    assert pd.read_csv(tmp_path / "out" / "pairs.csv").columns.tolist() == list(PAIR_COLUMNS)
    within = check(str(sets["a"]), None, tmp_path / "within", progress=False)
    assert within.empty  # a folder without splits: every pair inside it was compared


def test_within_a_dataset_config_only_cross_split_pairs(sets, tmp_path):
    data_dir = tmp_path / "data"
    root = data_dir / "Kvasir-SEG"
    shutil.copytree(sets["a"].parent, root)
    planted = plant_copies(sorted((root / "images").glob("*.jpg"))[:6], root / "images", seed=3)
    for copy, original in planted.items():  # a copy needs its mask to be a Kvasir-SEG item
        shutil.copy(root / "masks" / original, root / "masks" / copy)
    reader = KvasirSeg(str(root), "kvasir_seg")
    split_of = {}
    for split, indices in reader.splits().items():
        split_of |= {reader.items[i].image.name: split for i in indices}
    expected = {(f"images/{o}", f"images/{c}") for c, o in planted.items() if split_of[c] != split_of[o]}
    assert expected  # the seeded split puts some copies apart from their originals
    pairs = check(
        "kvasir_seg", None, tmp_path / "out", overrides=[f"paths.data_dir={data_dir}"], progress=False
    )
    found = {tuple(sorted((a, b))) for a, b in zip(pairs["name_a"], pairs["name_b"], strict=True)}
    assert found == {tuple(sorted(p)) for p in expected}
    for row in pairs.itertuples():
        assert (
            row.split_a == split_of[Path(row.name_a).name] != row.split_b == split_of[Path(row.name_b).name]
        )


def test_cli(sets, tmp_path, caplog):
    out = tmp_path / "out"
    assert (
        main([str(sets["a"]), str(sets["other"]), "--out", str(out), "--no-progress", "--hash-size", "8"])
        == 0
    )
    assert (out / "pairs.csv").is_file() and (out / "pairs.png").is_file()
    assert main(["no_such_dataset", "--out", str(out)]) == 2
    assert "neither a folder nor a dataset config" in caplog.text and "kvasir_seg" in caplog.text


@pytest.mark.parametrize("words", [1, 4])
def test_close_pairs_is_the_exact_brute_force(words):
    rng = np.random.default_rng(words)
    a = rng.integers(0, 2**63, (300, words), dtype=np.uint64)
    b = rng.integers(0, 2**63, (200, words), dtype=np.uint64)
    b[:20] = a[:20] ^ (
        np.uint64(1) << rng.integers(0, 63, (20, words)).astype(np.uint64)
    )  # 1 bit per word away
    a[150] = a[10]  # a duplicate inside a
    threshold = 2 * words
    distances = np.array(
        [[sum(bin(int(x) ^ int(y)).count("1") for x, y in zip(p, q, strict=True)) for q in b] for p in a]
    )
    assert (hamming(a[:7], b) == distances[:7]).all()
    i, j, d = close_pairs(a, b, threshold, block=64, workers=2, progress=False)  # several blocks
    expected = np.argwhere(distances <= threshold)
    assert {tuple(x) for x in zip(i, j, strict=True)} == {tuple(x) for x in expected} and len(i) >= 20
    assert (d == distances[i, j]).all() and (np.diff(d) >= 0).all()
    i, j, d = close_pairs(a, None, threshold, block=64, progress=False)
    inside = {(p, q) for p in range(300) for q in range(p + 1, 300) if (a[p] == a[q]).all()}
    within = {(int(p), int(q)) for p, q in zip(i, j, strict=True)}
    assert (10, 150) in within and inside <= within and all(p < q for p, q in within)


def test_bench_finds_its_planted_copies():
    result = bench(n=300, size=128, workers=2)
    assert result["images"] == 303 and result["planted_found"] == result["planted"] == 3
    assert result["images_per_s"] > 0 and result["unreadable"] == 0
