"""Micro-benchmark of the pool's hot path: one ``acquire`` + ``release`` pair.

Why it matters: the pool sits on every request's path, under one lock, inside the
caller's process. Its cost must be small next to a network round trip and, for the
O(1) balancers, flat in the number of backends, or a 10,000-pod fleet would pay for
its size on every request.

What is measured: for each balancer, pool size and thread count, the wall time of N
acquire/release pairs divided by N (so with 8 threads it is the cost per pair under
contention, GIL included), the median of several repeats. The process's CPU time per
pair is recorded too: on a machine shared with other work, wall time also counts the
time this process waited for a core, and CPU time is the steadier figure. The pool uses the real
monotonic clock and a seeded rng, like production code would, and outlier detection
and slow start at their defaults. Nothing fails, so health state stays quiet: this is
the steady-state cost.

Run: ``python benchmarks/bench_core.py`` (``--quick`` for a smoke run). Prints a markdown
table and writes ``bench-results/core.json`` and ``bench-results/core.md``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import embedbalance as eb

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench-results"

BALANCERS: dict[str, Callable[[], eb.Balancer]] = {
    "RoundRobin": eb.RoundRobin,
    "WeightedRoundRobin": eb.WeightedRoundRobin,
    "Random": eb.Random,
    "LeastConnections": eb.LeastConnections,
    "PowerOfTwoChoices": eb.PowerOfTwoChoices,
    "PeakEwma": eb.PeakEwma,
    "ShortestExpectedDelay": eb.ShortestExpectedDelay,
    "LeastOutstandingTokens": eb.LeastOutstandingTokens,
    "GpuPriority (2 tiers)": eb.GpuPriority,
    "ShortestExpectedDelay + zone": eb.ShortestExpectedDelay,
    "ShortestExpectedDelay + model": eb.ShortestExpectedDelay,
    "GpuPriority + zone": eb.GpuPriority,
}
#: Variants that change the pool or the request rather than the balancer: a caller zone
#: (half the backends are in it) or a model named by every request (half serve it).
POOL_KWARGS: dict[str, dict[str, object]] = {
    "ShortestExpectedDelay + zone": {"zone": "a"},
    "GpuPriority + zone": {"zone": "a"},
}
ACQUIRE_KWARGS: dict[str, dict[str, object]] = {"ShortestExpectedDelay + model": {"model": "m"}}
#: Goals from the issue, in µs per pair (single thread); None: allowed to grow with n.
GOALS: dict[str, float | None] = {
    "RoundRobin": 2.0,
    "PowerOfTwoChoices": 3.0,
    "PeakEwma": 3.0,
    "ShortestExpectedDelay": 3.0,
}
SIZES = (4, 64, 1_024, 10_000)
FLOOR = "(floor: lock + clock + lease only)"
THREADS = (1, 8)


class _FloorLease:
    __slots__ = ("backend", "cost", "released", "started_at")

    def __init__(self, backend: str, cost: float, started_at: float) -> None:
        self.backend, self.cost, self.started_at, self.released = backend, cost, started_at, False


class FloorPool:
    """The least an acquire/release pair can cost in Python: take a lock, read the clock,
    build a lease; then take the lock again and read the clock. Measured beside the real
    pool so a reader can judge the overhead on any machine, loaded or not."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.pending = 0

    def acquire(self) -> _FloorLease:
        with self._lock:
            self.pending += 1
            return _FloorLease("http://10.0.0.1:8000", 1.0, time.monotonic())

    def release(self, lease: _FloorLease) -> None:
        with self._lock:
            lease.released = True
            self.pending -= 1
            time.monotonic()


def make_pool(name: str, n: int) -> eb.BackendPool:
    # Half the backends on tier 1 so GpuPriority really has two tiers; tiers are
    # ignored by every other balancer. Zones and models alternate, and matter only to
    # the variants that name them.
    backends = [
        eb.Backend(
            f"http://10.{i // 65536}.{i // 256 % 256}.{i % 256}:8000",
            tier=int(i >= n // 2) if n > 1 else 0,
            zone="ab"[i % 2],
            model="mn"[i % 2] if name in ACQUIRE_KWARGS and n > 1 else None,
        )
        for i in range(n)
    ]
    return eb.BackendPool(
        backends,
        balancer=BALANCERS[name](),
        rng=random.Random(1),
        **POOL_KWARGS.get(name, {}),  # type: ignore[arg-type]
    )


def run_pairs(
    pool: eb.BackendPool | FloorPool, pairs: int, threads: int, **acquire_kwargs: object
) -> tuple[float, float]:
    """Wall and CPU seconds for ``pairs`` acquire/release pairs over ``threads`` threads."""
    release = pool.release
    acquire = functools.partial(pool.acquire, **acquire_kwargs) if acquire_kwargs else pool.acquire

    def loop(count: int) -> None:
        for _ in range(count):
            release(acquire())

    if threads == 1:
        cpu, start = time.process_time(), time.perf_counter()
        loop(pairs)
        return time.perf_counter() - start, time.process_time() - cpu
    barrier = threading.Barrier(threads + 1)
    each = pairs // threads

    def worker() -> None:
        barrier.wait()
        loop(each)

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for w in workers:
        w.start()
    barrier.wait()
    cpu, start = time.process_time(), time.perf_counter()
    for w in workers:
        w.join()
    return time.perf_counter() - start, time.process_time() - cpu


def measure(name: str, n: int, threads: int, repeats: int, target_s: float) -> tuple[float, float]:
    """Median wall and CPU µs per pair over ``repeats`` runs of about ``target_s`` s each."""
    pool = FloorPool() if name == FLOOR else make_pool(name, n)
    kw = ACQUIRE_KWARGS.get(name, {})
    run_pairs(pool, 200, 1, **kw)  # warm caches, seed estimates
    probe = max(run_pairs(pool, 200, 1, **kw)[0] / 200, 1e-7)
    pairs = max(threads * 50, int(target_s / probe) // threads * threads)
    runs = [run_pairs(pool, pairs, threads, **kw) for _ in range(repeats)]
    assert (pool.pending if isinstance(pool, FloorPool) else pool.stats().in_flight) == 0
    wall = statistics.median(w for w, _ in runs) / pairs * 1e6
    cpu = statistics.median(c for _, c in runs) / pairs * 1e6
    return wall, cpu


def fmt(us: float) -> str:
    return f"{us:.2f}" if us < 100 else f"{us:,.0f}"


def table(results: list[dict[str, object]], key: str) -> str:
    header = "| balancer | threads | " + " | ".join(f"{n:,} backends" for n in SIZES) + " |"
    lines = [header, "|---|---|" + "---:|" * len(SIZES)]
    for row in results:
        cells = " | ".join(fmt(row[key][str(n)]) for n in SIZES)  # type: ignore[index]
        lines.append(f"| {row['balancer']} | {row['threads']} | {cells} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter repeats")
    parser.add_argument("--balancers", default=None, help="comma-separated (default: all)")
    args = parser.parse_args()
    names = args.balancers.split(",") if args.balancers else list(BALANCERS)
    for name in names:
        if name not in BALANCERS:
            parser.error(f"unknown balancer {name!r}; known: {', '.join(BALANCERS)}")
    repeats, target_s = (3, 0.02) if args.quick else (5, 0.1)
    load_before = os.getloadavg()[0]
    results: list[dict[str, object]] = []
    for name in [FLOOR, *names]:
        for threads in THREADS:
            wall: dict[str, float] = {}
            cpu: dict[str, float] = {}
            for n in SIZES:
                wall[str(n)], cpu[str(n)] = measure(name, n, threads, repeats, target_s)
            results.append({"balancer": name, "threads": threads, "wall_us": wall, "cpu_us": cpu})
            cells = " | ".join(f"{fmt(wall[str(n)])} ({fmt(cpu[str(n)])})" for n in SIZES)
            print(f"{name} x{threads}: {cells}", file=sys.stderr, flush=True)
    load_after = os.getloadavg()[0]

    verdicts = []
    for name, goal in GOALS.items():
        if goal is None or name not in names:
            continue
        single = next(r for r in results if r["balancer"] == name and r["threads"] == 1)
        for key, label in (("wall_us", "wall"), ("cpu_us", "CPU")):
            worst = max(single[key].values())  # type: ignore[attr-defined]
            verdicts.append(
                f"- {name}: worst single-thread {label} {fmt(worst)} µs/pair, goal ≤ {goal:g}: "
                + ("met" if worst <= goal else "missed")
            )
    env = (
        f"Python {platform.python_version()} on {platform.machine()} {platform.system()}, "
        f"{os.cpu_count()} CPUs, load average {load_before:.1f} before / "
        f"{load_after:.1f} after"
    )
    report = (
        f"# Core micro-benchmark: µs per acquire + release pair (median of {repeats})\n\n"
        f"{env}\n\n## Wall time per pair\n\n{table(results, 'wall_us')}\n\n"
        f"## CPU time per pair\n\n{table(results, 'cpu_us')}\n\n" + "\n".join(verdicts) + "\n"
    )
    print(report)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "core.md").write_text(report)
    (RESULTS / "core.json").write_text(
        json.dumps(
            {
                "unit": "microseconds per acquire+release pair",
                "repeats": repeats,
                "environment": env,
                "sizes": list(SIZES),
                "results": results,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
