"""Speed of the leakage check: ``python -m ssl4gie.leakage.bench [--images 10000] [--size 128]``.

Writes ``images`` small synthetic JPEGs (random colour fields at two scales, so that unrelated images are unrelated)
plus rescaled, recompressed, cropped copies of 1 % of them, hashes them all in threads, searches the pairs
within the set, and logs one line: images/s for hashing, pairs/s for the search, planted copies found.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ssl4gie.leakage.hashing import close_pairs, default_threshold, hash_images

log = logging.getLogger(__name__)


def near_copy(image: Image.Image, rng: np.random.Generator, crop: float = 0.03) -> Image.Image:
    """A rescaled (×0.5-1.5), cropped (up to ``crop`` of each side) copy; the caller recompresses it."""
    w, h = image.size
    left, top, right, bottom = rng.uniform(0, crop, 4)
    image = image.crop((round(left * w), round(top * h), w - round(right * w), h - round(bottom * h)))
    scale = rng.uniform(0.5, 1.5)
    return image.resize(
        (max(32, round(image.width * scale)), max(32, round(image.height * scale))), Image.BICUBIC
    )


def write_images(folder: Path, n: int, size: int, seed: int = 0) -> list[tuple[Path, Path]]:
    """``n`` random JPEGs in ``folder`` and near copies of 1 % of them; returns (original, copy) pairs."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    planted = []
    for i in range(n):
        coarse = Image.fromarray(rng.uniform(0, 255, (8, 8, 3)).astype(np.uint8)).resize(
            (size, size), Image.BICUBIC
        )
        fine = Image.fromarray(rng.uniform(0, 255, (32, 32, 3)).astype(np.uint8)).resize(
            (size, size), Image.BICUBIC
        )
        image = Image.blend(coarse, fine, 0.4)  # structure at two scales, as tissue folds and vessels
        path = folder / f"{i:06d}.jpg"
        image.save(path, quality=90)
        if i % 100 == 0:
            copy = folder / f"{i:06d}_copy.jpg"
            near_copy(image, rng).save(copy, quality=int(rng.integers(40, 76)))
            planted.append((path, copy))
    return planted


def bench(n: int = 10_000, size: int = 128, hash_size: int = 16, workers: int | None = None) -> dict:
    """Measure the check on ``n`` synthetic images (plus 1 % planted copies); returns the numbers it logs."""
    with tempfile.TemporaryDirectory(prefix="ssl4gie-leakage-bench-") as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        planted = write_images(folder, n, size)
        written = time.perf_counter() - start
        files = sorted(folder.glob("*.jpg"))
        start = time.perf_counter()
        hashes, ok = hash_images(files, hash_size, workers, progress=False)
        hashed = time.perf_counter() - start
        start = time.perf_counter()
        i, j, _ = close_pairs(hashes, None, default_threshold(hash_size), workers=workers, progress=False)
        searched = time.perf_counter() - start
        found = {(files[a].name, files[b].name) for a, b in zip(i, j, strict=True)}
        hits = sum((o.name, c.name) in found or (c.name, o.name) in found for o, c in planted)
    images = len(files)
    result = {
        "images": images,
        "size": size,
        "hash_bits": hash_size * hash_size,
        "write_s": round(written, 2),
        "hash_s": round(hashed, 2),
        "hash_images_per_s": round(images / hashed, 1),
        "search_s": round(searched, 2),
        "search_pairs_per_s": round(images * (images - 1) / 2 / searched),
        "images_per_s": round(images / (hashed + searched), 1),
        "pairs_found": len(found),
        "planted": len(planted),
        "planted_found": hits,
        "unreadable": int((~ok).sum()),
    }
    log.info(
        "leakage check: %d images (%d², %d-bit pHash): hashing %.0f images/s, search %.2g pairs/s, "
        "total %.0f images/s; %d/%d planted copies found, %d pair(s) in all",
        images, size, result["hash_bits"], result["hash_images_per_s"], result["search_pairs_per_s"],
        result["images_per_s"], hits, len(planted), len(found),
    )  # fmt: skip
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m ssl4gie.leakage.bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=128, help="side of the synthetic images in pixels")
    parser.add_argument("--hash-size", type=int, default=16, choices=(8, 16))
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    return bench(args.images, args.size, args.hash_size, args.workers)


if __name__ == "__main__":
    main()
