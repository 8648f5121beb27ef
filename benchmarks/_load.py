"""Load generator: a closed loop of C virtual users, each sending its next request as
soon as the previous one returns, or an open loop of Poisson arrivals at a fixed rate.

Why closed loop: it is how a batch-embedding job behaves (a fixed number of workers
pulling texts), and it cannot overload the system into a meaningless backlog — when
the balancer is bad, throughput drops and latency rises, both visible. Why one asyncio
process per client: on two cores a thread-per-user generator would measure itself; this
one reports its own CPU (``time.process_time``) so a reader can check it stayed far
from saturation.

The run is bounded both by request count and by time. Only successes that *complete
inside the measurement window* (after the warm-up) count toward throughput; the
drain after the window is waited for (so nothing is left in flight) but not counted.

Why an open loop too: real traffic does not wait for the previous answer. Arrivals at a
fixed rate (a share of the servers' capacity) expose what a closed loop hides: the
median a balancer pays when it parks requests in a queue, and how it behaves close to
saturation. The open loop is bounded too: at most ``max_in_flight`` requests at once
(arrivals beyond it are counted as ``shed``, never queued without bound).

Every answer's ``X-Served-By`` header (the emulated backend's port) is recorded, so the
share each backend served can be reported through a proxy as well.

Run as a subprocess by the benchmark: ``python benchmarks/_load.py SPEC`` reads a JSON spec
(argument, or stdin) and writes one JSON result line on stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from typing import Any

import attrs
import httpx

__all__ = ["LoadResult", "LoadSpec", "make_balancer", "make_client", "run_load"]

BODY = {"inputs": ["the quick brown fox jumps over the lazy dog"]}


@attrs.frozen
class LoadSpec:
    """What one load-generator process does.

    ``target`` is ``{"kind": "url", "url": ...}`` (a proxy) or ``{"kind":
    "embedbalance", "balancer": NAME, "backends": [{"url", "tier"}...],
    "health_interval": s, "attempts": n}``, optionally with ``"attempt_timeout"``
    (seconds, ``"auto"`` or None) and ``"hedge"`` (None or ``Hedge``'s fields); absent
    ones keep the transport's defaults.
    ``start_at`` is a ``time.monotonic()`` instant (system-wide on Linux), so several
    processes start together; ``warmup`` and ``window`` are seconds after it. Users
    start evenly spread over the first ``ramp`` seconds (0: all at once), as clients
    of a deployed service arrive — a simultaneous cold burst is a separate question.
    """

    target: dict[str, Any]
    users: int
    warmup: float
    window: float
    max_requests: int = 1_000_000
    start_at: float | None = None
    drain_timeout: float = 30.0
    request_timeout: float = 60.0
    path: str = "/embed"
    ramp: float = 0.0
    #: Open loop: Poisson arrivals per second (None: the closed loop of ``users``).
    rate: float | None = None
    max_in_flight: int = 2000
    seed: int = 0


@attrs.define
class LoadResult:
    """Raw per-request records plus the generator's own cost."""

    ends: list[float] = attrs.Factory(list)  # monotonic completion instants
    latencies: list[float] = attrs.Factory(list)
    ok: list[bool] = attrs.Factory(list)
    served_by: list[int] = attrs.Factory(list)  # backend port, -1 when unknown
    starts: list[float] = attrs.Factory(list)
    errors: dict[str, int] = attrs.Factory(dict)
    unfinished: int = 0
    #: Hedge copies and retries the balancing transport sent (0 through a proxy).
    hedges: int = 0
    retries: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    window_start: float = 0.0
    window_end: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


def make_balancer(name: str, params: dict[str, Any] | None = None) -> Any:
    """The embedbalance balancer called ``name``, with ``params`` over its defaults."""
    import embedbalance as eb

    factories = {
        "RoundRobin": eb.RoundRobin,
        "LeastConnections": eb.LeastConnections,
        "PowerOfTwoChoices": eb.PowerOfTwoChoices,
        "PeakEwma": eb.PeakEwma,
        "ShortestExpectedDelay": eb.ShortestExpectedDelay,
        "LeastOutstandingTokens": eb.LeastOutstandingTokens,
        "GpuPriority": eb.GpuPriority,
    }
    return factories[name](**(params or {}))


def _policies(target: dict[str, Any]) -> dict[str, Any]:
    """The transport's ``attempt_timeout`` and ``hedge`` where the target names them
    (absent: the transport's defaults; ``hedge`` is ``None`` or ``Hedge``'s fields)."""
    import embedbalance as eb

    kwargs: dict[str, Any] = {}
    if "attempt_timeout" in target:
        kwargs["attempt_timeout"] = target["attempt_timeout"]
    if "hedge" in target:
        hedge = target["hedge"]
        kwargs["hedge"] = None if hedge is None else eb.Hedge(**hedge)
    return kwargs


def make_client(spec: LoadSpec) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` aimed at a proxy, or balancing by itself."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=4 * spec.users + 16)
    timeout = httpx.Timeout(spec.request_timeout)
    target = spec.target
    if target["kind"] == "url":
        return httpx.AsyncClient(base_url=target["url"], limits=limits, timeout=timeout)
    import embedbalance as eb

    backends = [eb.Backend(b["url"], tier=int(b.get("tier", 0))) for b in target["backends"]]
    interval = target.get("health_interval")
    transport = eb.AsyncBalancingTransport(
        backends,
        balancer=make_balancer(target["balancer"], target.get("balancer_params")),
        health_check=eb.HealthCheck(interval=interval) if interval else None,
        retry=eb.Retry(attempts=int(target.get("attempts", 3))),
        **_policies(target),
        # one connection pool per backend, as the transport does by default
        transport=lambda backend: httpx.AsyncHTTPTransport(limits=limits),
    )
    return httpx.AsyncClient(transport=transport, base_url="http://embeddings", timeout=timeout)


async def run_load(spec: LoadSpec) -> LoadResult:
    """Drive the closed loop and return every request's record."""
    result = LoadResult()
    client = make_client(spec)
    async with client:
        start = spec.start_at if spec.start_at is not None else time.monotonic()
        delay = start - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        result.window_start = start + spec.warmup
        result.window_end = result.window_start + spec.window
        issued = 0
        cpu0, wall0 = time.process_time(), time.monotonic()

        async def one() -> None:
            t0 = time.monotonic()
            ok = False
            port = -1
            try:
                r = await client.post(spec.path, json=BODY)
                await r.aread()
                ok = r.status_code == 200
                port = int(r.headers.get("x-served-by", "-1"))
                if not ok:
                    key = f"HTTP {r.status_code}"
                    result.errors[key] = result.errors.get(key, 0) + 1
            except Exception as e:  # every failure is data, never a crash
                key = type(e).__name__
                result.errors[key] = result.errors.get(key, 0) + 1
            t1 = time.monotonic()
            result.starts.append(t0)
            result.ends.append(t1)
            result.latencies.append(t1 - t0)
            result.ok.append(ok)
            result.served_by.append(port)

        async def user(i: int) -> None:
            nonlocal issued
            await asyncio.sleep(spec.ramp * i / spec.users)
            while issued < spec.max_requests and time.monotonic() < result.window_end:
                issued += 1
                await one()

        async def arrivals() -> None:
            nonlocal issued
            import random

            rng = random.Random(spec.seed)
            assert spec.rate is not None
            in_flight: set[asyncio.Future[None]] = set()
            next_at = time.monotonic()
            while issued < spec.max_requests and next_at < result.window_end:
                next_at += rng.expovariate(spec.rate)
                delay = next_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                issued += 1
                if len(in_flight) >= spec.max_in_flight:
                    result.errors["shed"] = result.errors.get("shed", 0) + 1
                    continue
                task = asyncio.ensure_future(one())
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            if in_flight:
                await asyncio.wait(in_flight)

        if spec.rate is not None:
            tasks = [asyncio.ensure_future(arrivals())]
        else:
            tasks = [asyncio.ensure_future(user(i)) for i in range(spec.users)]
        await asyncio.sleep(max(0.0, result.window_end - time.monotonic()))
        _, pending = await asyncio.wait(tasks, timeout=spec.drain_timeout)
        result.unfinished = len(pending)
        for t in pending:
            t.cancel()
        for t in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        result.cpu_s = time.process_time() - cpu0
        result.wall_s = time.monotonic() - wall0
        transport = getattr(client, "_transport", None)
        if hasattr(transport, "stats"):
            stats = transport.stats()
            result.hedges, result.retries = stats.hedges, stats.retries
    return result


def main() -> int:
    raw = json.loads(sys.argv[1] if len(sys.argv) > 1 else sys.stdin.read())
    spec = LoadSpec(**raw)
    result = asyncio.run(run_load(spec))
    sys.stdout.write(json.dumps(result.to_json()) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
