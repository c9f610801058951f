"""The config tree (``conf/`` beside the package): its group options, composing it outside a Hydra run, and
instantiating a ``_target_`` so that a user-facing error reaches the user as itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig

from ssl4gie.errors import ConfigError, Ssl4gieError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def group_options(group: str) -> dict[str, dict]:
    """Options of a config group with their YAML contents (empty if the conf folder is not beside the package)."""
    folder = CONF_DIR / group
    if not folder.is_dir():
        return {}
    return {p.stem: yaml.safe_load(p.read_text()) or {} for p in sorted(folder.glob("*.yaml"))}


def compose(overrides: list[str], what: str = "these options") -> DictConfig:
    """The real config with ``overrides``, as ``run.py`` composes it (for tools that are not a Hydra run: the
    benchmarks, the leakage check); a bad option is a ConfigError naming ``what`` was composed."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(f"cannot compose the config (conf/) of {what}: {e}") from e


def instantiate_checked(node: DictConfig, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, but a user-facing error raised by the target comes out as itself.

    Hydra wraps every exception of a ``_target_`` in an InstantiationException with a multi-line message; a
    DatasetError from a reader should reach the user as its own one line.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, Ssl4gieError):
            raise e.__cause__ from None
        raise
