"""The study's finetuned files as its authors released them: the name each training script gave its file, and where
that file lies under ``paths.released_dir`` (``python -m ssl4gie.fetch released`` puts the Drive folder there).

Light on purpose (no torch): the ``${ssl4gie.released_ckpt:...}`` resolver of ``sweeps/released.yaml`` calls it while
Hydra resolves a cell's ``ckpt``, in the driver (preflight) and in every job.

The training scripts (the study's ``<Task>/train_<task>.py``) save
``Trained models/<arch>-<pretraining>[_<framework>]_init-frozen_False-dataset_<Dataset>.pth`` inside their task
folder. Detection and segmentation on Kvasir-SEG give the same name (``..._dataset_Kvasir.pth``), so such a file is
taken only from a folder that names its task (``Object_detection/``, ``Binary_segmentation/``, or any folder
whose name holds ``detection`` / ``segmentation``); every other name is found anywhere under the folder.
"""

from __future__ import annotations

import os
from pathlib import Path

# ssl4gie's names -> the study's command-line values (its --architecture, --pretraining [+ --ss-framework], --dataset)
ARCH = {"resnet50": "resnet50", "vit_b": "vit_b"}
PRETRAINING = {
    "hyperkvasir_mocov3": "Hyperkvasir_mocov3",
    "hyperkvasir_barlowtwins": "Hyperkvasir_barlowtwins",
    "hyperkvasir_mae": "Hyperkvasir_mae",
    "imagenet_mocov3": "ImageNet_self_mocov3",
    "imagenet_barlowtwins": "ImageNet_self_barlowtwins",
    "imagenet_mae": "ImageNet_self_mae",
    "imagenet_supervised": "ImageNet_class",
    "random": "random",
}
DATASET = {  # dataset config -> (task, the study's --dataset)
    "hyperkvasir_anatomical": ("classification", "Hyperkvasir_anatomical"),
    "hyperkvasir_pathological": ("classification", "Hyperkvasir_pathological"),
    "kvasir_det": ("detection", "Kvasir"),
    "kvasir_seg": ("segmentation", "Kvasir"),
    "cvc_clinicdb": ("segmentation", "CVC"),
    "c3vd": ("depth", "C3VD"),
}
TASK_FOLDER = {  # the study's task folders, each with its own Trained models/
    "classification": "Classification",
    "detection": "Object_detection",
    "segmentation": "Binary_segmentation",
    "depth": "Depth_estimation",
}
SUFFIX = "_init-frozen_False-dataset_"


def published_name(backbone: str, pretraining: str, dataset: str) -> str | None:
    """The file name the study gave the finetune of ``backbone`` × ``pretraining`` on ``dataset`` (ssl4gie's
    config names), e.g. ``vit_b-Hyperkvasir_mae_init-frozen_False-dataset_CVC.pth``; None outside the study grid."""
    if backbone not in ARCH or pretraining not in PRETRAINING or dataset not in DATASET:
        return None
    return f"{ARCH[backbone]}-{PRETRAINING[pretraining]}{SUFFIX}{DATASET[dataset][1]}.pth"


def _tasks_named(parts: tuple[str, ...]) -> set[str]:
    """The tasks that the folder names ``parts`` name (``Object_detection`` -> detection; any case)."""
    return {task for task in TASK_FOLDER for part in parts if task in part.lower()}


def _shared(name: str) -> bool:
    """Whether two tasks' files have this name (Kvasir: detection and segmentation)."""
    study_dataset = name.rsplit(SUFFIX, 1)[-1].removesuffix(".pth")
    return len({task for task, theirs in DATASET.values() if theirs == study_dataset}) > 1


def find(released_dir: str | os.PathLike, task: str, name: str) -> Path | None:
    """The file ``name`` of ``task`` under ``released_dir`` (any depth; hidden folders skipped): one in a folder
    that names ``task`` first, else one in a folder that names no task, unless two tasks share the name."""
    root = Path(released_dir).expanduser()
    own, neutral = [], []
    for folder, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        if name not in files:
            continue
        named = _tasks_named(Path(folder).relative_to(root).parts)
        if named == {task}:
            own.append(Path(folder) / name)
        elif not named:
            neutral.append(Path(folder) / name)
    if own:
        return own[0]
    return neutral[0] if neutral and not _shared(name) else None


def expected(released_dir: str | os.PathLike, task: str, name: str) -> Path:
    """Where the study's layout puts the file: ``<released_dir>/<Task>/Trained models/<name>``."""
    return Path(released_dir).expanduser() / TASK_FOLDER.get(task, task) / "Trained models" / name


def released_ckpt(
    released_dir: str | os.PathLike, task: str, backbone: str, pretraining: str, dataset: str
) -> str:
    """The released file of this cell (:func:`find`), or where it is expected when absent (a cell of a sweep with
    ``skip_missing_ckpt=true`` is then skipped, naming that path). Never raises."""
    name = published_name(backbone, pretraining, dataset)
    if name is None:
        return str(
            Path(released_dir).expanduser()
            / f"(no released file: the study has no {backbone} {pretraining} finetune on {dataset})"
        )
    try:
        found = find(released_dir, task, name)
    except OSError:
        found = None
    return str(found if found is not None else expected(released_dir, task, name))


def fetch_hint(ckpt: str | os.PathLike, released_dir: str | os.PathLike) -> str | None:
    """How to get ``ckpt`` when it is one of the released files (it lies under ``released_dir``), else None."""
    try:
        Path(ckpt).expanduser().relative_to(Path(released_dir).expanduser())
    except ValueError:
        return None
    name = Path(ckpt).name
    hint = "python -m ssl4gie.fetch released"
    if _shared(name):
        hint += f" (two tasks share the name {name}: keep each in its task's folder, e.g. Object_detection/, Binary_segmentation/)"
    return hint
