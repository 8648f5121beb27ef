"""A hypothesis state machine over BackendPool: membership, leases, outcomes, checks, time."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
)

import embedbalance as eb

from .conftest import urls

UNIVERSE = urls(6)
BALANCERS = [
    eb.RoundRobin,
    eb.WeightedRoundRobin,
    eb.Random,
    eb.LeastConnections,
    eb.PowerOfTwoChoices,
    eb.PeakEwma,
    eb.LeastOutstandingTokens,
    lambda: eb.GpuPriority(saturation=2.0),
]


class PoolMachine(RuleBasedStateMachine):
    """Drives a pool at random and checks its bookkeeping against a model of the leases."""

    leases = Bundle("leases")

    def __init__(self) -> None:
        super().__init__()
        self.clock = eb.ManualClock(100.0)
        self.outstanding: Counter[str] = Counter()
        self.acquired = 0
        self.released = 0
        #: the canary's last verdict per member, as the pool should hold it
        self.canary: dict[str, bool | None] = {}
        self.canary_on = False

    @initialize(
        members=st.sets(st.sampled_from(UNIVERSE), min_size=0, max_size=6),
        balancer=st.sampled_from(BALANCERS),
        seed=st.integers(0, 2**16),
        panic=st.sampled_from([0.0, 0.5, 1.0]),
        canary=st.booleans(),
    )
    def setup(
        self, members: set[str], balancer: object, seed: int, panic: float, canary: bool
    ) -> None:
        self.canary_on = canary
        self.canary = dict.fromkeys(members)
        self.pool = eb.BackendPool(
            [eb.Backend(u, tier=UNIVERSE.index(u) % 2) for u in sorted(members)],
            balancer=balancer(),  # type: ignore[operator]
            outlier_detection=eb.OutlierDetection(consecutive_failures=2, max_ejection_percent=50),
            health_check=eb.HealthCheck(rise=2, fall=2, canary=canary),
            slow_start=eb.SlowStart(window=5.0),
            panic_threshold=panic,
            clock=self.clock,
            rng=random.Random(seed),
        )

    @rule(url=st.sampled_from(UNIVERSE), tier=st.integers(0, 1), weight=st.sampled_from([1, 3]))
    def add(self, url: str, tier: int, weight: int) -> None:
        if not self.pool.has(url):
            self.canary[url] = None  # a newcomer (or a comeback) must pass again
        self.pool.add(eb.Backend(url, tier=tier, weight=weight))

    @rule(url=st.sampled_from(UNIVERSE))
    def remove(self, url: str) -> None:
        self.pool.remove(url)

    @rule(target=leases, cost=st.sampled_from([1.0, 7.0, 300.0]), data=st.data())
    def acquire(self, cost: float, data: st.DataObject) -> object:
        exclude = data.draw(st.sets(st.sampled_from(UNIVERSE), max_size=2), label="exclude")
        before = self.pool.stats()
        rows = before.by_url()
        members = {b.url for b in self.pool.backends}
        try:
            lease = self.pool.acquire(cost=cost, exclude=exclude)
        except eb.NoBackendAvailable as exc:
            reasons = {r.url: r.reason for r in exc.reasons}
            # Every member has a reason, and none of them is a usable one.
            assert members <= set(reasons), (members, reasons)
            for url, reason in reasons.items():
                if reason == "excluded":
                    assert url in exclude
                elif reason.startswith("canary:"):
                    assert self.canary[url] is not True
                    assert rows[url].state in ("pending", "ejected")
                    assert rows[url].canary == reason
                else:
                    assert rows[url].state == reason, (url, reason, rows[url])
            # NoBackendAvailable only when nothing usable: a healthy, non-excluded member
            # would have been picked.
            assert not [u for u in members if rows[u].state == "healthy" and u not in exclude]
            return None
        url = lease.backend.url
        assert url in members, "a draining or unknown backend was picked"
        assert url not in exclude
        assert rows[url].state != "overloaded"
        if self.canary_on:
            assert self.canary[url] is True, "picked a backend the canary has not passed"
        if not before.panic:
            assert rows[url].state == "healthy", f"picked a {rows[url].state} backend outside panic"
        self.outstanding[url] += 1
        self.acquired += 1
        return lease

    def _release(self, lease: eb.Lease | None, outcome: eb.Outcome, **kwargs: float) -> None:
        if lease is None:
            return
        self.pool.release(lease, outcome, **kwargs)
        self.outstanding[lease.backend.url] -= 1
        self.released += 1

    @rule(lease=consumes(leases), latency=st.floats(0.0, 2.0))
    def release_success(self, lease: eb.Lease | None, latency: float) -> None:
        self._release(lease, eb.Outcome.SUCCESS, latency=latency)

    @rule(lease=consumes(leases))
    def release_failure(self, lease: eb.Lease | None) -> None:
        self._release(lease, eb.Outcome.FAILURE)

    @rule(lease=consumes(leases), retry_after=st.sampled_from([0.0, 0.5, 3.0]))
    def release_overloaded(self, lease: eb.Lease | None, retry_after: float) -> None:
        self._release(lease, eb.Outcome.OVERLOADED, retry_after=retry_after)

    @rule(lease=consumes(leases))
    def release_cancelled(self, lease: eb.Lease | None) -> None:
        self._release(lease, eb.Outcome.CANCELLED)

    @rule(url=st.sampled_from(UNIVERSE), ok=st.booleans())
    def report_check(self, url: str, ok: bool) -> None:
        self.pool.report_check(url, ok)

    @rule(url=st.sampled_from(UNIVERSE), agrees=st.sampled_from([True, False, None]))
    def report_canary(self, url: str, agrees: bool | None) -> None:
        if self.pool.has(url) and agrees is not None:
            self.canary[url] = agrees
        self.pool.report_canary(url, agrees, f"canary: said {agrees}")

    @rule(seconds=st.sampled_from([0.0, 0.1, 1.0, 5.0, 31.0, 400.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @precondition(lambda self: hasattr(self, "pool"))
    @invariant()
    def in_flight_matches_the_model(self) -> None:
        stats = self.pool.stats()
        assert stats.in_flight == self.acquired - self.released
        for row in stats.backends:
            assert row.pending >= 0
            assert row.pending == self.outstanding[row.url], row
        for url, n in self.outstanding.items():
            if n:
                assert url in stats.by_url(), f"{url} has leases in flight but vanished"


PoolMachine.TestCase.settings = settings(max_examples=120, stateful_step_count=40, deadline=None)
TestPoolMachine = PoolMachine.TestCase
TestPoolMachine.__doc__ = (
    "Random sequences of pool operations keep leases, health and membership consistent, "
    "and never pick a backend the canary has not passed."
)
