"""One fake file server on 127.0.0.1 for the downloader tests (tests/test_download.py) and the
pretrained-weights tests (tests/test_hub.py).

Each served file says how the server treats it -- validators sent, whether ``If-Range`` is
honoured (a server that ignores it must still never make the client splice two files), whether
a length is sent, and after how many bytes the next GETs drop the connection -- so every hole
of a resumable download can be staged. Every request is logged.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

AUTO = "auto"  # etag derived from the content, as release hosts do


@dataclass
class Served:
    """One file and how the server sends it."""

    body: bytes
    etag: str | None = AUTO  # None: no ETag
    last_modified: str | None = None
    honour_if_range: bool = True
    send_length: bool = True  # False: the body ends when the connection closes
    cut_after: list[int] = field(default_factory=list)  # next GETs: drop after N bytes

    @property
    def validator(self) -> str | None:
        if self.etag == AUTO:
            return f'"{hashlib.sha256(self.body).hexdigest()[:16]}"'
        return self.etag


@dataclass
class FileServer:
    """What the server holds, how it answers ranges, and what it was asked."""

    url: str = ""
    files: dict[str, Served] = field(default_factory=dict)
    honour_range: bool = True  # False: every GET is answered 200 with the whole file
    requests: list[dict[str, str | None]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _httpd: http.server.ThreadingHTTPServer | None = None

    def put(self, name: str, body: bytes, **how: object) -> Served:
        self.files[name] = Served(body, **how)  # type: ignore[arg-type]
        return self.files[name]

    def gets(self, name: str) -> list[str | None]:
        """Range headers of the requests for ``name`` (None: no Range)."""
        return [r["range"] for r in self.requests if r["name"] == name]

    def stop(self) -> None:
        if self._httpd is not None and not self._stop.is_set():
            self._stop.set()
            self._httpd.shutdown()
            self._httpd.server_close()


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        state: FileServer = self.server.state  # type: ignore[attr-defined]
        name = self.path.lstrip("/")
        rng, if_range = self.headers.get("Range"), self.headers.get("If-Range")
        state.requests.append({"name": name, "range": rng, "if_range": if_range})
        f = state.files.get(name)
        if f is None:
            self.send_error(404, "no such file")
            return
        start, size = 0, len(f.body)
        valid = if_range is None or not f.honour_if_range or if_range in (f.validator, f.last_modified)
        if rng and state.honour_range and valid:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        else:
            self.send_response(200)
        chunk = f.body[start:]
        if f.validator:
            self.send_header("ETag", f.validator)
        if f.last_modified:
            self.send_header("Last-Modified", f.last_modified)
        if f.send_length:
            self.send_header("Content-Length", str(len(chunk)))
        self.end_headers()
        if f.cut_after:  # send part of the body, then drop the connection
            self.wfile.write(chunk[: f.cut_after.pop(0)])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(chunk)


@contextlib.contextmanager
def serve() -> Iterator[FileServer]:
    """A threaded server on a free 127.0.0.1 port, stopped on exit."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    state = FileServer(url=f"http://127.0.0.1:{httpd.server_address[1]}", _httpd=httpd)
    httpd.state = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.stop()
        thread.join(timeout=5)
