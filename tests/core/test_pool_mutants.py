"""Pool promises that mutation testing found unpinned: argument checks and their
messages, the balancer's claim, log levels, event details, stats fields, and what
happens at the exact instant an ejection ends (manual clock, no I/O)."""

from __future__ import annotations

import logging
import math
import random

import numpy as np
import pytest

import embedbalance as eb
from embedbalance._state import BackendState
from embedbalance.load import PendingRequests
from embedbalance.pool import model_matches

from .conftest import urls

U = urls(3)


def _events(pool: eb.BackendPool) -> list[tuple[str, str, float, str]]:
    events: list[tuple[str, str, float, str]] = []
    pool.add_listener(lambda e: events.append((e.kind, e.url, e.at, e.detail)))
    return events


# -- construction -----------------------------------------------------------------


def test_panic_threshold_bounds_are_inclusive_and_named() -> None:
    """0 and 1 are valid panic thresholds, anything outside is a ValueError that says
    what was wrong. If this fails, a documented setting is refused, or a nonsense one
    (1.5: always panic) is accepted silently."""
    for ok in (0.0, 1.0):
        assert eb.BackendPool(panic_threshold=ok).panic_threshold == ok
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"panic_threshold must be between 0 and 1, got"):
            eb.BackendPool(panic_threshold=bad)


def test_a_backend_given_twice_is_refused_by_name() -> None:
    """The same URL twice in the initial list is a ValueError naming it. If this fails,
    a typo in a backend list silently halves a replica's share or hides the mistake."""
    with pytest.raises(ValueError, match=f"backend {U[0]} given twice"):
        eb.BackendPool([U[0], eb.Backend(U[0], weight=2)])


def test_the_given_rng_is_the_one_used() -> None:
    """A pool draws from the rng it is given (so a seed makes picks repeatable) and
    makes its own when given none. If this fails, seeded tests and simulations stop
    being reproducible."""
    rng = random.Random(3)
    pool = eb.BackendPool(U, balancer=eb.Random, rng=rng, clock=eb.ManualClock())
    assert pool.rng is rng
    twin = eb.BackendPool(U, balancer=eb.Random, rng=random.Random(3), clock=eb.ManualClock())
    picks = [pool.acquire().backend.url for _ in range(30)]
    assert picks == [twin.acquire().backend.url for _ in range(30)]
    assert len(set(picks)) > 1
    default = eb.BackendPool(U, balancer=eb.Random, clock=eb.ManualClock())
    assert isinstance(default.rng, random.Random)
    default.acquire()


def test_failures_decay_with_the_balancer_metrics_time_constant() -> None:
    """The pool adds failure penalties with the decay its balancer's metric reads them
    with. If this fails, a metric with its own failure decay sees penalties that fade
    at another rate than it was configured for."""

    class Slow(eb.LeastConnections):
        def __init__(self) -> None:
            super().__init__()
            self.metric = PendingRequests(failure_decay=123.0)

    assert eb.BackendPool(balancer=Slow).failure_decay == 123.0
    assert eb.BackendPool(balancer=eb.LeastConnections).failure_decay == (
        eb.LeastConnections().metric.failure_decay  # type: ignore[union-attr]
    )


def test_the_balancer_is_claimed_by_one_pool_and_checked() -> None:
    """A balancer instance serves one pool (a second one is refused, saying to pass a
    factory), a factory makes a fresh one per pool, and anything else is a TypeError
    naming it. If this fails, two pools share one balancer's learned state, or a wrong
    argument fails later with an obscure error."""
    shared = eb.LeastConnections()
    eb.BackendPool(balancer=shared)
    with pytest.raises(
        ValueError,
        match=r"already balances another pool; pass a factory \(the class, say\) so that each pool",
    ):
        eb.BackendPool(balancer=shared)
    a = eb.BackendPool(balancer=eb.LeastConnections)
    b = eb.BackendPool(balancer=eb.LeastConnections)
    assert isinstance(a.balancer, eb.LeastConnections)
    assert a.balancer is not b.balancer
    with pytest.raises(TypeError, match="balancer must be a Balancer or a factory of one, got 3"):
        eb.BackendPool(balancer=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="the balancer factory returned 'x', not a Balancer"):
        eb.BackendPool(balancer=lambda: "x")  # type: ignore[arg-type,return-value]


def test_the_default_balancer_sees_the_age_of_a_stuck_request() -> None:
    """With the default balancer the pool tracks each backend's oldest request in
    flight, and forgets released ones even when they were not the oldest. If this
    fails, a backend that went silent keeps getting traffic (or the queue of
    requests in flight keeps every released one until the balancer looks)."""
    clock = eb.ManualClock(0.0)
    pool = eb.BackendPool(U[:2], clock=clock, rng=random.Random(1))
    first = pool.acquire(exclude=[U[1]])
    clock.advance(1.0)
    second = pool.acquire(exclude=[U[1]])
    state = first._state
    clock.advance(1.0)
    assert state.oldest_age(clock()) == 2.0
    pool.release(first)
    assert state.oldest_age(clock()) == 1.0
    pool.release(second)
    assert state.oldest_age(clock()) == 0.0
    # Released leases leave the age queue at release, not only when it is next read.
    leases = [pool.acquire(exclude=[U[1]]) for _ in range(3)]
    pool.release(leases[0])
    pool.release(leases[1])
    assert list(state.in_flight) == [leases[2]]
    pool.release(leases[2])
    held = pool.acquire(exclude=[U[1]])
    clock.advance(5.0)
    for _ in range(10):
        lease = pool.acquire()
        assert lease.backend.url == U[1]
        pool.release(lease, latency=0.01)
    pool.release(held)


# -- logging ------------------------------------------------------------------------


def test_events_are_logged_at_their_documented_levels(caplog: pytest.LogCaptureFixture) -> None:
    """Membership and health changes reach the ``embedbalance`` logger at the levels
    the observability page documents (WARNING for trouble, INFO for recovery, DEBUG for
    routine), as ``backend URL kind (detail)``. If this fails, an operator filtering
    at WARNING misses ejections or is flooded with routine lines."""
    clock = eb.ManualClock(0.0)
    pool = eb.BackendPool(
        U[:2],
        clock=clock,
        health_check=eb.HealthCheck(rise=1, fall=1),
        outlier_detection=eb.OutlierDetection(consecutive_failures=1, base_ejection_time=1.0),
        panic_threshold=1.0,
    )
    caplog.set_level(logging.DEBUG, logger="embedbalance")
    pool.add(U[2])
    pool.add(eb.Backend(U[2], weight=2))
    pool.release(pool.acquire(exclude=[U[1], U[2]]), eb.Outcome.FAILURE)  # ejected, panic
    pool.report_check(U[1], True)  # healthy
    pool.report_check(U[1], False)  # unhealthy
    clock.advance(1.0)
    pool.release(pool.acquire(exclude=[U[1], U[2]]), eb.Outcome.OVERLOADED, retry_after=2.0)
    pool.remove(U[2])  # removed, released
    levels = {(r.getMessage().split()[2], r.levelno) for r in caplog.records}
    assert levels == {
        ("added", logging.INFO),
        ("updated", logging.INFO),
        ("ejected", logging.WARNING),
        ("panic", logging.WARNING),
        ("healthy", logging.INFO),
        ("unhealthy", logging.WARNING),
        ("readmitted", logging.INFO),
        ("overloaded", logging.DEBUG),
        ("removed", logging.WARNING),
        ("released", logging.DEBUG),
    }
    messages = [r.getMessage() for r in caplog.records]
    assert f"backend {U[0]} ejected (1 failures, for 1s)" in messages
    assert f"backend {U[2]} released (left the pool)" in messages
    assert all(r.name == "embedbalance" for r in caplog.records)


def test_an_event_without_detail_is_logged_without_parentheses(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A canary verdict given no detail logs ``backend URL ejected`` with nothing after
    it. If this fails, log lines carry empty ``()`` or lose their detail."""
    pool = eb.BackendPool(
        U[:1], health_check=eb.HealthCheck(canary=eb.Canary(texts=["x"])), clock=eb.ManualClock()
    )
    pool.report_canary(U[0], True, "canary: ok")
    caplog.set_level(logging.DEBUG, logger="embedbalance")
    caplog.clear()  # the pass above may have been logged, by the level an earlier test left
    pool.report_canary(U[0], False, "")
    assert [r.getMessage() for r in caplog.records] == [f"backend {U[0]} ejected"]


def test_leaving_panic_mode_is_logged_at_info(caplog: pytest.LogCaptureFixture) -> None:
    """Panic mode entered is a WARNING, left an INFO line (a recovery, as the
    observability page says). If this fails, the all-clear looks like a new alarm to
    whoever watches warnings."""
    pool = eb.BackendPool(
        U[:2], health_check=eb.HealthCheck(rise=1, fall=1), clock=eb.ManualClock()
    )
    caplog.set_level(logging.DEBUG, logger="embedbalance")
    pool.report_check(U[0], False)
    pool.report_check(U[1], False)
    pool.stats()
    pool.report_check(U[0], True)
    pool.report_check(U[1], True)
    pool.stats()
    kinds = [(r.getMessage().split()[2], r.levelno) for r in caplog.records]
    assert ("panic", logging.WARNING) in kinds
    assert ("calm", logging.INFO) in kinds


# -- acquire and release ------------------------------------------------------------


def test_cost_and_latency_are_checked_at_their_bounds() -> None:
    """A request costs 1 unless told; a cost of 0 is fine, an infinite cost or latency
    is a ValueError saying which. If this fails, a free request is refused, or an
    infinity poisons every estimate it touches."""
    pool = eb.BackendPool(U[:1], clock=eb.ManualClock())
    lease = pool.acquire()
    assert lease.cost == 1.0
    pool.release(lease)
    pool.release(pool.acquire(cost=0.0))
    with pytest.raises(ValueError, match="cost must be a finite number >= 0, got inf"):
        pool.acquire(cost=math.inf)
    for bad in (math.inf, -math.inf):
        lease = pool.acquire()
        with pytest.raises(ValueError, match="latency must be a finite number, got"):
            pool.release(lease, latency=bad)
        pool.release(lease)
    assert pool.stats().backends[0].pending == 0


def test_a_negative_latency_counts_as_zero() -> None:
    """A latency below 0 (a clock stepped back) is recorded as 0. If this fails, a
    clock step makes a backend look slow (or crashes the release)."""
    pool = eb.BackendPool(U[:1], clock=eb.ManualClock())
    pool.release(pool.acquire(), latency=-1.0)
    assert pool.stats().backends[0].latency_p50 == 0.0


def test_overload_events_and_cancel_counts_are_exact() -> None:
    """An overload answer emits one ``overloaded`` event saying for how long (bulk:
    "bulk only"), a repeat that ends no later emits none, and cancellations add up.
    If this fails, dashboards count overloads wrongly or miss them."""
    clock = eb.ManualClock(10.0)
    pool = eb.BackendPool(U[:1], clock=clock)
    events = _events(pool)
    plain = [pool.acquire() for _ in range(2)]
    bulk = [pool.acquire(bulk=True) for _ in range(2)]
    for a, b in zip(plain, bulk, strict=True):
        pool.release(a, eb.Outcome.OVERLOADED, retry_after=3.0)
        pool.release(b, eb.Outcome.OVERLOADED, retry_after=2.0)
    assert events == [
        ("overloaded", U[0], 10.0, "for 3s"),
        ("overloaded", U[0], 10.0, "bulk only, for 2s"),
    ]
    clock.advance(3.0)
    pool.release(pool.acquire(bulk=True), eb.Outcome.OVERLOADED, retry_after=1.0)
    assert events[-1] == ("overloaded", U[0], 13.0, "bulk only, for 1s")
    for _ in range(2):
        pool.release(pool.acquire(), eb.Outcome.CANCELLED)
    assert pool.stats().backends[0].cancelled == 2


def test_a_drained_backend_is_released_with_its_reason() -> None:
    """The ``released`` event of a backend that drained says so, and removing a
    non-member does nothing. If this fails, listeners cannot tell a drained backend
    from an idle one, or a stale removal crashes discovery."""
    clock = eb.ManualClock(1.0)
    pool = eb.BackendPool(U[:2], clock=clock)
    events = _events(pool)
    pool.remove("http://elsewhere.test:1")
    assert events == []
    lease = pool.acquire(exclude=[U[1]])
    pool.remove(U[0])
    pool.release(lease)
    assert events[-1] == ("released", U[0], 1.0, "drained")


# -- ejection at its edges ------------------------------------------------------------


def _ejecting_pool(clock: eb.ManualClock, n: int = 2, **kwargs: object) -> eb.BackendPool:
    kwargs.setdefault(
        "outlier_detection",
        eb.OutlierDetection(consecutive_failures=1, base_ejection_time=1.0, max_ejection_time=5.0),
    )
    return eb.BackendPool(urls(n), clock=clock, slow_start=None, **kwargs)  # type: ignore[arg-type]


def test_a_failure_at_the_instant_an_ejection_ends_ejects_again() -> None:
    """A backend whose ejection has just ended (now == its end) is ejected again by a
    failure, the second time for longer, and each ejection is counted. If this fails,
    a still-broken backend escapes its next ejection for a round."""
    clock = eb.ManualClock(0.0)
    pool = _ejecting_pool(clock)
    events = _events(pool)
    held = [pool.acquire(exclude=[U[1]]) for _ in range(3)]
    pool.release(held[0], eb.Outcome.FAILURE)
    pool.release(held[1], eb.Outcome.FAILURE)  # while ejected: no new ejection
    clock.advance(1.0)
    pool.release(held[2], eb.Outcome.FAILURE)
    assert [e for e in events if e[0] == "ejected"] == [
        ("ejected", U[0], 0.0, "1 failures, for 1s"),
        ("ejected", U[0], 1.0, "1 failures, for 2s"),
    ]
    assert pool.stats().by_url()[U[0]].ejections == 2


def test_failures_while_ejected_do_not_count_toward_the_next_ejection() -> None:
    """Failures of requests that were in flight when a backend was ejected start a
    fresh count. If this fails, a backend is ejected again on fewer failures than the
    policy says."""
    clock = eb.ManualClock(0.0)
    policy = eb.OutlierDetection(consecutive_failures=3, base_ejection_time=1.0)
    pool = _ejecting_pool(clock, outlier_detection=policy)
    events = _events(pool)
    held = [pool.acquire(exclude=[U[1]]) for _ in range(5)]
    for lease in held[:3]:
        pool.release(lease, eb.Outcome.FAILURE)
    clock.advance(0.5)
    pool.release(held[3], eb.Outcome.FAILURE)
    clock.advance(0.5)
    pool.release(held[4], eb.Outcome.FAILURE)
    assert [e[2] for e in events if e[0] == "ejected"] == [0.0]


def test_an_ejection_ending_now_does_not_count_toward_the_cap() -> None:
    """A backend whose ejection ends at this instant no longer counts against
    ``max_ejection_percent``, so another may be ejected. If this fails, a failing
    backend stays in because of an ejection that is already over."""
    clock = eb.ManualClock(0.0)
    pool = _ejecting_pool(clock)
    events = _events(pool)
    pool.release(pool.acquire(exclude=[U[1]]), eb.Outcome.FAILURE)
    lease = pool.acquire(exclude=[U[0]])
    clock.advance(1.0)
    pool.release(lease, eb.Outcome.FAILURE)
    assert [(e[0], e[1]) for e in events if e[0] == "ejected"] == [
        ("ejected", U[0]),
        ("ejected", U[1]),
    ]


@pytest.mark.parametrize(("gap", "duration"), [(5.0, "2s"), (6.0, "2s"), (7.0, "1s")])
def test_the_ejection_multiplier_resets_only_after_a_long_enough_stay(
    gap: float, duration: str
) -> None:
    """The next ejection lasts longer unless the backend stayed in for more than
    ``max_ejection_time`` plus its last ejection (here 5 s + 1 s): at exactly that gap
    the multiplier still grows. If this fails, a flapping backend is ejected for the
    short base time again and again."""
    clock = eb.ManualClock(0.0)
    pool = _ejecting_pool(clock)
    events = _events(pool)
    pool.release(pool.acquire(exclude=[U[1]]), eb.Outcome.FAILURE)
    clock.advance(gap)
    pool.release(pool.acquire(exclude=[U[1]]), eb.Outcome.FAILURE)
    assert events[-1] == ("ejected", U[0], gap, f"1 failures, for {duration}")


def test_passing_checks_at_the_instant_an_ejection_ends_is_not_an_early_readmission() -> None:
    """At the instant an ejection ends the backend comes back because its time is
    over, not because checks passed. If this fails, the event misstates why."""
    clock = eb.ManualClock(0.0)
    pool = _ejecting_pool(clock, health_check=eb.HealthCheck(rise=1, fall=1))
    events = _events(pool)
    pool.release(pool.acquire(exclude=[U[1]]), eb.Outcome.FAILURE)
    clock.advance(1.0)
    pool.report_check(U[0], True)
    pool.stats()
    assert [e[3] for e in events if e[0] == "readmitted"] == ["ejection time over"]


def test_an_early_readmission_takes_traffic_at_once() -> None:
    """A backend re-admitted by passing checks is picked right away, before its
    ejection would have ended. If this fails, it sits idle until the old ejection
    time although it is known to be well."""
    clock = eb.ManualClock(0.0)
    pool = _ejecting_pool(clock, health_check=eb.HealthCheck(rise=1, fall=1))
    pool.report_check(U[0], True)
    pool.release(pool.acquire(exclude=[U[1]]), eb.Outcome.FAILURE)
    with pytest.raises(eb.NoBackendAvailable):
        pool.acquire(exclude=[U[1]])
    clock.advance(0.5)
    pool.report_check(U[0], True)
    assert pool.acquire(exclude=[U[1]]).backend.url == U[0]


def test_a_backend_back_from_unhealthy_is_asked_its_model_and_canary_again() -> None:
    """A backend that failed its checks and came back must answer ``/info`` and a new
    canary before it is trusted (it may be a new replica). If this fails, a replaced
    replica serving another model inherits the old one's verdicts."""
    canary = eb.Canary(texts=["x"])
    pool = eb.BackendPool(
        U[:1],
        health_check=eb.HealthCheck(rise=1, fall=1, canary=canary),
        clock=eb.ManualClock(),
    )
    pool.learn_model(U[0], "m")
    pool.report_canary(U[0], True, "canary: ok")
    assert not pool.wants_model(U[0])
    pool.report_check(U[0], False)
    pool.report_check(U[0], True)
    assert pool.wants_model(U[0])
    row = pool.stats().backends[0]
    assert (row.state, row.canary) == ("pending", "canary: pending")


# -- stats ----------------------------------------------------------------------------


def test_stats_rows_carry_every_field() -> None:
    """A stats row reports the backend's tier, weight, model, zone, queue depth,
    latency estimates and canary word as they are. If this fails, a dashboard shows a
    field as missing or wrong."""
    clock = eb.ManualClock(5.0)
    pool = eb.BackendPool(
        [eb.Backend(U[0], weight=2.0, tier=1, model="m", zone="z")],
        clock=clock,
        health_check=eb.HealthCheck(canary=eb.Canary(texts=["x"])),
    )
    pool.add(eb.Backend(U[1], tier=2))
    row = pool.stats().by_url()[U[0]]
    assert (row.latency_p50, row.latency_p99, row.latency_high) == (None, None, None)
    assert (row.state, row.canary) == ("pending", "canary: pending")
    pool.report_canary(U[0], True, "canary: ok")
    pool.report_canary(U[1], True, "canary: ok")
    for _ in range(3):
        pool.release(pool.acquire(exclude=[U[1]]), latency=0.1, queue_depth=4.0)
    stats = pool.stats()
    assert stats.at == 5.0
    row = stats.by_url()[U[0]]
    assert (row.tier, row.weight, row.model, row.zone) == (1, 2.0, "m", "z")
    assert (row.queue_depth, row.canary, row.state) == (4.0, "canary: ok", "healthy")
    assert row.latency_high is not None
    assert row.latency_high > 0.0
    assert row.estimate is not None
    assert row.estimate > 0.0
    assert row.rtt_estimate == row.estimate
    assert row.concurrency is not None
    assert stats.by_url()[U[1]].tier == 2
    pool.report_canary(U[0], False, "canary: wrong")
    assert pool.stats().by_url()[U[0]].state == "ejected"
    plain = eb.BackendPool(U[:1], clock=clock).stats().backends[0]
    assert plain.canary is None


def test_a_draining_backend_shows_no_ejection_time() -> None:
    """A removed backend still holding work is ``draining`` with no ejection end, even
    if it was ejected. If this fails, stats show a removed backend as coming back."""
    clock = eb.ManualClock(0.0)
    pool = _ejecting_pool(clock)
    held = [pool.acquire(exclude=[U[1]]) for _ in range(2)]
    pool.release(held[0], eb.Outcome.FAILURE)
    pool.remove(U[0])
    row = pool.stats().by_url()[U[0]]
    assert (row.state, row.ejected_until) == ("draining", None)
    pool.release(held[1])


# -- models ---------------------------------------------------------------------------


def test_model_of_reports_the_given_or_learned_model() -> None:
    """``model_of`` is the configured model, else the one ``/info`` reported, else
    None (also for a non-member). If this fails, the canary asks a replica in the
    wrong model's name."""
    pool = eb.BackendPool([eb.Backend(U[0], model="given"), U[1], U[2]], clock=eb.ManualClock())
    pool.learn_model(U[1], "learned")
    assert [pool.model_of(u) for u in U] == ["given", "learned", None]
    assert pool.model_of("http://elsewhere.test:1") is None


def test_canary_groups_of_one_model_hold_every_member() -> None:
    """With at most one model known (its spellings joined), every member is compared
    with every other, none left out. If this fails, a single-model pool leaves
    replicas unchecked or splits them into groups too small to find a majority."""
    clock = eb.ManualClock()
    assert eb.BackendPool(clock=clock).canary_groups() == ({None: []}, [])
    pool = eb.BackendPool(U, clock=clock)
    assert pool.canary_groups() == ({None: U}, [])
    pool.learn_model(U[0], "m")
    assert pool.canary_groups() == ({"m": U}, [])
    pool.add(eb.Backend(U[1], model="org/m"))
    assert pool.canary_groups() == ({"org/m": U}, [])


def test_canary_groups_split_by_model_and_leave_the_unknown_out() -> None:
    """Several models: one group per model (short and full spellings of one model
    together, under the full one), a group None for members that named no model, and
    members whose model is not known yet left out. If this fails, replicas of two
    models are judged against each other and ejected, or an unknown one is admitted
    unchecked."""
    members = [
        eb.Backend("http://a.test:1", model="org/m"),
        eb.Backend("http://b.test:1"),
        eb.Backend("http://c.test:1", model="other"),
        eb.Backend("http://d.test:1"),
        eb.Backend("http://e.test:1"),
    ]
    pool = eb.BackendPool(members, clock=eb.ManualClock())
    pool.learn_model("http://b.test:1", "m")
    pool.learn_model("http://d.test:1", None)
    groups, unknown = pool.canary_groups()
    assert groups == {
        "org/m": ["http://a.test:1", "http://b.test:1"],
        "other": ["http://c.test:1"],
        None: ["http://d.test:1"],
    }
    assert unknown == ["http://e.test:1"]


def test_a_short_name_spelled_by_two_organisations_stays_its_own_group() -> None:
    """When two organisations' models share a short name, a member naming only the
    short name belongs to neither. If this fails, it is judged against a model it
    may not serve."""
    members = [
        eb.Backend("http://a.test:1", model="x/m"),
        eb.Backend("http://b.test:1", model="y/m"),
        eb.Backend("http://c.test:1", model="m"),
    ]
    groups, unknown = eb.BackendPool(members, clock=eb.ManualClock()).canary_groups()
    assert groups == {
        "x/m": ["http://a.test:1"],
        "y/m": ["http://b.test:1"],
        "m": ["http://c.test:1"],
    }
    assert unknown == []


def test_model_names_match_with_or_without_their_organisation() -> None:
    """A request for ``org/name`` goes to a backend serving ``name`` (and the other
    way), splitting at the last slash; another short name never matches. If this
    fails, requests go to replicas of another model, or are refused by the right one."""
    assert model_matches("a/b/m", "m")
    assert model_matches("m", "a/b/m")
    assert not model_matches("org/m", "m2")
    assert not model_matches("org/m", "other/m")
    assert not model_matches("m", "org/m2")


def test_canary_groups_join_spellings_at_the_last_slash() -> None:
    """``a/b/m`` and ``m`` are one model for the canary. If this fails, replicas of
    one model spelled two ways are split into groups too small to compare."""
    members = [
        eb.Backend("http://a.test:1", model="a/b/m"),
        eb.Backend("http://b.test:1", model="m"),
        eb.Backend("http://c.test:1", model="other"),
    ]
    groups, _ = eb.BackendPool(members, clock=eb.ManualClock()).canary_groups()
    assert groups == {
        "a/b/m": ["http://a.test:1", "http://b.test:1"],
        "other": ["http://c.test:1"],
    }


def test_learning_a_model_emits_one_update_and_keeps_a_passed_canary() -> None:
    """The first model learned for a backend of unknown model is announced as
    ``updated`` (``serves 'm'``) and keeps its canary pass; learning for a backend
    whose model was configured, or learning "none", announces nothing. If this fails,
    listeners miss the model or a healthy replica is pulled from traffic for nothing."""
    clock = eb.ManualClock(4.0)
    pool = eb.BackendPool(
        [U[0], eb.Backend(U[1], model="given")],
        clock=clock,
        health_check=eb.HealthCheck(canary=eb.Canary(texts=["x"])),
    )
    pool.report_canary(U[0], True, "canary: ok")
    pool.report_canary(U[1], True, "canary: ok")
    events = _events(pool)
    pool.learn_model(U[0], "m")
    pool.learn_model(U[1], "other")
    assert events == [("updated", U[0], 4.0, "serves 'm'")]
    assert [r.state for r in pool.stats().backends] == ["healthy", "healthy"]
    pool.learn_model(U[0], None)
    assert len(events) == 1


def test_model_counters_add_up_per_outcome() -> None:
    """Per-model stats count every outcome and take the latency given (else the
    clock's), with p50/p99 over the recent ones. If this fails, per-model dashboards
    are wrong."""
    clock = eb.ManualClock(0.0)
    pool = eb.BackendPool(U[:1], clock=clock, outlier_detection=None)
    for outcome in (eb.Outcome.FAILURE, eb.Outcome.OVERLOADED, eb.Outcome.CANCELLED):
        for _ in range(2):
            pool.release(pool.acquire(model="m"), outcome, retry_after=0.0)
    for ms in range(1, 101):
        pool.release(pool.acquire(model="m"), latency=ms / 1000)
    lease = pool.acquire(model="m")
    clock.advance(0.5)
    pool.release(lease)
    stats = pool.stats().by_model()["m"]
    assert (stats.requests, stats.successes, stats.failures) == (107, 101, 2)
    assert (stats.overloads, stats.cancelled) == (2, 2)
    expected = np.percentile([*(ms / 1000 for ms in range(1, 101)), 0.5], [50, 99])
    assert stats.latency_p50 == pytest.approx(expected[0])
    assert stats.latency_p99 == pytest.approx(expected[1])


def test_requests_by_zone_sums_the_backends_of_each_zone() -> None:
    """Attempts are summed per zone over every backend in it. If this fails, a zone's
    traffic shows only its last backend's share."""
    pool = eb.BackendPool(
        [eb.Backend(U[0], zone="z"), eb.Backend(U[1], zone="z"), U[2]], clock=eb.ManualClock()
    )
    for url, n in zip(U, (2, 3, 1), strict=True):
        for _ in range(n):
            pool.release(pool.acquire(exclude=[u for u in U if u != url]))
    assert pool.stats().requests_by_zone() == {"z": 5, None: 1}


# -- membership events and unavailability ---------------------------------------------


def test_add_and_update_events_carry_the_backend() -> None:
    """Adding a backend, and changing it, emit one event each with its repr; adding it
    again unchanged emits none, new labels count as a change. If this fails, listeners
    miss changes or see phantom ones."""
    clock = eb.ManualClock(2.0)
    pool = eb.BackendPool(clock=clock)
    events = _events(pool)
    pool.add(U[0])
    pool.add(U[0])
    pool.add(eb.Backend(U[0], weight=2.0))
    labelled = eb.Backend(U[0], weight=2.0, labels={"k": "v"})
    pool.add(labelled)
    assert events == [
        ("added", U[0], 2.0, repr(eb.Backend(U[0]))),
        ("updated", U[0], 2.0, repr(eb.Backend(U[0], weight=2.0))),
        ("updated", U[0], 2.0, repr(labelled)),
    ]


def test_a_draining_backend_added_back_keeps_its_work_and_waits_for_a_canary() -> None:
    """A removed backend still holding work that is added back is the same backend (its
    request in flight still counts) and, as a new arrival, waits for a canary. If this
    fails, its pending count goes wrong or it serves unchecked."""
    pool = eb.BackendPool(
        U[:1], health_check=eb.HealthCheck(canary=eb.Canary(texts=["x"])), clock=eb.ManualClock()
    )
    pool.report_canary(U[0], True, "canary: ok")
    lease = pool.acquire()
    pool.remove(U[0])
    pool.add(U[0])
    row = pool.stats().backends[0]
    assert (row.pending, row.state, row.canary) == (1, "pending", "canary: pending")
    pool.release(lease)
    assert pool.stats().backends[0].pending == 0


def test_unavailability_names_each_backend_and_only_those_of_the_model() -> None:
    """NoBackendAvailable names each backend with its reason and until when, and for a
    model only the backends that serve it. If this fails, the error blames the wrong
    replicas or loses their names."""
    clock = eb.ManualClock(0.0)
    pool = _ejecting_pool(clock, n=3)
    pool.learn_model(U[0], "a")
    pool.learn_model(U[1], "a")
    pool.learn_model(U[2], "b")
    pool.release(pool.acquire(model="a", exclude=[U[1]]), eb.Outcome.FAILURE)
    pool.release(pool.acquire(model="a", bulk=True), eb.Outcome.OVERLOADED, retry_after=2.0)
    with pytest.raises(eb.NoBackendAvailable) as caught:
        pool.acquire(model="a", bulk=True, exclude=[U[2]])
    assert caught.value.reasons == (
        eb.Unavailability(U[0], "ejected", 1.0),
        eb.Unavailability(U[1], "overloaded (bulk)", 2.0),
    )


def test_an_ejection_over_while_the_canary_is_pending_shows_the_canary() -> None:
    """A backend whose ejection ended while it waits for a new canary is reported as
    waiting for the canary, not as ejected. If this fails, the error and stats show
    a stale reason."""
    clock = eb.ManualClock(0.0)
    pool = _ejecting_pool(clock, n=1, health_check=eb.HealthCheck(canary=eb.Canary(texts=["x"])))
    pool.report_canary(U[0], True, "canary: ok")
    pool.learn_model(U[0], "m")
    pool.release(pool.acquire(), eb.Outcome.FAILURE)
    pool.learn_model(U[0], "n")  # another model: the canary is void
    clock.advance(1.0)
    with pytest.raises(eb.NoBackendAvailable) as caught:
        pool.acquire()
    assert caught.value.reasons == (eb.Unavailability(U[0], "canary: pending"),)
    assert pool.stats().backends[0].state == "pending"


def test_canary_events_carry_kind_url_time_and_detail() -> None:
    """A first canary pass is ``healthy``, a rejection ``ejected`` (counted), a later
    pass ``readmitted``, each with the backend, the clock time and the check's words.
    If this fails, listeners and the ejection count misreport canary verdicts."""
    clock = eb.ManualClock(3.0)
    pool = eb.BackendPool(
        U[:1], health_check=eb.HealthCheck(canary=eb.Canary(texts=["x"])), clock=clock
    )
    events = _events(pool)
    pool.report_canary(U[0], True, "canary: ok")
    pool.report_canary(U[0], False, "canary: off")
    pool.report_canary(U[0], True, "canary: back")
    pool.report_canary(U[0], False, "canary: off again")
    assert events == [
        ("healthy", U[0], 3.0, "canary: ok"),
        ("ejected", U[0], 3.0, "canary: off"),
        ("readmitted", U[0], 3.0, "canary: back"),
        ("ejected", U[0], 3.0, "canary: off again"),
    ]
    assert pool.stats().backends[0].ejections == 2


# -- what exporters and clients read ------------------------------------------------


def test_gauges_say_who_may_be_picked_without_a_refresh() -> None:
    """``gauges`` reads each member's state at the clock's time: ejected and unhealthy
    members may not be picked, one whose ejection ends now may, draining ones never.
    If this fails, exporters report replicas as up or down wrongly."""
    clock = eb.ManualClock(0.0)
    pool = _ejecting_pool(clock, n=3, health_check=eb.HealthCheck(rise=1, fall=1))
    pool.report_check(U[1], True)
    pool.report_check(U[2], False)
    held = [pool.acquire(exclude=U[1:]) for _ in range(2)]
    pool.release(held[0], eb.Outcome.FAILURE)
    assert pool.gauges() == [(U[0], 1, False), (U[1], 0, True), (U[2], 0, False)]
    clock.advance(1.0)
    assert pool.gauges()[0] == (U[0], 1, True)
    pool.remove(U[0])
    assert pool.gauges()[-1] == (U[0], 1, False)
    pool.release(held[1])


def test_usable_count_refreshes_at_the_instant_an_ejection_ends() -> None:
    """At the instant an ejection ends, ``usable_count`` sees the backend back and the
    pool out of panic mode (with the events that say so). If this fails, a client
    sizes its limits on a stale view for as long as nothing else refreshes it."""
    clock = eb.ManualClock(0.0)
    pool = _ejecting_pool(clock, n=3, health_check=eb.HealthCheck(rise=1, fall=1))
    events = _events(pool)
    pool.report_check(U[1], False)
    pool.release(pool.acquire(exclude=U[1:]), eb.Outcome.FAILURE)
    assert pool.usable_count() == 3  # panic: all of them
    clock.advance(1.0)
    assert pool.usable_count() == 2
    assert [e[0] for e in events[-2:]] == ["readmitted", "calm"]


def test_attempt_deadline_from_own_answers_or_the_pools_worst() -> None:
    """The deadline is 3 x the backend's own high percentile once it has answered 20
    times (draining backends included), else 3 x the worst in the pool; any positive
    multiple is allowed. If this fails, a retry fires too early or too late."""
    clock = eb.ManualClock(0.0)
    pool = eb.BackendPool(U[:2], clock=clock, balancer=eb.LeastConnections)
    for _ in range(19):
        pool.release(pool.acquire(exclude=[U[1]]), latency=0.1)
    for _ in range(5):
        pool.release(pool.acquire(exclude=[U[0]]), latency=1.0)
    rows = pool.stats().by_url()
    own, worst = rows[U[0]].latency_high, rows[U[1]].latency_high
    assert own is not None
    assert worst is not None
    assert worst > own
    assert pool.attempt_deadline(U[0]) == pytest.approx(3.0 * worst)
    pool.release(pool.acquire(exclude=[U[1]]), latency=0.1)
    own = pool.stats().by_url()[U[0]].latency_high
    assert own is not None
    assert pool.attempt_deadline(U[0]) == pytest.approx(3.0 * own)
    assert pool.attempt_deadline(U[0], multiple=0.5) == pytest.approx(0.5 * own)
    lease = pool.acquire(exclude=[U[1]])
    pool.remove(U[0])
    assert pool.attempt_deadline(U[0]) == pytest.approx(3.0 * own)
    pool.release(lease)


def test_panic_calm_and_readmission_events_are_exact() -> None:
    """Entering and leaving panic mode are pool-wide events (url ``*``) saying how many
    backends were healthy; a re-admission at the end of its time says so. If this
    fails, listeners cannot tell what happened or when."""
    clock = eb.ManualClock(0.0)
    pool = _ejecting_pool(clock, n=3, health_check=eb.HealthCheck(rise=1, fall=1))
    events = _events(pool)
    pool.report_check(U[1], False)
    pool.release(pool.acquire(exclude=U[1:]), eb.Outcome.FAILURE)
    pool.stats()
    clock.advance(1.0)
    pool.stats()
    assert events[2:] == [
        ("panic", "*", 0.0, "1 of 3 backends healthy"),
        ("readmitted", U[0], 1.0, "ejection time over"),
        ("calm", "*", 1.0, "2 of 3 backends healthy"),
    ]


class _Recording(eb.LeastConnections):
    """Least connections that notes the hints it is shown and told."""

    def __init__(self) -> None:
        super().__init__()
        self.shown: list[eb.ServerHints | None] = []
        self.told: list[eb.ServerHints | None] = []

    def score(self, backend: eb.BackendView, now: float) -> float:
        self.shown.append(backend.hints)
        return super().score(backend, now)

    def observe(
        self,
        state: BackendState,
        latency: float,
        now: float,
        load_at_start: float = 1.0,
        cost: float = 1.0,
        hints: eb.ServerHints | None = None,
    ) -> None:
        self.told.append(hints)
        super().observe(state, latency, now, load_at_start, cost, hints)


def test_load_hints_reach_the_balancer_and_the_stats() -> None:
    """A response's hints are kept for the balancer's next look and handed to it with
    the answer; a queue depth sent alone is handed on as a hint, and one sent beside
    hints wins over the hints' own. If this fails, balancers that trust server load
    reports never see them, or stats show a stale queue depth."""
    balancer = _Recording()
    pool = eb.BackendPool(U[:2], balancer=balancer, clock=eb.ManualClock())
    hints = eb.ServerHints(queue_depth=7.0, in_flight=9.0)
    pool.release(pool.acquire(exclude=[U[1]]), latency=0.1, hints=hints)
    assert balancer.told[-1] == hints
    assert pool.stats().by_url()[U[0]].queue_depth == 7.0
    pool.acquire()
    assert hints in balancer.shown
    pool.release(pool.acquire(exclude=[U[1]]), latency=0.1, queue_depth=2.0, hints=hints)
    assert pool.stats().by_url()[U[0]].queue_depth == 2.0
    pool.release(pool.acquire(exclude=[U[1]]), latency=0.1, queue_depth=3.0)
    assert balancer.told[-1] == eb.ServerHints(queue_depth=3.0)
    assert pool.stats().by_url()[U[0]].queue_depth == 3.0


def test_a_model_nobody_serves_is_refused_without_naming_draining_backends() -> None:
    """A request for a model no member serves is refused naming the model and those
    served, and no reasons about other models' backends (a draining one included).
    If this fails, the error blames replicas that could never have served it."""
    pool = eb.BackendPool(
        [eb.Backend(U[0], model="a"), eb.Backend(U[1], model="b")], clock=eb.ManualClock()
    )
    lease = pool.acquire(model="b")
    pool.remove(U[1])
    with pytest.raises(eb.NoBackendAvailable) as caught:
        pool.acquire(model="c")
    assert caught.value.reasons == ()
    assert caught.value.model == "c"
    assert caught.value.served == ("a",)
    pool.release(lease)


def test_has_names_members_only() -> None:
    """``has(url)``: true for a member, false for a stranger and for one removed. If
    this fails, callers that add a backend only when absent (discovery) add it twice or
    never."""
    pool = eb.BackendPool(urls(2), clock=eb.ManualClock(0.0))
    assert pool.has(urls(2)[0])
    assert not pool.has("http://stranger.test:8000")
    pool.remove(urls(2)[1])
    assert not pool.has(urls(2)[1])


def test_a_new_lease_is_a_first_unreleased_attempt_and_no_hedge() -> None:
    """A lease from ``acquire`` is attempt 0, not a hedge, not released, with no span:
    the transport changes those for retries and hedges. If this fails, a plain
    request is counted or traced as a retry or a hedge, or reads as released."""
    pool = eb.BackendPool(urls(2), clock=eb.ManualClock(0.0))
    lease = pool.acquire()
    assert lease.attempt == 0
    assert type(lease.attempt) is int
    assert lease.hedge is False
    assert lease.released is False
    assert lease.span is None
    pool.release(lease)


def test_an_answer_at_the_same_instant_a_request_went_out_is_not_silence() -> None:
    """``silent_since``: a backend that answered another request at the very instant
    this one was placed has not been silent since (the test is strict). If this fails,
    a request is hedged into a queue as if its backend had hung, on a manual clock
    where many things share an instant."""
    clock = eb.ManualClock(100.0)
    pool = eb.BackendPool(urls(1), clock=clock)
    first = pool.acquire()
    clock.advance(0.5)
    second = pool.acquire()
    pool.release(first, latency=0.5)  # answered at 100.5, when `second` went out
    assert not pool.silent_since(second)
    clock.advance(0.5)
    third = pool.acquire()
    assert pool.silent_since(third)
    pool.release(second)
    pool.release(third)
