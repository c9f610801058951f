"""Config checks done once, first (before any data is read), and the identity of a run."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from ssl4gie.data.splits import identity_dataset, identity_split
from ssl4gie.errors import ConfigError
from ssl4gie.run.weights import InitialWeights, run_weights

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
MODES = ("train", "eval", "predict")

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
    "backbone.random_init",  # a description for the log
    "dataset.root",
    "dataset.download",
    "dataset.source",  # where ``python -m ssl4gie.fetch`` gets the data (conf/source/), not what a run reads
    "source",  # conf/source/ is read by ssl4gie.fetch only; a `source=...` typed on a run changes nothing
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


def group_options(group: str) -> dict[str, dict]:
    """Options of a config group with their YAML contents (empty if the conf folder is not beside the package)."""
    folder = CONF_DIR / group
    if not folder.is_dir():
        return {}
    return {p.stem: yaml.safe_load(p.read_text()) or {} for p in sorted(folder.glob("*.yaml"))}


def validate(cfg: DictConfig) -> None:
    """Reject invalid combinations with the valid choices in the message."""
    if cfg.mode not in MODES:
        raise ConfigError(f"mode={cfg.mode} is not valid; valid: {', '.join(MODES)}")
    if cfg.mode != "train" and not cfg.ckpt:
        raise ConfigError(f"mode={cfg.mode} needs a checkpoint of a finished run: add ckpt=PATH/TO/best.pt")
    if cfg.get("input") and cfg.mode != "predict":
        raise ConfigError(
            f"input={cfg.input} is read by mode=predict only (predict on a folder of frames), not mode={cfg.mode}"
        )
    if cfg.dataset.task != cfg.task.name:
        fitting = [n for n, o in group_options("dataset").items() if o.get("task") == cfg.task.name]
        raise ConfigError(
            f"dataset={cfg.dataset.name} is a {cfg.dataset.task} dataset, not for task={cfg.task.name}; "
            f"valid datasets for task={cfg.task.name}: {', '.join(fitting)}"
        )
    if cfg.backbone.name not in cfg.pretraining.backbones:
        fitting = [
            n for n, o in group_options("pretraining").items() if cfg.backbone.name in o.get("backbones", [])
        ]
        raise ConfigError(
            f"pretraining={cfg.pretraining.name} exists for backbone {', '.join(cfg.pretraining.backbones)}, not "
            f"backbone={cfg.backbone.name}; valid pretraining for backbone={cfg.backbone.name}: {', '.join(fitting)}"
        )
    if cfg.task.name == "pretrain":
        _validate_pretrain(cfg)
    if cfg.mode == "train" and cfg.dataset.get("split") == "all":
        raise ConfigError(
            f"dataset.split=all (dataset={cfg.dataset.name}) leaves no train/val split for mode=train: train with "
            "dataset.split=study, evaluate every image with mode=eval ckpt=PATH dataset.split=all"
        )
    t = cfg.trainer
    for key in ("epochs", "batch_size", "accum_steps", "micro_batch"):
        if t.get(key, 1) != "auto" and int(t.get(key, 1)) < 1:
            raise ConfigError(f"trainer.{key}={t[key]} must be at least 1")


def _validate_pretrain(cfg: DictConfig) -> None:
    """``task=pretrain``: a method × backbone pair with a published recipe, trained from scratch or from a row."""
    if cfg.backbone.name not in cfg.ssl.backbones:
        pairs = "; ".join(
            f"ssl={name} with backbone={'|'.join(o.get('backbones', []))}"
            for name, o in group_options("ssl").items()
        )
        raise ConfigError(
            f"ssl={cfg.ssl.name} has no recipe for backbone={cfg.backbone.name}; valid pairs: {pairs}"
        )
    if cfg.mode != "train":
        raise ConfigError(
            f"task=pretrain runs in mode=train only (mode={cfg.mode}): its output is the exported backbone, which "
            "a finetuning task evaluates (pretraining=hyperkvasir_<method> paths.weights_dir=<run>/export)"
        )
    if cfg.frozen:
        raise ConfigError("frozen=true freezes the backbone, which task=pretrain trains: drop frozen=true")


def _drop(container: dict, dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        container = container.get(p, {})
    if isinstance(container, dict):
        container.pop(leaf, None)


def fingerprint(cfg: DictConfig, weights: InitialWeights | None = None) -> str:
    """A short hash of everything that defines the experiment (see NOT_IDENTITY for what does not), including the
    identity of the initial weights: the sha256 of the local file that is loaded, or the timm hub tag.

    ``weights`` is :func:`ssl4gie.run.weights.run_weights` of ``cfg`` (looked up, and raising its errors, when not
    given). A row without weights (random) adds nothing, so its fingerprint is what it was before weights counted.
    """
    weights = run_weights(cfg) if weights is None else weights
    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("hydra", None)
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
    # Two spellings of one experiment: classification's task.macro_over=null means its protocol's classes
    task = container.get("task")
    if isinstance(task, dict) and task.get("name") == "classification" and task.get("macro_over", "") is None:
        task["macro_over"] = "all" if task.get("protocol") == "study" else "present"
    if (identity := weights.identity()) is not None:
        container["initial_weights"] = identity
    return hashlib.sha256(json.dumps(container, sort_keys=True, default=str).encode()).hexdigest()[:16]


def row_code(cfg: DictConfig) -> str:
    """The study's row code, e.g. RN-IN-MC or VT-NA-NA (SPEC 2.1)."""
    return f"{cfg.backbone.code}-{cfg.pretraining.code}"


def instantiate_checked(node: DictConfig, **kwargs):
    """``hydra.utils.instantiate``, but a user-facing error raised by the target comes out as itself.

    Hydra wraps every exception of a ``_target_`` in an InstantiationException with a multi-line message; a
    DatasetError from a reader should reach the user as its own one line.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from ssl4gie.errors import Ssl4gieError

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, Ssl4gieError):
            raise e.__cause__ from None
        raise
