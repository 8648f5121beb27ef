"""The adaptive limit on bulk requests in flight: pure, with a manual clock.

Properties over any sequence of acquires and releases, plus the three behaviours the
limit exists for: it grows while the pool answers at its idle latency, it shrinks when
latency or refusals say a backlog formed, and it never cuts twice for one congestion.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embedbalance import BulkLimit, BulkLimiter, ManualClock, NoBackendAvailable, Unavailability
from embedbalance._bulk import BulkGate
from embedbalance.priority import check_priority


def _limiter(
    policy: BulkLimit | None = None, *, backends: int = 2, top: int = 16
) -> tuple[BulkLimiter, ManualClock]:
    clock = ManualClock()
    limiter = BulkLimiter.create(
        policy or BulkLimit(), backends=backends, max_concurrency=top, clock=clock
    )
    return limiter, clock


_event = st.one_of(
    st.tuples(st.just("acquire"), st.just(0.0), st.booleans(), st.none()),
    st.tuples(
        st.just("release"),
        st.floats(min_value=0.0, max_value=10.0),
        st.booleans(),
        st.one_of(st.none(), st.floats(min_value=0.0, max_value=50.0)),
    ),
    st.tuples(st.just("fail"), st.just(0.0), st.booleans(), st.none()),
    st.tuples(
        st.just("advance"), st.floats(min_value=0.0, max_value=60.0), st.booleans(), st.none()
    ),
)


@settings(max_examples=300, deadline=None)
@given(
    events=st.lists(_event, max_size=200),
    min_limit=st.one_of(st.none(), st.integers(1, 4)),
    top=st.integers(1, 32),
    backends=st.integers(0, 8),
)
def test_limit_stays_in_bounds_and_slots_are_never_exceeded(
    events: list[tuple[str, float, bool, float | None]],
    min_limit: int | None,
    top: int,
    backends: int,
) -> None:
    """Whatever happens, the floor (min_limit, else one per backend, capped by the
    ceiling) <= limit <= the ceiling, in_flight never goes negative, and a slot is
    granted only while fewer than floor(limit) are in flight. If this fails, the limit
    can run away (a backlog) or to zero (a stalled bulk job)."""
    limiter, clock = _limiter(BulkLimit(min_limit=min_limit), backends=backends, top=top)
    floor = min(min_limit if min_limit is not None else max(1, backends), top)
    for kind, value, flag, depth in events:
        if kind == "acquire":
            before = limiter.in_flight
            granted = limiter.try_acquire()
            assert granted == (before < limiter.slots)
        elif kind == "release" and limiter.in_flight:
            limiter.release(value, overloaded=flag, queue_depth=depth)
        elif kind == "fail" and limiter.in_flight:
            limiter.release(None)
        elif kind == "advance":
            clock.advance(value)
        assert 1 <= floor <= limiter.limit <= top
        assert limiter.in_flight >= 0
        assert limiter.slots == math.floor(limiter.limit)


@settings(max_examples=100, deadline=None)
@given(latency=st.floats(min_value=0.001, max_value=5.0), top=st.integers(2, 64))
def test_fast_answers_while_saturated_grow_the_limit_to_the_ceiling(
    latency: float, top: int
) -> None:
    """Answers at the baseline latency while every slot is used raise the limit, never
    lower it, up to max_concurrency. If this fails, a bulk job cannot use idle capacity."""
    limiter, clock = _limiter(top=top, backends=1)
    previous = limiter.limit
    for _ in range(top * top * 2):
        while limiter.try_acquire():
            pass
        clock.advance(latency)
        limiter.release(latency)
        assert limiter.limit >= previous
        previous = limiter.limit
    assert limiter.limit == top


def test_an_unused_limit_does_not_grow() -> None:
    """Fast answers while the client sends less than half its limit leave the limit
    alone. If this fails, an idle-looking job earns a huge limit and then floods."""
    limiter, clock = _limiter(BulkLimit(initial=8), top=64)
    for _ in range(100):
        assert limiter.try_acquire()
        clock.advance(0.1)
        limiter.release(0.1)
    assert limiter.limit == 8


@pytest.mark.parametrize(
    "signal",
    ["slow", "overloaded", "queue", "failed"],
)
def test_congestion_signals_shrink_the_limit(signal: str) -> None:
    """A latency above tolerance x baseline, a refusal, a deep server-reported bulk
    queue or a failed request each multiply the limit by backoff. If this fails, the
    limit never gives capacity back and bulk builds a backlog on every replica."""
    limiter, clock = _limiter(BulkLimit(initial=10, backoff=0.5), top=16)
    assert limiter.try_acquire()
    clock.advance(0.1)
    limiter.release(0.1)  # the baseline: 0.1 s
    assert limiter.try_acquire()
    clock.advance(1.0)
    if signal == "slow":
        limiter.release(0.5)
    elif signal == "overloaded":
        limiter.release(0.1, overloaded=True)
    elif signal == "queue":
        limiter.release(0.1, queue_depth=3)
    else:
        limiter.release(None)
    assert limiter.limit == 5


def test_one_congestion_event_cuts_once() -> None:
    """Slow answers to requests sent before the last cut do not cut again; a slow
    answer to a request sent after it does. If this fails, one burst of queueing
    collapses the limit to its minimum and the job idles the pool."""
    limiter, clock = _limiter(BulkLimit(initial=16, backoff=0.5), top=16)
    for _ in range(16):
        assert limiter.try_acquire()
    clock.advance(0.1)
    limiter.release(0.1)  # baseline 0.1 s
    clock.advance(1.0)
    limiter.release(1.1)  # slow: cut to 8
    assert limiter.limit == 8
    for _ in range(10):  # sent at t=0 too, before the cut: no further cut
        clock.advance(0.01)
        limiter.release(1.2)
    assert limiter.limit == 8
    assert limiter.try_acquire()
    clock.advance(1.0)
    limiter.release(1.0)  # sent after the cut, still slow: cut again
    assert limiter.limit == 4


def test_baseline_forgets_old_minima() -> None:
    """The baseline is the lowest latency of the current and previous window only, so a
    pool that became slower for good is re-learned. If this fails, one lucky fast
    answer makes every later answer look congested forever."""
    limiter, clock = _limiter(BulkLimit(window=10.0), top=8)
    assert limiter.try_acquire()
    limiter.release(0.05)
    assert limiter.baseline == 0.05
    for _ in range(3):
        clock.advance(11.0)
        assert limiter.try_acquire()
        limiter.release(0.5)
    assert limiter.baseline == 0.5


def test_abandoned_requests_teach_nothing() -> None:
    """A cancelled request returns its slot without moving the limit. If this fails,
    a caller that cancels a job shrinks (or grows) the limit for the next one."""
    limiter, _ = _limiter(BulkLimit(initial=4), top=8)
    assert limiter.try_acquire()
    limiter.abandon()
    assert limiter.in_flight == 0
    assert limiter.limit == 4


def test_resize_follows_the_client_ceiling_within_the_policy() -> None:
    """resize() moves the ceiling (never above the policy's max_limit) and the floor of
    one per live backend, and the limit with them. If this fails, a pool that shrank
    keeps a limit sized for replicas that are gone, or one that grew leaves new
    replicas without bulk work."""
    limiter, _ = _limiter(BulkLimit(initial=8, max_limit=10), top=16)
    assert limiter.max_limit == 10
    limiter.resize(4, backends=2)
    assert (limiter.max_limit, limiter.limit, limiter.min_limit) == (4, 4, 2)
    limiter.resize(100, backends=6)
    assert (limiter.max_limit, limiter.limit, limiter.min_limit) == (10, 6, 6)
    limiter.resize(3, backends=6)  # the ceiling wins over the floor
    assert (limiter.max_limit, limiter.limit, limiter.min_limit) == (3, 3, 3)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_limit": 0},
        {"initial": 0},
        {"max_limit": 1, "min_limit": 2},
        {"tolerance": 1.0},
        {"backoff": 1.0},
        {"backoff": 0.0},
        {"window": 0.0},
        {"max_queue": -1.0},
        {"tolerance": math.inf},
        {"max_resends": -1},
    ],
)
def test_bad_policy_values_raise_value_error(kwargs: dict[str, float]) -> None:
    """Each out-of-range setting is a ValueError naming it. If this fails, a typo in a
    policy silently disables the limit or stalls the job."""
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        BulkLimit(**kwargs)  # type: ignore[arg-type]


def test_check_priority_accepts_only_the_two_names() -> None:
    """Only "interactive" and "bulk" are priorities. If this fails, a typo such as
    "Bulk" is sent and the worker answers 400 for every request."""
    assert check_priority("bulk") == "bulk"
    assert check_priority("interactive") == "interactive"
    for bad in ("Bulk", "high", None, 1):
        with pytest.raises(ValueError, match="priority"):
            check_priority(bad)


def test_congestion_never_cuts_below_one_request_per_backend() -> None:
    """By default the floor is one bulk request per live backend: any number of
    congestion signals leaves every replica one request to work on. If this fails, a
    noisy latency sample idles replicas and the bulk job loses throughput for nothing
    (one request per replica queues nothing behind it)."""
    limiter, clock = _limiter(BulkLimit(initial=12), backends=3, top=16)
    for _ in range(50):
        assert limiter.try_acquire()
        clock.advance(1.0)
        limiter.release(0.01, overloaded=True)
    assert limiter.limit == 3


def test_latency_is_compared_per_unit_of_cost() -> None:
    """A one-token request answered in 10 ms does not make a 512-token request
    answered in 400 ms look congested: latencies are compared per unit of cost. If this
    fails, the last small sub-batch of every chunk (or a warm-up) sets a baseline no
    full sub-batch can meet, and the limit sits at its floor."""
    limiter, clock = _limiter(BulkLimit(initial=4), backends=1, top=16)
    for _ in range(4):
        assert limiter.try_acquire()
    clock.advance(0.01)
    limiter.release(0.01, cost=1)
    clock.advance(0.4)
    limiter.release(0.4, cost=512)
    assert limiter.limit > 4


def test_a_reported_bulk_backlog_replaces_the_latency_test() -> None:
    """When the server reports its bulk backlog, a slow answer with a short backlog
    still grows the limit, and a fast one with a long backlog cuts it. If this fails,
    latency noise on a shared machine keeps the limit at its floor although the
    worker says nothing waits."""
    limiter, clock = _limiter(BulkLimit(initial=4, backoff=0.5), backends=1, top=16)
    for _ in range(4):
        assert limiter.try_acquire()
    clock.advance(0.1)
    limiter.release(0.1, queue_depth=0)  # baseline 0.1 s
    grown = limiter.limit
    assert grown > 4
    clock.advance(1.0)
    limiter.release(1.0, queue_depth=2)  # 10x the baseline, but two waiting: fine
    assert limiter.limit > grown
    assert limiter.try_acquire()
    clock.advance(0.1)
    limiter.release(0.05, queue_depth=3)  # fast, but three waiting: cut
    assert limiter.limit < grown


# -- the gate resends what the pool refused for now (sends are plain callables) ------


def _gate(
    answers: list[object], *, timeout: float | None = None, resends: int = 8
) -> tuple[BulkGate, Callable[[], httpx.Response], list[float], list[int]]:
    """A gate whose send returns (or raises) ``answers`` in turn; its sleep advances the
    manual clock and records each wait."""
    clock = ManualClock()
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        clock.advance(seconds)

    gate = BulkGate(
        BulkLimit(max_resends=resends),
        clock=clock,
        backends=lambda: 1,
        ceiling=lambda: 4,
        timeout=timeout,
        sleep=sleep,
    )
    sent: list[int] = []

    def send() -> httpx.Response:
        sent.append(len(sent))
        answer = answers[min(len(sent) - 1, len(answers) - 1)]
        if isinstance(answer, BaseException):
            raise answer
        assert isinstance(answer, httpx.Response)
        return answer

    return gate, send, waits, sent


def _refused(retry_after: str | None = "2") -> httpx.Response:
    headers = {} if retry_after is None else {"retry-after": retry_after}
    return httpx.Response(429, headers=headers)


def test_gate_resends_a_refused_sub_batch_after_its_retry_after() -> None:
    """Two 429s with Retry-After 2, then an answer: the caller gets the answer, after
    waiting 2 s twice, and the slot is free again. If this fails, a bulk job aborts on
    the worker's designed push-back instead of waiting its turn."""
    gate, send, waits, sent = _gate([_refused(), _refused(), httpx.Response(200, json=[[1.0]])])
    response = gate.call(send)
    assert response.status_code == 200
    assert waits == [2.0, 2.0]
    assert len(sent) == 3
    assert gate.limiter.in_flight == 0


def test_gate_resends_are_bounded_by_count_and_timeout() -> None:
    """Resends stop at max_resends, and never wait past the call's timeout: the last
    refusal comes back as it is. If this fails, a pool that refuses for good hangs a
    bulk job forever."""
    gate, send, waits, sent = _gate([_refused()], resends=3)
    assert gate.call(send).status_code == 429
    assert (waits, len(sent)) == ([2.0, 2.0, 2.0], 4)
    gate, send, waits, sent = _gate([_refused()], timeout=5.0)
    assert gate.call(send).status_code == 429
    assert waits == [2.0, 2.0]  # a third wait would end at t=6, past the 5 s timeout
    gate, send, waits, _ = _gate([_refused(None), httpx.Response(200)])
    assert gate.call(send).status_code == 200
    assert waits == [1.0]  # no Retry-After: the default wait


def test_gate_waits_out_a_pool_that_is_only_overloaded() -> None:
    """NoBackendAvailable because every backend is overloaded is waited out until the
    first comes back, then resent; any other reason (an ejection) is raised at once.
    If this fails, a bulk call fails while the pool merely asks it to wait, or waits on
    a pool that is broken."""
    busy = NoBackendAvailable(
        [
            Unavailability("http://a", "overloaded (bulk)", 3.0),
            Unavailability("http://b", "overloaded", 7.0),
        ]
    )
    gate, send, waits, _ = _gate([busy, httpx.Response(200)])
    assert gate.call(send).status_code == 200
    assert waits == [3.0]
    broken = NoBackendAvailable(
        [Unavailability("http://a", "overloaded", 3.0), Unavailability("http://b", "ejected", 9.0)]
    )
    gate, send, waits, _ = _gate([broken, httpx.Response(200)])
    with pytest.raises(NoBackendAvailable):
        gate.call(send)
    assert waits == []
    assert gate.limiter.in_flight == 0
