"""Fetch ssl4gie's datasets and pretrained weights, verify them, and unpack them where the run configs read them.

Command line: ``python -m ssl4gie.fetch NAME... | --sweep NAME [--check]`` (:mod:`ssl4gie.fetch.cli`). The API, for
tools that check a sweep before launching it::

    from ssl4gie.fetch import Paths, check, sources_for_sweep

    paths = Paths.from_config()
    for source in sources_for_sweep("study"):
        status = check(source, paths)          # no network: verified | present | missing | changed
        if not status.ready:
            print(status.state, status.detail, "->", status.command)

Modules: :mod:`.registry` (the sources, read from ``ssl4gie/fetch/sources/`` and the pretraining rows), :mod:`.download`
(HTTP(S), Google Drive, Dataverse, mirrors), :mod:`.verify` (hashes, the lock file, manifests), :mod:`.unpack`
(archives into place), :mod:`.get` (one source, start to end).
"""

from ssl4gie.fetch.errors import FetchError
from ssl4gie.fetch.get import Options, Outcome, Paths, Status, check, fetch
from ssl4gie.fetch.registry import RemoteFile, Source, registry, resolve, sources_for_sweep

__all__ = [
    "FetchError",
    "Options",
    "Outcome",
    "Paths",
    "RemoteFile",
    "Source",
    "Status",
    "check",
    "fetch",
    "registry",
    "resolve",
    "sources_for_sweep",
]
