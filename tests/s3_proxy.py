"""A throttling S3 proxy on loopback: forwards every request to a real S3 endpoint (moto's server in the
tests) and answers some of them itself with ``503 SlowDown``, as S3 does when a prefix's request rate
is too high.

Which requests are throttled is a rule on the request's number (1-based, in arrival order, counted over
all requests or per HTTP method): the first ``first`` requests, then every ``every``-th one. Throttled
requests are read in full and never reach the endpoint, so a retried request is the only way its
effect happens.
"""

from __future__ import annotations

import http.client
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

#: S3's answer to a too-high request rate (docs.aws.amazon.com/AmazonS3/latest/API/ErrorResponses.html).
SLOW_DOWN_BODY = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message>"
    "<RequestId>{request_id}</RequestId></Error>"
)
#: Hop-by-hop headers a proxy must not forward (RFC 9110 §7.6.1).
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}


@dataclass
class ThrottleLog:
    """What the proxy did: requests seen, and the method and path of each one it answered 503."""

    requests: int = 0
    by_method: dict[str, int] = field(default_factory=dict)
    throttled: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def methods_throttled(self) -> set[str]:
        return {method for method, _ in self.throttled}


@dataclass(frozen=True)
class ThrottleRule:
    """Throttle the first ``first`` requests, then every ``every``-th (0: none); numbers counted per HTTP
    method if ``per_method`` (so every method meets throttling, whatever the order of requests)."""

    first: int = 0
    every: int = 0
    per_method: bool = False

    def __post_init__(self) -> None:
        if self.first < 0 or self.every < 0:
            raise ValueError(f"throttle rule {self}: counts must be >= 0")

    def throttles(self, number: int) -> bool:
        return number <= self.first or (self.every > 0 and number % self.every == 0)


def _handler(target: str, rule: ThrottleRule, log: ThrottleLog) -> type[BaseHTTPRequestHandler]:
    host = urlsplit(target)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                parts = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(parts)
                    parts.append(self.rfile.read(size))
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))

        def _handle(self) -> None:
            body = self._body()
            with log.lock:
                log.requests += 1
                log.by_method[self.command] = log.by_method.get(self.command, 0) + 1
                number = log.by_method[self.command] if rule.per_method else log.requests
                throttle = rule.throttles(number)
                if throttle:
                    log.throttled.append((self.command, self.path))
            if throttle:
                error = SLOW_DOWN_BODY.format(request_id=uuid.uuid4().hex).encode()
                payload = b"" if self.command == "HEAD" else error
                self.send_response(503, "Slow Down")
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            if body or "Content-Length" in self.headers or self.headers.get("Transfer-Encoding"):
                headers["Content-Length"] = str(len(body))
            conn = http.client.HTTPConnection(host.hostname, host.port, timeout=60)
            try:
                conn.request(self.command, self.path, body=body or None, headers=headers)
                response = conn.getresponse()
                data = response.read()
                self.send_response(response.status, response.reason)
                for key, value in response.getheaders():
                    # HEAD: the upstream Content-Length is the object's size, passed on as it is.
                    keep = key.lower() != "content-length" or self.command == "HEAD"
                    if key.lower() not in HOP_BY_HOP and keep:
                        self.send_header(key, value)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
            finally:
                conn.close()

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle  # noqa: N815  (http.server's names)

    return Handler


@contextmanager
def throttling_proxy(target: str, rule: ThrottleRule) -> Iterator[tuple[str, ThrottleLog]]:
    """Run the proxy in front of ``target`` (``http://host:port``); yield its URL and its log."""
    log = ThrottleLog()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(target, rule, log))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", log
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
