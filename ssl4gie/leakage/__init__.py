"""Leakage check: near-duplicate images between two image sets, or across the splits of one dataset.

``python -m ssl4gie.leakage A [B] [--out DIR] [--threshold T]``; :func:`check` is the same for a notebook.
Hashes and search: :mod:`ssl4gie.leakage.hashing`; what A and B may be: :mod:`ssl4gie.leakage.sources`.

With two sources, every pair (a in A, b in B) within ``threshold`` bits is reported. With one, pairs within
it: across different splits when its splits are known (a dataset config), every pair when not (a folder).
Outputs (atomic): ``pairs.csv`` (``name_a``, ``split_a``, ``name_b``, ``split_b``, ``distance``; names relative
to each source's root; closest first) and ``pairs.png`` (the closest pairs side by side).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from PIL import Image

from ssl4gie.leakage.hashing import close_pairs, default_threshold, hash_images
from ssl4gie.leakage.sources import Source, open_source
from ssl4gie.utils.figures import save_figure
from ssl4gie.utils.io import save_dataframe_csv

log = logging.getLogger(__name__)

PAIR_COLUMNS = ("name_a", "split_a", "name_b", "split_b", "distance")


def find_pairs(
    a: Source,
    b: Source | None = None,
    threshold: int | None = None,
    hash_size: int = 16,
    workers: int | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """The near-duplicate pairs (``PAIR_COLUMNS``, closest first) of ``a`` and ``b``, or within ``a``, within
    ``threshold`` bits (None: :func:`~ssl4gie.leakage.hashing.default_threshold`)."""
    threshold = default_threshold(hash_size) if threshold is None else threshold
    start = time.perf_counter()
    hashes_a, ok_a = hash_images(a.files, hash_size, workers, progress, desc=f"hashing {Path(a.label).name}")
    index_a = np.flatnonzero(ok_a)
    if b is None:
        i, j, d = close_pairs(hashes_a[index_a], None, threshold, workers=workers, progress=progress)
        i, j = index_a[i], index_a[j]
        split_a, split_b = np.array(a.splits)[i], np.array(a.splits)[j]
        if any(a.splits):  # a dataset with splits: duplicates inside one split are no leakage
            keep = split_a != split_b
            i, j, d, split_a, split_b = i[keep], j[keep], d[keep], split_a[keep], split_b[keep]
        other = a
    else:
        hashes_b, ok_b = hash_images(
            b.files, hash_size, workers, progress, desc=f"hashing {Path(b.label).name}"
        )
        index_b = np.flatnonzero(ok_b)
        i, j, d = close_pairs(
            hashes_a[index_a], hashes_b[index_b], threshold, workers=workers, progress=progress
        )
        i, j = index_a[i], index_b[j]
        split_a, split_b = np.array(a.splits)[i], np.array(b.splits)[j]
        other = b
    pairs = pd.DataFrame(
        {
            "name_a": [a.name(k) for k in i],
            "split_a": split_a,
            "name_b": [other.name(k) for k in j],
            "split_b": split_b,
            "distance": d,
        },
        columns=list(PAIR_COLUMNS),
    )
    pairs.attrs.update(
        threshold=threshold,
        bits=hash_size * hash_size,
        seconds=time.perf_counter() - start,
        images=int(len(a.files) + (0 if b is None else len(b.files))),
        unreadable=int((~ok_a).sum() + (0 if b is None else (~ok_b).sum())),
    )
    return pairs


def plot_pairs(pairs: pd.DataFrame, a: Source, b: Source | None, path: Path, most: int = 12) -> Path:
    """The ``most`` closest pairs, two thumbnails each (a left, b right) titled with names, splits and distance."""
    other = a if b is None else b
    shown = pairs.head(most)
    if shown.empty:
        fig, ax = plt.subplots(figsize=(6, 1.5))
        ax.text(0.5, 0.5, "no near-duplicate pair within the threshold", ha="center", va="center")
        ax.axis("off")
        return save_figure(fig, path)
    per_line = 2  # pairs per figure line (4 thumbnails)
    lines = math.ceil(len(shown) / per_line)
    fig, axes = plt.subplots(lines, 2 * per_line, figsize=(3.2 * 2 * per_line, 3.0 * lines), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    files_a = {a.name(k): f for k, f in enumerate(a.files)}
    files_b = {other.name(k): f for k, f in enumerate(other.files)}
    for n, pair in enumerate(shown.itertuples(index=False)):
        for side, (name, split, files) in enumerate(
            ((pair.name_a, pair.split_a, files_a), (pair.name_b, pair.split_b, files_b))
        ):
            ax = axes[n // per_line, 2 * (n % per_line) + side]
            with Image.open(files[name]) as image:
                image.draft("RGB", (256, 256))
                image = image.convert("RGB")
                image.thumbnail((256, 256))
                ax.imshow(np.asarray(image))
            label = f"{name[-28:]}" + (f" [{split}]" if split else "")
            ax.set_title((f"d = {pair.distance}\n" if side == 0 else "\n") + label, fontsize=7)
    bits = pairs.attrs.get("bits", "")
    fig.suptitle(
        f"closest pairs (Hamming distance of {bits}-bit pHash): {a.label} | {other.label}", fontsize=9
    )
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def check(
    a: str,
    b: str | None = None,
    out: str | os.PathLike = "leakage",
    threshold: int | None = None,
    hash_size: int = 16,
    overrides: Sequence[str] = (),
    workers: int | None = None,
    progress: bool = True,
    figure_pairs: int = 12,
) -> pd.DataFrame:
    """Open ``a`` (and ``b``): folders or dataset config names; find the pairs; write ``out/pairs.csv`` and
    ``out/pairs.png``; return the pairs."""
    source_a = open_source(a, overrides)
    source_b = open_source(b, overrides) if b is not None else None
    pairs = find_pairs(source_a, source_b, threshold, hash_size, workers, progress)
    out = Path(out)
    save_dataframe_csv(out / "pairs.csv", pairs)
    plot_pairs(pairs, source_a, source_b, out / "pairs.png", figure_pairs)
    log.info(
        "%d image(s) hashed in %.1f s (%d unreadable): %d pair(s) within %d bits; wrote %s and %s",
        pairs.attrs["images"], pairs.attrs["seconds"], pairs.attrs["unreadable"], len(pairs), pairs.attrs["threshold"],
        out / "pairs.csv", out / "pairs.png",
    )  # fmt: skip
    return pairs


__all__ = ["PAIR_COLUMNS", "check", "find_pairs", "plot_pairs"]
