"""Small synthetic datasets of every reader kind, in their real on-disk layouts, for the split tests.

Written once per test module (``SplitDatasets(tmp_path_factory.mktemp(...))``); readers are then built as often as
a test needs with any split options (scanning a few dozen files is cheap).
"""

from __future__ import annotations

from pathlib import Path

from ssl4gie.data.c3vd import C3VD
from ssl4gie.data.detection import KvasirDetection
from ssl4gie.data.hyperkvasir import HyperKvasir
from ssl4gie.data.hyperkvasir import write_synthetic as write_hyperkvasir_tree
from ssl4gie.data.segmentation import CVCClinicDB, KvasirSeg
from ssl4gie.data.synthetic import C3VD_VIDEOS, write_c3vd, write_cvc_clinicdb, write_kvasir_seg

KINDS = ("kvasir_seg", "cvc_clinicdb", "kvasir_det", "hyperkvasir", "c3vd")
#: Unequal class sizes, one class tiny, so that stratification and the per-class minimum are visible.
ANATOMICAL = {
    "cecum": 20,
    "ileum": 4,
    "retroflex-rectum": 9,
    "pylorus": 16,
    "retroflex-stomach": 11,
    "z-line": 14,
}
ANATOMICAL_ORDER = ["cecum", "ileum", "retroflex-rectum", "pylorus", "retroflex-stomach", "z-line"]
#: C3VD: the study's 4 val/test videos with 2 frames each, the 18 training videos with 1..6 frames.
C3VD_FRAMES = {key: (2 if k < 4 else 1 + (k * 5) % 6) for k, key in enumerate(C3VD_VIDEOS)}


class SplitDatasets:
    """One synthetic copy of each dataset kind under ``base``; :meth:`reader` builds a reader of one kind."""

    def __init__(self, base: Path) -> None:
        self.base = base
        write_kvasir_seg(base / "kvasir", n=40, seed=0, size_range=(32, 40))
        write_cvc_clinicdb(base / "cvc", n=30, seed=0, size=(32, 32))
        # one class of another category too: the official file lists every category, the reader one
        tree = {**ANATOMICAL, "polyps": 5}
        write_hyperkvasir_tree(base / "hk", classes=tree, seed=0, size=(32, 32), official_folds=2)
        write_c3vd(base / "c3vd", videos=C3VD_FRAMES, seed=0, size=(40, 32))

    def reader(self, kind: str, **options):
        """A reader of ``kind`` (one of :data:`KINDS`) with the split ``options`` (reader keyword arguments)."""
        if kind == "kvasir_seg":
            return KvasirSeg(str(self.base / "kvasir"), "kvasir_seg", **options)
        if kind == "kvasir_det":
            return KvasirDetection(str(self.base / "kvasir"), "kvasir_det", **options)
        if kind == "cvc_clinicdb":
            return CVCClinicDB(str(self.base / "cvc"), "cvc_clinicdb", **options)
        if kind == "hyperkvasir":
            return HyperKvasir(
                str(self.base / "hk"), "hyperkvasir_anatomical", "anatomical-landmarks", **options
            )
        if kind == "c3vd":
            return C3VD(str(self.base / "c3vd"), "c3vd", **options)
        raise ValueError(kind)


def videos_of(reader) -> list | None:
    """The grouping of a reader's items (C3VD video codes), None for the kinds without groups."""
    return [frame.video for frame in reader.items] if isinstance(reader, C3VD) else None
