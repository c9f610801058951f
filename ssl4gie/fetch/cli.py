"""``python -m ssl4gie.fetch NAME... | --sweep NAME [--check] [--mirror URL] [--sha256 HEX]``.

Exit status: 0 when every source named is present (and, for fetched ones, verified); 1 when one still needs a
login download (or, with ``--check``, is missing or changed); 2 for bad input or a failed fetch (one line each).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys

from ssl4gie.errors import Ssl4gieError
from ssl4gie.fetch.get import Options, Paths, check, fetch
from ssl4gie.fetch.registry import Source, names, resolve, sources_for_sweep

log = logging.getLogger("ssl4gie.fetch")
_HEX = re.compile(r"^[0-9a-fA-F]{8,64}$")
EPILOG = """names: a dataset (kvasir_seg, cvc_clinicdb, hyperkvasir_anatomical, hyperkvasir_unlabelled, c3vd, cvc_300,
pranet_train, ...), a source (pranet_test, released, study_pretrained), row=<row> (row=rn_in_mc: that row's
weights file), pretraining=<name> (every backbone's file). paths.data_dir=DIR / paths.weights_dir=DIR override
where things land (default: the run configs' paths, SSL4GIE_DATA_DIR / SSL4GIE_WEIGHTS_DIR honoured)."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ssl4gie.fetch",
        description="Download, verify and unpack ssl4gie's datasets and weights where the run configs read them.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="what to fetch (see below)")
    p.add_argument(
        "--sweep", action="append", default=[], metavar="NAME", help="everything sweeps/NAME.yaml reads"
    )
    p.add_argument(
        "--check", action="store_true", help="download nothing: per source, verified/present/missing/changed"
    )
    p.add_argument(
        "--mirror", metavar="URL", help="fetch every file from URL/<file name> instead of its origin"
    )
    p.add_argument(
        "--sha256", action="append", default=[], metavar="HEX|FILE=HEX",
        help="pin another sha256 for the one source named (FILE=HEX for one file of a multi-file source)",
    )  # fmt: skip
    p.add_argument("--keep-archives", action="store_true", help="keep downloaded archives after unpacking")
    p.add_argument("--list", action="store_true", help="list every source with its origin and licence")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _pins(values: list[str], sources: list[Source]) -> dict[str, str]:
    if not values:
        return {}
    if len(sources) != 1:
        raise Ssl4gieError(
            f"--sha256 pins the hash of one source; this command names {len(sources)}: name one"
        )
    files = [f.name for f in sources[0].files]
    pins = {}
    for value in values:
        name, _, hexdigest = value.rpartition("=")
        if not _HEX.match(hexdigest):
            raise Ssl4gieError(f"--sha256 {value}: expected 8 to 64 hex digits (or FILE=HEX)")
        if not name:
            if len(files) != 1:
                raise Ssl4gieError(
                    f"--sha256 {value}: {sources[0].name} has {len(files)} files; pin one as FILE=HEX "
                    f"(files: {', '.join(files[:5])}{', ...' if len(files) > 5 else ''})"
                )
            name = files[0]
        elif name not in files:
            raise Ssl4gieError(f"--sha256 {value}: {sources[0].name} has no file {name!r}")
        pins[name] = hexdigest.lower()
    return pins


def origin_of(source: Source) -> str:
    """Where a source's files come from, as a URL or DOI a person can open."""
    if source.drive_folder:
        return f"https://drive.google.com/drive/folders/{source.drive_folder}"
    if source.dataverse:
        return f"{source.dataverse[0]} (doi:{source.dataverse[1]})"
    if source.folder:
        return f"a file of the source {source.folder} ({source.page})"
    first = source.files[0] if source.files else None
    if first is not None and first.drive:
        return f"https://drive.google.com/uc?id={first.drive}"
    return (first.url if first is not None else None) or source.page


def _list() -> None:
    from ssl4gie.fetch.registry import registry

    for source in registry().values():
        origin = origin_of(source)
        login = f"  [needs {source.login}]" if source.login else ""
        print(f"{source.name}: {source.title}{login}\n    {source.command}\n    from {origin}")
        for licence in source.licence:
            print(f"    licence: {licence}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.list:
        _list()
        return 0
    overrides = [n for n in args.names if n.startswith("paths.")]
    wanted = [n for n in args.names if not n.startswith("paths.")]
    try:
        if not wanted and not args.sweep:
            raise Ssl4gieError(f"name what to fetch: {', '.join(names())}, or --sweep NAME (--help)")
        sources: list[Source] = []
        for name in wanted:
            sources += [s for s in resolve(name) if s not in sources]
        for sweep in args.sweep:
            sources += [s for s in sources_for_sweep(sweep) if s not in sources]
        options = Options(args.mirror, _pins(args.sha256, sources), not args.quiet, args.keep_archives)
        paths = Paths.from_config(overrides)
    except Ssl4gieError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not sources:
        print("nothing to fetch: the names need no files (random initialisation, synthetic data)")
        return 0
    return _check(sources, paths) if args.check else _fetch(sources, paths, options)


def _check(sources: list[Source], paths: Paths) -> int:
    worst = 0
    for source in sources:
        try:
            status = check(source, paths)
        except Ssl4gieError as e:
            print(f"{source.name:32} error     {e}")
            worst = 2
            continue
        hint = f"  -> {status.command}" if not status.ready else ""
        print(f"{source.name:32} {status.state:9} {status.detail}{hint}")
        if not status.ready:
            worst = max(worst, 1)
    return worst


def _fetch(sources: list[Source], paths: Paths, options: Options) -> int:
    worst, lines = 0, []
    for source in sources:
        try:
            outcome = fetch(source, paths, options)
        except Ssl4gieError as e:
            print(f"error: {source.name}: {e}", file=sys.stderr)
            lines.append(f"{source.name:32} failed")
            worst = 2
            continue
        except KeyboardInterrupt:
            print(f"\ninterrupted: run the same command again to resume {source.name}", file=sys.stderr)
            return 130
        lines.append(f"{source.name:32} {outcome.action:11} {outcome.detail}")
        if outcome.action == "needs login":
            worst = max(worst, 1)
    print("\n".join(lines))
    return worst
