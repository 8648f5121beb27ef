"""A tiny discrete-event driver for pool-level tests: open-loop Poisson arrivals into
real pools, backends with K slots and FIFO queues, all on a manual clock.

It drives the real :class:`~embedbalance.BackendPool` and balancer; only the network
is gone. Deterministic for a seed, and bounded by the number of arrivals.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Callable, Sequence

import attrs

import embedbalance as eb
from embedbalance._hints import ServerHints


@attrs.frozen
class Placement:
    """One request: when it arrived, which backend served it, how long it took."""

    at: float
    backend: int
    latency: float


def open_loop(
    pool: eb.BackendPool,
    clock: eb.ManualClock,
    *,
    slots: Sequence[int],
    service: Service,
    rate: float,
    arrivals: int,
    seed: int = 0,
    hints: bool = False,
) -> list[Placement]:
    """Poisson arrivals at ``rate`` per second; backend ``i`` serves ``slots[i]`` at a time
    for ``service(i, now, rng)`` seconds each, queueing the rest FIFO. With ``hints``
    each answer carries the worker's load headers as our worker (and the benchmarks'
    latency server) sends them: the queue waiting at the backend when it answers, and
    everything admitted there, the answered request included."""
    rng = random.Random(seed)
    urls = [b.url for b in pool.backends]
    index = {u: i for i, u in enumerate(urls)}
    busy = [0] * len(urls)
    queues: list[deque[tuple[int, float]]] = [deque() for _ in urls]
    heap: list[tuple[float, int, int]] = []
    leases: dict[int, eb.Lease] = {}
    started_at: dict[int, float] = {}
    out: list[Placement] = []
    t = clock()

    def start(req: int, b: int, now: float) -> None:
        busy[b] += 1
        heapq.heappush(heap, (now + service(b, now, rng), req, b))

    def finish_until(limit: float) -> None:
        while heap and heap[0][0] <= limit:
            done_at, req, b = heapq.heappop(heap)
            clock.advance(max(0.0, done_at - clock()))
            latency = done_at - started_at[req]
            said = (
                ServerHints(queue_depth=len(queues[b]), in_flight=busy[b] + len(queues[b]))
                if hints
                else None
            )
            pool.release(leases.pop(req), eb.Outcome.SUCCESS, latency=latency, hints=said)
            out.append(Placement(started_at.pop(req), b, latency))
            busy[b] -= 1
            if queues[b]:
                nxt, _ = queues[b].popleft()
                start(nxt, b, done_at)

    for req in range(arrivals):
        t += rng.expovariate(rate)
        finish_until(t)
        clock.advance(max(0.0, t - clock()))
        lease = pool.acquire()
        b = index[lease.backend.url]
        leases[req] = lease
        started_at[req] = t
        if busy[b] < slots[b]:
            start(req, b, t)
        else:
            queues[b].append((req, t))
    finish_until(float("inf"))
    out.sort(key=lambda p: p.at)
    return out


def shares(records: Sequence[Placement], n: int) -> list[float]:
    """Share of ``records`` each of ``n`` backends served."""
    counts = [0] * n
    for r in records:
        counts[r.backend] += 1
    total = max(1, len(records))
    return [c / total for c in counts]


def regain_time(
    records: Sequence[Placement],
    since: float,
    backend: int,
    fair: float,
    width: float = 1.0,
    step: float = 0.05,
    horizon: float = 5.0,
) -> float:
    """Seconds after ``since`` until ``backend``'s share of the requests placed in the
    next ``width`` seconds first reaches 0.8 of ``fair`` (inf if not within
    ``horizon``): how long a recovered backend stays shunned, the figure the loopback
    benchmark reports as "regained"."""
    n = 1 + max(r.backend for r in records)
    t = 0.0
    while t < horizon:
        window = [r for r in records if since + t <= r.at < since + t + width]
        if window and shares(window, n)[backend] >= 0.8 * fair:
            return t
        t += step
    return math.inf


Service = Callable[[int, float, random.Random], float]


def lognormal(mean: float, cv: float) -> tuple[float, float]:
    """``(mu, sigma)`` of the lognormal with this mean and coefficient of variation."""
    sigma2 = math.log1p(cv * cv)
    return math.log(mean) - sigma2 / 2, math.sqrt(sigma2)


def spell(
    start: float,
    *,
    mean: float = 0.1,
    cv: float = 0.3,
    backend: int = 0,
    factor: float = 8.0,
    slow_from: float = 4.0,
    slow_to: float = 9.0,
) -> Service:
    """Lognormal service times, ``backend``'s ``factor`` times slower for requests that
    start service between ``start + slow_from`` and ``start + slow_to``: the
    degrade-and-recover scenario."""
    mu, sigma = lognormal(mean, cv)

    def service(b: int, now: float, rng: random.Random) -> float:
        x = rng.lognormvariate(mu, sigma)
        return x * factor if b == backend and start + slow_from <= now < start + slow_to else x

    return service
