"""Perceptual hashes of decoded images, and the search for pairs of hashes within a Hamming distance.

Hash: ``imagehash.phash`` (the DCT hash: grey, Lanczos resize to (4·hash_size)², the hash_size² lowest
frequencies against their median) of the image's **central 80 %** (each side trimmed by 10 %), 256 bits by
default (``hash_size=16``). Resizing and JPEG recompression barely move the low frequencies; the central region
leaves out what endoscopy frames carry at their edges (black borders, HyperKvasir's position-map overlay, text)
and what a light crop removes. Measured on the synthetic Kvasir-SEG and HyperKvasir sets of
ssl4gie.data.synthetic (tests/leakage/test_leakage.py plants such copies): copies rescaled ×0.5-1.5,
recompressed at JPEG quality 40-75 and cropped by up to 3 % a side land at most 0.20 of the bits apart; distinct
images at least 0.26 apart. The default threshold, 0.22 of the bits (56 of 256), lies between. The 64-bit hash
(``hash_size=8``) is faster to search but separates less (copies ≤ 0.13, distinct ≥ 0.19 there; pass
``--threshold 10`` with it): on 10k random images its default threshold (14 of 64) gave 1,567 false pairs,
the 256-bit hash none.
JPEGs are decoded with PIL's ``draft`` (DCT scaling to at least 4× the hash's input), which makes decoding a
1280×1024 frame several times faster and does not change what the hash sees.

Search: hashes are rows of ``uint64`` words; one block of rows of A is XOR-ed with all of B and the set bits
counted (``numpy.bitwise_count``, one pass per word), blocks spread over threads (numpy releases the GIL). That
is exact and predictable, O(|A|·|B|) word operations. Measured on the 2-core development machine
(``python -m ssl4gie.leakage.bench``): 2.2·10⁷ pairs/s with 256-bit hashes (5.6·10⁷ with 64-bit), so 100k
images against themselves (5·10⁹ pairs) take about 4 minutes there, HyperKvasir-unlabelled against Kvasir-SEG
(10⁸ pairs) seconds. Bucket schemes (multi-index hashing) pay off only for thresholds far below the ~20 % of
the bits that cropped copies need.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from ssl4gie.errors import ConfigError

log = logging.getLogger(__name__)

HASH_SIZES = (8, 16)  # 64 or 256 bits
CENTRE = 0.8  # the central fraction of each side that is hashed
DEFAULT_FRACTION = 0.22  # default threshold: this fraction of the hash's bits


def _imagehash():
    try:
        import imagehash
    except ImportError as e:
        raise ConfigError(
            "the leakage check needs the imagehash package: pip install 'ssl4gie[leakage]' (or pip install imagehash)"
        ) from e
    return imagehash


def image_hash(path: Path, hash_size: int = 16) -> np.ndarray | None:
    """The pHash of one image file as ``hash_size²/64`` uint64 words; None (logged) when it cannot be read."""
    imagehash = _imagehash()
    side = int(4 * hash_size * 4 / CENTRE)  # imagehash resizes to (4·hash_size)²; decode at least 4× that
    try:
        with Image.open(path) as image:
            image.draft("L", (side, side))  # JPEG: DCT-domain downscaling while decoding; others: no-op
            grey = image.convert("L")
        w, h = grey.size
        trim_w, trim_h = round(w * (1 - CENTRE) / 2), round(h * (1 - CENTRE) / 2)
        grey = grey.crop((trim_w, trim_h, w - trim_w, h - trim_h))
        bits = imagehash.phash(grey, hash_size=hash_size).hash
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        log.warning("cannot read image %s (%s); left out of the leakage check", path, e)
        return None
    return np.packbits(bits.reshape(-1)).view(">u8").astype(np.uint64)


def default_threshold(hash_size: int) -> int:
    """:data:`DEFAULT_FRACTION` of the hash's bits (56 of 256, 14 of 64)."""
    return round(DEFAULT_FRACTION * hash_size * hash_size)


def hash_images(
    paths: Sequence[Path],
    hash_size: int = 16,
    workers: int | None = None,
    progress: bool = True,
    desc: str = "hashing",
) -> tuple[np.ndarray, np.ndarray]:
    """``(hashes, ok)``: an ``(n, words)`` uint64 array (zeros where unreadable) and a bool mask of the images
    that were read. Decoding runs in ``workers`` threads (default: one per core, at most 16)."""
    if hash_size not in HASH_SIZES:
        raise ConfigError(f"--hash-size {hash_size}: valid: {', '.join(map(str, HASH_SIZES))}")
    _imagehash()  # fail once, before the threads
    words = hash_size * hash_size // 64
    hashes, ok = np.zeros((len(paths), words), dtype=np.uint64), np.zeros(len(paths), dtype=bool)
    workers = workers or min(16, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(lambda p: image_hash(p, hash_size), paths, chunksize=64)
        for i, value in enumerate(
            tqdm(results, total=len(paths), desc=desc, disable=None if progress else True)
        ):
            if value is not None:
                hashes[i], ok[i] = value, True
    return hashes, ok


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances (len(a) × len(b), uint16) of ``(n, words)`` uint64 hash arrays."""
    return _hamming_words(a, np.ascontiguousarray(b.T))


def _hamming_words(a: np.ndarray, b_words: np.ndarray) -> np.ndarray:
    """:func:`hamming` against ``b`` given word-major (``(words, m)``): one XOR + popcount pass per word into
    reused buffers, three times faster than counting a 3-d ``(n, m, words)`` array and summing its last axis."""
    xor = np.empty((a.shape[0], b_words.shape[1]), dtype=np.uint64)
    bits = np.empty(xor.shape, dtype=np.uint8)
    distance = np.zeros(xor.shape, dtype=np.uint16)
    for w in range(a.shape[1]):
        np.bitwise_xor(a[:, w, None], b_words[w], out=xor)
        np.bitwise_count(xor, out=bits)
        distance += bits
    return distance


def close_pairs(
    a: np.ndarray,
    b: np.ndarray | None,
    threshold: int,
    block: int = 256,
    workers: int | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(i, j, distance)`` of every pair within ``threshold`` bits: i indexes ``a``, j indexes ``b``; with
    ``b=None``, pairs within ``a`` with ``i < j``. Sorted by distance, then i, then j."""
    within = b is None
    b_words = np.ascontiguousarray((a if within else b).T)
    starts = range(0, len(a), block)

    def scan(start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = a[start : start + block]
        first = start if within else 0  # within one set: only the upper triangle
        d = _hamming_words(rows, b_words[:, first:])
        i, j = np.nonzero(d <= threshold)
        if within:
            keep = first + j > start + i
            i, j = i[keep], j[keep]
        return start + i, first + j, d[i, j]

    parts = []
    with ThreadPoolExecutor(workers or min(16, os.cpu_count() or 1)) as pool:
        for part in tqdm(
            pool.map(scan, starts), total=len(starts), desc="pairs", disable=None if progress else True
        ):
            parts.append(part)
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    i, j, d = (np.concatenate(x) for x in zip(*parts, strict=True))
    order = np.lexsort((j, i, d))
    return i[order].astype(np.int64), j[order].astype(np.int64), d[order].astype(np.int64)
