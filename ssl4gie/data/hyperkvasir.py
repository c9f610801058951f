"""HyperKvasir labelled images (anatomical landmarks, pathological findings): reader and torch Dataset.

Layout (SPEC 3.1): ``<root>/labeled-images/<tract>/<category>/<class>/*.jpg``. The class list, the class ids
and the image order are the study's, because the split indices (SPEC 2.3) refer to positions in that order:

* tracts, then the category folder inside each tract, then class folders, each sorted as the study sorts them:
  plain string order of the folder paths *ending with "/"*, so ``barretts-short-segment/`` comes before
  ``barretts/`` ('-' < '/'); class ids 0, 1, 2, ... in that traversal order;
* inside a class, only lower-case ``*.jpg`` files (the study's glob), sorted by name; classes concatenated.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from ssl4gie.data import cache as decoded_cache
from ssl4gie.data.readers import ensure_root, is_hidden, log_hidden, open_image, require_dir, visible_files
from ssl4gie.data.splits import choose_split
from ssl4gie.data.transforms import normalize, photometric
from ssl4gie.errors import ConfigError, DatasetError

log = logging.getLogger(__name__)

LABELED = "labeled-images"
CATEGORIES = (
    "anatomical-landmarks",
    "pathological-findings",
    "quality-of-mucosal-views",
    "therapeutic-interventions",
)
LAYOUT = f"<root>/{LABELED}/<tract>/<category>/<class>/*.jpg"


def study_order(names: Iterable[str]) -> list[str]:
    """Folder names in the study's order: string order of the names with a trailing "/" (SPEC 3.1)."""
    return sorted(names, key=lambda name: name + "/")


def _subfolders(folder: Path) -> list[str]:
    """Visible sub-folder names of ``folder`` in the study's order (a glob ``*/`` skips hidden ones)."""
    return study_order(p.name for p in folder.iterdir() if p.is_dir() and not is_hidden(p))


@dataclass(frozen=True)
class HyperKvasirItem:
    name: str  # file stem (a UUID in the release)
    image: Path
    class_id: int
    class_name: str


class HyperKvasir:
    """The labelled images of one HyperKvasir category as the study reads them.

    ``items`` lists every image in the study's order; ``class_names[i]`` is the name of class id ``i``.
    ``classes`` (optional) is the class list the config expects, in order: a tree whose class folders differ
    (a partial download, another release) is a DatasetError that names the missing and unexpected folders,
    instead of a silently different task. An empty class folder is an error too (the release has none, and a
    class without images cannot be learnt or scored). ``study_size``: the image count of the release the
    study's split indices were made for; another count only logs a warning (the split is then still the
    study's algorithm, but not the published indices).
    """

    title = "HyperKvasir (labelled images)"

    def __init__(
        self,
        root: str,
        name: str,
        category: str,
        task: str = "classification",
        split: str = "study",
        download: str | None = None,
        synthetic: dict | None = None,
        classes: Sequence[str] | None = None,
        study_size: int | None = None,
    ) -> None:
        if category not in CATEGORIES:
            raise ConfigError(f"dataset.category={category} is not valid; valid: {', '.join(CATEGORIES)}")
        self.name, self.task, self.split_name, self.category = name, task, split, category
        self.download = download
        self.root = ensure_root(
            root, self.title, LAYOUT, download, synthetic, write_synthetic, demo="demo_classification"
        )
        self.class_names, self.items = self._scan()
        if classes is not None:
            self._check_classes([str(c) for c in classes])
        if study_size is not None and len(self.items) != study_size and not synthetic:
            log.warning(
                "%s: found %d images in %s, the release the study used has %d: the split is the study's "
                "algorithm but not its published indices",
                name,
                len(self.items),
                self.root / LABELED,
                study_size,
            )
        log.info("%s: %d classes, %d images in %s", name, len(self.class_names), len(self.items), self.root)

    @property
    def labels(self) -> list[int]:
        """Class id of every item, in item order."""
        return [item.class_id for item in self.items]

    def _scan(self) -> tuple[list[str], list[HyperKvasirItem]]:
        labeled = require_dir(self.root, LABELED, self.title, LAYOUT)
        tracts = [labeled / t for t in _subfolders(labeled) if (labeled / t / self.category).is_dir()]
        if not tracts:
            raise DatasetError(
                f"no '{self.category}/' folder in any tract folder of {labeled} (found tracts: "
                f"{_subfolders(labeled)}). Expected layout: {LAYOUT}"
            )
        class_names: list[str] = []
        items: list[HyperKvasirItem] = []
        hidden: list[Path] = []
        for tract in tracts:
            for class_name in _subfolders(tract / self.category):
                folder = tract / self.category / class_name
                if class_name in class_names:
                    raise DatasetError(
                        f"class '{class_name}' appears twice under {labeled}/*/{self.category}/ (second: "
                        f"{folder}); class folder names must be unique within a category"
                    )
                images, skipped = _jpg_files(folder, hidden)
                if skipped:
                    log.warning(
                        "%s: ignored %d file(s) that are not lower-case .jpg (e.g. %s), as the study does",
                        folder,
                        len(skipped),
                        skipped[0],
                    )
                if not images:
                    raise DatasetError(
                        f"class folder {folder} has no .jpg images (only lower-case *.jpg files are read, as "
                        f"in the study). Restore its images or remove the folder (and the class from "
                        f"dataset.classes)"
                    )
                class_id = len(class_names)
                class_names.append(class_name)
                items += [HyperKvasirItem(p.stem, p, class_id, class_name) for p in images]
        log_hidden(hidden, labeled)
        return class_names, items

    def _check_classes(self, expected: list[str]) -> None:
        if self.class_names == expected:
            return
        where = f"{self.root / LABELED}/<tract>/{self.category}/"
        missing = [c for c in expected if c not in self.class_names]
        extra = [c for c in self.class_names if c not in expected]
        if missing or extra:
            raise DatasetError(
                f"{self.name}: class folders under {where} do not match dataset.classes: missing {missing}, "
                f"unexpected {extra}. Download the complete release or set dataset.classes to the classes "
                f"you have"
            )
        raise DatasetError(
            f"{self.name}: dataset.classes lists the classes in the order {expected}, but the study's order "
            f"(sorted folder paths) is {self.class_names}; fix the order in the dataset config"
        )

    def splits(self) -> dict[str, list[int]]:
        """Index lists into ``items`` for train/val/test of ``dataset.split`` (see :func:`choose_split`)."""
        return choose_split(self.split_name, len(self.items))


def _jpg_files(folder: Path, hidden: list[Path]) -> tuple[list[Path], list[str]]:
    """(lower-case ``*.jpg`` files sorted by name, names of the other visible files); hidden files go to ``hidden``."""
    images, skipped = [], []
    for p in visible_files(folder, hidden):
        (images if p.name.endswith(".jpg") else skipped).append(p)
    return sorted(images, key=lambda p: p.name), sorted(p.name for p in skipped)


def write_synthetic(
    root: str | Path,
    per_class: int | None = None,
    classes: dict[str, int] | None = None,
    seed: int = 0,
    size: Sequence[int] = (96, 80),
) -> Path:
    """``dataset.synthetic`` for HyperKvasir: ``{per_class: N}`` images for every class the writer knows (all
    four categories, so both datasets can share one tree), or an explicit ``{classes: {name: count}}``."""
    from ssl4gie.data.synthetic import HYPERKVASIR_CLASSES, write_hyperkvasir

    if per_class is not None and classes is not None:
        raise ConfigError("dataset.synthetic: give per_class or classes, not both")
    if per_class is not None:
        classes = dict.fromkeys(HYPERKVASIR_CLASSES, int(per_class))
    counts = {str(k): int(v) for k, v in classes.items()} if classes is not None else None
    return write_hyperkvasir(root, counts, seed=seed, size=tuple(int(s) for s in size))


def decode(path: Path, size: int) -> np.ndarray:
    """S×S×3 uint8 RGB, resized as the study: bicubic, aspect ratio ignored (SPEC 3.1)."""
    return np.asarray(open_image(path, "RGB").resize((size, size), Image.Resampling.BICUBIC))


class ClassificationTrainTransform:
    """SPEC 3.1: colour jitter → blur → horizontal/vertical flips → rotation U(−180°, 180°), then normalise.

    The rotation uses nearest interpolation without expansion and fills the corners black (0 before
    normalisation, as the study rotates the PIL image before ``ToTensor``).
    """

    def __init__(self) -> None:
        self.ops = v2.Compose(
            [
                photometric(blur=True),
                v2.RandomHorizontalFlip(0.5),
                v2.RandomVerticalFlip(0.5),
                v2.RandomRotation(180.0, interpolation=v2.InterpolationMode.NEAREST, fill=0),
            ]
        )

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 3×H×W -> augmented, ImageNet-normalised float 3×H×W."""
        return normalize(self.ops(image))


def decode_item(item: HyperKvasirItem, size: int) -> dict[str, np.ndarray]:
    """:func:`decode` in the decoded-samples layout."""
    return {"image": decode(item.image, size)}


class HyperKvasirDataset(Dataset):
    """Samples ``{"image", "target", "meta"}`` of one split.

    ``image``: float 3×S×S, ImageNet-normalised (augmented when ``train``), except with ``device_augment``:
    then training images stay uint8 3×S×S and the task augments them on the batch's device. ``target``: int64
    class id (0-d). ``meta``: ``name``, ``index`` (position in ``reader.items``), ``image_path``,
    ``class_name``.
    """

    def __init__(
        self,
        reader: HyperKvasir,
        indices: Sequence[int],
        size: int,
        train: bool,
        cache_dir: str | None,
        progress: bool = True,
        device_augment: bool = False,
    ) -> None:
        self.items = [reader.items[i] for i in indices]
        self.indices, self.size, self.train = list(indices), size, train
        self.device_augment = train and device_augment
        self.transform = ClassificationTrainTransform() if train and not device_augment else None
        self.samples = decoded_cache.DecodedSamples(
            reader.items,  # one cache per dataset and size, shared by all splits
            size,
            decode_item,
            cache_dir,
            reader.name,
            files=[it.image for it in reader.items],
            settings={"size": size, "resize": "bicubic"},
            fields={"image": ((size, size, 3), "uint8")},
            progress=progress,
        )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        item = self.items[i]
        array = self.samples[self.indices[i]]["image"]
        image = torch.from_numpy(np.array(array)).permute(2, 0, 1)  # copy: the cache is read-only
        if self.transform is not None:
            image = self.transform(image)
        elif not self.device_augment:
            image = normalize(image)
        meta = {
            "name": item.name,
            "index": self.indices[i],
            "image_path": str(item.image),
            "class_name": item.class_name,
        }
        return {"image": image, "target": torch.tensor(item.class_id, dtype=torch.int64), "meta": meta}
