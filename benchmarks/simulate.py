"""Discrete-event simulation of many heterogeneous backends, driving the real pool.

Why simulate: a loopback benchmark on two cores cannot run 10,000 replicas, yet the
questions "does the balancer still find the fast replicas among thousands?" and "what
does one pick cost at that size?" decide whether the library scales. Here time is a
:class:`~embedbalance.ManualClock`, randomness is seeded (``random.Random`` for the
pool, numpy for arrivals and service times), and every pick and release goes through
the real :class:`~embedbalance.BackendPool` and balancer — only the network is gone.

Model: open-loop Poisson arrivals at ``rho`` × total capacity; each backend has K
slots and a FIFO queue; service times are lognormal (cv 0.3). Three in four backends
are fast (8 slots, mean 50 ms), one in four slow (2 slots, mean 300 ms) — the
loopback benchmark's mix. The oracle is join-the-shortest-expected-wait with perfect
knowledge of every queue and every speed: a lower bound no real balancer reaches.

Bounded in time: the request count per run is fixed, and full-scan balancers (O(n)
per pick in Python) are simulated only up to ``scan_limit`` backends; their pick cost
is still measured at every size.
"""

from __future__ import annotations

import heapq
import random
import time
from collections import deque
from collections.abc import Sequence

import attrs
import numpy as np

import embedbalance as eb

__all__ = [
    "BALANCERS",
    "FULL_SCAN",
    "ORACLE",
    "SimResult",
    "Topology",
    "make_pool",
    "pick_cost",
    "simulate",
]

BALANCERS = (
    "RoundRobin",
    "LeastConnections",
    "PowerOfTwoChoices",
    "PeakEwma",
    "ShortestExpectedDelay",
    "LeastOutstandingTokens",
    "GpuPriority",
)
#: Balancers whose pick scans every backend (O(n) per request).
FULL_SCAN = frozenset({"LeastConnections", "LeastOutstandingTokens", "GpuPriority"})
ORACLE = "JSQ oracle"
CV = 0.3
#: Seconds: a small embedding model on a GPU. Real seconds matter because PeakEwma's
#: ``tau`` and ``default_rtt`` are in seconds, not in service times.
FAST_MEAN = 0.05


@attrs.frozen
class Topology:
    """Slots and mean service time of each backend."""

    slots: np.ndarray
    means: np.ndarray

    @classmethod
    def mixed(
        cls, n: int, *, fast_mean: float = FAST_MEAN, slow_every: int = 4, slow_factor: float = 6.0
    ) -> Topology:
        """``n`` backends; every ``slow_every``-th one is slow (2 slots, ``slow_factor``x)."""
        slow = (np.arange(n) % slow_every) == slow_every - 1
        slots = np.where(slow, 2, 8)
        means = np.where(slow, slow_factor * fast_mean, fast_mean)
        return cls(slots.astype(np.int64), means.astype(float))

    @property
    def capacity(self) -> float:
        return float(np.sum(self.slots / self.means))

    def __len__(self) -> int:
        return len(self.slots)


@attrs.frozen
class SimResult:
    """Response-time summary of one simulated run (seconds)."""

    balancer: str
    n: int
    requests: int
    p50: float
    p99: float
    mean: float
    slow_share: float  # share of requests placed on slow backends
    wall_s: float


def make_pool(name: str, topo: Topology, seed: int) -> tuple[eb.BackendPool, eb.ManualClock]:
    """A real pool over ``topo`` with a manual clock; GpuPriority gets tiers from capacity."""
    clock = eb.ManualClock()
    best = float(np.max(topo.slots / topo.means))
    backends = []
    for i in range(len(topo)):
        tier = 0
        if name == "GpuPriority" and topo.slots[i] / topo.means[i] < best / 2:
            tier = 1
        backends.append(eb.Backend(f"http://b{i}.sim:80", tier=tier))
    balancer = {
        "RoundRobin": eb.RoundRobin,
        "LeastConnections": eb.LeastConnections,
        "PowerOfTwoChoices": eb.PowerOfTwoChoices,
        "PeakEwma": eb.PeakEwma,
        "ShortestExpectedDelay": eb.ShortestExpectedDelay,
        "LeastOutstandingTokens": eb.LeastOutstandingTokens,
        "GpuPriority": eb.GpuPriority,
    }[name]()
    pool = eb.BackendPool(
        backends,
        balancer=balancer,
        outlier_detection=None,
        slow_start=None,
        clock=clock,
        rng=random.Random(seed),
    )
    return pool, clock


def simulate(
    name: str,
    topo: Topology,
    *,
    requests: int,
    rho: float = 0.8,
    seed: int = 0,
    warmup_share: float = 0.2,
) -> SimResult:
    """Run ``requests`` arrivals through balancer ``name`` (or :data:`ORACLE`)."""
    n = len(topo)
    rng = np.random.default_rng(seed)
    rate = rho * topo.capacity
    arrivals = np.cumsum(rng.exponential(1.0 / rate, size=requests))
    sigma = float(np.sqrt(np.log1p(CV * CV)))
    base = rng.lognormal(-sigma * sigma / 2.0, sigma, size=requests)  # mean 1
    slots = topo.slots
    means = topo.means
    in_system = np.zeros(n, dtype=np.int64)
    busy = np.zeros(n, dtype=np.int64)
    queues: list[deque[int]] = [deque() for _ in range(n)]
    # completions heap: (time, request index, backend)
    heap: list[tuple[float, int, int]] = []
    latency = np.full(requests, np.nan)
    placed = np.zeros(requests, dtype=np.int64)
    leases: list[eb.Lease | None] = [None] * requests
    oracle = name == ORACLE
    if not oracle:
        pool, clock = make_pool(name, topo, seed)
        index = {f"http://b{i}.sim:80": i for i in range(n)}
    jitter = np.random.default_rng(seed + 1)
    wait_unit = means / slots
    started = time.perf_counter()

    def start(req: int, b: int, now: float) -> None:
        busy[b] += 1
        heapq.heappush(heap, (now + base[req] * means[b], req, b))

    for req in range(requests):
        now = float(arrivals[req])
        while heap and heap[0][0] <= now:
            t, done, b = heapq.heappop(heap)
            latency[done] = t - arrivals[done]
            busy[b] -= 1
            in_system[b] -= 1
            if not oracle:
                clock.advance(t - clock.now)
                lease = leases[done]
                assert lease is not None
                pool.release(lease, eb.Outcome.SUCCESS, latency=float(latency[done]))
                leases[done] = None
            if queues[b]:
                start(queues[b].popleft(), b, t)
        if oracle:
            expected = np.maximum(in_system - slots + 1, 0) * wait_unit + means
            b = int(np.argmin(expected + jitter.random(n) * 1e-9))
        else:
            clock.advance(now - clock.now)
            lease = pool.acquire()
            leases[req] = lease
            b = index[lease.backend.url]
        placed[req] = b
        in_system[b] += 1
        if busy[b] < slots[b]:
            start(req, b, now)
        else:
            queues[b].append(req)
    # drain what is still queued so every request has a latency
    while heap:
        t, done, b = heapq.heappop(heap)
        latency[done] = t - arrivals[done]
        busy[b] -= 1
        if queues[b]:
            start(queues[b].popleft(), b, t)
    measured = latency[int(requests * warmup_share) :]
    slow = means[placed] > means.min()
    return SimResult(
        balancer=name,
        n=n,
        requests=requests,
        p50=float(np.percentile(measured, 50)),
        p99=float(np.percentile(measured, 99)),
        mean=float(np.mean(measured)),
        slow_share=float(np.mean(slow)),
        wall_s=time.perf_counter() - started,
    )


def pick_cost(
    name: str, n: int, *, picks: int = 2000, budget_s: float = 0.5, seed: int = 0
) -> float:
    """Mean seconds for one ``acquire`` + ``release`` on an ``n``-backend pool with about
    four requests in flight per backend (stops early after ``budget_s``)."""
    topo = Topology.mixed(n)
    pool, clock = make_pool(name, topo, seed)
    rng = random.Random(seed)
    held: list[eb.Lease] = [pool.acquire() for _ in range(min(4 * n, 4000))]
    for lease in held:  # give every backend some latency history
        pool.release(lease, eb.Outcome.SUCCESS, latency=rng.uniform(0.5, 6.0))
    held = [pool.acquire() for _ in range(min(4 * n, 4000))]
    done = 0
    started = time.perf_counter()
    deadline = started + budget_s
    while done < picks and time.perf_counter() < deadline:
        clock.advance(0.001)
        lease = pool.acquire()
        victim = held[done % len(held)]
        pool.release(victim, eb.Outcome.SUCCESS, latency=rng.uniform(0.5, 6.0))
        held[done % len(held)] = lease
        done += 1
    return (time.perf_counter() - started) / max(done, 1)


def sizes_for(quick: bool) -> Sequence[int]:
    return (10, 100, 1000) if quick else (10, 100, 1000, 10_000)
