"""A backend that emulates an embedding worker's latency, not its work.

Why not the real worker: a benchmark of *balancing* needs backends whose capacity is
known exactly (K concurrent slots, a service-time distribution), so that the ideal
throughput can be computed and any gap attributed to the balancer, and it needs them
cheap enough that four of them, a proxy and a load generator share two cores without
measuring each other. A request waits for one of ``slots`` slots (FIFO, unbounded
queue: queueing happens at the server, as on a real batcher), then sleeps a service
time drawn from a lognormal distribution with the given mean and coefficient of
variation.

Endpoints: any ``POST`` (``/embed`` in the benchmarks) is served as above and answered
with a tiny JSON body, ``X-Queue-Depth`` and ``X-In-Flight`` (the worker's load
headers); ``GET /health`` answers at once;
``POST /admin/slowdown?factor=F`` multiplies every later service time by ``F`` (the
"latency degrades midway" scenario); ``POST /admin/hang?on=1`` makes every later
request wait (a hung process that still accepts; ``on=0`` ends the hang, and the
requests caught in it are then served);
``--straggle-p P --straggle-s S`` adds ``S`` seconds to a fraction ``P`` of requests;
``GET /admin/arrivals`` lists when (``time.monotonic()``, shared by the machine's
processes) each served request arrived, hedged copies included: where a balancer
*placed* work, which the answering backend alone does not show once copies race.
Answers carry ``X-Served-By: <port>`` so a benchmark can tell who served a request
even through a proxy. Raw asyncio streams instead of an ASGI stack keep
the per-request CPU cost small.

Run: ``python benchmarks/latency_server.py --port 8101 --slots 8 --mean 0.1``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import math
import random
import signal
import socket
import sys
import time
from urllib.parse import parse_qs, urlsplit

import attrs

__all__ = ["LatencyModel", "ServerState", "lognormal_params", "main", "serve"]

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}
_MAX_HEADER = 64 * 1024


def lognormal_params(mean: float, cv: float) -> tuple[float, float]:
    """(mu, sigma) of the lognormal with this mean and coefficient of variation."""
    if mean <= 0 or cv < 0:
        raise ValueError(f"need mean > 0 and cv >= 0, got mean={mean!r}, cv={cv!r}")
    sigma2 = math.log1p(cv * cv)
    return math.log(mean) - sigma2 / 2.0, math.sqrt(sigma2)


@attrs.define
class LatencyModel:
    """Service times: lognormal(mean, cv) × a mutable slowdown factor, seeded."""

    mean: float
    cv: float = 0.3
    seed: int = 0
    factor: float = 1.0
    #: Probability that a request straggles, and the seconds a straggler adds.
    straggle_p: float = 0.0
    straggle_s: float = 0.0
    _rng: random.Random = attrs.field(init=False)
    _mu: float = attrs.field(init=False)
    _sigma: float = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._mu, self._sigma = lognormal_params(self.mean, self.cv)

    def sample(self) -> float:
        """One service time in seconds."""
        if self._sigma == 0.0:
            t = self.mean * self.factor
        else:
            t = self._rng.lognormvariate(self._mu, self._sigma) * self.factor
        if self.straggle_p > 0.0 and self._rng.random() < self.straggle_p:
            t += self.straggle_s
        return t


@attrs.define
class ServerState:
    """The server's live state: K slots, the latency model, counters."""

    slots: int
    model: LatencyModel
    port: int = 0
    waiting: int = 0
    busy: int = 0
    served: int = 0
    #: While set, every request is accepted and not answered until it is cleared (a
    #: hung process): the requests caught in the hang then go on to be served.
    hung: bool = False
    #: Arrival times of the POSTs (bounded: a benchmark run is minutes long).
    arrivals: collections.deque[float] = attrs.field(
        factory=lambda: collections.deque(maxlen=1_000_000)
    )
    _sem: asyncio.Semaphore | None = attrs.field(default=None, init=False)
    _unhung: asyncio.Event | None = attrs.field(default=None, init=False)

    @property
    def semaphore(self) -> asyncio.Semaphore:
        # created lazily so that it binds to the running loop
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.slots)
        return self._sem

    def set_hung(self, on: bool) -> None:
        """Start or end a hang. Ending it releases the requests caught in it: a hang
        that outlived its ``on=0`` would hold every slot until the process ends, and a
        scenario of a hang "from 30% to 60%" would measure a replica lost for good."""
        self.hung = on
        if self._unhung is None:
            self._unhung = asyncio.Event()
        if on:
            self._unhung.clear()
        else:
            self._unhung.set()

    async def serve_one(self) -> float:
        """Queue for a slot, hold it for one service time; returns the time served."""
        self.waiting += 1
        acquired = False
        try:
            async with self.semaphore:
                acquired = True
                self.waiting -= 1
                self.busy += 1
                try:
                    t = self.model.sample()
                    if self.hung and self._unhung is not None:
                        await self._unhung.wait()  # until the hang ends
                    await asyncio.sleep(t)
                finally:
                    self.busy -= 1
        finally:
            if not acquired:  # the client went away while queued
                self.waiting -= 1
        self.served += 1
        return t


def _response(status: int, body: bytes, extra: dict[str, str] | None = None) -> bytes:
    head = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ]
    for k, v in (extra or {}).items():
        head.append(f"{k}: {v}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


async def _handle(
    state: ServerState, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """One keep-alive connection: requests are answered in order until the peer closes."""
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return
            lines = head.decode("latin-1").split("\r\n")
            try:
                method, target, _version = lines[0].split(" ", 2)
            except ValueError:
                writer.write(_response(400, b'{"error":"bad request line"}'))
                await writer.drain()
                return
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            length = int(headers.get("content-length", "0") or 0)
            if length:
                await reader.readexactly(length)
            close = headers.get("connection", "").lower() == "close"
            url = urlsplit(target)
            if url.path == "/health":
                out = _response(200, b'{"status":"ok"}')
            elif url.path == "/admin/hang" and method == "POST":
                state.set_hung(parse_qs(url.query).get("on", ["1"])[0] == "1")
                out = _response(200, json.dumps({"hung": state.hung}).encode())
            elif url.path == "/admin/slowdown" and method == "POST":
                factor = float(parse_qs(url.query).get("factor", ["1"])[0])
                state.model.factor = factor
                out = _response(200, json.dumps({"factor": factor}).encode())
            elif url.path == "/admin/arrivals" and method == "GET":
                out = _response(200, json.dumps(list(state.arrivals)).encode())
            elif method == "POST":
                state.arrivals.append(time.monotonic())
                served = await state.serve_one()
                body = b'{"embeddings":[[0.0,0.0,0.0,0.0]],"served_s":%.6f}' % served
                # The worker's contract (docs/worker.md): requests waiting for a slot,
                # and requests admitted and not yet answered (this one included).
                hints = {
                    "X-Queue-Depth": str(state.waiting),
                    "X-In-Flight": str(state.waiting + state.busy + 1),
                    "X-Served-By": str(state.port),
                }
                out = _response(200, body, hints)
            else:
                out = _response(404, b'{"error":"not found"}')
            writer.write(out)
            await writer.drain()
            if close:
                return
    except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
        return  # peer gone, or the server is stopping: nothing to answer
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def serve(
    state: ServerState, host: str, port: int, ready: asyncio.Event | None = None
) -> None:
    """Serve until cancelled; binds with SO_REUSEADDR so a restart reuses the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = await asyncio.start_server(
        lambda r, w: _handle(state, r, w), sock=sock, limit=_MAX_HEADER, backlog=1024
    )
    async with server:
        if ready is not None:
            ready.set()
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--slots", type=int, default=8, help="concurrent requests served")
    parser.add_argument("--mean", type=float, default=0.1, help="mean service time, seconds")
    parser.add_argument("--cv", type=float, default=0.3, help="coefficient of variation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--straggle-p", type=float, default=0.0, help="straggler probability")
    parser.add_argument("--straggle-s", type=float, default=0.0, help="seconds a straggler adds")
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost"):
        parser.error("the benchmark backend only listens on loopback")
    model = LatencyModel(
        args.mean, args.cv, args.seed, straggle_p=args.straggle_p, straggle_s=args.straggle_s
    )
    state = ServerState(args.slots, model, port=args.port)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        ready = asyncio.Event()
        serving = asyncio.ensure_future(serve(state, args.host, args.port, ready))
        await ready.wait()
        print(f"ready {args.port}", flush=True)
        await serving

    with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
        asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
