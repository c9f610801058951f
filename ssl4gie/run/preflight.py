"""A sweep checked before it starts: every cell's dataset, weights and checkpoint, in the driver, before any cell
runs or any job is submitted (a Hydra callback's ``on_multirun_start``, for every launcher).

For each cell (composed as its job will compose it, :mod:`ssl4gie.run.cells`):

* its dataset: the root in the layout its reader expects and the image count against the published one
  (:mod:`ssl4gie.run.data_checks`; another count is a warning naming both), or ``input`` of ``mode=predict``;
* in training, its initial weights: the file there and, where ``python -m ssl4gie.fetch`` recorded it or a hash is
  published, unchanged; a row whose weights come from the Hugging Face hub says so unless they are cached (and
  stops the sweep when ``HF_HUB_OFFLINE`` is set);
* in ``mode=eval|predict``, its checkpoint (``ckpt``).

What is missing is refused in one table (cells, what is missing, the command or page that supplies it), exit
status 2, nothing started. A cell whose dataset is absent under ``skip_missing_data=true``, or whose checkpoint is
absent under ``skip_missing_ckpt=true``, is listed as skipped instead (it writes ``skipped.json`` when it runs).
``preflight=false`` turns the check off. A single run (no ``-m``) is not checked here: its own errors say the same.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ssl4gie.run import released
from ssl4gie.run.cells import cell_configs
from ssl4gie.run.data_checks import check_dataset

log = logging.getLogger("ssl4gie.preflight")
# the nodes of a cell's config that the checks read (and the resolvers of ckpt read from)
KEYS = (
    "paths",
    "mode",
    "ckpt",
    "input",
    "seed",
    "skip_missing_data",
    "skip_missing_ckpt",
    "dataset",
    "pretraining",
    "backbone",
    "task",
)


@dataclass(frozen=True)
class Finding:
    """Something a cell needs that is not there: ``what`` (one line naming the file or folder) and ``fix`` (the
    command or page that supplies it); ``skip``: the option under which the cell is skipped instead."""

    what: str
    fix: str
    skip: str | None = None


@dataclass
class Report:
    """The preflight of one sweep: cells by finding (blocking, then skipped), warnings, cells not checked."""

    cells: list[tuple[str, ...]]  # every cell's varying overrides
    problems: dict[Finding, list[tuple[str, ...]]] = field(default_factory=dict)
    skipped: dict[Finding, list[tuple[str, ...]]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _fetch_command(name: str) -> str | None:
    """``python -m ssl4gie.fetch <name>`` (with what a login source needs), None when fetch does not know it."""
    from ssl4gie.errors import Ssl4gieError
    from ssl4gie.fetch.registry import resolve

    try:
        sources = resolve(name)
    except Ssl4gieError:
        return None
    logins = sorted({s.login for s in sources if s.login})
    return f"python -m ssl4gie.fetch {name}" + "".join(f" (needs {login})" for login in logins)


def _dataset_findings(node: dict, skip: bool, cache: dict) -> tuple[list[Finding], list[str]]:
    key = json.dumps(node, sort_keys=True, default=str)
    if key not in cache:
        cache[key] = check_dataset(node)
    found = cache[key]
    if found.problem is None:
        return [], list(found.warnings)
    name = str(node.get("name"))
    fix = _fetch_command(name) or (f"download it from {node['download']}" if node.get("download") else None)
    if not found.missing:  # there, but not as its reader reads it (fetch leaves a folder it did not place)
        fix = f"point dataset.root at the folder that holds it, or move {found.root} away" + (
            f", then {fix}" if fix else ""
        )
    fix = fix or "correct the path (option dataset.root)"
    skippable = skip and found.missing
    return [Finding(f"dataset {name}: {found.problem}", fix, "skip_missing_data" if skippable else None)], []


def _hub_cached(tag: str) -> bool:
    """Whether timm's hub weights ``tag`` are in the Hugging Face cache (a run then needs no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        if isinstance(try_to_load_from_cache(f"timm/{tag}", filename), str):
            return True
    return False


def _weights_findings(cfg: DictConfig, cache: dict) -> tuple[list[Finding], list[str]]:
    """The initial weights of a training cell, found as the run finds them (:func:`ssl4gie.run.weights.weights_file`)."""
    pretraining, backbone = cfg.pretraining, cfg.backbone
    if not pretraining.get("pretrained"):
        return [], []
    weights_dir = Path(str(cfg.paths.weights_dir)).expanduser()
    key = (pretraining.name, backbone.name, str(pretraining.get("checkpoint")), str(weights_dir))
    if key not in cache:
        cache[key] = _check_weights(pretraining, backbone, cfg.paths, weights_dir)
    return cache[key]


def _check_weights(
    pretraining: Any, backbone: Any, paths: Any, weights_dir: Path
) -> tuple[list[Finding], list[str]]:
    from ssl4gie.fetch import Paths, check
    from ssl4gie.fetch.registry import weights_of
    from ssl4gie.fetch.verify import matches
    from ssl4gie.run.weights import file_sha256

    label = f"weights {pretraining.name} {backbone.name}"
    if pretraining.get("checkpoint"):
        path = Path(str(pretraining.checkpoint)).expanduser()
        if path.is_file():
            return [], []
        return [
            Finding(f"{label}: {path} does not exist", "correct the path (option pretraining.checkpoint)")
        ], []
    sources = weights_of(str(pretraining.name), str(backbone.name))
    fix = sources[0].command if sources else None
    if sources and sources[0].login:
        fix += f" (needs {sources[0].login}: it says where to save the file)"
    url = (pretraining.get("urls") or {}).get(backbone.name)
    fix = fix or (f"download {url}" if url else "see README: Pretrained weights")
    name = (pretraining.get("files") or {}).get(backbone.name)
    path = weights_dir / str(name) if name else None
    if path is not None and path.is_file():
        if not sources:
            return [], []
        status = check(sources[0], Paths(Path(str(paths.data_dir)).expanduser(), weights_dir))
        if status.state == "changed":
            return [
                Finding(f"{label}: {status.detail}, not as fetched", f"restore it, or move it away and {fix}")
            ], []
        published = sources[0].files[0].sha256 if sources[0].files else None
        if status.state == "present" and published and not matches(published, file_sha256(path)):
            what = f"{label}: {path} has another sha256 than the published {published}"
            return [Finding(what, f"move it away and {fix}")], []
        return [], []
    hub = (pretraining.get("hub") or {}).get(backbone.name)
    if hub:
        if _hub_cached(str(hub)):
            return [], []
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
            return [
                Finding(f"{label}: timm hub weights '{hub}' are not cached and HF_HUB_OFFLINE is set", fix)
            ], []
        note = f"{label}: no {path} in paths.weights_dir, so each job downloads timm hub weights '{hub}' (needs the network; `{fix}` saves the file instead)"
        return [], [note]
    where = path if path is not None else f"a {backbone.name} file"
    return [Finding(f"{label}: {where} does not exist (paths.weights_dir)", fix)], []


def _checkpoint_findings(cfg: DictConfig) -> list[Finding]:
    ckpt = cfg.ckpt
    if not ckpt:
        return [Finding(f"mode={cfg.mode} needs a checkpoint (option ckpt)", "ckpt=PATH/TO/best.pt")]
    path = Path(str(ckpt)).expanduser()
    if path.is_file():
        return []
    fix = released.fetch_hint(path, cfg.paths.released_dir) or (
        "python run.py -m sweep=study (or point paths.study_sweep / ckpt at it)"
        if path.name == "best.pt"
        else "correct the path (option ckpt)"
    )
    return [
        Finding(
            f"checkpoint {path} does not exist", fix, "skip_missing_ckpt" if cfg.skip_missing_ckpt else None
        )
    ]


def check_cell(cfg: DictConfig, cache: dict) -> tuple[list[Finding], list[str]]:
    """What one cell needs and lacks, in the order the run meets it (eval/predict: the checkpoint, then the data;
    training: the weights, then the data), and its warnings. A first finding that may be skipped skips the cell."""
    findings: list[Finding] = []
    warnings: list[str] = []
    if cfg.mode != "train":
        findings += _checkpoint_findings(cfg)
    else:
        found, warnings = _weights_findings(cfg, cache)
        findings += found
    if cfg.mode == "predict" and cfg.get("input"):
        folder = Path(str(cfg.input)).expanduser()
        if not folder.is_dir():
            findings.append(Finding(f"input {folder} does not exist", "correct the path (option input)"))
        return findings, warnings
    nodes = [cfg.dataset]
    probe = OmegaConf.select(cfg, "task.probe.data", default=None)
    if probe is not None:  # pretraining's kNN probe reads a labelled set as well
        nodes.append(probe)
    skip = cfg.mode != "train" and bool(cfg.skip_missing_data)
    for node in nodes:
        found, warned = _dataset_findings(OmegaConf.to_container(node, resolve=True), skip, cache)
        findings, warnings = findings + found, warnings + warned
    return findings, warnings


def check_sweep(config: DictConfig) -> Report:
    """The preflight of the multirun ``config`` (see the module docstring). Raises ValueError for a sweeper whose
    cells cannot be listed."""
    start = time.perf_counter()
    cells = cell_configs(config, KEYS)
    report = Report([c.varying for c in cells])
    cache: dict = {}
    for cell, label in zip(cells, report.cells, strict=True):
        if cell.config is None:
            report.unchecked.append(f"{cell.label}: {cell.error}")
            continue
        try:
            findings, warnings = check_cell(cell.config, cache)
        except (
            Exception
        ) as e:  # an option the run itself will report (an interpolation that cannot resolve, ...)
            report.unchecked.append(f"{cell.label}: {type(e).__name__}: {str(e).splitlines()[0]}")
            continue
        if findings and findings[0].skip:  # the run stops there, writing skipped.json
            report.skipped.setdefault(findings[0], []).append(label)
            continue
        for finding in findings:
            if (
                not finding.skip
            ):  # (a later one that may be skipped would skip the cell once the first is fixed)
                report.problems.setdefault(finding, []).append(label)
        report.warnings += [w for w in warnings if w not in report.warnings]
    report.seconds = time.perf_counter() - start
    return report


def describe_cells(group: list[tuple[str, ...]], every: list[tuple[str, ...]]) -> str:
    """A group of cells in a few words: ``all 72 cells``, ``column=c3vd,row=* (12 cells)`` when the group is every
    cell with those values, else the first cells by name."""
    if len(group) == len(every):
        return f"all {len(every)} cells" if len(every) > 1 else (",".join(every[0]) or "the cell")
    if len(group) == 1:
        return ",".join(group[0])

    def values(cell: tuple[str, ...]) -> dict[str, str]:
        return dict(o.split("=", 1) if "=" in o else (o, "") for o in cell)

    parsed = [values(c) for c in group]
    fixed = {k: v for k, v in parsed[0].items() if all(p.get(k) == v for p in parsed)}
    matching = [c for c in every if all(values(c).get(k) == v for k, v in fixed.items())]
    if fixed and len(matching) == len(group):
        pattern = ",".join(f"{k}={fixed.get(k, '*')}" for k in sorted(parsed[0]))
        return f"{pattern} ({len(group)} cells)"
    shown = "; ".join(",".join(c) for c in group[:3])
    return shown + (f" and {len(group) - 3} more" if len(group) > 3 else "")


def format_table(rows: list[tuple[str, str, str]], header: tuple[str, str, str]) -> str:
    """A Markdown table, columns padded so that it reads in a terminal too."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]

    def line(row: tuple[str, str, str]) -> str:
        return "| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


ORDER = ("dataset", "input", "weights", "checkpoint")  # the table's rows: what is missing, data first


def _rows(
    groups: dict[Finding, list[tuple[str, ...]]], every: list, text: Callable
) -> list[tuple[str, str, str]]:
    def rank(item: tuple[Finding, list]) -> int:
        word = item[0].what.split(" ", 1)[0]
        return ORDER.index(word) if word in ORDER else len(ORDER)

    ordered = sorted(groups.items(), key=rank)  # stable: in launch order within each kind
    return [(describe_cells(cells, every), finding.what, text(finding)) for finding, cells in ordered]


class Preflight(Callback):
    """Hydra callback: :func:`check_sweep` in the driver before the sweep is launched; what is missing is logged
    as one table and ends the sweep with exit status 2 (``SystemExit``: no traceback), before anything runs."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not config.get("preflight", True):
            log.info(
                "[preflight] off (preflight=false): the cells' data, weights and checkpoints are not checked"
            )
            return
        try:
            report = check_sweep(config)
        except Exception as e:  # never the reason a sweep cannot start: the cells report their own problems
            log.warning("[preflight] cells not checked (%s: %s)", type(e).__name__, str(e).splitlines()[0])
            return
        for warning in report.warnings:
            log.warning("[preflight] %s", warning)
        for line in report.unchecked:
            log.warning("[preflight] not checked: %s", line)
        n = len(report.cells)
        if report.skipped:
            count = sum(len(c) for c in report.skipped.values())
            rows = _rows(report.skipped, report.cells, lambda f: f"skipped ({f.skip}=true); {f.fix}")
            log.info(
                "[preflight] %d of %d cells will be skipped:\n%s",
                count, n, format_table(rows, ("cells", "missing", "then")),
            )  # fmt: skip
        if report.problems:
            failing = len({c for cells in report.problems.values() for c in cells})
            rows = _rows(report.problems, report.cells, lambda f: f.fix)
            log.error(
                "[preflight] %d of %d cells cannot run; nothing was started (checked in %.1f s; preflight=false "
                "skips this check):\n%s",
                failing, n, report.seconds, format_table(rows, ("cells", "missing", "get it with")),
            )  # fmt: skip
            raise SystemExit(2)
        log.info(
            "[preflight] %d cells: data, weights and checkpoints present (checked in %.1f s)",
            n - sum(len(c) for c in report.skipped.values()), report.seconds,
        )  # fmt: skip
