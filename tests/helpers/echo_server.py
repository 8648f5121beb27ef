"""A real HTTP server on 127.0.0.1 that reports what it received and answers on command.

It runs uvicorn in a background thread of the test process (a real socket, a real
HTTP parser, an ephemeral port) so a test can read the server's own view — the Host
header, path, query, body and how many body chunks arrived — and script its answers
(status, headers, hanging) without a control round-trip. ``GET /health`` answers
``health_status``; every other request is recorded, counted in ``hits`` and answered
with ``status``/``headers`` and a JSON echo of what arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import attrs
import uvicorn


@attrs.define
class Seen:
    """One request as the server parsed it off the wire."""

    method: str
    path: str
    raw_path: bytes
    query: bytes
    host: str | None
    headers: dict[str, str]
    body: bytes
    body_chunks: int


class EchoServer:
    """One uvicorn server in a thread; stop it with :meth:`stop` (the fixture does)."""

    def __init__(self) -> None:
        self.status = 200
        self.headers: dict[str, str] = {}
        self.health_status = 200
        self.hang = False
        #: gzip every echo body (set Content-Encoding with :meth:`answer` too)
        self.compress = False
        self.seen: list[Seen] = []
        self.health_checks = 0
        #: headers of every health check received; ``health_hang`` makes checks hang
        self.health_headers: list[dict[str, str]] = []
        self.health_hang = False
        self._lock = threading.Lock()
        self._stopping = False
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port: int = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app,
            log_level="warning",
            lifespan="off",
            interface="asgi3",
            access_log=False,
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="echo-server", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("echo server did not start")
            time.sleep(0.01)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def hits(self) -> int:
        """Requests other than health checks that reached this server."""
        with self._lock:
            return len(self.seen)

    def answer(self, status: int, headers: dict[str, str] | None = None) -> None:
        """Answer every later non-health request with ``status`` and ``headers``."""
        self.status, self.headers = status, dict(headers or {})

    def stop(self) -> None:
        self._stopping = True
        self._server.should_exit = True
        self._thread.join(timeout=10)

    async def _app(self, scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body, chunks = b"", 0
        while True:
            message = await receive()
            if message.get("body"):
                body += message["body"]
                chunks += 1
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        if scope["path"] == "/health":
            with self._lock:
                self.health_checks += 1
                self.health_headers.append(headers)
            while self.health_hang and not self._stopping:
                await asyncio.sleep(0.02)
            await _send(send, self.health_status, {}, {"ok": self.health_status < 300})
            return
        seen = Seen(
            method=scope["method"],
            path=scope["path"],
            raw_path=scope.get("raw_path") or scope["path"].encode(),
            query=scope["query_string"],
            host=headers.get("host"),
            headers=headers,
            body=body,
            body_chunks=chunks,
        )
        with self._lock:
            self.seen.append(seen)
        while self.hang and not self._stopping:
            await asyncio.sleep(0.02)
        echo = {
            "method": seen.method,
            "path": seen.path,
            "query": seen.query.decode("latin-1"),
            "host": seen.host,
            "body": body.decode("latin-1"),
        }
        await _send(send, self.status, self.headers, echo, compress=self.compress)


async def _send(
    send: Any, status: int, headers: dict[str, str], payload: Any, *, compress: bool = False
) -> None:
    data = json.dumps(payload).encode()
    if compress:
        data = gzip.compress(data)
    raw = [(b"content-type", b"application/json")]
    raw += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


@contextlib.contextmanager
def echo_servers(n: int) -> Iterator[list[EchoServer]]:
    """``n`` running echo servers, all stopped on exit."""
    started: list[EchoServer] = []
    try:
        for _ in range(n):
            started.append(EchoServer())
        yield started
    finally:
        for server in started:
            server.stop()
