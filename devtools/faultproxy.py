"""A fault-injecting HTTP proxy in front of a real registry, for the reliability tests.

`responses` stubs cannot trickle a body over a socket, cut one short mid-stream or serve a
`Link` chain that never ends, and a real registry does none of these by itself: this
proxy forwards every request to ``upstream`` (a ``devtools.server.LocalRegistry``) and
misbehaves on the requests a fault matches (a regular expression searched in the path
and query, optionally one method, optionally only the first ``times`` requests)::

    with FaultProxy(registry.url) as proxy:
        proxy.answer(r"^/v2/_catalog", json={"repositories": []})   # an empty catalog
        proxy.trickle(r"/manifests/sha256:", interval=2.0)           # a byte every 2 s
        client = RegistryClient(proxy.url)

The last fault added wins when several match. Faults: `answer` (any canned status, body
and headers: empty or ``null`` catalogs, 429 with ``Retry-After``, 503 always or once, a
failing page), `endless_pages`, `looping_pages`, `truncate`, `trickle`, `corrupt` (the
content no longer matches its digest), `oversize` (with or without Content-Length) and
`delay` (a slow answer), `no_digest_header` (HEAD answers without `Docker-Content-Digest`,
as some registries and proxies send them), `not_found` (404 to one chosen request) and
`meanwhile` (something else happens while one request is held, e.g. a push during a slow
DELETE).
Registries other than distribution 2.8, documented behaviour the proxy adds on top of it:
`paged_tags` (Harbor, GHCR, 3.x) and `referrers` (the OCI referrers API).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "host",
    }
)
_CLIENT_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)
PAGE_MARKER = "faultproxy_page"


@dataclass
class Upstream:
    """What the registry answered (or, for `answer`, what the proxy makes up)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def set_header(self, name: str, value: str | None) -> None:
        self.headers = [(k, v) for k, v in self.headers if k.lower() != name.lower()]
        if value is not None:
            self.headers.append((name, value))


@dataclass
class Fault:
    pattern: re.Pattern[str]
    method: str | None
    times: int | None
    # Rewrites the request's path before it goes upstream (None: sent as it came).
    rewrite: Callable[[str, Fault], str] | None = None
    # Makes up or changes the answer; None forwards it unchanged.
    respond: Callable[[Upstream | None, str, Fault], Upstream] | None = None
    # Sends the body its own way (trickled, cut short, endless...); None sends it whole.
    send: Callable[[_Handler, Upstream, Fault], None] | None = None
    forward: bool = True
    # Seconds to hold the request before it goes upstream (a slow registry).
    delay: float = 0.0
    # Runs (in the proxy's thread) while the request is held, before it goes upstream.
    action: Callable[[], None] | None = None
    hits: int = 0
    options: dict[str, Any] = field(default_factory=dict)

    def matches(self, method: str, path: str) -> bool:
        if self.method and self.method != method:
            return False
        if self.times is not None and self.hits >= self.times:
            return False
        return self.pattern.search(path) is not None


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """A client that hung up (a worker killed mid-request) is no error of the proxy's."""
        if not isinstance(sys.exc_info()[1], _CLIENT_GONE):
            super().handle_error(request, client_address)


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError("the proxy forwards to a plain http:// registry")
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 80
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.requests: list[tuple[str, str]] = []

    @property
    def url(self) -> str:
        assert self._server is not None, "start the proxy first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FaultProxy:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.proxy = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and hang up on every open connection, kept-alive ones included: a
        client in an endless loop over one connection sees the proxy gone."""
        self.stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- faults --------------------------------------------------------------------------

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def answer(
        self,
        pattern: str,
        *,
        status: int = 200,
        json_body: Any = None,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        method: str | None = None,
        times: int | None = None,
        meanwhile: Callable[[], None] | None = None,
    ) -> Fault:
        """Answer without asking the registry: `json_body` (e.g. ``{"repositories": None}``)
        or `body`, with `status` and `headers` (``{"Retry-After": "3600"}``); `meanwhile`
        runs before the answer goes (as for `FaultProxy.meanwhile`)."""
        if json_body is not None:
            body = json.dumps(json_body).encode()
        content_type = "application/json" if json_body is not None else "text/plain"
        answer = [("Content-Type", content_type), *(headers or {}).items()]

        def respond(upstream: Upstream | None, path: str, fault: Fault) -> Upstream:
            return Upstream(status, list(answer), body)

        return self._add(pattern, method, times, respond=respond, forward=False, action=meanwhile)

    def endless_pages(
        self,
        pattern: str,
        *,
        page_size: int | None = None,
        invent: str | None = None,
        method: str | None = "GET",
    ) -> Fault:
        """Announce a new next page on every answer (`Link`, rel=next, a fresh URL each
        time), on top of the registry's own pages. With `invent` ("repositories" or
        "tags"), each page also brings one made-up name, so the chain seems to progress."""

        def respond(upstream: Upstream | None, path: str, fault: Fault) -> Upstream:
            assert upstream is not None
            parts = urlsplit(path)
            own_link = _link_target(upstream.header("Link"))
            query = urlsplit(own_link).query if own_link else parts.query
            params = [(k, v) for k, v in parse_qsl(query) if k != PAGE_MARKER]
            params.append((PAGE_MARKER, str(fault.hits)))
            upstream.set_header("Link", f'<{parts.path}?{urlencode(params)}>; rel="next"')
            if invent and upstream.status == 200:
                data = json.loads(upstream.body)
                data[invent] = [*(data.get(invent) or []), f"endless-{fault.hits}"]
                upstream.body = json.dumps(data).encode()
            return upstream

        return self._add(
            pattern, method, None, rewrite=_page_request(page_size, keep_last=True), respond=respond
        )

    def page_size(self, pattern: str, size: int, *, method: str | None = "GET") -> Fault:
        """Ask the registry for pages of `size` whatever the client asked: a catalog of a few
        repositories then takes several pages, as a large one would."""
        return self._add(pattern, method, None, rewrite=_page_request(size, keep_last=True))

    def paged_tags(self, size: int) -> Fault:
        """Page tag lists as Harbor, GHCR and distribution 3.x do (at most `size` tags a
        page, sorted, `last` to go on, `Link` while more follow): 2.8 answers every tag
        at once, whatever `n` and `last` say."""

        def respond(upstream: Upstream | None, path: str, fault: Fault) -> Upstream:
            assert upstream is not None
            if upstream.status != 200:
                return upstream
            data = json.loads(upstream.body)
            params = dict(parse_qsl(urlsplit(path).query))
            limit = min(size, int(params.get("n") or size))
            tags = sorted(tag for tag in data.get("tags") or [] if tag > params.get("last", ""))
            page, more = tags[:limit], len(tags) > limit
            upstream.body = json.dumps({"name": data.get("name"), "tags": page}).encode()
            link = f'<{urlsplit(path).path}?n={limit}&last={page[-1]}>; rel="next"'
            upstream.set_header("Link", link if more else None)
            return upstream

        return self._add(
            r"/tags/list",
            "GET",
            None,
            rewrite=_page_request(None, keep_last=False),
            respond=respond,
        )

    def referrers(self, referrers: dict[str, list[dict]]) -> Fault:
        """The OCI referrers API that 2.8 lacks: `GET /v2/<name>/referrers/<digest>`
        answers an image index of `referrers[digest]` (descriptors), empty for others."""

        def respond(upstream: Upstream | None, path: str, fault: Fault) -> Upstream:
            digest = urlsplit(path).path.rsplit("/", 1)[-1]
            index = {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": referrers.get(digest, []),
            }
            headers = [("Content-Type", "application/vnd.oci.image.index.v1+json")]
            return Upstream(200, headers, json.dumps(index).encode())

        return self._add(r"^/v2/.+/referrers/", "GET", None, respond=respond, forward=False)

    def looping_pages(self, pattern: str, *, page_size: int, method: str | None = "GET") -> Fault:
        """A proxy that drops `last` and pages at `page_size`: every page is the first
        page again, whose `Link` (the registry's own) leads back to itself."""
        return self._add(pattern, method, None, rewrite=_page_request(page_size, keep_last=False))

    def truncate(
        self, pattern: str, *, keep: float = 0.5, method: str | None = "GET", times=None
    ) -> Fault:
        """Announce the whole body's length, send only its first `keep` share, hang up."""

        def send(handler: _Handler, upstream: Upstream, fault: Fault) -> None:
            handler.send_head(upstream, len(upstream.body))
            handler.wfile.write(upstream.body[: int(len(upstream.body) * keep)])
            handler.wfile.flush()
            handler.close_connection = True

        return self._add(pattern, method, times, send=send)

    def trickle(self, pattern: str, *, interval: float = 2.0, method: str | None = "GET") -> Fault:
        """Send the body one byte every `interval` seconds, until it ends or the client
        hangs up."""

        def send(handler: _Handler, upstream: Upstream, fault: Fault) -> None:
            handler.send_head(upstream, len(upstream.body))
            for position in range(len(upstream.body)):
                handler.wfile.write(upstream.body[position : position + 1])
                handler.wfile.flush()
                if self.stopping.wait(interval):
                    handler.close_connection = True
                    return

        return self._add(pattern, method, None, send=send)

    def corrupt(self, pattern: str, *, method: str | None = "GET") -> Fault:
        """Change one byte of the body: the content no longer hashes to its digest."""

        def respond(upstream: Upstream | None, path: str, fault: Fault) -> Upstream:
            assert upstream is not None
            body = bytearray(upstream.body)
            if body and upstream.status == 200:
                middle = len(body) // 2
                body[middle] = ord(" ") if body[middle] != ord(" ") else ord("\t")
            upstream.body = bytes(body)
            return upstream

        return self._add(pattern, method, None, respond=respond)

    def oversize(
        self,
        pattern: str,
        *,
        size: int,
        content_length: bool = True,
        method: str | None = "GET",
    ) -> Fault:
        """Answer with `size` bytes of padding, announced by Content-Length or streamed in
        chunks without one, until the client hangs up."""

        def send(handler: _Handler, upstream: Upstream, fault: Fault) -> None:
            handler.send_head(upstream, size if content_length else None)
            block = b" " * 65536
            sent = 0
            while sent < size and not self.stopping.is_set():
                piece = block[: min(len(block), size - sent)]
                if content_length:
                    handler.wfile.write(piece)
                else:
                    handler.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                sent += len(piece)
            if not content_length:
                handler.wfile.write(b"0\r\n\r\n")
            handler.wfile.flush()

        return self._add(pattern, method, None, send=send)

    def delay(
        self, pattern: str, *, seconds: float, method: str | None = None, times: int | None = None
    ) -> Fault:
        """Hold each matching request `seconds` before forwarding it: a registry slow to
        answer (a DELETE on a busy storage backend, say)."""
        return self._add(pattern, method, times, delay=seconds)

    def meanwhile(
        self,
        pattern: str,
        action: Callable[[], None],
        *,
        method: str | None = None,
        times: int | None = 1,
    ) -> Fault:
        """Hold the matching request while `action()` runs, then forward it: what a slow
        answer lets other clients do in between (push, tag, delete), without a clock. An
        exception in `action` is kept in `fault.options["error"]` and the request still goes
        upstream."""
        return self._add(pattern, method, times, action=action)

    def no_digest_header(self, pattern: str, *, method: str | None = "HEAD") -> Fault:
        """Leave `Docker-Content-Digest` out of the answers (some registries and proxies do
        for HEAD): the client has to GET the content to learn its digest."""

        def respond(upstream: Upstream | None, path: str, fault: Fault) -> Upstream:
            assert upstream is not None
            upstream.set_header("Docker-Content-Digest", None)
            return upstream

        return self._add(pattern, method, None, respond=respond)

    def not_found(
        self,
        pattern: str,
        *,
        method: str | None = "GET",
        times: int | None = 1,
        code: str = "MANIFEST_UNKNOWN",
    ) -> Fault:
        """Answer 404 with the OCI error `code` to the first `times` matching requests, as a
        registry does for what it lacks (or a blip of a proxy or a storage backend does)."""
        error = {"errors": [{"code": code, "message": f"{code.lower()} (faultproxy)"}]}
        return self.answer(pattern, status=404, json_body=error, method=method, times=times)

    def _add(self, pattern: str, method: str | None, times: int | None, **parts: Any) -> Fault:
        fault = Fault(re.compile(pattern), method, times, **parts)
        with self._lock:
            self._faults.append(fault)
        return fault

    def _take(self, method: str, path: str) -> Fault | None:
        """The fault for this request, counted as hit."""
        with self._lock:
            self.requests.append((method, path))
            for fault in reversed(self._faults):
                if fault.matches(method, path):
                    fault.hits += 1
                    return fault
        return None


def _page_request(page_size: int | None, *, keep_last: bool) -> Callable[[str, Fault], str]:
    def rewrite(path: str, fault: Fault) -> str:
        parts = urlsplit(path)
        params = [
            (k, v)
            for k, v in parse_qsl(parts.query)
            if k != PAGE_MARKER and (keep_last or k != "last")
        ]
        if page_size is not None:
            params = [(k, v) for k, v in params if k != "n"] + [("n", str(page_size))]
        return f"{parts.path}?{urlencode(params)}" if params else parts.path

    return rewrite


def _link_target(link: str | None) -> str | None:
    match = re.match(r"\s*<([^>]*)>", link or "")
    return match.group(1) if match else None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "faultproxy/1"

    def do_GET(self) -> None:
        self._handle()

    do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        proxy: FaultProxy = self.server.proxy  # type: ignore[attr-defined]
        with proxy._lock:
            proxy._connections.add(self.connection)

    def finish(self) -> None:
        proxy: FaultProxy = self.server.proxy  # type: ignore[attr-defined]
        with proxy._lock:
            proxy._connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def _handle(self) -> None:
        proxy: FaultProxy = self.server.proxy  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        request_body = self.rfile.read(length) if length else b""
        fault = proxy._take(self.command, self.path)
        try:
            upstream = None
            if fault is not None and fault.delay:
                proxy.stopping.wait(fault.delay)
            if fault is not None and fault.action is not None:
                try:
                    fault.action()
                except Exception as error:  # the test reads it; the request still goes on
                    fault.options["error"] = error
            if fault is None or fault.forward:
                path = fault.rewrite(self.path, fault) if fault and fault.rewrite else self.path
                upstream = self._forward(proxy, path, request_body)
            if fault is not None and fault.respond is not None:
                upstream = fault.respond(upstream, self.path, fault)
            assert upstream is not None
            if fault is not None and fault.send is not None and self.command != "HEAD":
                fault.send(self, upstream, fault)
            else:
                self._send_whole(upstream)
        except _CLIENT_GONE:
            self.close_connection = True

    def _forward(self, proxy: FaultProxy, path: str, body: bytes) -> Upstream:
        connection = http.client.HTTPConnection(
            proxy.upstream_host, proxy.upstream_port, timeout=30
        )
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            connection.request(self.command, path, body=body or None, headers=headers)
            response = connection.getresponse()
            data = response.read()
            return Upstream(response.status, response.getheaders(), data)
        except (OSError, http.client.HTTPException) as error:
            # As a real proxy would: the registry behind it is down.
            return Upstream(502, [("Content-Type", "text/plain")], f"{error}".encode())
        finally:
            connection.close()

    def send_head(self, upstream: Upstream, length: int | None) -> None:
        """Status and headers; `length` None announces a chunked body."""
        self.send_response(upstream.status)
        for name, value in upstream.headers:
            if name.lower() not in _HOP_BY_HOP:
                self.send_header(name, value)
        if length is None:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def _send_whole(self, upstream: Upstream) -> None:
        if self.command == "HEAD":
            # A HEAD answer announces the length of what a GET would bring.
            self.send_head(upstream, int(upstream.header("Content-Length") or 0))
            return
        self.send_head(upstream, len(upstream.body))
        self.wfile.write(upstream.body)
        self.wfile.flush()
