"""The identity of a run: a short hash (the fingerprint) of everything that defines the experiment.

A finished run is recognised by it (a relaunched sweep skips the cell), and a ``last.pt`` is only resumed into a run
with the same fingerprint. What does not change what a run computes (paths, devices, trackers) is no part of it, and
options added later count only where they act, so finished runs keep their identity when ssl4gie gains options.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ssl4gie.data.splits import identity_dataset, identity_split
from ssl4gie.run.weights import InitialWeights, run_weights

# Options that do not change what a run computes: two runs that differ only here are the same experiment
# (a moved data folder or another GPU must not block resuming or count as a new sweep cell).
NOT_IDENTITY = (
    "paths",
    "mode",
    "ckpt",
    "input",  # mode=predict's folder of frames: what a run is run on, not what it is
    "cache",
    "trainer.device",
    "trainer.num_workers",
    "trainer.progress",
    "trainer.num_figures",
    "trainer.keep_last",
    "skip_missing_data",
    "skip_missing_ckpt",  # whether an absent ckpt skips an evaluation: what a run is run on, not what it is
    "preflight",  # whether a sweep is checked before it starts
    "overwrite",  # whether a run may replace another configuration's results in its folder
    "backbone.random_init",  # a description for the log
    "dataset.root",
    "dataset.download",
    "dataset.source",  # where ``python -m ssl4gie.fetch`` gets the data (ssl4gie/fetch/sources/), not what a run reads
    "dataset.synthetic",
    # Where the initial weights are found is not what they are: the fingerprint records their content instead
    # (``initial_weights``), so a moved or renamed identical file is the same experiment and a replaced one is not.
    "pretraining.checkpoint",
    "pretraining.files",
    "pretraining.urls",
    "pretraining.hub",
    "pretraining.license",
    "pretraining.source",  # hashes and logins ``python -m ssl4gie.fetch`` uses; the content counts, by its sha256
    "launcher",
    "logger",  # an experiment tracker records a run, it never changes what the run computes
    # pretraining: the recipes of the other backbones (the chosen one is ssl.recipe), where the export is copied,
    # how many reconstructions are drawn, where the probe's labelled images lie
    "ssl.recipes",
    "task.export_dir",
    "task.reconstructions",
    "task.probe.data.root",
    "task.probe.data.synthetic",
    # facts for the results tables (size and names of a row's pretraining data), not what a run computes
    "pretraining.data_size",
    "pretraining.data_seen",
    "pretraining.pretrained",  # whether the row has weights: a fact of the row, which its name identifies
)


# Options added after runs were made, with the value that gives the behaviour those runs had (see fingerprint)
LEGACY_DEFAULTS = {
    "trainer.optimizer": {
        "name": "adamw",
        "betas": [0.9, 0.999],
        "momentum": 0.9,
        "trust_coefficient": 0.001,
        "exclude_1d": False,
        "one_d_lr_scale": 1.0,
    },
    "trainer.scheduler.name": "plateau",
    "trainer.scheduler.warmup_epochs": 0,
    "trainer.scheduler.final_lr_ratio": 0.0,
    "trainer.scheduler.eps": 1.0e-8,
    "trainer.val_every": 1,
    "trainer.val_at_start": False,
}
_MISSING = object()


def _get(container: dict, dotted: str, default):
    for part in dotted.split("."):
        if not isinstance(container, dict) or part not in container:
            return default
        container = container[part]
    return container


# Before the optimiser and the schedule became config groups (trainer/optimizer, trainer/scheduler), the trainer
# had one flat node for each, holding every choice's options; finished runs were fingerprinted in that shape, so a
# group's node is seen in it again (a recipe's optimiser, written whole, was never merged into the flat node).
FLAT_OPTIMIZER = {
    "name": "adamw",
    "betas": [0.9, 0.999],
    "momentum": 0.9,
    "trust_coefficient": 0.001,
    "exclude_1d": False,
    "one_d_lr_scale": 1.0,
}
FLAT_SCHEDULER = {
    "name": "plateau",
    "factor": 0.5,
    "patience": 10,
    "threshold": 1.0e-4,
    "min_lr": 1.0e-6,
    "warmup_epochs": 0,
    "final_lr_ratio": 0.0,
}
# Config nodes that are instantiated (``_target_``, ``_partial_``): which code builds them is no part of the identity
INSTANTIATED = ("trainer.optimizer", "trainer.scheduler", "ssl.recipe.optimizer", "task.recipe.optimizer")


def _flat_trainer(cfg: DictConfig, container: dict) -> None:
    """``trainer.optimizer`` and ``trainer.scheduler`` in the flat shape of earlier versions (see above)."""
    for dotted in INSTANTIATED:
        node = _get(container, dotted, None)
        if isinstance(node, dict):
            node.pop("_target_", None)
            node.pop("_partial_", None)
    trainer = container.get("trainer")
    if not isinstance(trainer, dict):
        return
    for key, flat in (("optimizer", FLAT_OPTIMIZER), ("scheduler", FLAT_SCHEDULER)):
        if isinstance(trainer.get(key), dict) and not OmegaConf.is_interpolation(cfg.trainer, key):
            trainer[key] = {**flat, **trainer[key]}


def _drop(container: dict, dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        container = container.get(p, {})
    if isinstance(container, dict):
        container.pop(leaf, None)


def fingerprint(cfg: DictConfig, weights: InitialWeights | None = None) -> str:
    """A short hash of everything that defines the experiment (:func:`identity`), including the identity of the
    initial weights: the sha256 of the local file that is loaded, or the timm hub tag.

    ``weights`` is :func:`ssl4gie.run.weights.run_weights` of ``cfg`` (looked up, and raising its errors, when not
    given). A row without weights (random) adds nothing, so its fingerprint is what it was before weights counted.
    """
    return hash_identity(identity(cfg, weights))


def hash_identity(options: dict) -> str:
    """The fingerprint of an :func:`identity`."""
    return hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()[:16]


def identity(cfg: DictConfig, weights: InitialWeights | None = None) -> dict:
    """Everything that defines the experiment, as plain data: the resolved config without what does not change
    what a run computes (``NOT_IDENTITY``), options added later dropped at their old behaviour, and the initial
    weights' identity (see :func:`fingerprint`). Saved in a run's folder (``identity.json``), so that a run of
    another configuration can say which options differ."""
    weights = run_weights(cfg) if weights is None else weights
    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("hydra", None)
    _flat_trainer(cfg, container)
    for key in NOT_IDENTITY:
        _drop(container, key)
    # dataset.split stays: it is the test set of an eval and the table of a C3VD training run; but two names of
    # the same lists (test, study) are one experiment
    dataset = container.get("dataset")
    if isinstance(dataset, dict):
        # split options count only where they act (fraction < 1, folds, split=official): study-split runs keep
        # the fingerprints they had before these options existed
        dataset = container["dataset"] = identity_dataset(dataset)
        if isinstance(dataset.get("split"), str):
            dataset["split"] = identity_split(dataset["split"])
    # engine options that did not exist before: at the value that reproduces the old behaviour they are no part
    # of the identity, so finished runs keep their fingerprints (a relaunched sweep skips them)
    for dotted, legacy in LEGACY_DEFAULTS.items():
        if _get(container, dotted, _MISSING) == legacy:
            _drop(container, dotted)
    # Two spellings of one experiment: a macro average over null classes means its protocol's classes
    task = container.get("task")
    if isinstance(task, dict) and "macro_over" in task and task["macro_over"] is None:
        task["macro_over"] = "all" if task.get("protocol") == "study" else "present"
    if (initial := weights.identity()) is not None:
        container["initial_weights"] = initial
    return container


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict) and node:
        return {k: v for key, child in node.items() for k, v in _flatten(child, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): node}


def differences(before: dict, now: dict, limit: int = 4) -> str:
    """The options in which two :func:`identity` values differ, as ``key before → now`` (at most ``limit``)."""
    a, b = _flatten(before), _flatten(now)
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k, _MISSING) != b.get(k, _MISSING))
    shown = [f"{k} {a.get(k, '(unset)')!s} → {b.get(k, '(unset)')!s}" for k in keys[:limit]]
    return ", ".join(shown) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def row_code(cfg: DictConfig) -> str:
    """The study's row code as its README and figures name rows: backbone-data-method, e.g. RN-IN-MC (ResNet-50,
    ImageNet, MoCo v3) or VT-NA-NA (ViT-B, random initialisation)."""
    return f"{cfg.backbone.code}-{cfg.pretraining.code}"
