"""The cells of a multirun as Hydra's basic sweeper makes them, and each cell's config, composed cheaply.

Hydra composes one config in about a tenth of a second (its defaults tree is rebuilt and every YAML file parsed
again), and its sweeper already composes every cell once before launching; composing the 72 cells of the study
again would double that. A cell differs from the others by a few overrides: a group option (``row=rn_in_mc``,
``column=c3vd``) changes a few top-level nodes (backbone and pretraining; task and dataset), a value option
(``seed=43``, ``dataset.train_fraction=0.1``) one value. So :func:`cell_configs` composes the overrides that every
cell shares once, each group option once on top of them, and assembles each cell from those parts: the nodes its
group options change, then its value options applied as Hydra applies command-line overrides. Group options that
change the same node (``column=`` with ``dataset=``) are composed together, as one cell would be.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf, flag_override

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
_ABSENT = object()


@dataclass(frozen=True)
class Cell:
    """One cell: its overrides as the sweeper passes them to the job, ``varying`` (those in which it differs from
    the other cells, sorted as Hydra's ``override_dirname``; joined: ``label``), and its composed ``config``, or the
    ``error`` that composing it raised."""

    overrides: tuple[str, ...]
    varying: tuple[str, ...]
    config: DictConfig | None = None
    error: str | None = None

    @property
    def label(self) -> str:
        return ",".join(self.varying)


def sweep_overrides(config: DictConfig) -> list[list[str]]:
    """Every cell's overrides, in launch order, as Hydra's basic sweeper expands them: the sweeper's ``params``,
    then the command line (which replaces a param of the same key), their sweeps multiplied out. Raises
    ValueError for another sweeper, whose parameters mean something else."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    sweeper = OmegaConf.select(config, "hydra.sweeper._target_", default=None)
    if sweeper != BASIC_SWEEPER:
        raise ValueError(f"hydra/sweeper {sweeper} expands its cells itself")
    params = dict((config.hydra.sweeper.get("params") or {}).items())
    arguments = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    parsed = OverridesParser.create().parse_overrides(arguments)
    return BasicSweeper.split_arguments(parsed, None)[0]


@contextlib.contextmanager
def _config_loader() -> Iterator[Any]:
    """Hydra's config loader: the driver's own (``run.py``'s search path), else one over ``conf/``."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        yield GlobalHydra.instance().config_loader()
        return
    from ssl4gie.utils.conf import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield GlobalHydra.instance().config_loader()


def _raw(cfg: DictConfig) -> dict:
    """The config without ``hydra``, interpolations unresolved: what a group option changed is compared on it."""
    with flag_override(cfg, "struct", False):
        container = OmegaConf.to_container(cfg, resolve=False)
    container.pop("hydra", None)
    return container


def cell_configs(config: DictConfig, keys: tuple[str, ...] | None = None) -> list[Cell]:
    """Each cell of the multirun ``config`` (the driver's config) with its config composed as its job will compose
    it (see the module docstring). ``keys``: only these top-level nodes (and the value options that set them),
    which makes a cell a few milliseconds instead of a deep copy of the whole config; ``hydra`` is then left out.
    A cell whose config cannot be composed has ``error`` set (the sweeper reports it as well). Raises ValueError
    for a sweeper other than Hydra's basic one."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    cells = sweep_overrides(config)
    if not cells:
        return []
    parser = OverridesParser.create()
    hydra_overrides = [str(o) for o in config.hydra.overrides.hydra]
    shared = [o for o in cells[0] if all(o in cell for cell in cells)]
    with _config_loader() as loader:

        def compose(overrides: tuple[str, ...]) -> DictConfig:
            from hydra.types import RunMode

            return loader.load_configuration(
                config_name=config.hydra.job.config_name,
                overrides=hydra_overrides + list(overrides),
                run_mode=RunMode.RUN,
            )

        def is_group(override: Any) -> bool:
            key = override.key_or_group
            return "." not in key and not key.startswith("hydra") and loader.repository.group_exists(key)

        composed: dict[tuple[str, ...], tuple[DictConfig, dict]] = {}

        def part(options: tuple[str, ...]) -> tuple[DictConfig, dict]:
            """``shared`` + ``options`` composed, and its raw form (cached)."""
            if options not in composed:
                cfg = compose(tuple(shared) + options)
                composed[options] = (cfg, _raw(cfg))
            return composed[options]

        base, base_raw = part(())

        def changed(options: tuple[str, ...]) -> set[str]:
            raw = part(options)[1]
            return {
                k for k in raw.keys() | base_raw.keys() if raw.get(k, _ABSENT) != base_raw.get(k, _ABSENT)
            }

        out = []
        for overrides in cells:
            varying = [o for o in overrides if o not in shared]
            label = tuple(sorted(varying))
            try:
                parsed = parser.parse_overrides(varying)
                groups = [o.input_line for o in parsed if is_group(o)]
                values = [o for o in parsed if not is_group(o)]
                nodes = dict(base_raw)
                for options in _components(groups, changed):
                    raw = part(options)[1]
                    for key in changed(options):
                        if key in raw:
                            nodes[key] = raw[key]
                        else:
                            nodes.pop(key, None)
                cfg = _assemble(base, base_raw, nodes, values, keys)
            except (HydraException, OmegaConfBaseException, ValueError) as e:
                out.append(Cell(tuple(overrides), label, error=str(e).splitlines()[0]))
                continue
            out.append(Cell(tuple(overrides), label, cfg))
    return out


def _assemble(
    base: DictConfig, base_raw: dict, nodes: dict, values: list, keys: tuple[str, ...] | None
) -> DictConfig:
    """A cell's config from its top-level ``nodes`` (``base``'s where the cell's group options left them alone) and
    its value options; only the ``keys`` nodes where given, else the whole config with the hydra node."""
    if keys is None:
        cfg = copy.deepcopy(base)
        with flag_override(cfg, "struct", False):
            for key in nodes.keys() | base_raw.keys():
                if key not in nodes:
                    del cfg[key]
                elif nodes[key] is not base_raw.get(key, _ABSENT):
                    cfg[key] = nodes[key]
    else:
        cfg = OmegaConf.create({k: nodes[k] for k in keys if k in nodes})
        values = [o for o in values if o.key_or_group.lstrip("+~").split(".")[0] in keys]
    with flag_override(cfg, "struct", False):
        _apply_values(values, cfg)
    return cfg


def _components(groups: list[str], changed) -> list[tuple[str, ...]]:
    """The cell's group options in sets that are composed together: options whose changed nodes overlap (or one
    that cannot be composed alone) join one set, so that Hydra resolves their precedence as in the cell itself."""
    sets: list[tuple[list[str], set[str]]] = []
    for option in groups:
        try:
            nodes = changed((option,))
        except Exception:  # valid only beside another option: composed with all the others
            return [tuple(groups)] if groups else []
        merged = [s for s in sets if s[1] & nodes]
        sets = [s for s in sets if not s[1] & nodes]
        options = [o for s in merged for o in s[0]] + [option]
        sets.append((options, nodes.union(*(s[1] for s in merged))))
    result = []
    for options, _ in sets:
        if len(options) > 1:
            changed(tuple(options))  # the joint compose (cached) decides their precedence
        result.append(tuple(options))
    return result


def _apply_values(overrides: list[Any], cfg: DictConfig) -> None:
    """Value overrides (``seed=43``, ``+key=v``, ``~key``) applied as Hydra applies the command line's."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    if overrides:
        ConfigLoaderImpl._apply_overrides_to_config(overrides, cfg)
