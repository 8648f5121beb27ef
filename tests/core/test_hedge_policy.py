"""When a hedge goes out, judged on the backend the attempt went to. Pure: a pool on a
manual clock, no sockets."""

from __future__ import annotations

import math
import random

import attrs
import pytest

import embedbalance as eb
from embedbalance._attempts import HEDGE_PATIENCE, AttemptPolicy, Flow

FAST, SLOW = "http://fast.test", "http://slow.test"


def _pool(balancer: eb.Balancer | None = None) -> tuple[eb.BackendPool, eb.ManualClock]:
    clock = eb.ManualClock(50.0)
    pool = eb.BackendPool(
        [FAST, SLOW],
        balancer=balancer,
        clock=clock,
        rng=random.Random(2),
        outlier_detection=None,
    )
    return pool, clock


def _answer(pool: eb.BackendPool, url: str, latency: float, n: int) -> None:
    other = {FAST: SLOW, SLOW: FAST}[url]
    for _ in range(n):
        pool.release(pool.acquire(exclude={other}), eb.Outcome.SUCCESS, latency=latency)


def _policy(pool: eb.BackendPool, hedge: eb.Hedge, global_latencies: list[float]) -> AttemptPolicy:
    policy = AttemptPolicy(pool, eb.Retry(), hedge, None, None)
    for x in global_latencies:
        policy.latencies.add(x)
    return policy


def _lease_on(pool: eb.BackendPool, url: str) -> eb.Lease:
    other = {FAST: SLOW, SLOW: FAST}[url]
    return pool.acquire(exclude={other})


def test_the_hedge_delay_is_a_multiple_of_the_chosen_backends_own_percentile() -> None:
    """A fast and a 10x slower backend get hedge delays from their own latencies (2 x p90), not the pool's: else every request to the slower one is hedged and a straggler on the fast one waits for the pool's tail."""
    pool, _ = _pool()
    _answer(pool, FAST, 0.1, 40)
    _answer(pool, SLOW, 1.0, 40)
    policy = _policy(pool, eb.Hedge(), [0.5] * 100)
    fast, slow = _lease_on(pool, FAST), _lease_on(pool, SLOW)
    assert policy.hedge_delay(fast) == pytest.approx(0.2)
    assert policy.hedge_delay(slow) == pytest.approx(2.0)


def test_percentile_and_multiple_are_honoured() -> None:
    """The percentile is taken over the backend's recent answers by nearest rank and scaled by ``multiple``."""
    pool, _ = _pool()
    for i in range(1, 101):  # latencies 0.01 .. 1.00
        pool.release(pool.acquire(exclude={SLOW}), eb.Outcome.SUCCESS, latency=i / 100)
    policy = _policy(pool, eb.Hedge(percentile=50, multiple=3.0), [])
    assert policy.hedge_delay(_lease_on(pool, FAST)) == pytest.approx(1.5)
    assert pool.recent_latency(FAST, 90) == pytest.approx(0.9)
    assert pool.recent_latency(FAST, 90, min_samples=101) is None


def test_a_backend_with_few_answers_borrows_the_transports_window() -> None:
    """Until a backend has ``min_samples`` answers the transport-wide percentile stands in; with too few of those too, no hedge (no yardstick yet)."""
    pool, _ = _pool()
    _answer(pool, FAST, 0.1, 5)
    hedge = eb.Hedge(min_samples=20)
    assert _policy(pool, hedge, [0.3] * 30).hedge_delay(_lease_on(pool, FAST)) == pytest.approx(0.6)
    assert _policy(pool, hedge, [0.3] * 10).hedge_delay(_lease_on(pool, FAST)) is None


def test_per_backend_false_is_the_pool_wide_rule() -> None:
    """``per_backend=False`` ignores the backend's own history: the transport's percentile for every attempt."""
    pool, _ = _pool()
    _answer(pool, FAST, 0.1, 40)
    policy = _policy(pool, eb.Hedge(per_backend=False, percentile=95, multiple=1.0), [0.7] * 60)
    assert policy.hedge_delay(_lease_on(pool, FAST)) == pytest.approx(0.7)


def test_min_delay_is_a_floor_and_no_hedge_policy_never_hedges() -> None:
    """The delay is at least ``min_delay`` however fast the backend; without a Hedge there is no delay at all."""
    pool, _ = _pool()
    _answer(pool, FAST, 0.0001, 40)
    assert _policy(pool, eb.Hedge(min_delay=0.02), []).hedge_delay(
        _lease_on(pool, FAST)
    ) == pytest.approx(0.02)
    assert (
        AttemptPolicy(pool, eb.Retry(), None, None, None).hedge_delay(_lease_on(pool, FAST)) is None
    )


def test_hedge_multiple_is_validated() -> None:
    """A multiple that is not a finite positive number is refused at construction."""
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="multiple"):
            eb.Hedge(multiple=bad)


def test_acquire_spare_leases_only_a_free_slot_by_the_learned_concurrency() -> None:
    """The default balancer learns each backend's concurrency; a spare lease goes only where the pick has room for the cost, and a refusal leases nothing (else a hedge would queue behind others and add load to a busy pool)."""
    pool, _ = _pool()
    _answer(pool, FAST, 0.1, 40)
    _answer(pool, SLOW, 0.1, 40)
    knee = pool.stats().by_url()[FAST].concurrency
    assert knee is not None
    assert knee >= 1
    held = []
    while (lease := pool.acquire_spare(exclude={SLOW})) is not None:
        held.append(lease)
        assert len(held) <= knee + 1
    assert len(held) == int(knee)
    in_flight = pool.stats().in_flight
    assert pool.acquire_spare(exclude={SLOW}) is None
    assert pool.stats().in_flight == in_flight  # the refusal leased nothing
    assert pool.acquire(exclude={SLOW}).backend.url == FAST  # a plain acquire still queues


def test_acquire_spare_without_a_learned_concurrency_wants_an_idle_backend() -> None:
    """Balancers that learn no concurrency (least connections) count a backend with a request in flight as full."""
    pool, _ = _pool(eb.LeastConnections())
    first = pool.acquire_spare(exclude={SLOW})
    assert first is not None
    assert pool.acquire_spare(exclude={SLOW}) is None
    pool.release(first, eb.Outcome.SUCCESS)
    assert pool.acquire_spare(exclude={SLOW}) is not None


def test_a_hedge_with_no_free_slot_is_declined_and_its_budget_refunded() -> None:
    """When no other backend has room, no hedge is sent, the refusal is counted, and the budget token goes back (else a busy pool would spend its hedge budget on copies never sent); a slot freed meanwhile takes the hedge."""
    pool, _ = _pool(eb.LeastConnections())
    policy = AttemptPolicy(pool, eb.Retry(), eb.Hedge(budget_ratio=0.0), None, None)
    policy.hedge_budget.policy = attrs.evolve(policy.hedge_budget.policy, min_per_second=0.4)
    busy = pool.acquire(exclude={FAST})  # SLOW holds a request: not a free slot
    flow = policy.begin(1.0, resendable=True)
    step = flow.next_step()
    assert step is not None
    assert step.lease.backend.url == FAST
    tokens = int(policy.hedge_budget.policy.min_per_second * policy.hedge_budget.policy.window)
    assert tokens < HEDGE_PATIENCE
    for _ in range(HEDGE_PATIENCE):  # more checks than tokens: each one is refunded
        assert flow.hedge_lease() is None
    assert policy.hedges == 0
    assert policy.hedges_declined == HEDGE_PATIENCE
    assert policy.hedge_budget.exhausted == 0  # every token was given back
    # declined for want of a slot: look again after a quarter of the hedge delay
    step = attrs.evolve(step, hedge_after=0.4)
    assert flow.next_hedge_check(10.0, step) == pytest.approx(10.1)
    pool.release(busy, eb.Outcome.SUCCESS)
    hedge = flow.hedge_lease()
    assert hedge is not None
    assert hedge.backend.url == SLOW
    assert hedge.hedge
    assert policy.hedges == 1
    assert flow.next_hedge_check(10.0, step) == math.inf  # one hedge per request


def test_after_two_more_hedge_delays_a_hedge_takes_a_queue_place() -> None:
    """A first copy still unanswered after the hedge delay plus HEDGE_PATIENCE checks (two more delays) without a free slot anywhere, on a backend that has answered nothing since, is stuck on a hung backend: the hedge queues on a busy backend rather than wait for a slot."""
    pool, clock = _pool(eb.LeastConnections())
    policy = AttemptPolicy(pool, eb.Retry(), eb.Hedge(), None, None)
    pool.acquire(exclude={FAST})  # SLOW is busy
    flow = policy.begin(1.0, resendable=True)
    assert flow.next_step() is not None
    clock.advance(1.0)
    for _ in range(HEDGE_PATIENCE):
        assert flow.hedge_lease() is None
    hedge = flow.hedge_lease()
    assert hedge is not None
    assert hedge.backend.url == SLOW
    assert policy.hedges == 1
    assert policy.hedges_declined == HEDGE_PATIENCE


def test_a_backend_that_still_answers_is_slow_not_hung_so_no_queued_hedge() -> None:
    """If the first copy's backend answered another request after that copy was sent, it is slow, not hung: however long the wait, the hedge still goes only into a free slot (queued hedges for a slow backend kept a busy pool congested after it recovered)."""
    pool, clock = _pool(eb.LeastConnections())
    policy = AttemptPolicy(pool, eb.Retry(), eb.Hedge(), None, None)
    pool.acquire(exclude={FAST})  # SLOW is busy
    flow = policy.begin(1.0, resendable=True)
    step = flow.next_step()
    assert step is not None
    assert step.lease.backend.url == FAST
    clock.advance(0.5)
    other = pool.acquire(exclude={SLOW})  # FAST serves something else meanwhile...
    clock.advance(0.1)
    pool.release(other, eb.Outcome.SUCCESS)  # ...and answers it
    assert not pool.silent_since(step.lease)
    for _ in range(3 * HEDGE_PATIENCE):
        assert flow.hedge_lease() is None
    assert policy.hedges == 0


def test_a_hedge_refused_by_its_budget_is_not_tried_again() -> None:
    """An empty hedge budget is not a want of slots: the request does not poll for a hedge it may not send."""
    pool, _ = _pool(eb.LeastConnections())
    policy = AttemptPolicy(pool, eb.Retry(), eb.Hedge(budget_ratio=0.0), None, None)
    policy.hedge_budget.policy = attrs.evolve(policy.hedge_budget.policy, min_per_second=0.0)
    flow = policy.begin(1.0, resendable=True)
    step = flow.next_step()
    assert step is not None
    assert flow.hedge_lease() is None
    assert policy.hedges_declined == 0
    assert flow.next_hedge_check(10.0, attrs.evolve(step, hedge_after=0.4)) == math.inf


def test_a_lone_backend_is_never_raced() -> None:
    """With one usable backend there is nowhere to send a copy: the step has no hedge delay, so the transport takes its direct path (no thread or task per request)."""
    clock = eb.ManualClock(0.0)
    pool = eb.BackendPool([FAST], clock=clock, outlier_detection=None)
    for _ in range(40):
        pool.release(pool.acquire(), eb.Outcome.SUCCESS, latency=0.1)
    policy = _policy(pool, eb.Hedge(), [0.1] * 40)
    step = policy.begin(1.0, resendable=True).next_step()
    assert step is not None
    assert step.lease.choices == 1
    assert step.hedge_after is None
    pool.add(SLOW)
    step = policy.begin(1.0, resendable=True).next_step()
    assert step is not None
    assert step.lease.choices == 2
    assert step.hedge_after is not None


def test_recent_latency_sample_counts_and_a_draining_backend() -> None:
    """``min_samples`` answers are enough (20 by default, at least 1), and a backend removed while it still holds work keeps answering for its late copies' hedges."""
    pool, _ = _pool()
    _answer(pool, FAST, 0.1, 19)
    assert pool.recent_latency(FAST, 90) is None
    _answer(pool, FAST, 0.1, 1)
    assert pool.recent_latency(FAST, 90) == pytest.approx(0.1)
    assert pool.recent_latency(FAST, 90, min_samples=20) == pytest.approx(0.1)
    _answer(pool, SLOW, 0.3, 1)
    assert pool.recent_latency(SLOW, 90, min_samples=1) == pytest.approx(0.3)
    assert pool.recent_latency(SLOW, 90, min_samples=0) == pytest.approx(0.3)
    held = _lease_on(pool, FAST)
    pool.remove(FAST)  # draining: still holds a request
    assert pool.recent_latency(FAST, 90) == pytest.approx(0.1)
    pool.release(held, eb.Outcome.SUCCESS)
    assert pool.recent_latency(FAST, 90) is None  # gone


def test_spare_slots_follow_a_learned_concurrency_above_one() -> None:
    """A backend that served four at once without slowing has a knee near four: a spare lease goes there while fewer than that are in flight, which an idle-only rule would refuse."""
    pool, _ = _pool()
    for _ in range(30):
        leases = [_lease_on(pool, FAST) for _ in range(4)]
        for lease in leases:
            pool.release(lease, eb.Outcome.SUCCESS, latency=0.1)
    knee = pool.stats().by_url()[FAST].concurrency
    assert knee is not None
    assert knee >= 3
    first = pool.acquire_spare(exclude={SLOW})
    second = pool.acquire_spare(exclude={SLOW})
    assert first is not None
    assert second is not None
    assert second.backend.url == FAST


def test_acquire_spare_honours_model_and_bulk() -> None:
    """A spare lease for a model goes only to a backend serving it, and a bulk one avoids a backend that pushed back on bulk work (a hedge must not land where the first copy could not)."""
    clock = eb.ManualClock(0.0)
    pool = eb.BackendPool(
        [eb.Backend(FAST, model="m1"), eb.Backend(SLOW, model="m2")],
        balancer=eb.LeastConnections(),
        clock=clock,
        outlier_detection=None,
    )
    for _ in range(5):
        lease = pool.acquire_spare(model="m2")
        assert lease is not None
        assert lease.backend.url == SLOW
        pool.release(lease, eb.Outcome.SUCCESS)
    refused = pool.acquire(exclude={SLOW}, bulk=True)
    pool.release(refused, eb.Outcome.OVERLOADED, retry_after=60)  # FAST: no bulk for 60 s
    for _ in range(5):
        lease = pool.acquire_spare(bulk=True)
        assert lease is not None
        assert lease.backend.url == SLOW
        pool.release(lease, eb.Outcome.SUCCESS)
    assert pool.acquire_spare(exclude={SLOW}) is not None  # interactive may still go there


def test_a_probe_of_a_backend_thought_slow_is_hedged_by_the_pools_percentile() -> None:
    """The default balancer marks a pick that only staleness made competitive as a probe, and its hedge goes after the transport's p90 itself, not 2 x the slow backend's own p90 (which would keep each re-test of a still-slow backend on the tail). A pick of the same backend just after another was placed there, or any pick of a fast one, is no probe."""
    pool, clock = _pool(eb.ShortestExpectedDelay())
    _answer(pool, SLOW, 1.0, 40)
    _answer(pool, FAST, 0.1, 100)  # most answers are fast ones: the typical is ~0.1
    policy = _policy(pool, eb.Hedge(), [0.3] * 100)
    first = _lease_on(pool, SLOW)  # its news is a second old (the last answer's start)
    assert first.probe
    second = _lease_on(pool, SLOW)  # one was placed just now: no probe
    assert not second.probe
    assert policy.hedge_delay(second) == pytest.approx(2.0)
    pool.release(first, eb.Outcome.SUCCESS, latency=1.0)
    pool.release(second, eb.Outcome.SUCCESS, latency=1.0)
    assert not _lease_on(pool, FAST).probe
    clock.advance(5.0)  # no news of the slow one for 5 s: its record relaxes
    probe = pool.acquire()
    assert probe.backend.url == SLOW
    assert probe.probe
    assert policy.hedge_delay(probe) == pytest.approx(0.3)


def _quiet_setup() -> tuple[eb.BackendPool, eb.ManualClock, AttemptPolicy, eb.Lease, eb.Lease]:
    """FAST answers in 0.1 s (its p90), so its hedge delay is 0.2 s and its quiet point
    0.1 s; SLOW is busy (no free slot under least-connections); FAST holds one other
    request besides the flow's. Returns the flow's policy, that other lease and SLOW's."""
    pool, clock = _pool(eb.LeastConnections())
    _answer(pool, FAST, 0.1, 40)
    policy = AttemptPolicy(pool, eb.Retry(), eb.Hedge(), None, None, wall=clock)
    busy = pool.acquire(exclude={FAST})  # SLOW is busy
    other = pool.acquire(exclude={SLOW})  # FAST holds other work
    return pool, clock, policy, other, busy


def test_a_quiet_backend_is_hedged_at_its_own_percentile_into_a_free_slot_only() -> None:
    """The first copy's backend holds other work and answers nothing for as long as its
    p90: the step's first hedge check comes at that p90 (not the full 2 x p90) and
    looks for a free slot; with none, it looks again a quarter of the full delay later,
    and a queue place is taken only by the usual rule (HEDGE_PATIENCE declines, nothing
    answered since the copy was sent). If this fails, either a request stuck on a hung
    replica waits out the full hedge delay (the ``hang`` benchmark's worst request
    about 2.7x the pool's p99 instead of 1.4-2.1x), or early copies queue behind a
    merely slow replica's (``degrade85``'s median 12% up)."""
    pool, clock, policy, _, _ = _quiet_setup()
    clock.advance(0.0625)  # the copy goes out after FAST's last answer
    flow = policy.begin(1.0, resendable=True)
    step = flow.next_step()
    assert step is not None
    assert step.lease.backend.url == FAST
    assert policy.hedge_delay(step.lease) == pytest.approx(0.2)
    assert step.hedge_after == pytest.approx(0.1)  # the quiet point comes first
    clock.advance(0.125)
    assert pool.quiet(step.lease, 0.1)
    assert flow.hedge_lease() is None  # no free slot: SLOW is busy
    assert policy.hedges_declined == 1
    now = clock()
    assert flow.next_hedge_check(now, step) == pytest.approx(now + 0.05)
    clock.advance(0.25)  # quiet for longer than the whole delay: still a free slot only
    for _ in range(HEDGE_PATIENCE - 1):
        assert flow.hedge_lease() is None
    assert policy.hedges_declined == HEDGE_PATIENCE
    hedge = flow.hedge_lease()  # the usual rule: silent since sent, patience spent
    assert hedge is not None
    assert hedge.backend.url == SLOW  # queued behind SLOW's request
    assert policy.hedges == 1


def test_a_quiet_backend_is_hedged_early_into_a_free_slot() -> None:
    """With a free slot elsewhere, the quiet backend's copy is hedged at the quiet point,
    before the full delay."""
    pool, clock, policy, _, busy = _quiet_setup()
    flow = policy.begin(1.0, resendable=True)
    step = flow.next_step()
    assert step is not None
    pool.release(busy, eb.Outcome.SUCCESS, latency=1.0)  # SLOW is free now
    clock.advance(0.125)
    hedge = flow.hedge_lease()
    assert hedge is not None
    assert hedge.backend.url == SLOW
    assert policy.hedges_declined == 0


def test_a_backend_that_still_answers_waits_for_the_full_hedge_delay() -> None:
    """The same, but the backend answered its other request just before the quiet point:
    it works. No early hedge; the next look is a quarter of the quiet point later (or at
    the full delay, whichever is first), and at the full delay the usual rule applies
    (a free slot only). If this fails, every request a little past its backend's p90
    is hedged (several per cent of a steady pool's requests)."""
    pool, clock, policy, other, _ = _quiet_setup()
    flow = policy.begin(1.0, resendable=True)
    step = flow.next_step()
    assert step is not None
    clock.advance(0.05)
    pool.release(other, eb.Outcome.SUCCESS, latency=0.1)
    pool.acquire(exclude={SLOW})  # still holds other work
    clock.advance(0.05)
    assert not pool.quiet(step.lease, 0.1)
    assert flow.hedge_lease() is None
    assert policy.hedges_declined == 0  # not declined for a slot: not looked for one
    now = clock()
    assert flow.next_hedge_check(now, step) == pytest.approx(now + 0.025)
    clock.advance(0.04)  # silent 0.09 s: still not quiet
    assert flow.hedge_lease() is None
    assert flow.next_hedge_check(clock(), step) == pytest.approx(clock() + 0.025)
    clock.advance(0.01)
    third = pool.acquire(exclude={SLOW})
    pool.release(third, eb.Outcome.SUCCESS, latency=0.1)  # answers again
    clock.advance(0.03)
    assert flow.hedge_lease() is None
    assert flow.next_hedge_check(clock(), step) == pytest.approx(50.2)  # capped
    clock.advance(0.021)  # the full delay: the usual rule, a free slot only
    assert flow.hedge_lease() is None
    assert policy.hedges_declined == 1
    assert flow.next_hedge_check(clock(), step) == pytest.approx(clock() + 0.05)


def test_a_lone_request_is_its_own_lateness_not_a_quiet_backend() -> None:
    """A backend that holds only the flow's request and answers nothing is just late on
    that one request: no early hedge (the full delay applies). ``quiet`` also needs the
    request to have been out for the quiet time, and is false for a released lease."""
    pool, clock, policy, other, _ = _quiet_setup()
    pool.release(other, eb.Outcome.SUCCESS, latency=0.1)
    flow = policy.begin(1.0, resendable=True)
    step = flow.next_step()
    assert step is not None
    clock.advance(0.125)
    assert not pool.quiet(step.lease, 0.1)
    assert flow.hedge_lease() is None
    assert policy.hedges_declined == 0
    second = pool.acquire(exclude={SLOW})
    assert pool.quiet(step.lease, 0.125)  # out 0.125 s, silent as long, holds two
    assert not pool.quiet(second, 0.125)  # just sent
    assert not pool.quiet(step.lease, 0.1250001)
    pool.acquire(exclude={SLOW})  # FAST holds two others once the copy is released
    pool.release(step.lease, eb.Outcome.CANCELLED)
    assert not pool.quiet(step.lease, 0.1)  # a released copy is stuck nowhere


def test_the_quiet_point_needs_a_multiple_above_one_and_the_backends_own_answers() -> None:
    """No early point where it would not be earlier: a multiple of 1, the pool-wide rule,
    a backend with too few answers of its own, or a probe."""
    pool, _ = _pool(eb.LeastConnections())
    _answer(pool, FAST, 0.1, 40)
    lease = _lease_on(pool, FAST)
    on_slow = _lease_on(pool, SLOW)  # no answers of its own
    full, early = AttemptPolicy(pool, eb.Retry(), eb.Hedge(), None, None).hedge_delays(lease)
    assert full == pytest.approx(0.2)
    assert early == pytest.approx(0.1)
    for hedge in (eb.Hedge(multiple=1.0), eb.Hedge(per_backend=False)):
        assert AttemptPolicy(pool, eb.Retry(), hedge, None, None).hedge_delays(lease)[1] is None
    policy = _policy(pool, eb.Hedge(), [0.3] * 30)  # the transport's window stands in
    assert policy.hedge_delays(on_slow) == (pytest.approx(0.6), None)
    assert policy.hedge_delays(attrs.evolve(lease, probe=True)) == (pytest.approx(0.3), None)
    assert AttemptPolicy(pool, eb.Retry(), None, None, None).hedge_delays(lease) == (None, None)
    floor = AttemptPolicy(pool, eb.Retry(), eb.Hedge(min_delay=0.15), None, None)
    assert floor.hedge_delays(lease)[1] == pytest.approx(0.15)
    level = AttemptPolicy(pool, eb.Retry(), eb.Hedge(min_delay=0.2), None, None)
    assert level.hedge_delays(lease) == (
        pytest.approx(0.2),
        None,
    )  # not earlier than the full delay


def test_an_attempt_deadline_before_the_hedge_delay_leaves_no_early_hedge_either() -> None:
    """An attempt whose own deadline comes before its hedge delay is not hedged at all —
    not at the quiet point either, though that one comes before the deadline: the
    deadline retries it elsewhere. If this fails, a copy goes out that the per-attempt
    timeout was set to make unnecessary."""
    pool, _, _, _, _ = _quiet_setup()
    policy = AttemptPolicy(pool, eb.Retry(), eb.Hedge(), 0.15, None)
    flow = policy.begin(1.0, resendable=True)
    step = flow.next_step()
    assert step is not None
    assert step.lease.backend.url == FAST
    assert policy.hedge_delays(step.lease) == (pytest.approx(0.2), pytest.approx(0.1))
    assert step.timeout == pytest.approx(0.15)
    assert step.hedge_after is None


def _zoned(zone: str | None) -> tuple[eb.BackendPool, eb.ManualClock]:
    clock = eb.ManualClock(50.0)
    pool = eb.BackendPool(
        [
            eb.Backend("http://a1.test", zone="a"),
            eb.Backend("http://b1.test", zone="b"),
            eb.Backend("http://b2.test", zone="b"),
        ],
        balancer=eb.LeastConnections(),
        clock=clock,
        rng=random.Random(2),
        outlier_detection=None,
        zone=zone,
    )
    return pool, clock


def _late_in_zone_a() -> tuple[eb.BackendPool, AttemptPolicy, Flow]:
    """A caller in zone a whose first attempt (on the zone's one replica) is a second
    late."""
    pool, clock = _zoned("a")
    policy = AttemptPolicy(pool, eb.Retry(), eb.Hedge(), None, None)
    flow = policy.begin(1.0, resendable=True)
    step = flow.next_step()
    assert step is not None
    assert step.lease.backend.url == "http://a1.test"
    clock.advance(1.0)
    return pool, policy, flow


def test_a_hedge_stays_in_the_zone_of_the_attempt_it_copies() -> None:
    """With a zone preference, a late first attempt is hedged only within its own zone: with one replica per zone, every late answer would otherwise cross zones (extra traffic the preference exists to avoid). An attempt that spilled to another zone is hedged there; without a preference, anywhere."""
    pool, policy, flow = _late_in_zone_a()
    assert flow.hedge_lease() is None  # nobody else in zone a
    assert policy.hedges_declined == 1
    spilled = pool.acquire(exclude={"http://a1.test", "http://b2.test"})
    assert pool.acquire_spare(exclude={spilled.backend.url}, near=spilled) is not None

    anywhere, _ = _zoned(None)
    home = anywhere.acquire(exclude={"http://b1.test", "http://b2.test"})
    hedge = anywhere.acquire_spare(exclude={home.backend.url}, near=home)
    assert hedge is not None
    assert hedge.backend.zone == "b"


def test_a_hedge_for_a_hung_replica_may_cross_zones() -> None:
    """After HEDGE_PATIENCE checks with nothing answered by the first copy's replica, the hedge takes a queue place anywhere: a hung replica alone in its zone is still rescued."""
    _, _, flow = _late_in_zone_a()
    for _ in range(HEDGE_PATIENCE):
        assert flow.hedge_lease() is None
    hedge = flow.hedge_lease()
    assert hedge is not None
    assert hedge.backend.zone == "b"
