"""Real servers on loopback for the ingest tests: a STAC API (rustac), a file server with HTTP range
requests (for COGs read by GDAL over http), and a fault-injecting proxy to put in front of either (or of
moto's S3 endpoint).

``rustac_server(ingest.sample.write_sample_catalog(tmp))``-style use serves the committed sample
(tests/data/stac) offline; see tests/test_ingest.py.
"""

from __future__ import annotations

import http.client
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from conftest import free_port, wait_for_port

from ingest.sample import write_collections, write_item_collection


@contextmanager
def rustac_server(files: Sequence[Path]) -> Iterator[str]:
    """``rustac serve`` (memory backend) loaded with collection and item-collection files; yields its URL."""
    exe = shutil.which("rustac")
    if exe is None:
        raise RuntimeError("the rustac executable is missing: pip install -e '.[dev]' installs it")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "serve", "--addr", f"127.0.0.1:{port}", *map(str, files)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextmanager
def serve_items(
    items: Sequence[dict[str, Any]], tmp: Path, profile: str = "planetary-computer"
) -> Iterator[str]:
    """A STAC API serving exactly ``items`` (dicts) plus the recorded collections they belong to."""
    tmp.mkdir(parents=True, exist_ok=True)
    collections = write_collections(tmp, profile)
    with rustac_server([*collections, write_item_collection(items, tmp / "items.json")]) as url:
        yield url


@dataclass
class Fault:
    """What a :class:`FaultyProxy` does to request number n (1-based): pass it, or answer ``status``,
    or stall ``delay_s`` seconds first."""

    fail: Callable[[int, str, str], bool]
    status: int = 500
    delay_s: float = 0.0


class _ThreadingServer(ThreadingHTTPServer):
    daemon_threads = True


@contextmanager
def faulty_proxy(target: str, fault: Fault) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """An HTTP proxy to ``target`` that fails the requests ``fault`` picks; yields (url, requests seen)."""
    parsed = urlparse(target)
    seen: list[tuple[str, str]] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _handle(self) -> None:
            with lock:
                seen.append((self.command, self.path))
                n = len(seen)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            if fault.fail(n, self.command, self.path):
                if fault.delay_s:
                    time.sleep(fault.delay_s)
                payload = b'{"code": "ServerError", "description": "injected by the test proxy"}'
                self.send_response(fault.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return
            conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            if "json" in (resp.getheader("Content-Type") or ""):
                # Links in STAC responses name the server itself: point them at the proxy, so that a
                # client following them (pystac-client does) keeps going through the faults.
                data = data.replace(target.rstrip("/").encode(), proxy_url.encode())
            self.send_response(resp.status)
            for key, value in resp.getheaders():
                if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            conn.close()

        def do_GET(self) -> None:
            self._handle()

        def do_POST(self) -> None:
            self._handle()

        def do_PUT(self) -> None:
            self._handle()

        def do_HEAD(self) -> None:
            self._handle()

        def do_DELETE(self) -> None:
            self._handle()

    server = _ThreadingServer(("127.0.0.1", 0), Handler)
    proxy_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy_url, seen
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def file_server(
    root: Path, fail: Callable[[int, str], bool] | None = None
) -> Iterator[tuple[str, list[str]]]:
    """Serve ``root`` over HTTP with byte-range support (what GDAL's /vsicurl/ needs); ``fail(n, path)``
    picks requests to answer with HTTP 500. Yields (base URL, requested paths)."""
    seen: list[str] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_GET(self) -> None:
            with lock:
                seen.append(self.path)
                n = len(seen)
            if fail is not None and fail(n, self.path):
                self._send(500, b"injected failure", {})
                return
            path = root / self.path.lstrip("/")
            if not path.is_file():
                self._send(404, b"not found", {})
                return
            data = path.read_bytes()
            ranged = self.headers.get("Range")
            if ranged and ranged.startswith("bytes="):
                first, _, last = ranged.removeprefix("bytes=").partition("-")
                start, end = int(first), min(int(last) if last else len(data) - 1, len(data) - 1)
                self._send(
                    206,
                    data[start : end + 1],
                    {
                        "Content-Range": f"bytes {start}-{end}/{len(data)}",
                        "Accept-Ranges": "bytes",
                    },
                )
                return
            self._send(200, data, {"Accept-Ranges": "bytes"})

        def do_HEAD(self) -> None:
            self.do_GET()

    server = _ThreadingServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
