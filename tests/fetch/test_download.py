"""Transfers against a real server on 127.0.0.1: resume after a cut, servers without Range, HTTPS whose server
omits its intermediate certificate (completed from AIA, verification on), mirror listings, Dataverse listings."""

from __future__ import annotations

import hashlib
import os

import pytest
from helpers.fetch_server import make_ca, serve

from ssl4gie.fetch import download
from ssl4gie.fetch.errors import FetchError


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "srv"
    root.mkdir()
    data = os.urandom(2_000_003)
    (root / "f.bin").write_bytes(data)
    return root, data


def test_a_cut_download_resumes_with_range(served, tmp_path):
    root, data = served
    dest = tmp_path / "out" / "f.bin"
    with serve(root, cut={"/f.bin"}) as server:
        with pytest.raises(FetchError, match=r"stopped at .* of 2,000,003 bytes.*run the same command again"):
            download.http(f"{server.url}/f.bin", dest, size=len(data))
        part = dest.with_name("f.bin.part")
        assert not dest.exists() and 0 < part.stat().st_size < len(data)  # nothing under the final name
        got = download.http(f"{server.url}/f.bin", dest, size=len(data))
        assert server.state.requests[-1] == ("/f.bin", f"bytes={part_size(server)}-")
    assert got.sha256 == hashlib.sha256(data).hexdigest() and got.size == len(data)
    assert dest.read_bytes() == data and not part.exists()


def test_a_206_that_starts_early_is_written_where_it_starts(served, tmp_path):
    root, data = served
    dest = tmp_path / "f.bin"
    dest.with_name("f.bin.part").write_bytes(data[:700_000])
    with serve(root, range_slack=1000) as server:
        got = download.http(f"{server.url}/f.bin", dest, size=len(data))
    assert dest.read_bytes() == data and got.size == len(data)


def part_size(server) -> int:
    return int(server.state.requests[-1][1][6:-1])


def test_a_server_without_range_support_starts_again(served, tmp_path):
    root, data = served
    dest = tmp_path / "f.bin"
    dest.with_name("f.bin.part").write_bytes(data[:1000] + b"junk")  # a stale .part
    with serve(root, ranges=False) as server:
        got = download.http(f"{server.url}/f.bin", dest, size=len(data))
    assert dest.read_bytes() == data and got.sha256 == hashlib.sha256(data).hexdigest()


def test_a_complete_part_is_not_downloaded_again(served, tmp_path):
    root, data = served
    dest = tmp_path / "f.bin"
    dest.with_name("f.bin.part").write_bytes(data)
    with serve(root) as server:
        download.http(f"{server.url}/f.bin", dest, size=len(data))
        assert server.state.requests == []
    assert dest.read_bytes() == data


def test_http_errors_and_unreachable_urls_are_one_line(served, tmp_path):
    root, _ = served
    with serve(root) as server:
        with pytest.raises(FetchError, match=r"missing.bin: HTTP 404"):
            download.http(f"{server.url}/missing.bin", tmp_path / "m.bin")
        url = server.url
    with pytest.raises(FetchError, match=r"cannot be reached"):
        download.http(f"{url}/f.bin", tmp_path / "f.bin")  # the server is gone
    assert not list(tmp_path.glob("*.bin"))


def test_https_without_its_intermediate_is_completed_from_aia(served, tmp_path, monkeypatch):
    """The server sends only its own certificate (as datasets.simula.no does): the first attempt fails Python's
    verification, the intermediate is fetched from the certificate's AIA URL, and the retry is verified."""
    root, data = served
    monkeypatch.setattr(download, "_completed_bundles", {})
    with serve(root) as plain:
        ca = make_ca(tmp_path / "ca", f"{plain.url}/ca/intermediate.der")
        (root / "ca").mkdir()
        (root / "ca" / "intermediate.der").write_bytes(ca["intermediate_der"].read_bytes())
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca["root"]))
        with serve(root, tls=(ca["cert"], ca["key"])) as tls:
            import requests

            with pytest.raises(requests.exceptions.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
                requests.get(f"{tls.url}/f.bin", timeout=10)  # what a default client gets
            got = download.http(f"{tls.url}/f.bin", tmp_path / "f.bin")
        assert ("/ca/intermediate.der", None) in plain.state.requests
    assert got.sha256 == hashlib.sha256(data).hexdigest()


def test_https_verification_is_never_turned_off(served, tmp_path, monkeypatch):
    """No AIA field: the chain cannot be completed, and the download fails with one line instead of going on
    unverified. A certificate from an untrusted root fails the same way."""
    root, _ = served
    monkeypatch.setattr(download, "_completed_bundles", {})
    ca = make_ca(tmp_path / "ca", None)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca["root"]))
    with serve(root, tls=(ca["cert"], ca["key"])) as tls:
        with pytest.raises(FetchError, match=r"could not be completed from its Authority Information Access"):
            download.http(f"{tls.url}/f.bin", tmp_path / "f.bin")
        other = make_ca(tmp_path / "other", None)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(other["root"]))
        monkeypatch.setattr(download, "_completed_bundles", {})
        with pytest.raises(FetchError, match=r"could not be completed"):
            download.http(f"{tls.url}/f.bin", tmp_path / "f.bin")
    assert not (tmp_path / "f.bin").exists()


def test_mirror_listing_reads_a_directory_index(tmp_path):
    root = tmp_path / "srv"
    (root / "released" / "Classification").mkdir(parents=True)
    (root / "released" / "a b.pth").write_bytes(b"1")
    (root / "released" / "Classification" / "c.pth").write_bytes(b"2")
    (root / "released" / ".hidden").write_bytes(b"3")
    with serve(root) as server:
        assert download.mirror_list(f"{server.url}/released") == ["Classification/c.pth", "a b.pth"]
        assert download.mirror_url(server.url + "/", "a b.pth") == f"{server.url}/a%20b.pth"


def test_dataverse_listing_by_doi(tmp_path):
    root = tmp_path / "srv"
    root.mkdir()
    (root / "c1_cecum_t1_v1.zip").write_bytes(b"zip bytes")
    dataverse = {"10.1234/ABC": [{"id": 17, "path": "c1_cecum_t1_v1.zip"}]}
    with serve(root, dataverse=dataverse) as server:
        files = download.dataverse_list(server.url, "10.1234/ABC")
        entry = files["c1_cecum_t1_v1.zip"]
        assert (entry.id, entry.size, entry.md5) == (17, 9, hashlib.md5(b"zip bytes").hexdigest())
        got = download.http(entry.url(server.url), tmp_path / "x.zip", md5=True)
        assert got.md5 == entry.md5
        with pytest.raises(FetchError, match=r"HTTP 404"):
            download.dataverse_list(server.url, "10.1234/OTHER")
