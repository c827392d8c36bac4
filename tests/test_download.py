"""The one downloader (:mod:`tokenmix.download`) against a local 127.0.0.1 server.

The server is configured per file: validators sent, whether it honours ``If-Range`` (a server
that does not must still never make us splice two files), whether it sends a length, and where
it cuts the connection. Every test uses tiny files and short timeouts.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tokenmix import download as dl

from .fileserver import FileServer, Served, serve


def File(body: bytes, etag: str | None = '"v1"', **how: object) -> Served:
    """A served file with a fixed ETag ``"v1"`` unless told otherwise."""
    return Served(body, etag=etag, **how)  # type: ignore[arg-type]


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, FileServer]]:
    monkeypatch.delenv(dl.ENV_OFFLINE, raising=False)
    with serve() as state:
        yield state.url, state


def _get(url: str, dest: Path, **kwargs: object) -> dl.Downloaded:
    kwargs = {"progress": False, "timeout": 5.0, "retry_delay": 0.0, **kwargs}
    return dl.download_file(url, dest, **kwargs)  # type: ignore[arg-type]


def _interrupted(url: str, dest: Path, state: FileServer, name: str, n: int) -> None:
    """An earlier run that stopped after ``n`` bytes, leaving ``.part`` and its record."""
    state.files[name].cut_after.append(n)
    with pytest.raises(dl.DownloadError, match=f"{n} bytes kept in"):
        _get(f"{url}/{name}", dest, attempts=1)
    state.requests.clear()


A = bytes(range(256)) * 40  # 10240 bytes
B = bytes(reversed(A))  # same size, other content


# --- hole 1: resume never splices ------------------------------------------------------------
def test_resume_sends_if_range_with_the_recorded_etag(server, tmp_path) -> None:
    url, state = server
    state.files["f"] = File(A)
    _interrupted(url, tmp_path / "f", state, "f", 3000)
    got = _get(f"{url}/f", tmp_path / "f")
    assert got.path.read_bytes() == A and got.sha256 == hashlib.sha256(A).hexdigest()
    assert state.requests == [{"name": "f", "range": "bytes=3000-", "if_range": '"v1"'}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]  # no .part, record or lock


def test_changed_file_is_sent_whole_not_spliced(server, tmp_path) -> None:
    url, state = server
    state.files["f"] = File(A)
    _interrupted(url, tmp_path / "f", state, "f", 3000)
    state.files["f"] = File(B, etag='"v2"')  # If-Range fails: the server answers 200
    assert _get(f"{url}/f", tmp_path / "f").path.read_bytes() == B


def test_server_ignoring_if_range_is_caught_by_size_or_etag(server, tmp_path) -> None:
    url, state = server
    state.files["f"] = File(A)
    _interrupted(url, tmp_path / "f", state, "f", 3000)
    state.files["f"] = File(B + b"more", etag='"v2"', honour_if_range=False)  # a wrong 206
    assert _get(f"{url}/f", tmp_path / "f").path.read_bytes() == B + b"more"
    assert [r["range"] for r in state.requests] == ["bytes=3000-", None]

    state.files["g"] = File(A)
    _interrupted(url, tmp_path / "g", state, "g", 3000)
    state.files["g"] = File(B, etag='"v2"', honour_if_range=False)  # same size, new ETag
    assert _get(f"{url}/g", tmp_path / "g").path.read_bytes() == B


def test_last_modified_is_the_validator_without_an_etag(server, tmp_path) -> None:
    url, state = server
    stamp = "Wed, 21 Oct 2015 07:28:00 GMT"
    state.files["f"] = File(A, etag=None, last_modified=stamp)
    _interrupted(url, tmp_path / "f", state, "f", 4000)
    assert _get(f"{url}/f", tmp_path / "f").path.read_bytes() == A
    assert state.requests[0]["if_range"] == stamp


def test_part_without_validator_starts_over(server, tmp_path) -> None:
    url, state = server
    state.files["f"] = File(A, etag=None)
    state.files["f"].cut_after.append(2000)
    assert _get(f"{url}/f", tmp_path / "f").path.read_bytes() == A
    assert [r["range"] for r in state.requests] == [None, None]
    (tmp_path / "h.part").write_bytes(B[:100])  # a stray .part without any record
    state.files["h"] = File(A)
    assert _get(f"{url}/h", tmp_path / "h").path.read_bytes() == A
    assert state.requests[-1]["range"] is None


# --- hole 2: an unsized body that ends early ---------------------------------------------------
def test_unsized_body_needs_a_checksum_or_a_verifier(server, tmp_path) -> None:
    url, state = server
    state.files["f"] = File(A, send_length=False, cut_after=[5000])
    with pytest.raises(dl.ChecksumError, match="sent no size and no checksum"):
        _get(f"{url}/f", tmp_path / "f")
    assert list(tmp_path.iterdir()) == []
    state.files["f"].cut_after.append(5000)
    with pytest.raises(dl.ChecksumError, match="sha256 mismatch"):
        _get(f"{url}/f", tmp_path / "f", sha256=hashlib.sha256(A).hexdigest())

    def must_be_whole(part: Path) -> None:
        if part.stat().st_size != len(A):
            raise ValueError("truncated")

    state.files["f"].cut_after.append(5000)
    with pytest.raises(dl.ChecksumError, match=r"does not load.*truncated"):
        _get(f"{url}/f", tmp_path / "f", verify=must_be_whole)
    assert list(tmp_path.iterdir()) == []
    assert _get(f"{url}/f", tmp_path / "f", verify=must_be_whole).path.read_bytes() == A
    assert _get(f"{url}/f", tmp_path / "g", size=len(A)).path.read_bytes() == A


def test_expected_size_is_enforced(server, tmp_path) -> None:
    url, state = server
    state.files["f"] = File(A)
    with pytest.raises(dl.ChecksumError, match=f"got {len(A)} bytes, expected 10"):
        _get(f"{url}/f", tmp_path / "f", size=10)
    assert list(tmp_path.iterdir()) == []


# --- hole 19 and folders ------------------------------------------------------------------------
def test_name_resolution_failure_is_not_retried(tmp_path, monkeypatch) -> None:
    calls = []

    def no_dns(address, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(address)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", no_dns)
    start = time.monotonic()
    with pytest.raises(dl.OfflineError, match="cannot be resolved") as err:
        dl.download_file("http://files.invalid/x", tmp_path / "x", progress=False)
    assert time.monotonic() - start < 1.0 and len(calls) == 1  # default delays: no retry loop
    assert dl.ENV_OFFLINE in str(err.value) and "bytes kept" not in str(err.value)
    assert list(tmp_path.iterdir()) == []  # no .part, no .lock


def test_offline_mode_makes_no_request(server, tmp_path, monkeypatch) -> None:
    url, state = server
    state.files["f"] = File(A)
    monkeypatch.setenv(dl.ENV_OFFLINE, "1")
    with pytest.raises(dl.OfflineError, match=dl.ENV_OFFLINE):
        _get(f"{url}/f", tmp_path / "f")
    assert state.requests == []


def test_unusable_folder_fails_before_any_request(server, tmp_path, monkeypatch) -> None:
    url, state = server
    state.files["f"] = File(A)
    (tmp_path / "file").write_text("")
    with pytest.raises(dl.FolderError, match=f"cannot create the folder {tmp_path / 'file'}"):
        _get(f"{url}/f", tmp_path / "file" / "sub" / "f")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        (ro / ".probe").touch()  # root ignores modes: fail the probe as a read-only mount would
        (ro / ".probe").unlink()

        def denied(*args, **kwargs):  # type: ignore[no-untyped-def]
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(dl.tempfile, "mkstemp", denied)
    except OSError:
        pass
    try:
        with pytest.raises(dl.FolderError, match=f"the folder {ro} is not writable"):
            _get(f"{url}/f", ro / "f")
    finally:
        ro.chmod(0o755)
    assert state.requests == []


# --- retries, errors, lock, progress -------------------------------------------------------------
def test_drops_are_retried_with_resume_and_bounded(server, tmp_path) -> None:
    url, state = server
    state.files["f"] = File(A, cut_after=[1000, 2000])
    assert _get(f"{url}/f", tmp_path / "f").path.read_bytes() == A
    assert [r["range"] for r in state.requests] == [None, "bytes=1000-", "bytes=3000-"]
    state.files["g"] = File(A, cut_after=[100, 100, 100])
    with pytest.raises(dl.DownloadError, match=r"could not download .*300 bytes kept"):
        _get(f"{url}/g", tmp_path / "g", attempts=3)


def test_http_errors_are_not_retried(server, tmp_path) -> None:
    url, state = server
    with pytest.raises(dl.DownloadError, match="answered HTTP 404"):
        _get(f"{url}/missing", tmp_path / "m")
    assert len(state.requests) == 1 and list(tmp_path.iterdir()) == []


def test_download_url_keeps_a_verified_file(server, tmp_path) -> None:
    url, state = server
    state.files["f"] = File(A)
    md5 = hashlib.md5(A).hexdigest()
    assert dl.download_url(f"{url}/f", tmp_path / "f", md5=md5, progress=False).is_file()
    assert dl.download_url(f"{url}/f", tmp_path / "f", md5=md5, progress=False).is_file()
    assert len(state.requests) == 1


def test_file_lock_excludes_and_removes_its_file(tmp_path) -> None:
    target = tmp_path / "w.bin"
    order: list[str] = []
    with dl.file_lock(target):
        assert (tmp_path / "w.bin.lock").exists()

        def other() -> None:
            with dl.file_lock(target):
                order.append("other")

        t = threading.Thread(target=other)
        t.start()
        time.sleep(0.1)
        order.append("first")
    t.join(timeout=5)
    assert order == ["first", "other"] and not (tmp_path / "w.bin.lock").exists()


def test_progress_bar_on_long_downloads(server, tmp_path, monkeypatch, capsys) -> None:
    url, state = server
    state.files["f"] = File(A)
    monkeypatch.setattr(dl, "_PROGRESS_DELAY_S", 0.0)  # every download counts as long
    _get(f"{url}/f", tmp_path / "f", progress=True)
    assert "f:" in capsys.readouterr().err
    _get(f"{url}/f", tmp_path / "g", progress=False)
    assert capsys.readouterr().err == ""
