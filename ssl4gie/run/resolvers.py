"""ssl4gie's OmegaConf resolvers, registered when the package is imported (``ssl4gie/__init__.py``).

Every process that resolves ``hydra.run.dir``, ``hydra.sweep.subdir`` or ``hydra.launcher`` must have them: the
driver imports ``ssl4gie`` in ``run.py``; a submitit job process does not run ``run.py``'s top level, but it
unpickles the Hydra callbacks of conf/config.yaml (``ssl4gie.run.launcher_checks``, ``ssl4gie.run.sweep_progress``; pickled
by reference), which imports the package before Hydra resolves the job's folder.
"""

from __future__ import annotations

import hashlib
from pathlib import PurePath
from typing import Any

from omegaconf import OmegaConf

from ssl4gie.data.splits import DEFAULT_FOLD_SEED, OFFICIAL_SPLIT_FILE
from ssl4gie.run import released
from ssl4gie.run.weights import run_dir_tag

# The longest file or folder name, in bytes, of Linux's file systems (ext4, xfs, btrfs: NAME_MAX) and macOS's APFS
NAME_MAX = 255
NAME_HASH = (
    12  # hex digits of the sha256 that end a shortened name (48 bits: no two cells of a sweep share one)
)


def weights_tag(prefix: str = "", *, _root_: Any) -> str:
    """``${ssl4gie.weights_tag:-w}``: ``-w1a2b3c4d`` (the weights' content tag) for local weights, else ``""``."""
    tag = run_dir_tag(_root_)
    return f"{prefix}{tag}" if tag else ""


def fit_name(name: str) -> str:
    """A sweep cell's folder name that the file system accepts: ``name`` itself when each of its "/"-separated
    parts (an override value may be a path) is at most :data:`NAME_MAX` bytes, as every name of the study's
    sweeps is; otherwise each longer part keeps its first bytes and ends in ``~`` and the first :data:`NAME_HASH`
    hex digits of the sha256 of the whole ``name``. Deterministic, so a relaunched sweep finds its cells' folders;
    the full overrides stay in each cell's ``.hydra/overrides.yaml``."""
    parts = name.split("/")
    if all(len(part.encode()) <= NAME_MAX for part in parts):
        return name
    suffix = "~" + hashlib.sha256(name.encode()).hexdigest()[:NAME_HASH]
    keep = NAME_MAX - len(suffix)
    return "/".join(
        part if len(part.encode()) <= NAME_MAX else part.encode()[:keep].decode(errors="ignore") + suffix
        for part in parts
    )


def cell_dir(override_dirname: Any) -> str:
    """``${ssl4gie.cell_dir:${hydra.job.override_dirname}}``: the cell's override dirname, shortened to fit
    (:func:`fit_name`); for sweeps that load no pretraining weights (``sweep=released``), whose folders are not
    named by a weights file."""
    return fit_name("" if override_dirname is None else str(override_dirname))


def with_weights(override_dirname: Any, *, _root_: Any) -> str:
    """``${ssl4gie.with_weights:${hydra.job.override_dirname}}``: the cell's override dirname plus
    ``weights=<tag>`` for local weights (joined with Hydra's own separators), shortened to fit (:func:`fit_name`)."""
    dirname = "" if override_dirname is None else str(override_dirname)
    tag = run_dir_tag(_root_)
    if not tag:
        return fit_name(dirname)
    item_sep = OmegaConf.select(_root_, "hydra.job.config.override_dirname.item_sep", default=",")
    kv_sep = OmegaConf.select(_root_, "hydra.job.config.override_dirname.kv_sep", default="=")
    return fit_name(item_sep.join(part for part in (dirname, f"weights{kv_sep}{tag}") if part))


def split_tag(prefix: str = "", *, _root_: Any) -> str:
    """``${ssl4gie.split_tag:-}``: ``""`` for the study's split (``dataset.split=study`` or ``test``) of the whole
    training split, else the prefix and the parts that change which items the run uses, joined by "-":

    * the split's name when it is not the study's (``all``, ``official``; a split-table path by its file stem),
      for ``official`` with another file than the 2-fold one also that file's stem (``official-5_fold_split``);
    * k-fold: ``fold<i>of<K>`` (``dataset.fold``, ``dataset.folds``); the official split: ``fold<i>``; either
      with ``s<seed>`` when ``dataset.fold_seed`` is not the default 42;
    * a label fraction below 1: ``f<F>`` (``f0.1``), with ``s<seed>`` when ``dataset.fraction_seed`` is not
      the run's seed and ``m<n>`` when ``dataset.fraction_min_per_class`` is not 1.

    E.g. ``-all``, ``-my_split``, ``-f0.1``, ``-fold2of5-f0.25``, ``-official-fold1``. An eval of ``split=all``
    scores another test set than one of ``split=test``, and a 10 % run trains on other images than a 100 % one;
    in run folders named by this tag they do not overwrite each other, and study-split folders keep their names.
    Never raises: values the reader will reject are written as given.
    """

    def get(key: str, default: Any) -> Any:
        value = OmegaConf.select(_root_, f"dataset.{key}", default=default)
        return default if value is None else value

    split = get("split", "study")
    parts = [] if split in ("study", "test") else [PurePath(str(split)).stem]
    official_file = PurePath(str(get("official_split_file", OFFICIAL_SPLIT_FILE)))
    if split == "official" and official_file.stem != PurePath(OFFICIAL_SPLIT_FILE).stem:
        parts.append(official_file.stem)
    folds, fold, fold_seed = get("folds", None), get("fold", 0), get("fold_seed", DEFAULT_FOLD_SEED)
    fold_part = f"fold{fold}of{folds}" if folds is not None else f"fold{fold}" if split == "official" else ""
    if fold_part:
        parts.append(fold_part + (f"s{fold_seed}" if fold_seed != DEFAULT_FOLD_SEED else ""))
    fraction = get("train_fraction", 1.0)
    try:
        partial = float(fraction) < 1
        fraction = f"{float(fraction):g}"
    except (TypeError, ValueError):
        partial = True
    if partial:
        fraction_seed = get("fraction_seed", None)
        run_seed = OmegaConf.select(_root_, "seed", default=None)
        seed_part = "" if fraction_seed is None or fraction_seed == run_seed else f"s{fraction_seed}"
        min_per_class = get("fraction_min_per_class", 1)
        parts.append(f"f{fraction}{seed_part}" + (f"m{min_per_class}" if min_per_class != 1 else ""))
    return f"{prefix}{'-'.join(parts)}" if parts else ""


def study_ckpt(sweep_dir: Any, column: Any, *, _root_: Any) -> str:
    """``${ssl4gie.study_ckpt:SWEEP_DIR,COLUMN}``: ``best.pt`` of this run's row and seed in column ``COLUMN`` of
    a finished study sweep, e.g. ``SWEEP_DIR/column=kvasir_seg,row=rn_hk_mc,seed=42,weights=1a2b3c4d/best.pt``.

    The cell folder is named as :func:`with_weights` names it (a name too long for the file system shortened by the
    same rule), so a row that loads a weights file finds the cell trained from the same file (by content). Never
    raises: a missing file is reported by the run (option ckpt).
    """
    backbone = OmegaConf.select(_root_, "backbone.code", default="")
    pretraining = OmegaConf.select(_root_, "pretraining.code", default="")
    row = f"{backbone}_{pretraining}".lower().replace("-", "_")  # RN-HK-MC -> conf/row/rn_hk_mc.yaml
    seed = OmegaConf.select(_root_, "seed", default="")
    cell = with_weights(f"column={column},row={row},seed={seed}", _root_=_root_)
    return str(PurePath(str(sweep_dir)) / cell / "best.pt")


def released_ckpt(released_dir: Any, *, _root_: Any) -> str:
    """``${ssl4gie.released_ckpt:${paths.released_dir}}``: the study's released finetune of this cell's task,
    backbone, pretraining and dataset under ``released_dir``, found by its published name (also in the study's
    ``<Task>/Trained models/`` folders); where it is expected when absent (:mod:`ssl4gie.run.released`)."""

    def name(key: str) -> str:
        return str(OmegaConf.select(_root_, f"{key}.name", default=""))

    return released.released_ckpt(
        str(released_dir), name("task"), name("backbone"), name("pretraining"), name("dataset")
    )


def eval_split(trained_on: Any, *, _root_: Any) -> str:
    """``${ssl4gie.eval_split:kvasir_seg}``: ``test`` on the dataset the checkpoints were trained on (its test
    split: in-distribution), ``all`` on any other (every image: out of distribution)."""
    return "test" if OmegaConf.select(_root_, "dataset.name") == str(trained_on) else "all"


def tasks_per_node(gpus_per_node: Any) -> int:
    """``${ssl4gie.tasks_per_node:${.gpus_per_node}}``: one process per GPU, and one per node without GPUs.

    Never raises: an unusable ``gpus_per_node`` gives 1 here and is reported by :mod:`ssl4gie.run.launcher_checks`.
    """
    if isinstance(gpus_per_node, int) and not isinstance(gpus_per_node, bool) and gpus_per_node >= 1:
        return gpus_per_node
    return 1


def scaled_lr(base_lr: Any, batch_size: Any) -> float:
    """``${ssl4gie.scaled_lr:BASE,BATCH}``: the linear scaling rule of the MoCo v3, Barlow Twins and MAE codebases,
    base lr × global batch / 256 (so a smaller ``trainer.batch_size`` lowers the learning rate with it)."""
    return float(base_lr) * int(batch_size) / 256


def register() -> None:
    """Register the resolvers; idempotent (``replace=True``, so re-imports and reloads are harmless)."""
    OmegaConf.register_new_resolver("ssl4gie.weights_tag", weights_tag, replace=True)
    OmegaConf.register_new_resolver("ssl4gie.with_weights", with_weights, replace=True)
    OmegaConf.register_new_resolver("ssl4gie.cell_dir", cell_dir, replace=True)
    OmegaConf.register_new_resolver("ssl4gie.released_ckpt", released_ckpt, replace=True)
    OmegaConf.register_new_resolver("ssl4gie.split_tag", split_tag, replace=True)
    OmegaConf.register_new_resolver("ssl4gie.study_ckpt", study_ckpt, replace=True)
    OmegaConf.register_new_resolver("ssl4gie.eval_split", eval_split, replace=True)
    OmegaConf.register_new_resolver("ssl4gie.tasks_per_node", tasks_per_node, replace=True)
    OmegaConf.register_new_resolver("ssl4gie.scaled_lr", scaled_lr, replace=True)
