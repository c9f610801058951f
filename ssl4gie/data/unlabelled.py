"""Unlabelled frames for self-supervised pretraining: two readers and the decode-once dataset.

Readers (instantiated from ``conf/dataset/<name>.yaml``), both with ``.root``, ``.name``, ``.files`` (sorted
Paths), ``.decode_size`` and ``len()``:

* :class:`HyperKvasirUnlabelled`: ``<root>/unlabeled-images/images/*.jpg`` (99,417 frames in the release);
* :class:`ImageFolder`: every image under a folder, recursively.

:class:`PretrainImages` turns a reader's files into samples. Two-view methods get ``{"view1", "view2",
"meta"}``, MAE and probes ``{"image", "meta"}`` (the keys come from the view object,
:mod:`ssl4gie.data.ssl_transforms`); with views made on the device (:mod:`ssl4gie.data.device_views`) a sample is
the frame's bytes and the views' parameters, ``{"frame", "crops", "params", "meta"}``.

Full size (``decode_size: null``, the default): crops are cut from the full-size frame, as the official codebases
do: decoded at every access in the loader workers, or, for views made on the device, read as bytes and decoded
there.

Decode once (``decode_size=S``): each frame is decoded once, its longer side shrunk to S keeping
the aspect ratio (smaller frames are kept as they are), zero-padded to S×S and stored with its true (h, w) in
the memory-mapped cache of :mod:`ssl4gie.data.cache`; every step then only crops and augments: the views get
the valid h×w region (a view of the cache, which they copy once into a PIL image), so the padding never
reaches a crop. Random-resized-crop scales are fractions of the frame's area, so the crop semantics are those
of the full-size frame; what differs is the resampling: a crop is cut from the S-px frame, so small crops are
upsampled where the full-size frame would have been downsampled (see :func:`crop_source_pixels`).

A frame that cannot be decoded: while the cache is built it is left out (one warning with the count and the
first files; the list is written to ``skipped.txt`` in the cache folder) so that one bad file among 99,417
does not stop a pretraining run. At full size the cache holds only the frames' sizes, from a one-time reduced
decode of every frame (:func:`check_frame`), for the same purpose. Without a cache (``cache=false``) reading a
bad frame is a DatasetError naming the file.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from ssl4gie.data import cache as decoded_cache
from ssl4gie.data import layouts
from ssl4gie.data.device_views import EncodedFrame, read_encoded
from ssl4gie.data.readers import IMAGE_SUFFIXES, ensure_root, is_hidden, log_hidden, open_image, visible_files
from ssl4gie.errors import ConfigError, DatasetError
from ssl4gie.utils.io import write_text

log = logging.getLogger(__name__)

UNLABELED = "unlabeled-images/images"
HK_LAYOUT = f"<root>/{UNLABELED}/*.jpg"
FOLDER_LAYOUT = f"<root>/**/*{{{','.join(IMAGE_SUFFIXES)}}} (any depth; names starting with '.' are skipped)"
JPEG_SUFFIXES = (".jpg", ".jpeg")
DEFAULT_DECODE_SIZE = 320
#: The one-time resize: PIL's bicubic (antialiased when shrinking), after JPEG DCT-domain downscaling.
RESIZE = "jpeg-draft+bicubic"
#: A view object of :mod:`ssl4gie.data.ssl_transforms`: frame (uint8 3×h×w tensor or PIL RGB image) -> tensors.
Views = Callable[[torch.Tensor | Image.Image], dict[str, torch.Tensor]]


def _write_synthetic(root: str | Path, **synthetic) -> Path:
    from ssl4gie.data.synthetic import write_hyperkvasir_unlabelled

    if "size_range" in synthetic:
        synthetic["size_range"] = tuple(int(s) for s in synthetic["size_range"])
    return write_hyperkvasir_unlabelled(root, **synthetic)


def _check_decode_size(decode_size: int | None) -> int | None:
    if decode_size is None:
        return None
    if isinstance(decode_size, bool) or not isinstance(decode_size, int) or decode_size < 32:
        raise ConfigError(
            f"dataset.decode_size={decode_size!r} is not valid: give the longer side in pixels (an integer >= 32, "
            f"e.g. {DEFAULT_DECODE_SIZE}), or null to decode every frame at full size at every access"
        )
    return decode_size


@dataclass(frozen=True)
class FrameItem:
    name: str  # file stem
    image: Path


class _Frames:
    """What both readers share: the file list, ``len()`` and the decode setting.

    ``items`` and ``splits()`` give the labelled readers' view of the same files (every frame in ``train``), for
    tools that read any dataset config, e.g. the leakage check between pretraining frames and test sets.
    """

    title = "unlabelled frames"

    def __init__(self, name: str, task: str, decode_size: int | None) -> None:
        self.name, self.task = name, task
        self.decode_size = _check_decode_size(decode_size)
        self.root: Path
        self.files: list[Path] = []

    def __len__(self) -> int:
        return len(self.files)

    @property
    def items(self) -> list[FrameItem]:
        return [FrameItem(p.stem, p) for p in self.files]

    def splits(self) -> dict[str, list[int]]:
        """Every frame is a pretraining (``train``) frame."""
        return {"train": list(range(len(self.files)))}

    def _log(self) -> None:
        log.info("%s: %d images in %s", self.name, len(self.files), self.root)


class HyperKvasirUnlabelled(_Frames):
    """The unlabelled HyperKvasir frames: ``<root>/unlabeled-images/images/*.jpg``, sorted by file name.

    ``root`` holds ``unlabeled-images/`` (the unpacked ``hyper-kvasir-unlabeled-images.zip``), as for the
    labelled set. Only ``.jpg``/``.jpeg`` files are read (the release is JPEG only); other visible files are
    ignored with one warning, hidden ones with one info line. ``expected_count``: the release's frame count; a
    different count (a partial unzip) logs a warning. ``synthetic={count, seed[, size_range]}`` writes a
    synthetic tree to a missing ``root`` first.
    """

    title = "HyperKvasir (unlabelled images)"

    def __init__(
        self,
        root: str,
        name: str,
        task: str = "pretrain",
        download: str | None = None,
        synthetic: dict | None = None,
        decode_size: int | None = None,
        expected_count: int | None = None,
        source: str | None = None,
    ) -> None:
        super().__init__(name, task, decode_size)
        root = layouts.find_root(root, "hyperkvasir_unlabelled", self.title)
        self.root = ensure_root(
            root, self.title, HK_LAYOUT, download, synthetic, _write_synthetic, source=source
        )
        folder = self.root / UNLABELED
        if not folder.is_dir():
            found = sorted(p.name for p in self.root.iterdir() if not is_hidden(p))[:8]
            raise DatasetError(
                f"{self.root} does not look like {self.title}: it has no '{UNLABELED}/' folder (found: {found}). "
                f"Expected layout: {HK_LAYOUT}; dataset.root is the folder that holds 'unlabeled-images/'"
            )
        hidden: list[Path] = []
        visible = visible_files(folder, hidden)
        log_hidden(hidden, folder)
        self.files = sorted((p for p in visible if p.suffix.lower() in JPEG_SUFFIXES), key=lambda p: p.name)
        others = sorted(p.name for p in visible if p.suffix.lower() not in JPEG_SUFFIXES)
        if others:
            log.warning("%s: ignored %d file(s) that are not .jpg (e.g. %s)", folder, len(others), others[0])
        if not self.files:
            raise DatasetError(
                f"{folder} has no .jpg images (looked for {', '.join(JPEG_SUFFIXES)}). Expected layout: {HK_LAYOUT}"
            )
        if expected_count is not None and len(self.files) != expected_count and not synthetic:
            log.warning(
                "%s: found %d images in %s, the release has %d (a partial download or unzip?)",
                name,
                len(self.files),
                folder,
                expected_count,
            )
        self._log()


class ImageFolder(_Frames):
    """Every image under ``root`` at any depth (suffixes :data:`~ssl4gie.data.readers.IMAGE_SUFFIXES`,
    case-insensitive), sorted by path relative to ``root``. Files and folders whose name starts with "." are
    skipped (one info line). Symbolic links are followed for files, not for folders.

    ``synthetic={count, seed[, size_range]}`` writes a synthetic HyperKvasir-unlabelled tree to a missing
    ``root`` (its frames are found by the recursive scan).
    """

    title = "image folder"

    def __init__(
        self,
        root: str | None,
        name: str,
        task: str = "pretrain",
        synthetic: dict | None = None,
        decode_size: int | None = None,
    ) -> None:
        super().__init__(name, task, decode_size)
        if root is None or str(root).strip() == "":
            raise ConfigError(
                f"dataset={name} needs a folder of images: pass dataset.root=DIR (every image under DIR, at "
                f"any depth, is read)"
            )
        self.root = ensure_root(root, self.title, FOLDER_LAYOUT, None, synthetic, _write_synthetic)
        hidden: list[Path] = []
        self.files = _walk_images(self.root, hidden)
        log_hidden(hidden, self.root)
        if not self.files:
            raise DatasetError(
                f"{self.root} has no images at any depth (looked for {', '.join(IMAGE_SUFFIXES)}, any case; "
                f"names starting with '.' are skipped). Point dataset.root at a folder of images"
            )
        self._log()


def _walk_images(root: Path, hidden: list[Path]) -> list[Path]:
    """Image files under ``root`` sorted by relative path; hidden files and folders go to ``hidden``."""
    found: list[tuple[str, Path]] = []
    for folder, dirs, _files in os.walk(root):
        here = Path(folder)
        hidden += [here / d for d in dirs if d.startswith(".")]
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # prune: never descend into hidden folders
        for p in visible_files(here, hidden):
            if p.suffix.lower() in IMAGE_SUFFIXES:
                found.append((p.relative_to(root).as_posix(), p))
    return [p for _, p in sorted(found)]


# --- decoding -------------------------------------------------------------------------------------------------


def fitted_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(h, w) with the longer side shrunk to ``size``, the aspect ratio kept (each side at least 1 px).

    A frame whose longer side is at most ``size`` keeps its size: enlarging it would only add a second
    resampling (the crop is resized to the network input anyway).
    """
    scale = min(1.0, size / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def read_resized(path: Path, size: int) -> np.ndarray:
    """Decode ``path`` as RGB with its longer side shrunk to ``size`` (:func:`fitted_size`): uint8 h×w×3.

    JPEGs are first decoded at the smallest 1/2, 1/4 or 1/8 scale that is still at least the target size (libjpeg's
    DCT-domain downscaling, ``Image.draft``: 2–4× faster to decode, and itself a low-pass), then resized bicubic
    (PIL antialiases when shrinking) to the exact size. Greyscale, palette, RGBA (alpha dropped) and CMYK images
    become RGB. A file that cannot be decoded is a DatasetError naming it.
    """
    try:
        with Image.open(path) as image:
            h, w = fitted_size(image.height, image.width, size)
            image.draft("RGB", (w, h))  # a no-op for formats other than JPEG
            image.load()
            rgb = image.convert("RGB") if image.mode != "RGB" else image
            if rgb.size != (w, h):
                rgb = rgb.resize((w, h), Image.Resampling.BICUBIC)
            return np.asarray(rgb)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise DatasetError(f"cannot read image {path}: {e}. Replace or remove the file.") from e


def decode_frame(path: Path, size: int) -> dict[str, np.ndarray]:
    """The cached sample of one file: ``image`` uint8 S×S×3 (the frame top-left, zero padding) and ``hw`` (h, w).

    An unreadable file gives ``hw = (0, 0)`` (and an all-zero image) instead of an error: the cache leaves it out.
    """
    out = {"image": np.zeros((size, size, 3), np.uint8), "hw": np.zeros(2, np.int32)}
    try:
        frame = read_resized(path, size)
    except DatasetError as e:
        log.debug("%s", e)
        return out
    h, w = frame.shape[:2]
    out["image"][:h, :w] = frame
    out["hw"][:] = (h, w)
    return out


#: The full-size frames' one-time check: a JPEG decoded at 1/8 scale in the DCT domain (any truncation or corruption
#: of its data still fails), other formats fully.
CHECK = "jpeg-draft-1/8"


def check_frame(path: Path) -> dict[str, np.ndarray]:
    """``hw``: the full size (h, w) of a frame that decodes, (0, 0) for one that does not (the cache leaves it
    out). The decode is reduced (:data:`CHECK`): a tenth of the full decode's time for a JPEG."""
    out = {"hw": np.zeros(2, np.int32)}
    try:
        with Image.open(path) as image:
            height, width = image.height, image.width
            image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            image.load()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        log.debug("cannot read image %s: %s", path, e)
        return out
    out["hw"][:] = (height, width)
    return out


def crop_source_pixels(height: int, width: int, size: int, scale: float) -> tuple[float, float]:
    """Side (px) of a square crop of area fraction ``scale`` in a ``height``×``width`` frame, in the full-size
    frame and after the one-time resize to ``size`` (longer side): the resolution a crop is cut from."""
    h, w = fitted_size(height, width, size)
    return math.sqrt(scale * height * width), math.sqrt(scale * h * w)


# --- the dataset -----------------------------------------------------------------------------------------------


class PretrainImages(Dataset):
    """Samples of unlabelled frames for pretraining: ``views(frame) | {"meta": {...}}``.

    ``views`` maps a frame — a uint8 3×h×w RGB tensor (cached) or a PIL RGB image (decoded now) — to the sample's
    tensors (:mod:`ssl4gie.data.ssl_transforms`: two-view ``{"view1", "view2"}``, MAE / probe ``{"image"}``);
    ``None`` returns the frame itself as ``{"image"}`` (uint8 3×h×w, variable size: for inspection, not
    batching). ``meta``: ``name`` (file stem), ``index`` (position in ``files``), ``image_path``.

    ``decode_size`` S and ``cache_dir`` given: frames come from the decode-once cache (built on first use under
    ``cache_dir``, named after ``dataset``); frames that could not be decoded are left out, so ``len()`` can be
    smaller than ``len(files)`` (``skipped`` lists them). ``decode_size`` without ``cache_dir``: decoded and
    resized at every access (the cached pixels, without the cache). ``decode_size=None``: the full-size frame
    decoded at every access (the official behaviour), or read undecoded for views that decode on the device
    (``views.encoded``); with ``cache_dir`` the frames that do not decode are found once and left out as above.
    """

    def __init__(
        self,
        files: Sequence[Path],
        views: Views | None,
        decode_size: int | None = None,
        cache_dir: str | os.PathLike | None = None,
        dataset: str = "frames",
        progress: bool = True,
        root: Path | None = None,
    ) -> None:
        self.files = [Path(f) for f in files]
        if not self.files:
            raise DatasetError(f"{dataset}: no images to pretrain on")
        self.views = views
        self.decode_size = _check_decode_size(decode_size)
        self.skipped: list[Path] = []
        self.arrays: dict[str, np.ndarray] | None = None
        self.indices = list(range(len(self.files)))
        if cache_dir is not None:
            self._load_cache(cache_dir, dataset, progress, root)

    def _load_cache(
        self, cache_dir: str | os.PathLike, dataset: str, progress: bool, root: Path | None
    ) -> None:
        """With a decode size, the decode-once cache of the frames' pixels; at full size, a cache of the frames'
        sizes only, checked once by a reduced decode (``check_frame``), so that a file that cannot be decoded is
        left out before training rather than stopping it at some step."""
        size = self.decode_size
        # The cache key hashes file *names*; the relative paths go into the settings so that an image folder
        # whose files move between sub-folders (same names, other order) gets a new cache.
        base = root if root is not None else Path(os.path.commonpath([str(f) for f in self.files]))
        rel = "\n".join(os.path.relpath(f, base) for f in self.files)
        paths = hashlib.sha256(rel.encode()).hexdigest()
        files = self.files
        if size is None:
            settings = {"decode_size": None, "check": CHECK, "paths": paths}
            fields = {"hw": ((2,), "int32")}
            build = lambda i: check_frame(files[i])  # noqa: E731 (looked up at call time, as below)
        else:
            settings = {"decode_size": size, "resize": RESIZE, "paths": paths}
            fields = {"image": ((size, size, 3), "uint8"), "hw": ((2,), "int32")}
            build = lambda i: decode_frame(files[i], size)  # noqa: E731 (looked up at call time: tests count decodes)
        arrays = decoded_cache.load_or_build(
            cache_dir, dataset, files, settings, fields, len(files), build, progress=progress
        )
        self.arrays = arrays if size is not None else None
        hw = np.asarray(arrays["hw"])
        valid = hw.min(axis=1) > 0
        self.indices = np.flatnonzero(valid).tolist()
        self.skipped = [files[i] for i in np.flatnonzero(~valid)]
        if self.skipped:
            folder = Path(arrays["hw"].filename).parent
            listing = folder / "skipped.txt"
            if not listing.exists():
                write_text(listing, "".join(f"{p}\n" for p in self.skipped))
            first = ", ".join(str(p) for p in self.skipped[:3])
            log.warning(
                "%s: %d of %d image(s) could not be decoded and are left out (first: %s%s); full list: %s. "
                "Replace or remove them to use them",
                dataset,
                len(self.skipped),
                len(files),
                first,
                ", ..." if len(self.skipped) > 3 else "",
                listing,
            )
        if not self.indices:
            raise DatasetError(
                f"{dataset}: none of the {len(files)} images could be decoded (e.g. {files[0]}); are they images?"
            )

    def __len__(self) -> int:
        return len(self.indices)

    def _source(self, i: int) -> torch.Tensor | Image.Image | EncodedFrame:
        """Sample ``i``'s frame as the views take it: the valid region of the cached frame as a uint8 3×h×w
        tensor (a view of the read-only cache, never written to), the file decoded now as a PIL RGB image, or,
        for views made on the device (``views.encoded``) at full size, the JPEG's bytes undecoded."""
        index = self.indices[i]
        if self.arrays is not None:
            h, w = (int(v) for v in self.arrays["hw"][index])
            # torch warns that it cannot guard read-only memory; nothing writes to it (the views copy it to PIL)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                array = torch.from_numpy(self.arrays["image"][index])
            return array[:h, :w].permute(2, 0, 1)
        path = self.files[index]
        if self.decode_size is None and getattr(self.views, "encoded", False):
            return read_encoded(path)
        if self.decode_size is None:
            return open_image(path, "RGB")
        return Image.fromarray(read_resized(path, self.decode_size))

    def frame(self, i: int) -> torch.Tensor:
        """Sample ``i``'s frame (before the views) as a uint8 3×h×w tensor of its own (safe to modify)."""
        source = self._source(i)
        if isinstance(source, EncodedFrame):
            source = open_image(self.files[self.indices[i]], "RGB")
        if isinstance(source, Image.Image):
            return torch.from_numpy(np.array(source)).permute(2, 0, 1)
        return source.clone()

    def __getitem__(self, i: int) -> dict:
        sample = {"image": self.frame(i)} if self.views is None else dict(self.views(self._source(i)))
        path = self.files[self.indices[i]]
        sample["meta"] = {"name": path.stem, "index": self.indices[i], "image_path": str(path)}
        return sample


def pretrain_dataset(
    reader: _Frames,
    views: Views | None,
    cache_dir: str | None,
    progress: bool = True,
) -> PretrainImages:
    """The dataset a pretraining task trains on: every frame of ``reader`` through ``views``, decoded as
    ``reader.decode_size`` says (cached under ``cache_dir`` when it is given; ``cache=false`` passes None)."""
    return PretrainImages(
        reader.files,
        views,
        decode_size=reader.decode_size,
        cache_dir=cache_dir,
        dataset=reader.name,
        progress=progress,
        root=reader.root,
    )


# --- speed -----------------------------------------------------------------------------------------------------


def bench_views(
    n: int = 128,
    workers: int = 1,
    batch_size: int = 32,
    files: Sequence[Path] | None = None,
    decode_size: int = DEFAULT_DECODE_SIZE,
    views: Views | None = None,
    size_range: tuple[int, int] = (576, 1280),
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, float]:
    """Two-view samples per second through a DataLoader, from the decode-once cache and from the JPEGs.

    ``files``: the frames to read (default: ``n`` synthetic frames with sides in ``size_range``, roughly the
    release's 720×576 … 1280×1024, written to a temporary folder). ``views`` default: MoCo v3's
    ``byol_views(crop_min=0.2)``. Each path is timed over one pass of ``n`` samples after a first batch (worker
    start-up excluded). Returns ``{"cache_per_worker", "jpeg_per_worker", "cache_total", "jpeg_total",
    "cache_build_s", "speedup", "workers"}`` (per-worker rates divide by ``max(workers, 1)``).
    """
    from ssl4gie.data.collate import collate
    from ssl4gie.data.ssl_transforms import byol_views
    from ssl4gie.utils.seed import seed_worker

    views = views or byol_views(crop_min=0.2)
    with tempfile.TemporaryDirectory(prefix="ssl4gie-bench-views-") as tmp:
        if files is None:
            from ssl4gie.data.synthetic import write_hyperkvasir_unlabelled

            root = write_hyperkvasir_unlabelled(Path(tmp) / "frames", count=n, seed=0, size_range=size_range)
            files = sorted((root / UNLABELED).glob("*.jpg"))
        files = list(files)[:n]
        start = time.perf_counter()
        cached = PretrainImages(
            files, views, decode_size, cache_dir or Path(tmp) / "cache", "bench", progress=False
        )
        build_s = time.perf_counter() - start
        uncached = PretrainImages(files, views, decode_size=None)

        def rate(dataset: Dataset) -> float:
            loader = DataLoader(
                dataset,
                batch_size=batch_size,
                shuffle=True,
                num_workers=workers,
                collate_fn=collate,
                worker_init_fn=seed_worker,
                persistent_workers=False,
            )
            it = iter(loader)
            next(it)  # worker start-up and first batch
            count, t0 = 0, time.perf_counter()
            for batch in it:
                count += len(batch["meta"])
            if count == 0:
                raise ValueError(f"bench_views: n={n} must exceed batch_size={batch_size}")
            return count / (time.perf_counter() - t0)

        cache_rate, jpeg_rate = rate(cached), rate(uncached)
    per = max(workers, 1)
    return {
        "cache_per_worker": cache_rate / per,
        "jpeg_per_worker": jpeg_rate / per,
        "cache_total": cache_rate,
        "jpeg_total": jpeg_rate,
        "cache_build_s": build_s,
        "speedup": cache_rate / jpeg_rate,
        "workers": workers,
    }
