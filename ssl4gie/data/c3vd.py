"""C3VD (monocular depth): the reader of the on-disk layout, the split by video, and the torch Dataset.

Layouts accepted: the study's early release ``<root>/<sequence>_under_review/<code>/`` (the folders its
``Depth_estimation/train_depth.py`` names), the later Google Drive release, one folder per video such as
``<root>/cecum_t1_a/`` (with or without ``_under_review``), and the Dataverse release's names
(``<root>/c1_cecum_t1_v1/``, video code ``c1v1``). Frame names are zero-padded (``0005_color.png``, since May
2023) or not (``5_color.png``). A video folder is any folder at depth 1 or 2 under the root that holds
``NNNN_color.png`` frames; it is identified by its sequence name or video code through the split table
``c3vd_splits.yaml`` (data, not code); names are matched by :func:`ssl4gie.data.layouts.c3vd_video_keys`. A
folder the table does not know is reported and left out (``dataset.unknown_videos: skip``) or is an error
(``error``); it is never put into training. Depth files are 16-bit TIFFs: 0..65535 encodes 0..``max_depth_mm``
(100 mm), 0 = no depth. One constant, 65535, turns them into [0, 1] everywhere (training, validation, test;
the study used 65536 at test, in ``Depth_estimation/Data/dataset.py``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from ssl4gie.data import cache as decoded_cache
from ssl4gie.data import layouts
from ssl4gie.data.readers import Reader, log_hidden, open_image, visible_files
from ssl4gie.data.transforms import normalize, photometric
from ssl4gie.errors import ConfigError, DatasetError

log = logging.getLogger(__name__)

DEPTH_SCALE = 65535  # the 16-bit code of max_depth_mm; depth / DEPTH_SCALE is the network's [0, 1] target
STUDY_TABLE = Path(__file__).with_name("c3vd_splits.yaml")
SPLITS = ("train", "val", "test")
UNKNOWN_VIDEOS = ("skip", "error")
COLOR, DEPTH = "_color.png", "_depth.tiff"
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # "I" (32-bit int) only if values fit 16 bits
_MODE_BITS = {
    "1": "1-bit",
    "L": "8-bit",
    "LA": "8-bit",
    "P": "8-bit palette",
    "RGB": "8-bit RGB",
    "RGBA": "8-bit RGBA",
    "F": "32-bit float",
}
LAYOUT = (
    "<root>/<sequence>_under_review/<video code>/NNNN_color.png + NNNN_depth.tiff (the study's release), "
    "<root>/<sequence>/NNNN_color.png + NNNN_depth.tiff (e.g. <root>/cecum_t1_a/) or "
    "<root>/<code prefix>_<sequence>_<video>/... (the Dataverse release, e.g. <root>/c1_cecum_t1_v1/)"
)


@dataclass(frozen=True)
class VideoEntry:
    """One row of the split table."""

    sequence: str  # e.g. "trans_t2_b"
    code: str  # e.g. "t2v2"
    split: str  # train | val | test


def load_split_table(split: str) -> list[VideoEntry]:
    """The rows of the split table: ``"study"`` (the built-in table) or a path to a YAML file of the same form."""
    path = STUDY_TABLE if split == "study" else Path(split).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"dataset.split={split} is neither study, test, all nor an existing YAML split table "
            f"(see {STUDY_TABLE.name} beside ssl4gie/data/c3vd.py for the form)"
        )
    rows = (yaml.safe_load(path.read_text()) or {}).get("videos")
    if not isinstance(rows, list) or not rows:
        raise ConfigError(f"split table {path} needs a non-empty list 'videos' of {{sequence, code, split}}")
    entries, seen = [], {}
    for row in rows:
        if (
            not isinstance(row, dict)
            or set(row) != {"sequence", "code", "split"}
            or row["split"] not in SPLITS
        ):
            raise ConfigError(
                f"split table {path}: row {row} must have exactly the keys sequence, code, split "
                f"with split one of {', '.join(SPLITS)}"
            )
        entry = VideoEntry(str(row["sequence"]).lower(), str(row["code"]).lower(), row["split"])
        for key in (entry.sequence, entry.code):
            if key in seen:
                raise ConfigError(f"split table {path}: '{key}' names two rows ({seen[key]} and {entry})")
            seen[key] = entry
        entries.append(entry)
    return entries


@dataclass(frozen=True)
class PadGeometry:
    """Where a W×H frame sits in its black square canvas (the study's
    ``make_square`` in ``Depth_estimation/Data/dataset.py``): side max(W, H), offset int((S − W)/2)."""

    width: int
    height: int

    @property
    def side(self) -> int:
        return max(self.width, self.height)

    @property
    def left(self) -> int:
        return (self.side - self.width) // 2

    @property
    def top(self) -> int:
        return (self.side - self.height) // 2

    def pad(self, array: np.ndarray) -> np.ndarray:
        """H×W(×C) array -> S×S(×C) canvas of zeros with the array at (left, top)."""
        canvas = np.zeros((self.side, self.side, *array.shape[2:]), dtype=array.dtype)
        canvas[self.top : self.top + self.height, self.left : self.left + self.width] = array
        return canvas

    def crop(self, square: torch.Tensor) -> torch.Tensor:
        """…×S×S -> …×H×W: the frame's part of a canvas at native resolution."""
        if tuple(square.shape[-2:]) != (self.side, self.side):
            raise ValueError(f"expected a {self.side}×{self.side} canvas, got {tuple(square.shape[-2:])}")
        return square[..., self.top : self.top + self.height, self.left : self.left + self.width]

    def to_native(self, square: torch.Tensor) -> torch.Tensor:
        """A network-resolution map (…×s×s) resized to the canvas side (bilinear, as the study's
        ``eval_depth.py``), cropped to H×W."""
        lead = square.shape[:-2]
        flat = square.reshape(-1, 1, *square.shape[-2:]).float()
        big = F.interpolate(flat, size=(self.side, self.side), mode="bilinear", align_corners=False)
        return self.crop(big).reshape(*lead, self.height, self.width)


@dataclass(frozen=True)
class DepthFrame:
    name: str  # "<code>_<NNNN>" (zero-padded, as the May 2023 release names frames), unique over the dataset
    video: str  # video code
    number: int
    image: Path
    depth: Path


def read_depth(path: Path) -> np.ndarray:
    """The 16-bit depth code of a C3VD depth file as an H×W uint16 array; any other encoding is a DatasetError."""
    image = open_image(path, "")  # no conversion: the mode tells whether the file is really 16-bit
    if image.mode not in SIXTEEN_BIT_MODES:
        kind = _MODE_BITS.get(image.mode, "not 16-bit")
        raise DatasetError(
            f"depth file {path} has PIL mode '{image.mode}' ({kind}); expected a single-channel 16-bit TIFF "
            "(mode I;16, 0..65535 = 0..100 mm). Use the original C3VD depth files, not converted or preview copies"
        )
    depth = np.asarray(image)
    if image.mode == "I" and (depth.min() < 0 or depth.max() > DEPTH_SCALE):
        raise DatasetError(
            f"depth file {path} holds values outside 0..65535 (mode I): not C3VD's 16-bit encoding"
        )
    return depth.astype(np.uint16)


def decode_frame(frame: DepthFrame, size: int) -> dict[str, np.ndarray]:
    """Colour (size²×3 uint8, bicubic) and depth code (size² uint16, nearest) after padding to a black square."""
    image = open_image(frame.image, "RGB")
    depth = read_depth(frame.depth)
    if depth.shape != (image.height, image.width):
        raise DatasetError(
            f"depth file {frame.depth} is {depth.shape[1]}×{depth.shape[0]} but its colour frame "
            f"{frame.image} is {image.width}×{image.height}: they must have one size"
        )
    geometry = PadGeometry(image.width, image.height)
    canvas = Image.fromarray(geometry.pad(np.asarray(image)))
    depth_canvas = Image.fromarray(geometry.pad(depth))  # mode I;16
    return {
        "image": np.asarray(canvas.resize((size, size), Image.Resampling.BICUBIC)),
        # nearest: averaging depths would invent values across edges and with the invalid 0s
        "depth": np.asarray(depth_canvas.resize((size, size), Image.Resampling.NEAREST), dtype=np.uint16),
    }


def _holds_frames(folder: Path) -> bool:
    return any(p.name.endswith(COLOR) for p in visible_files(folder))


class C3VD(Reader):
    """Reader of C3VD's registered videos: ``items`` (frames in split-table order) and ``splits()``.

    Args mirror the other readers (``root``, ``name``, ``task``, ``split``, ``download``, ``synthetic``), plus
    ``unknown_videos`` (``skip``: warn and leave out video folders the table does not know; ``error``: refuse)
    and ``max_depth_mm`` (the depth that the 16-bit code 65535 stands for). ``train_fraction``, ``fraction_seed``,
    ``folds``, ``fold``, ``fold_seed``: a label fraction and k-fold cross-validation, by whole videos
    (:class:`ssl4gie.data.splits.SplitOptions`).
    """

    title = "C3VD"
    layout = LAYOUT
    layout_name = "c3vd"
    demo = "demo_depth"

    def __init__(
        self,
        root: str,
        name: str = "c3vd",
        task: str = "depth",
        split: str = "study",
        unknown_videos: str = "skip",
        max_depth_mm: float = 100.0,
        **options: Any,
    ) -> None:
        if unknown_videos not in UNKNOWN_VIDEOS:
            raise ConfigError(
                f"dataset.unknown_videos={unknown_videos} is not valid; valid: {', '.join(UNKNOWN_VIDEOS)}"
            )
        # all / test: the study's table decides which videos exist; ``splits()`` then regroups them
        self.table = load_split_table("study" if split in ("all", "test") else split)
        self.max_depth_mm = float(max_depth_mm)
        super().__init__(root, name, task, split, **options)
        self.split_of = {e.code: e.split for e in self.table}  # video code -> split
        self.videos = self._find_videos(unknown_videos)
        hidden: list[Path] = []
        self.items = [
            frame for entry in self.table if entry in self.videos for frame in self._frames(entry, hidden)
        ]
        log_hidden(hidden, self.root)
        counts = {s: sum(1 for f in self.items if self.split_of[f.video] == s) for s in SPLITS}
        log.info(
            "C3VD at %s: %d videos, %d frames (train/val/test %d/%d/%d)",
            self.root,
            len(self.videos),
            len(self.items),
            counts["train"],
            counts["val"],
            counts["test"],
        )

    @staticmethod
    def synthetic_writer():
        from ssl4gie.data.synthetic import write_c3vd

        return write_c3vd

    def _find_videos(self, unknown_videos: str) -> dict[VideoEntry, Path]:
        candidates = layouts.c3vd_video_folders(self.root)
        if not candidates:
            hint = (
                " (the root itself holds frames: pass the folder above it)"
                if _holds_frames(self.root)
                else ""
            )
            raise DatasetError(
                f"no C3VD video folders under {self.root}: no folder at depth 1 or 2 holds "
                f"*{COLOR} frames{hint}. Expected layout: {LAYOUT}"
            )
        videos: dict[VideoEntry, Path] = {}
        unknown = []
        for folder in candidates:
            entry = layouts.identify_c3vd_video(folder, self.root, self.table)
            if entry is None:
                unknown.append(folder.relative_to(self.root).as_posix())
            elif entry in videos:
                raise DatasetError(
                    f"{videos[entry]} and {folder} are both video {entry.code} ({entry.sequence}); "
                    "keep one of them"
                )
            else:
                videos[entry] = folder
        if unknown:
            message = (
                f"{len(unknown)} video folder(s) under {self.root} are not in the split table "
                f"(dataset.split) or match two of its videos: {unknown}"
            )
            if unknown_videos == "error":
                raise DatasetError(
                    f"{message}. Add them to a split table or pass dataset.unknown_videos=skip"
                )
            log.warning("%s; they are left out of every split (dataset.unknown_videos=skip)", message)
        missing = [e.code for e in self.table if e not in videos]
        if missing:
            log.warning("C3VD videos of the split table not found under %s: %s", self.root, missing)
        return videos

    def _frames(self, entry: VideoEntry, hidden: list[Path]) -> list[DepthFrame]:
        """The video's frames, numerically; hidden files (macOS ``._*`` copies of frames) go to ``hidden``."""
        folder = self.videos[entry]
        frames = []
        for image in visible_files(folder, hidden):
            if not image.name.endswith(COLOR):
                continue
            stem = image.name.removesuffix(COLOR)
            if not stem.isdigit():
                raise DatasetError(f"colour frame {image} is not named NNNN{COLOR} (a frame number)")
            depth = folder / f"{stem}{DEPTH}"
            if not depth.is_file():
                raise DatasetError(f"colour frame {image} has no depth file: expected {depth}")
            # named as the zero-padded release names it, whichever release's names the files have
            frames.append(DepthFrame(f"{entry.code}_{int(stem):04d}", entry.code, int(stem), image, depth))
        frames.sort(key=lambda f: (f.number, f.image.name))  # numerically: 2 before 10 without zero padding
        # A quick look at one depth file per video fails an 8-bit copy before any model is built.
        read_depth(frames[0].depth)
        return frames

    def split_groups(self) -> dict[str, Any]:
        """Folds and label fractions take whole videos."""
        return {"groups": [frame.video for frame in self.items]}

    def base_split(self) -> dict[str, list[int]]:
        """Each split in split-table order, frames numerically; ``dataset.split=all``: every frame in ``test``."""
        if self.split_name == "all":
            return {"train": [], "val": [], "test": list(range(len(self.items)))}
        return {s: [i for i, f in enumerate(self.items) if self.split_of[f.video] == s] for s in SPLITS}


class DepthTrainTransform:
    """The study's depth augmentation (``Depth_estimation/Data/dataloaders.py``): ColorJitter(0.4, 0.5, 0.25,
    0.01) on the image (no blur), normalise, joint h/v flips (p = 0.5)."""

    def __init__(self) -> None:
        self.photometric = photometric(blur=False)
        self.flips = v2.Compose([v2.RandomHorizontalFlip(0.5), v2.RandomVerticalFlip(0.5)])

    def __call__(self, image: torch.Tensor, depth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 3×H×W image, float 1×H×W depth -> normalised image and depth, flipped together."""
        image = normalize(self.photometric(image))
        image, depth = self.flips(tv_tensors.Image(image), tv_tensors.Mask(depth))
        return image.as_subclass(torch.Tensor), depth.as_subclass(torch.Tensor)


class C3VDDataset(Dataset):
    """Samples ``{"image", "target", "meta"}`` of one split (+ ``"target_native"`` where ``native``).

    ``image``: float 3×S×S, ImageNet-normalised (uint8, not augmented yet, with ``device_augment``); ``target``: float 1×S×S depth / 65535 in [0, 1], 0 = invalid or
    padding; ``target_native``: float H×W depth / 65535 at the file's resolution, and ``meta["geometry"]`` the
    frame's :class:`PadGeometry`, to score predictions at native resolution (as the study's
    ``eval_depth.py``).
    """

    def __init__(
        self,
        reader: C3VD,
        indices: list[int],
        size: int,
        train: bool,
        native: bool,
        cache_dir: str | None,
        progress: bool = True,
        device_augment: bool = False,
    ) -> None:
        """``device_augment``: leave training samples un-augmented uint8 (the task augments them on the GPU)."""
        self.items = [reader.items[i] for i in indices]
        self.indices, self.size, self.native = list(indices), size, native
        self.transform = DepthTrainTransform() if train and not device_augment else None
        self.device_augment = train and device_augment
        self.samples = decoded_cache.DecodedSamples(
            reader.items, size, decode_frame, cache_dir, reader.name,
            files=[p for f in reader.items for p in (f.image, f.depth)],
            settings={"size": size, "canvas": "black square", "image": "bicubic", "depth": "nearest"},
            fields={"image": ((size, size, 3), "uint8"), "depth": ((size, size), "uint16")},
            progress=progress,
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        frame = self.items[i]
        arrays = self.samples[self.indices[i]]
        image = torch.from_numpy(np.array(arrays["image"])).permute(2, 0, 1)  # copy: the cache is read-only
        depth = torch.from_numpy(np.asarray(arrays["depth"], dtype=np.float32) / DEPTH_SCALE)[None]
        if self.transform is not None:
            image, depth = self.transform(image, depth)
        elif not self.device_augment:
            image = normalize(image)
        meta = {
            "name": frame.name,
            "video": frame.video,
            "index": self.indices[i],
            "image_path": str(frame.image),
            "depth_path": str(frame.depth),
        }
        sample = {"image": image, "target": depth, "meta": meta}
        if self.native:
            native = read_depth(frame.depth)
            meta["geometry"] = PadGeometry(native.shape[1], native.shape[0])
            sample["target_native"] = torch.from_numpy(native.astype(np.float32) / DEPTH_SCALE)
        return sample
