"""A real HTTP(S) server on 127.0.0.1 for the fetch tests, and archives built in the layouts the sources really have.

The server serves a folder (directory listings as Python's http.server writes them), honours ``Range: bytes=N-``
(206, unless ``ranges=False``), can cut a file's first transfer halfway (``cut``: the full Content-Length is sent,
then the connection closes), answers Dataverse's native API for one dataset (``dataverse``), and records every
request (``requests``). ``tls=(cert_pem, key_pem)`` makes it HTTPS, sending only the server's certificate (no
intermediate), as datasets.simula.no does. :func:`make_ca` writes a root, an intermediate whose URL is in the
server certificate's Authority Information Access field, and the server certificate for 127.0.0.1.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import os
import shutil
import ssl
import threading
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit


@dataclass
class ServerState:
    root: Path
    ranges: bool = True
    cut: set[str] = field(default_factory=set)  # URL paths whose next transfer stops halfway
    range_slack: int = 0  # a 206 starts this many bytes before the byte asked for (block-aligned caches do)
    dataverse: dict[str, list[dict]] = field(default_factory=dict)  # doi -> [{"id", "path", "md5"?}]
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)

    def downloads(self, suffix: str) -> int:
        """How many requests asked for a path ending with ``suffix``."""
        return sum(1 for path, _ in self.requests if path.endswith(suffix))


class _Handler(SimpleHTTPRequestHandler):
    state: ServerState

    def log_message(self, *args) -> None:  # quiet tests
        pass

    def translate_path(self, path: str) -> str:
        rel = Path(urlsplit(path).path.lstrip("/"))
        return str(self.state.root.joinpath(*[p for p in rel.parts if p not in ("..", ".")]))

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        self.state.requests.append((url.path, self.headers.get("Range")))
        if url.path == "/api/datasets/:persistentId/":
            return self._dataverse_listing(parse_qs(url.query).get("persistentId", [""])[0])
        if url.path.startswith("/api/access/datafile/"):
            file_id = url.path.rsplit("/", 1)[1]
            for entries in self.state.dataverse.values():
                for entry in entries:
                    if str(entry["id"]) == file_id:
                        return self._file(self.state.root / entry["path"], url.path)
            return self.send_error(404)
        path = Path(self.translate_path(self.path))
        if path.is_file():
            return self._file(path, url.path)
        return super().do_GET()  # directory listings, 404s

    def _dataverse_listing(self, persistent_id: str) -> None:
        entries = self.state.dataverse.get(persistent_id.removeprefix("doi:"))
        if entries is None:
            return self.send_error(404)
        files = []
        for e in entries:
            path = self.state.root / e["path"]
            md5 = e.get("md5") or hashlib.md5(path.read_bytes()).hexdigest()
            files.append(
                {
                    "label": path.name,
                    "dataFile": {
                        "id": e["id"],
                        "filename": path.name,
                        "filesize": path.stat().st_size,
                        "checksum": {"type": "MD5", "value": md5},
                    },
                }
            )
        body = json.dumps({"status": "OK", "data": {"latestVersion": {"files": files}}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _file(self, path: Path, url_path: str) -> None:
        data = path.read_bytes()
        start = 0
        wanted = self.headers.get("Range")
        if wanted and self.state.ranges and wanted.startswith("bytes=") and wanted.endswith("-"):
            start = max(0, int(wanted[6:-1]) - self.state.range_slack)
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        if self.state.ranges:
            self.send_header("Accept-Ranges", "bytes")
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if url_path in self.state.cut:
            self.state.cut.discard(url_path)
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@dataclass
class Server:
    url: str
    state: ServerState


@contextmanager
def serve(root: Path, tls: tuple[Path, Path] | None = None, **state):
    """Serve ``root`` on 127.0.0.1 (a free port) in a thread; yields a :class:`Server`."""
    st = ServerState(Path(root), **state)
    handler = type("Handler", (_Handler,), {"state": st})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    scheme = "http"
    if tls is not None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(certfile=str(tls[0]), keyfile=str(tls[1]))
        httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
        scheme = "https"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield Server(f"{scheme}://127.0.0.1:{httpd.server_address[1]}", st)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


# ---------------------------------------------------------------------------------------------- archives


def zip_folder(folder: Path, archive: Path, top: str | None = None, macos: bool = False) -> Path:
    """Zip ``folder``'s contents under the top folder ``top`` (None: at the archive's root). ``macos``: add the
    ``__MACOSX/`` resource forks a zip made on a Mac carries."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder).as_posix()
            name = f"{top}/{rel}" if top else rel
            if path.is_dir():
                zf.writestr(name + "/", b"")
            else:
                zf.write(path, name)
                if macos:
                    zf.writestr(
                        f"__MACOSX/{os.path.dirname(name)}/._{path.name}".replace("//", "/"), b"\0" * 8
                    )
    return archive


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------------------------------------- certificates


def make_ca(folder: Path, aia_url: str | None) -> dict[str, Path]:
    """Root CA -> intermediate CA -> server certificate for 127.0.0.1, written as PEM (and the intermediate as
    DER, for the AIA URL to serve). ``aia_url``: the caIssuers URL put in the server certificate (None: no AIA).
    Returns the paths: root, intermediate_der, cert, key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def build(subject, issuer, key, issuer_key, ca: bool, extra=()):
        b = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        )
        if ca:
            b = b.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
        if issuer_key is not key:
            b = b.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
            )
        for ext in extra:
            b = b.add_extension(ext, critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    root_key, inter_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = build(name("ssl4gie test root"), name("ssl4gie test root"), root_key, root_key, True)
    inter = build(name("ssl4gie test intermediate"), root.subject, inter_key, root_key, True)
    extra = [
        x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
        x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
    ]
    if aia_url:
        extra.append(
            x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(
                        AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier(aia_url)
                    )
                ]
            )
        )
    leaf = build(name("127.0.0.1"), inter.subject, leaf_key, inter_key, False, extra)
    paths = {
        "root": folder / "root.pem",
        "intermediate_der": folder / "intermediate.der",
        "cert": folder / "server.pem",
        "key": folder / "server.key",
    }
    paths["root"].write_bytes(root.public_bytes(serialization.Encoding.PEM))
    paths["intermediate_der"].write_bytes(inter.public_bytes(serialization.Encoding.DER))
    paths["cert"].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))  # the leaf only: no chain
    paths["key"].write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths
