"""A hypothesis state machine over a pool with models and zones: whatever happens to
membership, health and learned models, a pick never crosses models, and never leaves
a local zone that is wholly available."""

from __future__ import annotations

import random

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
MODELS = st.sampled_from([None, "m", "n"])
ZONES = st.sampled_from([None, "a", "b"])
BALANCERS = [eb.LeastConnections, eb.PowerOfTwoChoices, eb.RoundRobin, eb.GpuPriority]


class ModelZoneMachine(RuleBasedStateMachine):
    """Drives a zoned, multi-model pool at random and checks every pick against the rules."""

    leases = Bundle("leases")

    def __init__(self) -> None:
        super().__init__()
        self.clock = eb.ManualClock(100.0)

    @initialize(
        members=st.lists(st.tuples(st.sampled_from(UNIVERSE), MODELS, ZONES), max_size=6),
        balancer=st.sampled_from(BALANCERS),
        seed=st.integers(0, 2**16),
        zone=st.sampled_from([None, "a"]),
    )
    def setup(
        self, members: list[tuple[str, str | None, str | None]], balancer: object, seed: int,
        zone: str | None,
    ) -> None:  # fmt: skip
        unique = {url: (model, z) for url, model, z in members}
        self.zone = zone
        self.pool = eb.BackendPool(
            [
                eb.Backend(u, model=m, zone=z, tier=UNIVERSE.index(u) % 2)
                for u, (m, z) in unique.items()
            ],
            balancer=balancer,  # type: ignore[arg-type]
            health_check=eb.HealthCheck(rise=1, fall=1),
            slow_start=eb.SlowStart(window=5.0),
            panic_threshold=0.0,
            zone=zone,
            clock=self.clock,
            rng=random.Random(seed),
        )

    @rule(url=st.sampled_from(UNIVERSE), model=MODELS, zone=ZONES)
    def add(self, url: str, model: str | None, zone: str | None) -> None:
        self.pool.add(eb.Backend(url, model=model, zone=zone, tier=UNIVERSE.index(url) % 2))

    @rule(url=st.sampled_from(UNIVERSE))
    def remove(self, url: str) -> None:
        self.pool.remove(url)

    @rule(url=st.sampled_from(UNIVERSE), model=MODELS)
    def learn(self, url: str, model: str | None) -> None:
        self.pool.learn_model(url, model)

    @rule(url=st.sampled_from(UNIVERSE), ok=st.booleans())
    def report_check(self, url: str, ok: bool) -> None:
        self.pool.report_check(url, ok)

    @rule(seconds=st.sampled_from([0.0, 1.0, 6.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(target=leases, model=st.sampled_from([None, "m", "n", "x"]), data=st.data())
    def acquire(self, model: str | None, data: st.DataObject) -> object:
        exclude = data.draw(st.sets(st.sampled_from(UNIVERSE), max_size=1), label="exclude")
        rows = self.pool.stats().by_url()
        members = {b.url for b in self.pool.backends}
        serving = {u for u in members if model is None or rows[u].model in (None, model)}
        given = any(b.model is not None for b in self.pool.backends)
        known = {rows[u].model for u in members} - {None}
        if serving != members and not given and len(known) <= 1:
            serving = members  # one learned model: other names are the server's business
        error: eb.NoBackendAvailable | None = None
        try:
            lease = self.pool.acquire(exclude=exclude, model=model)
        except eb.NoBackendAvailable as exc:
            error = exc
        if error is not None:
            usable = [u for u in serving if rows[u].state == "healthy" and u not in exclude]
            assert not usable, (usable, error)
            if model is not None and not serving:
                assert error.model == model
                served = {rows[u].model for u in members} - {None}
                assert set(error.served) == served
            return None
        url = lease.backend.url
        assert url in serving, f"{url} serves {rows[url].model!r}, asked for {model!r}"
        local = [u for u in serving if rows[u].zone == self.zone and self.zone is not None]
        wholly_available = local and all(
            rows[u].state == "healthy"
            and u not in exclude
            and rows[u].effective_weight == rows[u].weight
            for u in local
        )
        tier = rows[url].tier
        same_tier_local = [u for u in local if rows[u].tier == tier]
        if wholly_available and same_tier_local:
            assert rows[url].zone == self.zone, f"left zone {self.zone} for {url}"
        return lease

    @rule(lease=consumes(leases))
    def release(self, lease: eb.Lease | None) -> None:
        if lease is not None:
            self.pool.release(lease, latency=0.01)

    @precondition(lambda self: hasattr(self, "pool"))
    @invariant()
    def stats_name_each_backends_model_and_zone(self) -> None:
        for row in self.pool.stats().backends:
            assert row.model in (None, "m", "n")
            assert row.zone in (None, "a", "b")


ModelZoneMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=30, deadline=None
)
TestModelZoneMachine = ModelZoneMachine.TestCase
TestModelZoneMachine.__doc__ = (
    "If this fails, some sequence of membership, health and /info changes lets a request "
    "reach another model's replica, or leave a wholly available local zone."
)
