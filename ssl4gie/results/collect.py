"""Sweep folder → tidy DataFrame: one row per run folder, read from the files each run writes (never log text).

A *run folder* is any folder holding ``.hydra/``, ``metrics.json`` or ``failed.json``; they are found
recursively, so Hydra's flat ``<sweep>/<job>/`` layout, nested ``<sweep>/<override_dirname>/`` folders and a single
run folder all work. Status of a run folder:

* ``complete``: ``metrics.json`` with ``status: complete`` (written atomically and last by ``ssl4gie.run.pipeline``);
* ``failed``: ``failed.json`` (``error``, ``type``, ``time``) and no complete ``metrics.json``;
* ``skipped``: ``skipped.json`` (an evaluation whose dataset is not on disk, ``skip_missing_data=true``);
* ``incomplete``: anything else (still running, killed, or never started past Hydra's ``.hydra/``).

Fields of label-efficiency, k-fold and data-scale sweeps, each defaulted when a run does not write it:
``train_fraction`` (1.0), ``fold`` and ``folds`` (NA: no k-fold split), ``pretraining_data_size`` (NA) and
``pretraining_data_seen`` (a list in metrics.json, kept as the comma-joined string of the names; "" when absent).
A row code (e.g. ``RN-HK-MC``) whose runs span several ``pretraining_data_size`` values becomes one row per size,
``RN-HK-MC@10k``, so that a data-scale series is not taken for seeds of one row; ``row_base`` keeps the code.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from ssl4gie.errors import Ssl4gieError

log = logging.getLogger(__name__)

# Row codes (the study's README figure codes: RN/VT, HK/IN/NA, MC/BT/MA/SL/NA) for cells whose metrics.json is
# missing: conf/backbone/*.yaml and conf/pretraining/*.yaml carry the same codes, but a failed cell may
# predate a config edit, so the study's fixed codes are kept here.
BACKBONE_CODES = {"resnet50": "RN", "vit_b": "VT"}
PRETRAINING_CODES = {
    "random": "NA-NA",
    "imagenet_supervised": "IN-SL",
    "imagenet_mocov3": "IN-MC",
    "imagenet_barlowtwins": "IN-BT",
    "imagenet_mae": "IN-MA",
    "hyperkvasir_mocov3": "HK-MC",
    "hyperkvasir_barlowtwins": "HK-BT",
    "hyperkvasir_mae": "HK-MA",
}
IDENTITY = (
    "path",
    "status",
    "task",
    "dataset",
    "task_dataset",
    "backbone",
    "pretraining",
    "row",
    "seed",
    "frozen",
)
RUN_MARKERS = (".hydra", "metrics.json", "failed.json")
# Facts of the foundation-row, label-efficiency, cross-validation and data-scale sweeps, with the value a run
# that does not write them stands for.
SWEEP_FACTS = {"train_fraction": 1.0, "fold": None, "folds": None, "pretraining_data_size": None}


class ResultsError(Ssl4gieError):
    """A sweep folder or results option the report cannot work with."""


def find_run_folders(sweep_dir: Path) -> list[Path]:
    """Every run folder under ``sweep_dir`` (itself included), sorted; run folders are not searched further."""
    found = []
    for folder, subdirs, files in os.walk(sweep_dir):
        if ".hydra" in subdirs or "metrics.json" in files or "failed.json" in files:
            found.append(Path(folder))
            subdirs.clear()  # a run's own subfolders (figures, predictions) hold no runs
        else:
            subdirs[:] = [d for d in subdirs if not d.startswith(".")]
    return sorted(found)


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        log.warning("cannot read %s (%s); the run is counted as incomplete", path, e)
        return None
    return data if isinstance(data, dict) else None


def _plain(value: Any) -> Any:
    """A config value, or None where Hydra saved an unresolved interpolation (``${...}``) or a container."""
    if isinstance(value, str) and "${" in value:
        return None
    return None if isinstance(value, dict | list) else value


def _from_hydra(folder: Path) -> dict[str, Any]:
    """Config choices from ``.hydra/config.yaml``, gaps filled from ``.hydra/overrides.yaml``."""
    facts: dict[str, Any] = {}
    overrides_path = folder / ".hydra" / "overrides.yaml"
    overrides = []
    if overrides_path.is_file():
        overrides = [str(o) for o in (yaml.safe_load(overrides_path.read_text()) or [])]
        facts["overrides"] = " ".join(overrides)
    config_path = folder / ".hydra" / "config.yaml"
    cfg = (yaml.safe_load(config_path.read_text()) or {}) if config_path.is_file() else {}
    for key in ("task", "dataset", "backbone", "pretraining"):
        group = cfg.get(key)
        if isinstance(group, dict) and _plain(group.get("name")) is not None:
            facts[key] = group["name"]
    for key in ("seed", "frozen", "mode"):
        if _plain(cfg.get(key)) is not None:
            facts[key] = cfg[key]
    codes = [_plain((cfg.get(g) or {}).get("code")) for g in ("backbone", "pretraining")]
    if all(isinstance(c, str) for c in codes):
        facts["row"] = "-".join(codes)
    dataset = cfg.get("dataset") if isinstance(cfg.get("dataset"), dict) else {}
    for key in ("train_fraction", "fold", "folds"):  # the label-efficiency and k-fold options
        if _plain(dataset.get(key)) is not None:
            facts[key] = dataset[key]
    for override in overrides:
        key, sep, value = override.lstrip("+~").partition("=")
        if sep and key in ("task", "dataset", "backbone", "pretraining", "seed", "frozen", "mode"):
            facts.setdefault(key, yaml.safe_load(value))  # YAML parsing turns "3" into 3 and "true" into True
        elif sep and key in ("dataset.train_fraction", "dataset.fold", "dataset.folds"):
            facts.setdefault(key.split(".", 1)[1], yaml.safe_load(value))
    return facts


def read_run(folder: Path, sweep_dir: Path) -> dict[str, Any]:
    """One run folder as a flat dict (see the module docstring for ``status``)."""
    record: dict[str, Any] = {"path": folder.relative_to(sweep_dir).as_posix()}
    metrics = _read_json(folder / "metrics.json") if (folder / "metrics.json").is_file() else None
    failed = _read_json(folder / "failed.json") if (folder / "failed.json").is_file() else None
    hydra = _from_hydra(folder)
    if metrics is not None and metrics.get("status") == "complete":
        record.update({k: v for k, v in metrics.items() if not isinstance(v, dict | list)})
        seen = metrics.get("pretraining_data_seen")
        if isinstance(seen, list):
            record["pretraining_data_seen"] = ",".join(str(s) for s in seen)
        record["overrides"] = hydra.get("overrides")
    else:
        record.update(hydra)
        skipped = (folder / "skipped.json").is_file()
        record["status"] = "failed" if failed is not None else "skipped" if skipped else "incomplete"
        if failed is not None:
            record.update(
                error_type=failed.get("type"), error=failed.get("error"), failed_at=failed.get("time")
            )
    if record.get("row") is None and record.get("backbone") in BACKBONE_CODES:
        pretraining = PRETRAINING_CODES.get(record.get("pretraining"))
        record["row"] = f"{BACKBONE_CODES[record['backbone']]}-{pretraining}" if pretraining else None
    if record.get("task") is not None and record.get("dataset") is not None:
        record["task_dataset"] = f"{record['task']}/{record['dataset']}"
    # The config default (conf/config.yaml: frozen: false) for a cell that never said otherwise.
    record["frozen"] = bool(record.get("frozen", False))
    return record


def collect_runs(sweep_dir: str | os.PathLike) -> pd.DataFrame:
    """The tidy table of a sweep: one row per run folder, sorted by ``path`` (relative to ``sweep_dir``).

    Columns: ``path``, ``status``, ``task``, ``dataset``, ``task_dataset`` (``task/dataset``), ``backbone``,
    ``pretraining``, ``row`` (e.g. ``RN-IN-MC``), ``seed``, ``frozen``, then every ``val/*`` and ``test/*``
    metric, then the remaining facts (``wall_time_s``, ``epochs``, ``best_epoch``, ``mode``, ``overrides``,
    ``error_type``/``error`` of failed cells, ...). Complete runs take every value from ``metrics.json``;
    failed and incomplete ones from ``.hydra/config.yaml``, then ``.hydra/overrides.yaml``; a value no file
    gives is missing (NA). Raises :class:`ResultsError` if ``sweep_dir`` is not a folder or holds no run folder.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ResultsError(f"sweep folder {sweep_dir} does not exist (expected a Hydra multirun folder)")
    folders = find_run_folders(sweep_dir)
    if not folders:
        raise ResultsError(
            f"{sweep_dir} holds no run folder (none with .hydra/, metrics.json or failed.json): "
            "pass the folder Hydra's multirun wrote, e.g. outputs/multirun/<date>/<time>"
        )
    runs = pd.DataFrame([read_run(f, sweep_dir) for f in folders])
    for column, default in SWEEP_FACTS.items():
        runs[column] = runs.get(column, default)
    runs["train_fraction"] = pd.to_numeric(runs["train_fraction"], errors="coerce").fillna(1.0)
    for column in ("fold", "folds", "pretraining_data_size"):
        runs[column] = pd.to_numeric(runs[column], errors="coerce").astype("Int64")
    seen = (
        runs["pretraining_data_seen"] if "pretraining_data_seen" in runs else pd.Series("", index=runs.index)
    )
    runs["pretraining_data_seen"] = seen.fillna("").astype(str)
    runs = size_rows(runs)
    metrics = sorted(c for c in runs.columns if c.startswith(("val/", "test/")))
    for column in IDENTITY:
        if column not in runs.columns:
            runs[column] = None
    rest = sorted(set(runs.columns) - set(IDENTITY) - set(metrics))
    runs = runs[[*IDENTITY, *metrics, *rest]]
    return runs.assign(
        seed=pd.to_numeric(runs["seed"], errors="coerce").astype("Int64"),
        frozen=runs["frozen"].astype(bool),
        **{m: pd.to_numeric(runs[m], errors="coerce") for m in metrics},
    )


def size_label(size: int) -> str:
    """``10000`` → ``10k``, ``2000000`` → ``2M``, ``99417`` → ``99417``: short and never ambiguous."""
    size = int(size)
    if size and size % 1_000_000 == 0:
        return f"{size // 1_000_000}M"
    return f"{size // 1000}k" if size and size % 1000 == 0 else str(size)


def size_rows(runs: pd.DataFrame) -> pd.DataFrame:
    """``row_base`` = the row code; ``row`` = ``<code>@<size>`` where a code's runs span several
    ``pretraining_data_size`` values (a run without a size keeps the bare code)."""
    runs = runs.assign(row_base=runs["row"])
    sizes = (
        runs.dropna(subset=["row", "pretraining_data_size"]).groupby("row")["pretraining_data_size"].nunique()
    )
    series = set(sizes[sizes > 1].index)
    if series:
        scaled = runs["row"].isin(series) & runs["pretraining_data_size"].notna()
        labels = [
            f"{row}@{size_label(size)}"
            for row, size in zip(
                runs.loc[scaled, "row"], runs.loc[scaled, "pretraining_data_size"], strict=True
            )
        ]
        runs.loc[scaled, "row"] = labels
    return runs
