"""HyperKvasir labelled images (anatomical landmarks, pathological findings): reader and torch Dataset.

Layout: ``<root>/labeled-images/<tract>/<category>/<class>/*.jpg``. The class list, the class ids and the
image order are the study's (``Classification/train_classification.py``), because the split indices
(``split_ids`` in its ``Data/dataloaders.py``) refer to positions in that order:

* tracts, then the category folder inside each tract, then class folders, each sorted as the study sorts them:
  plain string order of the folder paths *ending with "/"*, so ``barretts-short-segment/`` comes before
  ``barretts/`` ('-' < '/'); class ids 0, 1, 2, ... in that traversal order;
* inside a class, only lower-case ``*.jpg`` files (the study's glob), sorted by name; classes concatenated.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from ssl4gie.data import cache as decoded_cache
from ssl4gie.data.readers import Reader, is_hidden, log_hidden, open_image, require_dir, visible_files
from ssl4gie.data.splits import (
    OFFICIAL,
    OFFICIAL_SPLIT_FILE,
    holdout_split,
)
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
#: HyperKvasir's official k-fold split files (:data:`OFFICIAL_SPLIT_FILE` and ``5_fold_split.csv`` beside it, in
#: the dataset's GitHub repository simula/hyper-kvasir): ';'-separated, header ``file-name;class-name;split-index``,
#: one row per labelled image of every category (file name with ".jpg").
OFFICIAL_COLUMNS = {"file": "file-name", "fold": "split-index"}
OFFICIAL_SOURCE = "https://github.com/simula/hyper-kvasir/tree/master/official_splits"


def study_order(names: Iterable[str]) -> list[str]:
    """Folder names in the study's order: string order of the names with a trailing "/" (the
    study sorts ``glob`` paths that end with "/")."""
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


class HyperKvasir(Reader):
    """The labelled images of one HyperKvasir category as the study reads them.

    ``items`` lists every image in the study's order; ``class_names[i]`` is the name of class id ``i``.
    ``classes`` (optional) is the class list the config expects, in order: a tree whose class folders differ
    (a partial download, another release) is a DatasetError that names the missing and unexpected folders,
    instead of a silently different task. An empty class folder is an error too (the release has none, and a
    class without images cannot be learnt or scored). ``study_size``: the image count of the release the
    study's split indices were made for; another count only logs a warning (the split is then still the
    study's algorithm, but not the published indices).

    ``train_fraction``, ``fraction_seed``, ``fraction_min_per_class``, ``folds``, ``fold``, ``fold_seed``: a label
    fraction and k-fold cross-validation, stratified by class (:class:`ssl4gie.data.splits.SplitOptions`).
    ``split="official"``: fold ``fold`` of the official split file (``official_split_file``, relative to the
    root; its columns and delimiter are options too) is the test split (:meth:`official_split`).
    """

    title = "HyperKvasir (labelled images)"
    layout = LAYOUT
    layout_name = "hyperkvasir_labelled"
    demo = "demo_classification"
    official = True

    def __init__(
        self,
        root: str,
        name: str,
        category: str,
        task: str = "classification",
        classes: Sequence[str] | None = None,
        study_size: int | None = None,
        official_split_file: str = OFFICIAL_SPLIT_FILE,
        official_split_columns: Mapping[str, str] | None = None,
        official_split_delimiter: str = ";",
        **options: Any,
    ) -> None:
        if category not in CATEGORIES:
            raise ConfigError(f"dataset.category={category} is not valid; valid: {', '.join(CATEGORIES)}")
        self.category = category
        super().__init__(root, name, task, **options)
        official_path = Path(str(official_split_file)).expanduser()
        # relative to the root, so that a run's identity does not depend on where the data lies
        self.official_split_file = official_path if official_path.is_absolute() else self.root / official_path
        self.official_columns = {**OFFICIAL_COLUMNS, **dict(official_split_columns or {})}
        self.official_delimiter = str(official_split_delimiter)
        self.official_folds: int | None = None  # set when an official split is read
        self.class_names, self.items = self._scan()
        if classes is not None:
            self._check_classes([str(c) for c in classes])
        if study_size is not None and len(self.items) != study_size and not options.get("synthetic"):
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

    @staticmethod
    def synthetic_writer() -> Callable[..., Path]:
        return write_synthetic

    def base_split(self) -> dict[str, list[int]]:
        """``dataset.split``: the study's seeded split (:func:`choose_split`) or :meth:`official_split`."""
        return self.official_split() if self.split_name == OFFICIAL else super().base_split()

    def split_groups(self) -> dict[str, Any]:
        """Folds and label fractions are stratified by class."""
        return {"labels": self.labels, "class_names": self.class_names}

    def official_split(self) -> dict[str, list[int]]:
        """``dataset.split=official``: fold ``dataset.fold`` of the official file is the test split; validation
        is a seeded class-stratified draw of round(0.1 N) images from the other folds (``dataset.fold_seed``),
        the rest is train (:func:`holdout_split`). The file's rows are matched to images by file name; its
        class column is not used (the releases renamed classes, e.g. ``oesophagitis-b-d`` in the file)."""
        fold_of = read_official_split(
            self.official_split_file, self.official_columns, self.official_delimiter
        )
        folds = sorted(set(fold_of.values()))
        if folds != list(range(len(folds))):
            raise DatasetError(
                f"official split file {self.official_split_file}: fold ids (column "
                f"'{self.official_columns['fold']}') must be 0..K-1, found {folds}"
            )
        self.official_folds = len(folds)
        fold = self.split_options.fold
        if fold >= len(folds):
            raise ConfigError(
                f"dataset.fold={fold}: the official split file {self.official_split_file} has {len(folds)} "
                f"folds, numbered 0..{len(folds) - 1}"
            )
        item_folds = []
        missing = []
        for item in self.items:
            found = fold_of.get(item.image.name, fold_of.get(item.image.stem))
            if found is None:
                missing.append(item.image.name)
            item_folds.append(found)
        if missing:
            raise DatasetError(
                f"{len(missing)} image(s) of {self.name} are not in the official split file "
                f"{self.official_split_file} (e.g. {missing[0]}): the file belongs to another release. Use the "
                "file of your release, or dataset.split=study / dataset.folds=K"
            )
        test = [i for i, f in enumerate(item_folds) if f == fold]
        pool = [i for i, f in enumerate(item_folds) if f != fold]
        log.info(
            "%s: official split %s, fold %d of %d as test (%d images)",
            self.name,
            self.official_split_file.name,
            fold,
            len(folds),
            len(test),
        )
        return holdout_split(test, pool, len(self.items), self.split_options.fold_seed, self.labels)


def read_official_split(path: Path, columns: Mapping[str, str], delimiter: str = ";") -> dict[str, int]:
    """File name -> fold id from one of HyperKvasir's official split files (:data:`OFFICIAL_SPLIT_FILE`).

    ``columns`` names the file-name and fold columns (keys ``file``, ``fold``; :data:`OFFICIAL_COLUMNS` are the
    release's). A missing file, missing columns, a non-integer fold or one name in two folds is a DatasetError.
    """
    if not path.is_file():
        raise DatasetError(
            f"official split file {path} not found (option dataset.official_split_file, relative to "
            f"dataset.root). Download {Path(OFFICIAL_SPLIT_FILE).name} from {OFFICIAL_SOURCE} and put it there"
        )
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            header = list(reader.fieldnames or [])
            wanted = [columns["file"], columns["fold"]]
            if any(c not in header for c in wanted):
                raise DatasetError(
                    f"official split file {path} has columns {header} (delimiter {delimiter!r}); expected "
                    f"{wanted} (options dataset.official_split_columns, dataset.official_split_delimiter)"
                )
            fold_of: dict[str, int] = {}
            for line, row in enumerate(reader, start=2):
                name, value = (row[columns["file"]] or "").strip(), (row[columns["fold"]] or "").strip()
                if not value.lstrip("-").isdigit():
                    raise DatasetError(f"{path}, line {line}: fold '{value}' is not an integer")
                if name in fold_of and fold_of[name] != int(value):
                    raise DatasetError(f"{path}, line {line}: image {name} is in two folds")
                fold_of[name] = int(value)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"cannot read official split file {path}: {e}") from e
    if not fold_of:
        raise DatasetError(f"official split file {path} has no rows")
    return fold_of


def write_official_split(
    root: str | Path, folds: int = 2, seed: int = 0, path: str = OFFICIAL_SPLIT_FILE
) -> Path:
    """Write an official-format split file for the labelled tree under ``root`` (every category): each class's
    images, in a seeded order, cut into ``folds`` equal parts (the last takes the remainder), as the release's
    file was made. For synthetic data and tests; returns the file's path."""
    from ssl4gie.utils.io import write_text

    labeled = Path(root) / LABELED
    rng = np.random.RandomState(seed)
    lines = [";".join(("file-name", "class-name", OFFICIAL_COLUMNS["fold"]))]
    for class_dir in sorted(p for p in labeled.glob("*/*/*") if p.is_dir() and not is_hidden(p)):
        images = sorted(p.name for p in class_dir.glob("*.jpg") if not is_hidden(p))
        images = [images[j] for j in rng.permutation(len(images))]
        part = len(images) // folds
        for k, name in enumerate(images):
            lines.append(f"{name};{class_dir.name};{min(k // part, folds - 1) if part else folds - 1}")
    return write_text(Path(root) / path, "\n".join(lines) + "\n")


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
    official_folds: int | None = None,
) -> Path:
    """``dataset.synthetic`` for HyperKvasir: ``{per_class: N}`` images for every class the writer knows (all
    four categories, so both datasets can share one tree), or an explicit ``{classes: {name: count}}``.
    ``official_folds: K`` also writes an official-format split file (:func:`write_official_split`)."""
    from ssl4gie.data.synthetic import HYPERKVASIR_CLASSES, write_hyperkvasir

    if per_class is not None and classes is not None:
        raise ConfigError("dataset.synthetic: give per_class or classes, not both")
    if per_class is not None:
        classes = dict.fromkeys(HYPERKVASIR_CLASSES, int(per_class))
    counts = {str(k): int(v) for k, v in classes.items()} if classes is not None else None
    written = write_hyperkvasir(root, counts, seed=seed, size=tuple(int(s) for s in size))
    if official_folds is not None:
        write_official_split(written, int(official_folds), seed=seed)
    return written


def decode(path: Path, size: int) -> np.ndarray:
    """S×S×3 uint8 RGB, resized as the study: bicubic, aspect ratio ignored
    (``Classification/Data/dataset.py``)."""
    return np.asarray(open_image(path, "RGB").resize((size, size), Image.Resampling.BICUBIC))


class ClassificationTrainTransform:
    """The study's classification augmentation (``Classification/Data/dataloaders.py``): colour jitter →
    blur → horizontal/vertical flips → rotation U(−180°, 180°), then normalise.

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
