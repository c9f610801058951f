"""``python -m ssl4gie.leakage A [B] [--out DIR] [--threshold T] [--hash-size 8|16] [--set KEY=VALUE ...]``."""

from __future__ import annotations

import argparse
import logging

from ssl4gie.errors import Ssl4gieError
from ssl4gie.leakage import check
from ssl4gie.leakage.hashing import DEFAULT_FRACTION, HASH_SIZES

log = logging.getLogger("ssl4gie.leakage")


def main(argv: list[str] | None = None) -> int:
    """Command line: 0 when pairs.csv and pairs.png were written (with or without pairs), 2 on a user error."""
    parser = argparse.ArgumentParser(
        prog="python -m ssl4gie.leakage",
        description="Near-duplicate images (resized, recompressed, lightly cropped) between two image sets, or "
        "across the splits of one dataset, by perceptual hash.",
    )
    parser.add_argument(
        "a", help="a folder of images (searched recursively) or a dataset config name (conf/dataset)"
    )
    parser.add_argument(
        "b", nargs="?", default=None, help="the second set; omitted: pairs within A across splits"
    )
    parser.add_argument("--out", default="leakage", help="output folder for pairs.csv and pairs.png")
    parser.add_argument(
        "--threshold",
        type=int,
        default=None,
        help=f"largest Hamming distance reported, in bits (default {DEFAULT_FRACTION:g} of the bits: 56 of 256)",
    )
    parser.add_argument(
        "--hash-size",
        type=int,
        default=16,
        choices=HASH_SIZES,
        help="16: 256-bit pHash (default); 8: 64 bits",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for dataset names, e.g. paths.data_dir=/data or dataset.split=official",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="decoding threads (default: one per core, ≤ 16)"
    )
    parser.add_argument("--figure-pairs", type=int, default=12, help="pairs drawn in pairs.png (default 12)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.threshold is not None and args.threshold < 0:
        parser.error("--threshold must be at least 0")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        check(
            args.a, args.b, args.out, args.threshold, args.hash_size, args.set, args.workers,
            not args.no_progress, args.figure_pairs,
        )  # fmt: skip
    except Ssl4gieError as e:
        log.error("%s", e)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
