"""A controllable stand-in backend for transport tests, run as its own process.

It speaks just enough of the worker's contract (``POST /embed``, ``GET /health``,
``X-Queue-Depth``) and can be told at runtime to answer slowly, fail, hang or shed
load, so failure scenarios run against a real socket and a real process that a test
can SIGKILL. Control: ``POST /_control`` with ``{"mode", "delay", "retry_after",
"slots", "healthy"}``; counters: ``GET /_stats``; ``POST /_reset`` zeroes them.

Modes: ``ok``; ``fail`` (500); ``503`` (no Retry-After); ``429`` (Retry-After);
``429bulk`` (429 with Retry-After to ``X-Priority: bulk`` requests only, as a
priority-aware worker pushes back on bulk first); ``hang`` (never answers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
from typing import Any


class State:
    def __init__(self, mode: str, delay: float, slots: int) -> None:
        self.mode = mode
        self.delay = delay
        self.retry_after = 1.0
        self.healthy = True
        self.slots = slots
        self.sem = asyncio.Semaphore(slots) if slots > 0 else None
        self.requests = 0
        self.answered = 0
        self.health_checks = 0
        self.waiting = 0


async def read_body(receive: Any) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def respond(
    send: Any, status: int, payload: Any, headers: list[tuple[bytes, bytes]] = ()
) -> None:  # type: ignore[assignment]
    data = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *headers],
        }
    )
    await send({"type": "http.response.body", "body": data})


def make_app(state: State) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path, method = scope["path"], scope["method"]
        body = await read_body(receive)
        if path == "/health":
            state.health_checks += 1
            await respond(send, 200 if state.healthy else 503, {"ok": state.healthy})
        elif path == "/_stats":
            await respond(
                send,
                200,
                {
                    "requests": state.requests,
                    "answered": state.answered,
                    "health_checks": state.health_checks,
                    "mode": state.mode,
                },
            )
        elif path == "/_reset":
            state.requests = state.answered = state.health_checks = 0
            await respond(send, 200, {})
        elif path == "/_control":
            cfg = json.loads(body or b"{}")
            state.mode = cfg.get("mode", state.mode)
            state.delay = float(cfg.get("delay", state.delay))
            state.retry_after = float(cfg.get("retry_after", state.retry_after))
            state.healthy = bool(cfg.get("healthy", state.healthy))
            if "slots" in cfg:
                state.slots = int(cfg["slots"])
                state.sem = asyncio.Semaphore(state.slots) if state.slots > 0 else None
            await respond(send, 200, {})
        elif method == "POST":
            state.requests += 1
            mode = state.mode
            if mode == "hang":
                await asyncio.sleep(3600)
            if mode == "fail":
                await respond(send, 500, {"error": "told to fail", "error_type": "test"})
                return
            if mode == "503":
                await respond(send, 503, {"error": "unavailable", "error_type": "test"})
                return
            bulk = (b"x-priority", b"bulk") in [(k.lower(), v.lower()) for k, v in scope["headers"]]
            if mode == "429" or (mode == "429bulk" and bulk):
                await respond(
                    send,
                    429,
                    {"error": "overloaded", "error_type": "overloaded"},
                    [(b"retry-after", str(state.retry_after).encode())],
                )
                return
            try:
                texts = json.loads(body).get("inputs", [])
            except ValueError:
                texts = []
            state.waiting += 1
            try:
                if state.sem is not None:
                    async with state.sem:
                        state.waiting -= 1
                        if state.delay:
                            await asyncio.sleep(state.delay)
                else:
                    state.waiting -= 1
                    if state.delay:
                        await asyncio.sleep(state.delay)
            finally:
                pass
            state.answered += 1
            vectors = [
                [float(len(t)), 1.0, 0.0, 0.0]
                for t in (texts if isinstance(texts, list) else [texts])
            ]
            await respond(send, 200, vectors, [(b"x-queue-depth", str(state.waiting).encode())])
        else:
            await respond(send, 404, {"error": "no route", "error_type": "not_found"})

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--mode", default="ok")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--slots", type=int, default=0)
    args = parser.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", args.port))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        make_app(State(args.mode, args.delay, args.slots)),
        log_level="warning",
        lifespan="on",
        access_log=False,
        timeout_keep_alive=30,
        # A hung request ("hang" mode) would hold a graceful shutdown until the
        # fixture's SIGKILL; one second is ample for any answer the tests wait for.
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    print(f"control-server listening on http://127.0.0.1:{port}", flush=True)
    sys.stdout.flush()
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
