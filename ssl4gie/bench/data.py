"""The benchmarks' synthetic data, in the real layouts (:mod:`ssl4gie.data.synthetic`), written once and reused."""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from ssl4gie.data import synthetic

log = logging.getLogger("ssl4gie.bench")

ANATOMICAL = [c for c, (_, cat) in synthetic.HYPERKVASIR_CLASSES.items() if cat == "anatomical-landmarks"]

TRAIN_VIDEOS = synthetic.C3VD_VIDEOS[4:]  # the first 4 are the test and validation videos


def data_specs(tiny: bool) -> dict[str, tuple]:
    """Synthetic datasets per data folder: (writer, its keyword arguments).

    Few distinct files (about 48 training samples each), cycled by the benchmark. Kvasir-SEG-sized images (500–1350
    px) matter for detection, which decodes them at native size in every step; the others are decoded once into
    the 224² cache, so their source size only changes the one-time cache build (C3VD frames are written at half
    the real 1350×1080 to save time).
    """
    if tiny:
        return {
            "kvasir": (synthetic.write_kvasir_seg, {"n": 16, "size_range": (64, 112)}),
            "hyperkvasir": (synthetic.write_hyperkvasir, {"classes": dict.fromkeys(ANATOMICAL, 3)}),
            "c3vd": (synthetic.write_c3vd, {"videos": dict.fromkeys(TRAIN_VIDEOS[:2], 4), "size": (40, 32)}),
        }
    return {
        "kvasir": (synthetic.write_kvasir_seg, {"n": 60, "size_range": (500, 1350)}),
        "hyperkvasir": (
            synthetic.write_hyperkvasir,
            {"classes": dict.fromkeys(ANATOMICAL, 10), "size": (720, 576)},
        ),
        "c3vd": (synthetic.write_c3vd, {"videos": dict.fromkeys(TRAIN_VIDEOS[:4], 12), "size": (675, 540)}),
    }


def write_data(work: Path, names: set[str], tiny: bool) -> dict[str, Path]:
    """The folder of each synthetic dataset in ``names`` under ``work``, written (in parallel) where missing."""
    specs = data_specs(tiny)
    roots = {name: work / f"{name}{'-tiny' if tiny else ''}" for name in names}
    missing = [name for name, root in roots.items() if not root.exists()]
    if missing:
        log.info("writing synthetic data once: %s (under %s)", ", ".join(missing), work)
        work.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with ProcessPoolExecutor(max_workers=min(len(missing), os.cpu_count() or 1)) as pool:
            futures = [pool.submit(specs[n][0], roots[n], seed=0, **specs[n][1]) for n in missing]
            for future in futures:
                future.result()
        log.info("synthetic data written in %.1f s", time.perf_counter() - start)
    return roots
