"""The sources of ssl4gie's data and weights, read from the configs: what to fetch for a name, a row or a sweep.

Data sources are the files in ``ssl4gie/fetch/sources/`` (one per archive or folder); each dataset config names its own
(``dataset.source``). Weight sources come from the pretraining rows (``conf/pretraining/``): one per backbone file,
with the row's ``files`` (the name the run looks for in ``paths.weights_dir``), ``urls`` and ``license``, and its
``source`` block (``sha256``, ``size``, ``login``, or ``folder`` + ``match`` for a file of the study's Drive folder).
The files are read as plain YAML (no Hydra composition): listing the sources of a 72-cell sweep takes milliseconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import yaml

from ssl4gie.errors import ConfigError
from ssl4gie.utils.conf import CONF_DIR as CONF

SOURCES = Path(__file__).resolve().parent / "sources"  # one file per archive or folder
SWEEPS = CONF / "sweep"
STORES = ("data", "weights")
_HEX = re.compile(r"^[0-9a-f]{8,64}$")


@dataclass(frozen=True)
class RemoteFile:
    """One file of a source. ``name`` is where it is saved and its name on a mirror (``--mirror URL``: URL/name);
    it comes from ``url`` (HTTP(S)), ``drive`` (a Google Drive file id) or the source's Dataverse listing.
    ``sha256``: the published hash, or its first hex digits (torch hub names); ``None``: recorded on first use."""

    name: str
    url: str | None = None
    drive: str | None = None
    size: int | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class Source:
    """Where one dataset archive, weights file or Drive folder comes from, and where it lands.

    ``store``/``into``: the destination, relative to ``paths.data_dir`` (data) or ``paths.weights_dir`` (weights).
    An archive source (``layout`` set) is unpacked and the folder of the archive that holds ``layout`` (or its
    sub-folder ``move``) becomes ``into``; with ``each``, every file is its own archive and lands in
    ``into/<file stem>``. A file source without ``layout`` is saved as ``into`` itself. ``drive_folder``: every
    file of a Google Drive folder, saved under ``into/`` by its path in the folder. ``folder`` + ``match``: the one
    file of another source's Drive folder whose name holds all the words of ``match``. ``login``: what a download
    needs beyond the link; such a source is never attempted (the user downloads it, fetch verifies and places it).
    """

    name: str
    title: str
    page: str
    licence: tuple[str, ...]
    store: str
    into: str
    files: tuple[RemoteFile, ...] = ()
    login: str | None = None
    layout: str | None = None
    move: str | None = None
    each: bool = False
    drive_folder: str | None = None
    dataverse: tuple[str, str] | None = None  # (server, doi)
    folder: str | None = None
    match: tuple[str, ...] = ()
    command: str = ""
    serves: tuple[str, ...] = field(default=(), compare=False)  # dataset names or rows, for messages

    @property
    def is_archive(self) -> bool:
        return self.layout is not None


def _yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def _check_hash(value, where: str) -> str | None:
    if value is None:
        return None
    text = str(value).lower()
    if not _HEX.match(text):
        raise ConfigError(f"{where}: sha256 {value!r} is not 8 to 64 hex digits")
    return text


def _data_source(path: Path, serves: tuple[str, ...]) -> Source:
    raw = _yaml(path)
    where = f"ssl4gie/fetch/sources/{path.name}"
    if raw.get("store") not in STORES:
        raise ConfigError(f"{where}: store must be one of {', '.join(STORES)}, got {raw.get('store')!r}")
    files = tuple(
        RemoteFile(
            name=str(f["name"]),
            url=f.get("url"),
            drive=f.get("drive"),
            size=None if f.get("size") is None else int(f["size"]),
            sha256=_check_hash(f.get("sha256"), where),
        )
        for f in raw.get("files") or []
    )
    dataverse = raw.get("dataverse")
    name = str(raw.get("name", path.stem))
    if name != path.stem:
        raise ConfigError(f"{where}: name {name!r} must be the file's name ({path.stem})")
    return Source(
        name=name,
        title=str(raw.get("title", name)),
        page=str(raw.get("page", "")),
        licence=tuple(str(x) for x in raw.get("licence") or ()),
        store=raw["store"],
        into=str(raw["into"]),
        files=files,
        login=raw.get("login"),
        layout=raw.get("layout"),
        move=raw.get("move"),
        each=bool(raw.get("each", False)),
        drive_folder=raw.get("drive_folder"),
        dataverse=(str(dataverse["server"]).rstrip("/"), str(dataverse["doi"])) if dataverse else None,
        command=f"python -m ssl4gie.fetch {name}",
        serves=serves,
    )


@cache
def _rows() -> dict[str, tuple[str, str]]:
    """Row name -> (backbone, pretraining), from the rows' defaults lists."""
    rows = {}
    for path in sorted((CONF / "row").glob("*.yaml")):
        chosen = _overrides(path)
        rows[path.stem] = (chosen.get("backbone", "resnet50"), chosen.get("pretraining", "random"))
    return rows


def _overrides(path: Path) -> dict[str, str]:
    """``override /group: option`` entries of a config's defaults list, as {group: option}."""
    chosen = {}
    for entry in _yaml(path).get("defaults") or []:
        if isinstance(entry, dict):
            for key, value in entry.items():
                group = str(key).removeprefix("override").strip().lstrip("/")
                chosen[group] = str(value)
    return chosen


def _weight_sources(pretraining: str, raw: dict) -> dict[str, Source]:
    where = f"conf/pretraining/{pretraining}.yaml"
    extra = raw.get("source") or {}
    files, urls = raw.get("files") or {}, raw.get("urls") or {}
    hashes, sizes, match = extra.get("sha256") or {}, extra.get("size") or {}, extra.get("match") or {}
    rows = {pair: row for row, pair in _rows().items()}
    sources = {}
    for backbone, file_name in files.items():
        url = urls.get(backbone)
        row = rows.get((backbone, pretraining))
        command = f"row={row}" if row else f"pretraining={pretraining}"
        sources[f"{pretraining}:{backbone}"] = Source(
            name=f"{pretraining}:{backbone}",
            title=f"{raw.get('code', pretraining)} {backbone} weights ({pretraining})",
            page=str(url or ""),
            licence=(str(raw.get("license", "")),) if raw.get("license") else (),
            store="weights",
            into=str(file_name),
            files=(
                RemoteFile(
                    name=str(file_name),
                    url=None if extra.get("folder") or extra.get("login") else url,
                    size=sizes.get(backbone),
                    sha256=_check_hash(hashes.get(backbone), where),
                ),
            ),
            login=extra.get("login"),
            folder=extra.get("folder"),
            match=tuple(str(w).lower() for w in match.get(backbone, ())),
            command=f"python -m ssl4gie.fetch {command}",
            serves=(row,) if row else (),
        )
        if extra.get("folder") and not match.get(backbone):
            raise ConfigError(
                f"{where}: source.folder needs source.match.{backbone} (words of the file's name)"
            )
    return sources


@cache
def registry() -> dict[str, Source]:
    """Every source, by name: ``ssl4gie/fetch/sources/<name>.yaml`` and ``<pretraining>:<backbone>`` for weights."""
    serves: dict[str, list[str]] = {}
    for name, source in dataset_sources().items():
        serves.setdefault(source, []).append(name)
    sources = {}
    for path in sorted(SOURCES.glob("*.yaml")):
        sources[path.stem] = _data_source(path, tuple(serves.get(path.stem, ())))
    for path in sorted((CONF / "pretraining").glob("*.yaml")):
        sources.update(_weight_sources(path.stem, _yaml(path)))
    for source in sources.values():
        if source.folder and source.folder not in sources:
            raise ConfigError(
                f"source {source.name}: folder {source.folder!r} is not in ssl4gie/fetch/sources/"
            )
    return sources


@cache
def dataset_sources() -> dict[str, str]:
    """Dataset config name -> the name of its source (``dataset.source``), for datasets that have one."""
    out = {}
    for path in sorted((CONF / "dataset").glob("*.yaml")):
        source = _yaml(path).get("source")
        if source:
            out[path.stem] = str(source)
    return out


def weights_of(pretraining: str, backbone: str | None = None) -> list[Source]:
    """The weight sources of a pretraining row (all its backbones, or one); none for ``random`` or hub-only."""
    found = [s for n, s in registry().items() if n.split(":")[0] == pretraining and ":" in n]
    if backbone is not None:
        found = [s for s in found if s.name == f"{pretraining}:{backbone}"]
    return found


def names() -> list[str]:
    """What ``python -m ssl4gie.fetch`` accepts, for messages."""
    return sorted({*dataset_sources(), *(n for n in registry() if ":" not in n)}) + [
        f"row={r}" for r in sorted(_rows())
    ]


def resolve(name: str) -> list[Source]:
    """The sources of one command-line name: a dataset (``kvasir_seg``), a source (``pranet_test``,
    ``released``), ``row=<row>``, ``pretraining=<row's pretraining>``; ``[]`` for a row without files
    (random initialisation). Raises :class:`ConfigError` naming the valid choices for anything else."""
    sources = registry()
    if name.startswith("row="):
        row = name.removeprefix("row=")
        if row not in _rows():
            raise ConfigError(f"unknown row {row!r}; valid rows: {', '.join(sorted(_rows()))}")
        backbone, pretraining = _rows()[row]
        return weights_of(pretraining, backbone)
    if name.startswith("pretraining="):
        pretraining = name.removeprefix("pretraining=")
        if not (CONF / "pretraining" / f"{pretraining}.yaml").is_file():
            valid = sorted(p.stem for p in (CONF / "pretraining").glob("*.yaml"))
            raise ConfigError(f"unknown pretraining {pretraining!r}; valid: {', '.join(valid)}")
        return weights_of(pretraining)
    if name in dataset_sources():
        return [sources[dataset_sources()[name]]]
    if name in sources:
        return [sources[name]]
    raise ConfigError(
        f"unknown name {name!r}: expected a dataset, a source or row=<row> ({', '.join(names())}), "
        "or --sweep NAME"
    )


def _sweep_list(value) -> list[str]:
    return [v.strip() for v in str(value).split(",") if v.strip()] if value is not None else []


def sources_for_sweep(name: str) -> list[Source]:
    """Every source the cells of ``sweeps/<name>.yaml`` read: the datasets of its columns (or ``dataset``
    values, or the task's default) and the weights of its rows, in the sweep's order. Nothing for a dataset the
    sweep writes synthetically or points elsewhere (``dataset.synthetic`` / ``dataset.root``), and no weights for
    an evaluation sweep (``mode: eval|predict`` loads finished checkpoints); the study's released files for a
    sweep that evaluates them (``sweep=released``)."""
    path = SWEEPS / f"{name}.yaml"
    if not path.is_file():
        valid = sorted(p.stem for p in SWEEPS.glob("*.yaml"))
        raise ConfigError(f"unknown sweep {name!r}: no sweeps/{name}.yaml; valid: {', '.join(valid)}")
    raw = _yaml(path)
    params = ((raw.get("hydra") or {}).get("sweeper") or {}).get("params") or {}
    dataset_cfg = raw.get("dataset") or {}
    datasets: list[str] = []
    weights: list[tuple[str, str]] = []
    for column in _sweep_list(params.get("column")):
        chosen = _overrides(CONF / "column" / f"{column}.yaml")
        datasets.append(chosen["dataset"])
    datasets += _sweep_list(params.get("dataset"))
    for ssl_row in _sweep_list(params.get("ssl_row")):
        chosen = _overrides(CONF / "ssl_row" / f"{ssl_row}.yaml")
        task = _yaml(CONF / "task" / f"{chosen.get('task', 'pretrain')}.yaml")
        datasets += [
            d["/dataset"] for d in task.get("defaults") or [] if isinstance(d, dict) and "/dataset" in d
        ]
        datasets.append(task["task"]["probe"]["data"]["name"])  # the kNN probe's labelled set
    if not datasets:
        datasets.append("kvasir_seg")  # task=segmentation's default dataset
    if dataset_cfg.get("synthetic") or dataset_cfg.get("root"):
        datasets = []
    if raw.get("mode", "train") == "train":
        for row in _sweep_list(params.get("row")):
            if row not in _rows():
                raise ConfigError(f"sweeps/{name}.yaml: unknown row {row!r}")
            weights.append(_rows()[row][::-1])
    found: list[Source] = []
    if "ssl4gie.released_ckpt" in str(raw.get("ckpt", "")):  # sweep=released evaluates the study's own files
        found.append(registry()["released"])
    for dataset in datasets:
        if dataset in dataset_sources():
            found += [s for s in resolve(dataset) if s not in found]
    for pretraining, backbone in weights:
        found += [s for s in weights_of(pretraining, backbone) if s not in found]
    return found
