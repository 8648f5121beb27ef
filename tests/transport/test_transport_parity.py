"""The two transports take the same options with the same defaults, and every option
given to either reaches the same place: the pool, the attempt policy, the core.

Why a test of its own: the constructors are twins of sixteen keywords each, and the
suite drives the async one with fewer options. Mutation testing showed that the async
constructor could drop ``total_timeout=``, ``metrics=`` or ``rng=`` on the floor and no
test noticed (the client's twins had the same gap; see ``test_client_parity.py``).
"""

from __future__ import annotations

import inspect
import random
import time
from typing import Any

import httpx

import embedbalance as eb
from embedbalance._clock import ManualClock

#: The keyword whose type differs between the twins by design.
TWIN_TYPED = {"transport"}


def _defaults(cls: type) -> dict[str, Any]:
    params = inspect.signature(cls.__init__).parameters  # type: ignore[misc]
    return {name: p.default for name, p in params.items() if name not in ("self", "backends")}


def test_both_transports_take_the_same_keywords_with_the_same_defaults() -> None:
    """If this fails, one twin grew or lost an option, or its default drifted."""
    sync, asyn = _defaults(eb.BalancingTransport), _defaults(eb.AsyncBalancingTransport)
    assert sorted(sync) == sorted(asyn)
    for name, default in sync.items():
        if name in TWIN_TYPED:
            continue
        assert asyn[name] == default, name


def _options() -> dict[str, Any]:
    """One set of non-default values for every option but ``transport``."""
    return {
        "balancer": eb.LeastConnections,
        "health_check": eb.HealthCheck(interval=7.0, path="/ready"),
        "outlier_detection": eb.OutlierDetection(consecutive_failures=9),
        "slow_start": eb.SlowStart(window=11.0),
        "panic_threshold": 0.25,
        "zone": "eu-west-1a",
        "retry": eb.Retry(attempts=5),
        "hedge": eb.Hedge(multiple=3.0),
        "attempt_timeout": 3.5,
        "total_timeout": 9.5,
        "clock": ManualClock(50.0),
        "rng": random.Random(3),
    }


def _held(transport: Any) -> dict[str, Any]:
    """Where each option ends up, read back from the transport."""
    core = transport._core
    pool = core.pool
    policy = core.policy
    return {
        "balancer": type(pool.balancer),
        "health_check": (pool.health_check, core.health_check),
        "outlier_detection": pool.outlier_detection,
        "slow_start": pool.slow_start,
        "panic_threshold": pool.panic_threshold,
        "zone": pool.locality,
        "retry": (core.retry, policy.retry),
        "hedge": policy.hedge,
        "attempt_timeout": policy.attempt_timeout,
        "total_timeout": policy.total_timeout,
        "clock": (core.clock, pool.clock),
        "rng": (id(core.rng), id(pool.rng)),
        "callbacks": (policy.on_retry, policy.on_hedge, policy.on_budget_exhausted),
    }


def test_every_option_reaches_the_same_place_in_both_transports() -> None:
    """Both twins built from the same non-default values hold them in the same places —
    and hold them, not their defaults. If this fails, one twin drops an option."""
    options = _options()
    sync = eb.BalancingTransport(["http://127.0.0.1:9"], **options)
    asyn = eb.AsyncBalancingTransport(["http://127.0.0.1:9"], **options)
    try:
        held_sync, held_async = _held(sync), _held(asyn)
        assert {k: v for k, v in held_sync.items() if k != "callbacks"} == {
            k: v for k, v in held_async.items() if k != "callbacks"
        }
        defaults = _held(eb.BalancingTransport(["http://127.0.0.1:9"], health_check=None))
        for name in options:
            assert held_sync[name] != defaults[name], name
        rng = options["rng"]
        assert held_async["rng"] == (id(rng), id(rng))
        for held, transport in ((held_sync, sync), (held_async, asyn)):
            metrics = transport._core.metrics
            assert held["callbacks"] == (metrics.retry, metrics.hedge, metrics.budget_exhausted)
    finally:
        sync.close()


def test_a_metrics_sink_is_bound_and_counted_by_both_transports() -> None:
    """The ``metrics=`` sink given to either twin is the one that counts its requests."""

    class Counting:
        def __init__(self) -> None:
            self.requests: list[tuple[str, str]] = []

        def bind(self, pool: eb.BackendPool) -> None:
            self.pool = pool

        def request(self, url: str, outcome: str, latency: float | None) -> None:
            self.requests.append((url, outcome))

        def retry(self) -> None: ...
        def hedge(self) -> None: ...
        def budget_exhausted(self) -> None: ...

    def ok(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"ok": True})

    sink = Counting()
    sync = eb.BalancingTransport(
        ["http://a.test"], transport=httpx.MockTransport(ok), metrics=sink, health_check=None
    )
    with httpx.Client(transport=sync, base_url="http://svc") as client:
        assert client.get("/x").status_code == 200
    assert sink.pool is sync.pool
    assert sink.requests == [("http://a.test", "success")]

    import anyio

    async def main() -> None:
        asink = Counting()
        asyn = eb.AsyncBalancingTransport(
            ["http://a.test"], transport=httpx.MockTransport(ok), metrics=asink, health_check=None
        )
        async with httpx.AsyncClient(transport=asyn, base_url="http://svc") as client:
            assert (await client.get("/x")).status_code == 200
        assert asink.pool is asyn.pool
        assert asink.requests == [("http://a.test", "success")]

    anyio.run(main)


def test_stats_report_the_policys_own_counters() -> None:
    """``stats()`` of either transport reports the attempt policy's counters as they are
    — requests, retries, hedges, both budgets' refusals, hedges declined for want of a
    free slot. If this fails, a dashboard reads zeros (or another counter) for one."""
    for factory in (eb.BalancingTransport, eb.AsyncBalancingTransport):
        transport = factory(["http://127.0.0.1:9"], health_check=None)
        policy = transport._core.policy
        policy.requests, policy.retries, policy.hedges = 11, 3, 2
        policy.hedges_declined = 7
        policy.budget.exhausted = 5
        policy.hedge_budget.exhausted = 4
        stats = transport.stats()
        assert (stats.requests, stats.retries, stats.hedges) == (11, 3, 2)
        assert stats.hedges_declined == 7
        assert (stats.budget_exhausted, stats.hedge_budget_exhausted) == (5, 4)


def test_the_sync_transports_checks_go_through_its_inner_transport() -> None:
    """The sync transport's health checks probe through the inner transport it was given
    (its TLS settings, proxies, mocks), like its requests: here a mock that answers
    /health for hosts nothing resolves. If this fails, the checker falls back to a plain
    client of its own — the backends look dead and the pool panics."""
    hits: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            hits.append(request.url.host)
        return httpx.Response(200, json={})

    policy = eb.HealthCheck(interval=0.02, jitter=0.0, rise=1, fall=1, timeout=0.5)
    with eb.BalancingTransport(
        ["http://b0.invalid", "http://b1.invalid"],
        transport=httpx.MockTransport(handler),
        health_check=policy,
    ) as transport:
        transport.start()
        deadline = time.monotonic() + 5
        while len(hits) < 6:
            assert time.monotonic() < deadline, hits
            time.sleep(0.01)
        rows = transport.stats().pool.by_url()
    assert {row.state for row in rows.values()} == {"healthy"}
    assert set(hits) == {"b0.invalid", "b1.invalid"}
