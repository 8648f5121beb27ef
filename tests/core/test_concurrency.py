"""The pool under many threads: every counter exact, nothing lost."""

from __future__ import annotations

import random
import sys
import threading

import pytest

import embedbalance as eb

from .conftest import pool_of

THREADS = 16
PAIRS = 100_000


@pytest.mark.parametrize("balancer", [eb.PeakEwma, eb.LeastConnections, eb.RoundRobin])
def test_counters_exact_under_16_threads(clock: eb.ManualClock, balancer: type) -> None:
    """16 threads × 6,250 acquire/release pairs leave requests and successes exact and
    pending at 0 on every backend."""
    pool = pool_of(8, clock, balancer=balancer(), rng=random.Random(5))
    per_thread = PAIRS // THREADS
    start = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        held: list[eb.Lease] = []
        try:
            start.wait()
            for _ in range(per_thread):
                held.append(pool.acquire())
                if len(held) > 3 or rng.random() < 0.5:
                    pool.release(held.pop(rng.randrange(len(held))), latency=0.01)
            for lease in held:
                pool.release(lease, latency=0.01)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often so races would show
    try:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert not errors
    stats = pool.stats()
    assert sum(b.requests for b in stats.backends) == per_thread * THREADS == PAIRS
    assert sum(b.successes for b in stats.backends) == PAIRS
    assert all(b.pending == 0 and b.outstanding_cost == 0 for b in stats.backends)
    assert stats.in_flight == 0
