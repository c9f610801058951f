"""The command line checked once, before Hydra starts a run or a sweep: every option must be one that ssl4gie
reads, and every value must have the type of the option's default.

Hydra itself refuses an unknown ``trainer.epoch=2`` with a hint to write ``+trainer.epoch=2``, which it then
accepts, so that the typo silently trains the default 200 epochs; and it takes ``trainer.epochs=two`` as a string
that fails deep inside the run. This pass turns each into one line naming the option, with the closest valid
name or the expected type, and exit status 2 (:func:`check_command_line`, called by ``run.py``).
"""

from __future__ import annotations

import difflib
import logging
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from ssl4gie.errors import ConfigError
from ssl4gie.utils.conf import CONF_DIR

log = logging.getLogger("ssl4gie")
_ABSENT = object()


def _flat_keys(node: Any, prefix: str = "") -> Iterable[str]:
    if isinstance(node, DictConfig):
        for key in node:
            dotted = f"{prefix}{key}"
            yield dotted
            yield from _flat_keys(node._get_node(key), f"{dotted}.")


def _lookup(schema: DictConfig, key: str) -> Any:
    """The value at ``key`` (interpolations resolved where they can be), ``_ABSENT`` if there is no such key; an
    option below one that is null (``dataset.synthetic.n``) is refused: that option is set whole."""
    node: Any = schema
    for depth, part in enumerate(key.split(".")):
        if node is None:
            above = ".".join(key.split(".")[:depth])
            leaf = ".".join(key.split(".")[depth:])
            raise ConfigError(f"{key}: {above} is null, so it is set whole, e.g. {above}={{{leaf}: ...}}")
        if not isinstance(node, DictConfig) or part not in node:
            return _ABSENT
        child = node._get_node(part)
        try:
            node = node[part]
        except Exception:  # an interpolation that needs a value this schema lacks: its raw text
            node = child._value()
    return node


def _kind(default: Any) -> str | None:
    """What a value must be, from the option's default (None: anything)."""
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, int):
        return "an integer"
    if isinstance(default, float):
        return "a number"
    if isinstance(default, ListConfig | list):
        return "a list"
    if isinstance(default, DictConfig | dict):
        return "a mapping"
    return None  # a string (often a choice such as auto | cpu | cuda, or a number written as one) or null


def _fits(value: Any, kind: str) -> bool:
    if value is None:
        return True
    return {
        "true or false": lambda v: isinstance(v, bool),
        "an integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "a number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "a list": lambda v: isinstance(v, list | ListConfig),
        "a mapping": lambda v: isinstance(v, dict | DictConfig),
    }[kind](value)


def _suggest(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def check_overrides(overrides: Sequence[str]) -> None:
    """Refuse, with one :class:`ConfigError` line, the first override that names no option of ssl4gie (``+``
    additions included), a config group option that does not exist, or a value whose type differs from the
    option's default. ``hydra.*`` options and deletions (``~key``) are Hydra's to check."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as e:
        raise ConfigError(f"cannot read the command line: {str(e).splitlines()[0]}") from None
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        repository = GlobalHydra.instance().config_loader().repository
        groups, keys = [], []
        for o in parsed:
            key = o.key_or_group
            if key == "hydra" or key.startswith(("hydra.", "hydra/")) or o.type == OverrideType.DEL:
                continue
            is_group = "." not in key and repository.group_exists(key)
            (groups if is_group else keys).append(o)
        for o in groups:
            options = GlobalHydra.instance().config_loader().get_group_options(o.key_or_group)
            for choice in _values(o):
                if choice is not None and str(choice) not in options:
                    raise ConfigError(
                        f"{o.key_or_group}={choice} is not an option of {o.key_or_group}"
                        f"{_suggest(str(choice), options)}; valid: {', '.join(options)}"
                    )
        # The options this command line's groups provide (the first choice of a swept group stands for all)
        chosen = [f"{'+' if o.type == OverrideType.ADD else ''}{o.key_or_group}={_first(o)}" for o in groups]
        try:
            schema = compose(config_name="config", overrides=chosen)
        except HydraException as e:
            raise ConfigError(
                f"cannot compose the config of {' '.join(chosen)}: {str(e).splitlines()[0]}"
            ) from None
        known = [k for k in _flat_keys(schema) if not k.startswith("hydra")]
        known += [
            g for g in ("task", "backbone", "pretraining", "dataset", "trainer", "logger") if g not in known
        ]
    for o in keys:
        _check_key(o, schema, known)


def _values(o: Any) -> list[Any]:
    return list(o.sweep_iterator()) if o.is_sweep_override() else [o.value()]


def _first(o: Any) -> Any:
    return _values(o)[0]


def _check_key(o: Any, schema: DictConfig, known: list[str]) -> None:
    from hydra.core.override_parser.types import OverrideType

    key = o.key_or_group
    default = _lookup(schema, key)
    if default is _ABSENT:
        added = "+" if o.type in (OverrideType.ADD, OverrideType.FORCE_ADD) else ""
        raise ConfigError(
            f"{added}{key}: ssl4gie has no option {key}{_suggest(key, known)}; `python run.py --cfg job` lists "
            "the options of a run"
        )
    if o.type == OverrideType.ADD:
        raise ConfigError(f"+{key}: {key} is an option already; set it without the '+': {o.input_line[1:]}")
    kind = _kind(default)
    if kind is None:
        return
    for value in _values(o):
        if not _fits(value, kind):
            shown = (
                OmegaConf.to_container(default) if isinstance(default, DictConfig | ListConfig) else default
            )
            raise ConfigError(f"{key}={value}: expected {kind}, as its default {shown!r}")


def check_command_line(argv: Sequence[str]) -> None:
    """``run.py``'s check of ``argv`` (:func:`check_overrides` of its overrides): a bad option is one line on
    stderr and exit status 2, before Hydra composes anything. A command line with its own config (``-cp``,
    ``-cn``, ``-cd``) is left to Hydra."""
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(list(argv))
    if args.config_path or args.config_name or args.config_dir or args.shell_completion:
        return
    try:
        check_overrides(args.overrides)
    except ConfigError as e:
        print(f"Error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
