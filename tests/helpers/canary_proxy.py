"""A replica that answers ``/health`` fine but serves wrong vectors, on command.

Why a proxy and not a worker option: the worker should never grow a "be wrong" switch.
A real worker does the embedding; this small HTTP server (uvicorn in a thread of the
test process, a real socket on 127.0.0.1) passes every request to it and, in mode
``"roll"``, rotates each returned vector by one component — the same norm and
dimension, a cosine near 0 with the right vector: what a replica with other weights
looks like from outside. ``/health`` and ``/info`` always pass through unchanged.

Modes switch at runtime (``proxy.mode = "roll"``), so a test can turn a replica bad
mid-run. The proxy counts embedding requests and the texts it served in each mode.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import uvicorn

EMBED_PATHS = ("/embed", "/v1/embeddings")


def roll(rows: list[list[float]]) -> list[list[float]]:
    """Each vector rotated by one component: same norm, another direction."""
    return [row[1:] + row[:1] for row in rows]


class CanaryProxy:
    """Proxies to ``upstream``; ``mode`` is ``"pass"`` or ``"roll"``."""

    def __init__(self, upstream: str, mode: str = "pass") -> None:
        self.upstream = upstream
        self.mode = mode
        #: texts embedded through this proxy, by the mode they were served in
        self.texts_served: Counter[str] = Counter()
        self.embed_requests = 0
        #: embedding requests by path
        self.paths: Counter[str] = Counter()
        self._lock = threading.Lock()
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
            target=self._server.run, kwargs={"sockets": [sock]}, name="canary-proxy", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("canary proxy did not start")
            time.sleep(0.01)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    async def _app(self, scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in scope["headers"]
            if k.lower() not in (b"host", b"content-length")
        ]
        async with httpx.AsyncClient(base_url=self.upstream, timeout=30) as client:
            upstream = await client.request(
                scope["method"], scope["path"], content=body, headers=headers
            )
        data = upstream.content
        path = scope["path"]
        if path in EMBED_PATHS and upstream.is_success:
            mode = self.mode
            payload = json.loads(data)
            if path == "/embed":
                texts = len(payload)
                if mode == "roll":
                    payload = roll(payload)
            else:
                texts = len(payload["data"])
                if mode == "roll":
                    for item in payload["data"]:
                        item["embedding"] = roll([item["embedding"]])[0]
            data = json.dumps(payload).encode()
            with self._lock:
                self.embed_requests += 1
                self.paths[path] += 1
                self.texts_served[mode] += texts
        passed = [
            (k.encode("latin-1"), v.encode("latin-1"))
            for k, v in upstream.headers.items()
            if k.lower() not in ("content-length", "content-encoding", "transfer-encoding")
        ]
        passed.append((b"content-length", str(len(data)).encode()))
        await send(
            {"type": "http.response.start", "status": upstream.status_code, "headers": passed}
        )
        await send({"type": "http.response.body", "body": data})


@contextlib.contextmanager
def canary_proxy(upstream: str, mode: str = "pass") -> Iterator[CanaryProxy]:
    """A running proxy to ``upstream``, stopped on exit."""
    proxy = CanaryProxy(upstream, mode)
    try:
        yield proxy
    finally:
        proxy.stop()
