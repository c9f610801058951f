"""Transfers: plain HTTP(S) with resume, Google Drive through gdown, Dataverse listings, mirror folder listings.

Every transfer writes ``<name>.part`` (gdown: its own ``<name>XXXXXXXX.part``) and only a complete transfer gets the
file's name; hashes are checked by the caller before anything is unpacked or moved where a run reads it.

HTTPS is verified, always. A server that does not send its intermediate certificate (Kvasir-SEG's, for one) fails
Python's verification with CERTIFICATE_VERIFY_FAILED; the chain is then completed from the Authority Information
Access field of the server's certificate with aia-chaser (which checks the chain up to a trusted root), and the
download is retried, verified against the trusted roots plus those intermediates.
"""

from __future__ import annotations

import hashlib
import logging
import os
import ssl
import sys
import tempfile
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote, unquote, urljoin, urlsplit

import requests
from tqdm import tqdm

from ssl4gie.fetch.errors import FetchError
from ssl4gie.fetch.verify import CHUNK

log = logging.getLogger(__name__)

TIMEOUT = (20, 120)  # seconds to connect, and between two reads
USER_AGENT = "ssl4gie-fetch"
NET_CHUNK = 1 << 16  # small reads: a cut connection loses at most this much of what it had sent


@dataclass(frozen=True)
class Received:
    """A completed transfer: the file, its sha256, size and (when asked for) md5."""

    path: Path
    sha256: str
    size: int
    md5: str | None = None


def ca_bundle() -> str:
    """The trusted roots requests would use: ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE`` or certifi's bundle."""
    import certifi

    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or certifi.where()


_completed_bundles: dict[str, str] = {}  # host:port -> a CA bundle with the intermediates found through AIA


def _is_missing_issuer(error: requests.exceptions.SSLError) -> bool:
    text = str(error)
    return "CERTIFICATE_VERIFY_FAILED" in text and "local issuer" in text


def _complete_chain(url: str) -> str:
    """A CA bundle file: the trusted roots plus the server's intermediates found through AIA (verified by
    aia-chaser up to one of those roots). Raises FetchError if the chain cannot be completed."""
    from aia_chaser import AiaChaser

    parts = urlsplit(url)
    host = f"{parts.hostname}:{parts.port or 443}"
    if host in _completed_bundles:
        return _completed_bundles[host]
    base = ca_bundle()
    # The handshake only reads the server's certificate (nothing is sent); aia-chaser then verifies the chain it
    # builds against the roots of `base`, and the download itself is verified by requests with the result.
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    probe.check_hostname = False
    probe.verify_mode = ssl.CERT_NONE
    probe.load_verify_locations(cafile=base)
    try:
        chain = AiaChaser(context=probe).fetch_cert_chain_for_url(url, verify=True)
    except Exception as e:  # aia-chaser raises its own exception types for each way a chain can fail
        raise FetchError(
            f"{url}: the server's certificate chain is incomplete and could not be completed from its Authority "
            f"Information Access ({type(e).__name__}: {e}); verification stays on: download it by hand, or use "
            "--mirror"
        ) from None
    from cryptography.hazmat.primitives.serialization import Encoding

    fd, path = tempfile.mkstemp(prefix="ssl4gie-ca-", suffix=".pem")
    with os.fdopen(fd, "wb") as f:
        f.write(Path(base).read_bytes().rstrip(b"\n") + b"\n")
        for cert in chain[1:]:  # the server's own certificate is not a CA
            f.write(cert.public_bytes(Encoding.PEM))
    log.info("%s does not send its intermediate certificate: completed the chain from its AIA field", host)
    _completed_bundles[host] = path
    return path


def session() -> requests.Session:
    s = requests.Session()
    s.headers["User-Agent"] = USER_AGENT
    s.headers["Accept-Encoding"] = "identity"  # byte offsets for resuming must be those of the file
    return s


def get(sess: requests.Session, url: str, **kwargs) -> requests.Response:
    """``sess.get`` with verification on, completing a server's missing intermediate certificate once."""
    verify = _completed_bundles.get(_host(url)) or ca_bundle()
    try:
        return sess.get(url, timeout=TIMEOUT, verify=verify, **kwargs)
    except requests.exceptions.SSLError as e:
        if not _is_missing_issuer(e) or _host(url) in _completed_bundles:
            raise FetchError(f"{url}: TLS verification failed ({_reason(e)})") from None
        return sess.get(url, timeout=TIMEOUT, verify=_complete_chain(url), **kwargs)
    except requests.exceptions.RequestException as e:
        raise FetchError(f"{url}: cannot be reached ({_reason(e)})") from None


def _host(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


def _range_start(content_range: str) -> int | None:
    """The first byte of ``Content-Range: bytes a-b/total``; None if it is not of that form."""
    unit, _, spec = content_range.partition(" ")
    first = spec.split("-", 1)[0]
    return int(first) if unit == "bytes" and first.isdigit() else None


def _count(n: int | None) -> str:
    return "?" if n is None else f"{n:,}"


def _reason(error: Exception) -> str:
    text = str(error).split("\n")[0]
    return text if len(text) < 300 else text[:300] + "..."


def _progress(total: int | None, initial: int, name: str, show: bool) -> tqdm:
    # disable=None: a bar only on a terminal; a log line per file otherwise
    return tqdm(
        total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=name, leave=False,
        disable=None if show else True, file=sys.stderr,
    )  # fmt: skip


def http(url: str, dest: Path, size: int | None = None, progress: bool = True, md5: bool = False) -> Received:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming a ``.part`` left by an interrupted run when the
    server honours Range requests (otherwise it starts again); ``size``, where known, tells a complete ``.part``.
    Raises FetchError for an unreachable URL, an HTTP error, a short transfer (the ``.part`` stays, for the next
    run to resume) or a full disk. The caller checks size and hashes."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.exists() else 0
    if start and (size is None or start < size):
        received = _transfer(url, part, start, progress)
    elif start and start == size:
        received = start  # an earlier run received it all
    else:
        part.unlink(missing_ok=True)
        received = _transfer(url, part, 0, progress)
    sha, md = hashlib.sha256(), hashlib.md5() if md5 else None
    with open(part, "rb") as f:
        while chunk := f.read(CHUNK):
            sha.update(chunk)
            if md is not None:
                md.update(chunk)
    os.replace(part, dest)
    return Received(dest, sha.hexdigest(), received, md.hexdigest() if md is not None else None)


def _transfer(url: str, part: Path, start: int, progress: bool) -> int:
    """Append the body of ``url`` from byte ``start`` to ``part``; the number of bytes ``part`` then has."""
    with (
        session() as sess,
        get(sess, url, stream=True, headers={"Range": f"bytes={start}-"} if start else {}) as r,
    ):
        if start and r.status_code == 416:  # the .part is longer than the file: start again
            r.close()
            part.unlink()
            return _transfer(url, part, 0, progress)
        if start and r.status_code == 200:
            log.info("%s: the server does not resume downloads (no Range support); starting again", url)
            start = 0
        elif start:
            # RFC 9110 lets a 206 start before the byte asked for: write from where the server starts
            first = _range_start(r.headers.get("Content-Range", ""))
            if first is None or first > start:
                r.close()
                part.unlink()
                return _transfer(url, part, 0, progress)
            if first < start:
                with open(part, "r+b") as f:
                    f.truncate(first)
                start = first
            log.info("%s: resuming at %s bytes", part.name, f"{start:,}")
        if r.status_code not in (200, 206):
            raise FetchError(f"{url}: HTTP {r.status_code} {r.reason} (expected the file)")
        length = r.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        received = start
        try:
            with (
                open(part, "ab" if start else "wb") as f,
                _progress(total, start, part.name[:-5], progress) as bar,
            ):
                for chunk in r.iter_content(NET_CHUNK):
                    f.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        except requests.exceptions.RequestException as e:
            raise FetchError(
                f"{url}: the download stopped at {received:,} of {_count(total)} bytes ({_reason(e)}); run the "
                f"same command again to resume it ({part})"
            ) from None
        except OSError as e:
            raise FetchError(
                f"cannot write {part}: {e.strerror or e} (disk full?); nothing was placed"
            ) from None
    if total is not None and received != total:
        raise FetchError(
            f"{url}: the download stopped at {received:,} of {total:,} bytes; run the same command again to "
            f"resume it ({part})"
        )
    return received


# ---------------------------------------------------------------------------------------------- Google Drive


@dataclass(frozen=True)
class DriveEntry:
    """A file of a Drive folder: its id and its path inside the folder."""

    id: str
    path: str


def drive_list(folder_id: str) -> list[DriveEntry]:
    """The files of a Google Drive folder (gdown >= 6: no 50-file limit; listed without downloading)."""
    import gdown

    with tempfile.TemporaryDirectory() as tmp:
        try:
            entries = gdown.download_folder(
                id=folder_id, output=tmp + os.sep, quiet=True, skip_download=True, verify=ca_bundle()
            )
        except Exception as e:  # gdown raises requests', its own and parsing errors alike
            raise FetchError(
                f"Google Drive folder {folder_id} cannot be listed ({type(e).__name__}: {_reason(e)}); open "
                f"https://drive.google.com/drive/folders/{folder_id} to check it is still shared"
            ) from None
    return [DriveEntry(str(e.id), Path(str(e.path)).as_posix()) for e in entries]


def drive_file(file_id: str, dest: Path, progress: bool = True) -> Received:
    """Download a Google Drive file to ``dest`` with gdown (its partial file is resumed by the next run)."""
    import gdown

    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        out = gdown.download(
            id=file_id, output=str(dest), quiet=not (progress and sys.stderr.isatty()), resume=True,
            verify=ca_bundle(), timeout=TIMEOUT, retries=2,
        )  # fmt: skip
    except OSError as e:
        if getattr(e, "errno", None):
            raise FetchError(
                f"cannot write {dest}: {e.strerror or e} (disk full?); nothing was placed"
            ) from None
        raise FetchError(f"Google Drive file {file_id}: {_reason(e)}") from None
    except Exception as e:  # quota ("too many users"), a file no longer shared, a cut connection
        raise FetchError(
            f"Google Drive file {file_id} could not be downloaded ({type(e).__name__}: {_reason(e)}); run the "
            f"same command again later, or download https://drive.google.com/uc?id={file_id} by hand to {dest}"
        ) from None
    path = Path(out)
    md = hashlib.md5()
    from ssl4gie.fetch.verify import sha256_file

    sha = sha256_file(path, also=md)
    return Received(path, sha, path.stat().st_size, md.hexdigest())


# ---------------------------------------------------------------------------------------------- Dataverse


@dataclass(frozen=True)
class DataverseFile:
    id: int
    name: str
    size: int | None
    md5: str | None

    def url(self, server: str) -> str:
        return f"{server}/api/access/datafile/{self.id}"


def dataverse_list(server: str, doi: str) -> dict[str, DataverseFile]:
    """The files of the latest version of a Dataverse dataset, by file name (native API, by DOI)."""
    url = f"{server}/api/datasets/:persistentId/?persistentId=doi:{doi}"
    with session() as sess:
        response = get(sess, url)
    if not response.ok:
        raise FetchError(
            f"{url}: HTTP {response.status_code} {response.reason} (expected the dataset's metadata)"
        )
    try:
        files = response.json()["data"]["latestVersion"]["files"]
    except (ValueError, KeyError, TypeError):
        raise FetchError(f"{url}: not a Dataverse dataset listing (no data.latestVersion.files)") from None
    out = {}
    for entry in files:
        data = entry.get("dataFile") or {}
        checksum = data.get("checksum") or {}
        md5 = data.get("md5") or (checksum.get("value") if checksum.get("type") == "MD5" else None)
        name = data.get("filename") or entry.get("label")
        out[name] = DataverseFile(int(data["id"]), name, data.get("filesize"), md5)
    return out


# ---------------------------------------------------------------------------------------------- mirrors


def mirror_url(mirror: str, name: str) -> str:
    return mirror.rstrip("/") + "/" + quote(name)


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            href = dict(attrs).get("href")
            if href and not href.startswith(("?", "#", "/", "..")) and "://" not in href:
                self.links.append(href)


def mirror_list(url: str, depth: int = 2) -> list[str]:
    """File paths under ``url``, read from its directory listing (the index page nginx, Apache or Python's
    http.server write), ``depth`` folder levels deep."""
    url = url.rstrip("/") + "/"
    with session() as sess:
        response = get(sess, url)
    if not response.ok:
        raise FetchError(
            f"{url}: HTTP {response.status_code} {response.reason} (expected a directory listing)"
        )
    parser = _Links()
    parser.feed(response.text)
    found = []
    for href in parser.links:
        name = unquote(href.split("?")[0])
        if name.endswith("/"):
            if depth > 1:
                found += [name + sub for sub in mirror_list(urljoin(url, href), depth - 1)]
        elif not name.startswith("."):
            found.append(name)
    return sorted(set(found))
