"""ExpectedDelay / ShortestExpectedDelay: the model with a knee (service time and
concurrency learned per unit of cost), server hints, re-testing stale knowledge, equal
shares for identical backends, and telling a slow backend from a busy one."""

from __future__ import annotations

import contextlib
import math
import random
from types import SimpleNamespace

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

import embedbalance as eb
from embedbalance.load import BASELINE_WEIGHT, SETTLED, DelayEstimate, ExpectedDelay, _steady

from ._sim import lognormal, open_loop, regain_time, shares, spell
from .conftest import make_state, pool_of


def learned(state: object) -> DelayEstimate:
    record = state.metric_state  # type: ignore[attr-defined]
    assert isinstance(record, DelayEstimate)
    return record


def teach(m: ExpectedDelay, state: object, service: float, slots: float, now: float) -> None:
    """Give ``state`` a learned record directly, its news from a request placed at ``now``."""
    state.metric_state = DelayEstimate(  # type: ignore[attr-defined]
        service=service, slots=slots, stamp=now, samples=50, news=now
    )


def test_delay_is_service_time_below_the_knee_and_grows_past_it() -> None:
    """With a free slot the expected delay is the service time; past the knee it is scaled by work ÷ slots (divided by weight)."""
    m = ExpectedDelay()
    s = make_state(weight=2.0)
    teach(m, s, service=0.1, slots=8.0, now=0.0)
    for held in (0.0, 3.0, 7.0):
        s.outstanding_cost = held
        assert m.delay(s, 0.0, cost=1.0) == pytest.approx(0.1 / 2.0)
    s.outstanding_cost = 15.0
    assert m.delay(s, 0.0, cost=1.0) == pytest.approx(0.1 * 16.0 / 8.0 / 2.0)
    s.outstanding_cost = 0.0  # a request bigger than the knee costs its own size
    assert m.delay(s, 0.0, cost=16.0) == pytest.approx(0.1 * 16.0 / 2.0)


@settings(max_examples=40, deadline=None)
@given(
    slots=st.integers(1, 16),
    service=st.floats(0.005, 2.0),
    seed=st.integers(0, 2**16),
)
def test_knee_is_learned_from_a_synthetic_latency_curve(
    slots: int, service: float, seed: int
) -> None:
    """Answers from a server with K slots and service time S (flat up to K in flight, then growing with the queue, ±10% noise) teach S within 25% and K within 40%."""
    m = ExpectedDelay()
    s = make_state()
    rng = random.Random(seed)
    now = 0.0
    for _ in range(600):
        work = float(rng.randint(1, 3 * slots))
        y = service * max(1.0, work / slots) * rng.uniform(0.9, 1.1)
        now += 0.01
        m.observe(s, y, now, load_at_start=work)
    est = learned(s)
    assert est.service == pytest.approx(service, rel=0.25)
    assert est.slots == pytest.approx(slots, rel=0.4, abs=1.0)


def test_tei_timing_hints_are_trusted_over_guesses() -> None:
    """With TEI's x-inference-time / x-queue-time the service time is the inference time per unit of cost, and queueing lowers the knee, whatever the raw latency says."""
    m = ExpectedDelay()
    s = make_state()
    hints = eb.ServerHints(queue_time=0.0, inference_time=0.2)
    for i in range(30):  # 4 units each; raw latency inflated by the network
        m.observe(s, 0.5, float(i), load_at_start=4.0, cost=4.0, hints=hints)
    assert learned(s).service == pytest.approx(0.05, rel=0.01)
    queued = eb.ServerHints(queue_time=0.6, inference_time=0.2)  # waited 3x its run
    for i in range(60):
        m.observe(s, 0.9, 30.0 + i, load_at_start=16.0, cost=4.0, hints=queued)
    assert learned(s).slots == pytest.approx(4.0, rel=0.2)  # 16 units at 4x: a knee of 4


def test_worker_queue_hints_give_the_knee() -> None:
    """Our worker's X-In-Flight minus X-Queue-Depth is how many it serves at once: the knee moves there; a zero queue makes the answer a service sample."""
    m = ExpectedDelay()
    s = make_state()
    for i in range(40):
        m.observe(
            s,
            0.3,
            float(i),
            load_at_start=6.0,
            hints=eb.ServerHints(queue_depth=4.0, in_flight=10.0),
        )
    assert learned(s).slots == pytest.approx(6.0, rel=0.05)
    for i in range(40):
        m.observe(
            s,
            0.1,
            40.0 + i,
            load_at_start=5.0,
            hints=eb.ServerHints(queue_depth=0.0, in_flight=5.0),
        )
    assert learned(s).service == pytest.approx(0.1, rel=0.05)


@settings(max_examples=80, deadline=None)
@given(
    fast=st.floats(0.001, 1.0),
    slower=st.lists(st.tuples(st.floats(1.0, 50.0), st.integers(1, 16)), min_size=1, max_size=10),
    fast_slots=st.integers(2, 16),
    seed=st.integers(0, 2**16),
)
def test_a_free_slot_on_the_fastest_backend_beats_any_queue(
    fast: float, slower: list[tuple[float, int]], fast_slots: int, seed: int
) -> None:
    """A backend with a free slot and the lowest service time wins over backends already past their knee whose expected delay is beyond the tolerance (within it, the estimates' noise makes them equally good)."""
    balancer = eb.ShortestExpectedDelay()
    m = balancer.metric
    assert isinstance(m, ExpectedDelay)
    rng = random.Random(seed)
    best = make_state(0)
    teach(m, best, fast, float(fast_slots), 0.0)
    best.outstanding_cost = float(rng.randint(0, fast_slots - 1))
    states = [best]
    for i, (factor, slots) in enumerate(slower, start=1):
        s = make_state(i)
        teach(m, s, fast * factor, float(slots), 0.0)
        s.outstanding_cost = float(slots + rng.randint(0, 20))  # at or past the knee
        if m.delay(s, 0.0, 1.0) <= fast * (1 + balancer.tolerance):
            continue  # within the tolerance: equally good by design
        states.append(s)
    assume(len(states) > 1)
    rng_pick = random.Random(seed)
    for _ in range(5):
        chosen = balancer.pick(states, cost=1.0, now=0.0, rng=rng_pick, population=states)
        assert chosen is best


def test_silence_bounds_the_estimate_but_a_straggler_does_not(clock: eb.ManualClock) -> None:
    """A backend holding work that has answered nothing for 5 s is expected to take at least 5 s; one whose oldest request straggles while others come back is not shunned for it."""
    pool = pool_of(2, clock, balancer=eb.ShortestExpectedDelay())
    metric = pool.balancer.metric
    assert isinstance(metric, ExpectedDelay)
    stuck = pool.acquire()
    clock.advance(5.0)
    state = stuck._state
    assert metric.delay(state, clock(), 1.0) >= 5.0
    for _ in range(20):  # every new request avoids the silent backend
        lease = pool.acquire()
        assert lease.backend != stuck.backend
        pool.release(lease, eb.Outcome.SUCCESS, latency=0.01)
    # The same backend answers other requests while the old one straggles on.
    for _ in range(5):
        lease = pool.acquire(
            exclude=[u for u in (b.url for b in pool.backends) if u != stuck.backend.url]
        )
        clock.advance(0.01)
        pool.release(lease, eb.Outcome.SUCCESS)
    assert metric.delay(state, clock(), 1.0) < 1.0
    pool.release(stuck)
    assert state.oldest_age(clock()) == 0.0


def test_tells_a_slow_backend_from_a_busy_one(clock: eb.ManualClock) -> None:
    """A fast 8-slot backend with a queue still beats an idle slow 2-slot one until its queue would take longer."""
    pool = pool_of(2, clock, balancer=eb.ShortestExpectedDelay())
    fast_url, slow_url = (b.url for b in pool.backends)
    metric = pool.balancer.metric
    assert isinstance(metric, ExpectedDelay)
    fast = next(s for s in pool._states.values() if s.url == fast_url)
    slow = next(s for s in pool._states.values() if s.url == slow_url)
    teach(metric, fast, 0.15, 8.0, clock())
    teach(metric, slow, 0.9, 2.0, clock())
    # Fast queue of 20: 0.15 × 21/8 ≈ 0.39 s beats the idle slow one's 0.9 s.
    fast.pending, fast.outstanding_cost = 20, 20.0
    lease = pool.acquire()
    assert lease.backend.url == fast_url
    pool.release(lease, eb.Outcome.CANCELLED)
    # Fast queue of 60: 0.15 × 61/8 ≈ 1.14 s — now the slow one is the sooner answer.
    fast.pending, fast.outstanding_cost = 60, 60.0
    assert pool.acquire().backend.url == slow_url


def test_black_hole_backend_gets_almost_nothing(clock: eb.ManualClock) -> None:
    """A backend that fails instantly is not mistaken for the fastest one (no ejection to help)."""
    pool = pool_of(4, clock, balancer=eb.ShortestExpectedDelay(), outlier_detection=None)
    dead = pool.backends[0].url
    hits = 0
    for _ in range(4000):
        lease = pool.acquire()
        if lease.backend.url == dead:
            hits += 1
            pool.release(lease, eb.Outcome.FAILURE)
        else:
            clock.advance(0.002)
            pool.release(lease, eb.Outcome.SUCCESS)
    assert hits < 0.05 * 4000


@settings(max_examples=60, deadline=None)
@given(
    services=st.lists(st.floats(0.001, 1.0), min_size=2, max_size=12),
    pendings=st.lists(st.integers(0, 20), min_size=12, max_size=12),
    cost=st.floats(1.0, 500.0),
    seed=st.integers(0, 2**16),
)
def test_scan_picks_within_tolerance_of_the_least_expected_delay(
    services, pendings, cost, seed
) -> None:
    """Up to scan_limit candidates, the pick's expected delay is within the tolerance of the least one for the request's cost."""
    balancer = eb.ShortestExpectedDelay()
    metric = balancer.metric
    assert isinstance(metric, ExpectedDelay)
    states = []
    for i, service in enumerate(services):
        s = make_state(i)
        teach(metric, s, service, 4.0, 0.0)
        s.pending = pendings[i]
        s.outstanding_cost = float(pendings[i])
        states.append(s)
    chosen = balancer.pick(states, cost=cost, now=0.0, rng=random.Random(seed), population=states)
    delays = [metric.delay(s, 0.0, cost) for s in states]
    assert metric.delay(chosen, 0.0, cost) <= min(delays) * (1 + balancer.tolerance) * (1 + 1e-12)


def test_many_backends_use_sampled_choices_and_stay_away_from_slow_ones() -> None:
    """Above scan_limit the pick samples `choices` candidates; slow backends are rarely chosen."""
    balancer = eb.ShortestExpectedDelay(scan_limit=16, choices=4)
    metric = balancer.metric
    assert isinstance(metric, ExpectedDelay)
    states = []
    for i in range(200):
        s = make_state(i)
        teach(metric, s, 0.45 if i % 4 == 3 else 0.02, 4.0, 0.0)
        states.append(s)
    rng = random.Random(3)
    slow = sum(
        learned(balancer.pick(states, cost=1.0, now=0.0, rng=rng, population=states)).service
        == 0.45
        for _ in range(4000)
    )
    assert slow / 4000 < 0.25**4 * 2  # only when all four samples are slow


def test_new_backend_is_not_starved_when_costs_are_tokens(clock: eb.ManualClock) -> None:
    """With costs in tokens, a backend added after the others were measured still gets work (it starts at the pool's typical service time, not a fixed guess)."""
    pool = pool_of(2, clock, balancer=eb.ShortestExpectedDelay(), slow_start=None)
    for _ in range(50):  # two measured backends: 10 ms per 400-token request
        lease = pool.acquire(cost=400.0)
        clock.advance(0.01)
        pool.release(lease, eb.Outcome.SUCCESS)
    pool.add("http://late.test:8000")
    served = set()
    for _ in range(10):  # three requests in flight at a time
        leases = [pool.acquire(cost=400.0) for _ in range(3)]
        served.update(lease.backend.url for lease in leases)
        clock.advance(0.01)
        for lease in leases:
            pool.release(lease, eb.Outcome.SUCCESS)
    assert "http://late.test:8000" in served


def test_unmeasured_backend_is_probed_one_request_at_a_time(clock: eb.ManualClock) -> None:
    """A backend with no answer yet is not handed a burst: while it holds a request, the others get the next ones."""
    pool = pool_of(3, clock, balancer=eb.ShortestExpectedDelay())
    leases = [pool.acquire() for _ in range(3)]
    assert len({lease.backend.url for lease in leases}) == 3  # one probe each, no pile-up


def test_stale_worse_estimate_relaxes_toward_the_pool_and_one_answer_resets_it() -> None:
    """An estimate far worse than the pool's decays toward the pool's with time constant `retest` while unmeasured, and the first answer after a long silence replaces it almost entirely."""
    m = ExpectedDelay(retest=0.25)
    s = make_state()
    teach(m, s, service=0.8, slots=8.0, now=0.0)
    prior = (0.1, 8.0)
    delays = [m.delay(s, t, 1.0, prior) for t in (0.0, 0.25, 0.5, 1.0, 2.0)]
    assert delays == sorted(delays, reverse=True)
    assert delays[0] == pytest.approx(0.8)
    assert delays[1] == pytest.approx(0.8 * math.exp(-1) + 0.1 * (1 - math.exp(-1)))
    assert delays[-1] < 0.11
    # A backend better than the pool is not dragged up toward it.
    fast = make_state(1)
    teach(m, fast, service=0.05, slots=8.0, now=0.0)
    assert m.delay(fast, 5.0, 1.0, prior) == pytest.approx(0.05)
    # After 2 s without answers, one good answer moves the estimate almost all the way.
    m.observe(s, 0.1, 2.0, load_at_start=1.0)
    assert learned(s).service < 0.1 + 0.7 * 0.01


def test_a_better_answer_counts_more_than_a_worse_one() -> None:
    """Recovery asymmetry: an answer at a quarter of the estimate moves it further than one at four times moves it up."""
    m = ExpectedDelay()
    down, up = make_state(0), make_state(1)
    teach(m, down, 0.4, 8.0, 0.0)
    teach(m, up, 0.4, 8.0, 0.0)
    m.observe(down, 0.1, 0.0, load_at_start=1.0)
    m.observe(up, 1.6, 0.0, load_at_start=1.0)
    moved_down = 0.4 - learned(down).service
    moved_up = learned(up).service - 0.4
    assert moved_down / 0.3 > moved_up / 1.2


def _four_equal(clock: eb.ManualClock, seed: int) -> eb.BackendPool:
    return eb.BackendPool(
        [f"http://b{i}.test" for i in range(4)],
        balancer=eb.ShortestExpectedDelay,
        clock=clock,
        rng=random.Random(seed),
    )


@pytest.mark.parametrize("rho", [0.5, 0.85])
def test_identical_backends_converge_to_equal_shares(clock: eb.ManualClock, rho: float) -> None:
    """Four identical 8-slot backends under a seeded random latency stream (cv 0.3) get shares within ±20% of each other: the estimates' noise makes no lasting favourite."""
    pool = _four_equal(clock, seed=11)
    mu, sigma = lognormal(0.1, 0.3)
    rate = rho * 320.0
    records = open_loop(
        pool,
        clock,
        slots=[8] * 4,
        service=lambda b, now, rng: rng.lognormvariate(mu, sigma),
        rate=rate,
        arrivals=int(rate * 10),
        seed=5,
    )
    late = [r for r in records if r.at > records[0].at + 2.0]
    got = shares(late, 4)
    assert max(got) <= 1.2 * min(got), got


@pytest.mark.parametrize("hints", [False, True], ids=["no hints", "worker hints"])
def test_slowed_then_restored_backend_regains_its_fair_share(hints: bool) -> None:
    """One of four equal backends 8x slower for 5 s at 0.7 load, over eight seeds, with and without the worker's load headers: during the spell it is avoided; within 1 s of the recovery in every seed, its share of the next second's requests is back to 0.8x fair; over the first 2 s its share is 0.7x fair on average (0.4x at worst: when its last probe of the spell went out just before the end, the recovery waits for that slow answer); after, 0.8x fair within 700 requests. If this fails with hints only, the queue the server reports is explaining the spell's slow answers away (a backend 8x slower kept its fast estimate and 10% of the traffic)."""
    firsts, regained = [], []
    for seed in range(1, 9):
        clock = eb.ManualClock(1000.0)
        pool = _four_equal(clock, seed=seed)
        start = clock()
        rate = 0.7 * 320.0
        records = open_loop(
            pool,
            clock,
            slots=[8] * 4,
            service=spell(start),
            rate=rate,
            arrivals=int(rate * 15),
            seed=seed + 6,
            hints=hints,
        )
        during = [r for r in records if start + 5.0 <= r.at < start + 9.0]
        first = [r for r in records if start + 9.0 <= r.at < start + 11.0]
        after = [r for r in records if start + 11.0 <= r.at][:700]
        assert shares(during, 4)[0] < 0.1, seed
        # Back within the first 2 s (here without hedging, which brings it back
        # sooner): its last probe of the spell answers, its news is as old as that
        # probe, and one fast answer restarts it from the pool's typical backend.
        firsts.append(shares(first, 4)[0] / 0.25)
        regained.append(regain_time(records, start + 9.0, backend=0, fair=0.25))
        assert len(after) == 700
        assert shares(after, 4)[0] >= 0.8 * 0.25, seed
    assert max(regained) <= 1.0, regained
    assert min(firsts) >= 0.4, firsts
    assert sum(firsts) / len(firsts) >= 0.7, firsts


def test_slow_answers_arriving_after_a_spell_are_old_news() -> None:
    """The knowledge is as old as the newest answered request's *placement*: slow answers still arriving from a spell leave a stale, worse estimate relaxed by the time since those requests went out, not reset to fresh."""
    m = ExpectedDelay(retest=0.25)
    s = make_state()
    teach(m, s, service=0.1, slots=8.0, now=0.0)
    prior = (0.1, 8.0)
    m.observe(s, 1.0, now=10.0, load_at_start=1.0)  # placed at 9.0, 10x slow
    assert learned(s).service > 0.3
    assert learned(s).news == pytest.approx(9.0)
    assert learned(s).stamp == pytest.approx(10.0)
    age = 10.0 - 9.0
    w = math.exp(-age / 0.25)
    assert m.delay(s, 10.0, 1.0, prior) == pytest.approx(learned(s).service * w + 0.1 * (1 - w))
    # An older request answered later does not move the news back.
    m.observe(s, 3.0, now=10.5, load_at_start=1.0)  # placed at 7.5
    assert learned(s).news == pytest.approx(9.0)


def test_a_stale_worse_estimate_is_probed_one_request_at_a_time() -> None:
    """While a request of ours is in flight on a backend whose estimate is worse than the pool's, its estimate does not relax (its answer is awaited): a slow backend gets one probe at a time, not a queue of them."""
    m = ExpectedDelay(retest=0.25)
    s = make_state()
    teach(m, s, service=0.8, slots=8.0, now=0.0)
    prior = (0.1, 8.0)
    assert m.delay(s, 5.0, 1.0, prior) == pytest.approx(0.1, rel=1e-6)
    s.outstanding_cost = 1.0
    assert m.delay(s, 5.0, 1.0, prior) == pytest.approx(0.8)
    assert m.assess(s, 5.0, 1.0, prior)[0] == pytest.approx(0.8)


def test_a_recovery_restarts_from_the_pools_typical_backend(clock: eb.ManualClock) -> None:
    """The default balancer: when an answer shows a recovery (under half the estimate), the slow service time and the low knee learned during the spell are dropped for the pool's typical ones (or the sample, when clearly slower than typical); an ordinary answer changes neither beyond the metric's own step."""
    b = eb.ShortestExpectedDelay()
    s, peer = make_state(0), make_state(1)
    b.observe(peer, 0.1, 1.0, load_at_start=8.0)
    b.prior = (0.1, 8.0)
    s.metric_state = DelayEstimate(service=0.8, slots=1.5, stamp=0.5, samples=30, news=0.4)
    b.observe(s, 0.12, 2.0, load_at_start=1.0)  # a fast answer: recovered
    assert learned(s).service == pytest.approx(0.1)  # within the tie band: the typical
    assert learned(s).slots == pytest.approx(8.0)
    s.metric_state = DelayEstimate(service=0.8, slots=1.5, stamp=0.5, samples=30, news=0.4)
    b.prior = (0.1, 8.0)
    b.observe(s, 0.3, 2.0, load_at_start=1.0)  # recovered, but clearly slower than typical
    assert learned(s).service == pytest.approx(0.3)
    s.metric_state = DelayEstimate(service=0.8, slots=1.5, stamp=0.5, samples=30, news=0.4)
    b.prior = (0.1, 8.0)
    b.observe(s, 0.2, 2.0, load_at_start=1.0)  # outside the band, within its noise
    assert learned(s).service == pytest.approx(0.1)
    s.metric_state = DelayEstimate(service=0.8, slots=1.5, stamp=0.5, samples=30, news=0.4)
    b.prior = (0.1, 8.0)
    b.observe(s, 0.05, 2.0, load_at_start=1.0)  # faster than the pool's typical
    w = 1.0 - math.exp(-1.5 / 0.25)  # 1.5 s since its last answer (retest 0.25)
    assert learned(s).service == pytest.approx(0.8 + (0.05 - 0.8) * w)  # not raised
    ordinary = DelayEstimate(service=0.2, slots=1.5, stamp=1.99, samples=30, news=1.8)
    s.metric_state = ordinary
    b.prior = (0.1, 8.0)
    b.observe(s, 0.15, 2.0, load_at_start=1.0)  # 0.75x the estimate: no recovery
    assert learned(s).slots == pytest.approx(1.5)
    assert learned(s).service == pytest.approx(0.2 + (0.15 - 0.2) * 0.2)


def test_slow_start_ramps_and_never_starves_in_an_idle_pool(clock: eb.ManualClock) -> None:
    """A backend added to an idle pool (one request at a time) gets requests from the start, and a larger share later in its ramp than early in it."""
    pool = pool_of(
        3, clock, balancer=eb.ShortestExpectedDelay(), slow_start=eb.SlowStart(window=10.0)
    )
    for _ in range(30):
        lease = pool.acquire()
        clock.advance(0.05)
        pool.release(lease)
    pool.add("http://new.test:8000")
    first = second = 0
    for i in range(400):  # 20 s of one request at a time
        lease = pool.acquire()
        clock.advance(0.05)
        pool.release(lease)
        if lease.backend.url == "http://new.test:8000":
            if i < 100:
                first += 1
            else:
                second += 1
    assert first > 0
    assert second / 300 > 0.15  # about its 1/4 once ramped


def test_slow_answers_placed_before_a_recovery_do_not_undo_it() -> None:
    """After a slow spell, a backend's first fast answer resets its estimate; slow answers to requests placed *before* that one (still arriving from the spell) are older news and are not learned from, while a slow answer to a request placed after it is (else a recovered backend is shunned again by its own backlog for seconds)."""
    m = ExpectedDelay()
    s = make_state()
    teach(m, s, service=1.2, slots=4.0, now=100.0)  # learned during an 8x slow spell
    m.observe(s, 0.15, now=101.15)  # placed at 101.0, answered fast: recovered
    recovered = learned(s).service
    assert recovered < 0.3
    m.observe(s, 1.2, now=101.3)  # placed at 100.1, during the spell
    m.observe(s, 1.1, now=101.4)  # placed at 100.3
    assert learned(s).service == pytest.approx(recovered)
    m.observe(s, 1.0, now=102.2)  # placed at 101.2, after the recovery: real news
    assert learned(s).service > recovered


def test_ordinary_reordering_is_still_learned_from() -> None:
    """Without a recovery (no answer under half the estimate), answers that started earlier and finished later — every queue reorders — are learned from as before."""
    m = ExpectedDelay()
    s = make_state()
    teach(m, s, service=0.1, slots=4.0, now=10.0)
    m.observe(s, 0.08, now=10.5)  # placed at 10.42: better, but not under half
    before = learned(s).service
    m.observe(s, 0.3, now=10.52)  # placed at 10.22, before the better one
    assert learned(s).service > before


def _placed(state: object, at: float) -> None:
    """Record one request of ours placed on ``state`` at ``at`` (as the pool does)."""
    state.in_flight.append(SimpleNamespace(started_at=at, released=False))  # type: ignore[attr-defined]
    state.pending += 1  # type: ignore[attr-defined]
    state.outstanding_cost += 1.0  # type: ignore[attr-defined]


def test_each_probe_restarts_the_relaxing_and_one_silent_probe_does_not_bar_the_next() -> None:
    """With placements tracked, a stale worse estimate relaxes from the newest request placed there: a probe just sent puts it back at its estimate, a probe out for a while lets it relax again (its silence does not count against it: a probe sent just before a recovery may take a slow-spell time to answer), and with two probes out the silence does count."""
    m = ExpectedDelay(retest=0.25)
    s = make_state()
    teach(m, s, service=0.8, slots=8.0, now=0.0)
    prior = (0.1, 8.0)
    _placed(s, 5.0)
    assert m.delay(s, 5.0, 1.0, prior) == pytest.approx(0.8)  # just placed
    w = math.exp(-1.0 / 0.25)
    assert m.delay(s, 6.0, 1.0, prior) == pytest.approx(0.8 * w + 0.1 * (1 - w))
    _placed(s, 6.0)
    # Two out, the older silent for 1.5 s: at least that long.
    assert m.delay(s, 6.5, 1.0, prior) >= 1.5
    # A backend not being probed (no worse than the pool) is bound by silence with one out.
    fast = make_state(1)
    teach(m, fast, service=0.1, slots=8.0, now=0.0)
    _placed(fast, 5.0)
    assert m.delay(fast, 6.0, 1.0, prior) == pytest.approx(1.0)


def test_a_backend_slow_as_it_always_is_is_retested_more_slowly_than_one_in_a_spell() -> None:
    """Two backends with the same stale estimate, 6x the pool's: one whose own baseline is
    as slow (a small replica beside big ones) relaxes with time constant retest x SETTLED,
    one whose baseline is the pool's (in a slow spell) with retest. If this fails, either
    a recovered backend is found late, or a permanently slow one is probed as often and
    each probe is a slow request (the scale simulation's p99 rose 7% at 100 backends)."""
    m = ExpectedDelay(retest=0.25)
    prior = (0.1, 8.0)
    settled, spell = make_state(0), make_state(1)
    settled.metric_state = DelayEstimate(
        service=0.6, slots=2.0, stamp=0.0, samples=50, news=0.0, baseline=0.6
    )
    spell.metric_state = DelayEstimate(
        service=0.6, slots=2.0, stamp=0.0, samples=50, news=0.0, baseline=0.1
    )
    for age, backend, tau in ((0.5, spell, 0.25), (0.5, settled, 0.25 * SETTLED)):
        w = math.exp(-age / tau)
        assert m.delay(backend, age, 1.0, prior) == pytest.approx(0.6 * w + 0.1 * (1 - w))
    assert m.relaxed_by(spell, 0.5, prior) > m.relaxed_by(settled, 0.5, prior)


def test_the_baseline_follows_the_estimate_slowly() -> None:
    """The first answer sets it; each later one moves it BASELINE_WEIGHT of the way to the
    updated estimate — a quarter of that while the estimate is over twice the baseline
    (a spell) — so a spell of a few answers leaves it near the usual speed."""
    m = ExpectedDelay()
    s = make_state()
    m.observe(s, 0.1, now=1.0)
    assert learned(s).baseline == pytest.approx(0.1)
    m.observe(s, 0.15, now=2.0)
    service = learned(s).service
    assert 0.1 < service <= 0.2
    assert learned(s).baseline == pytest.approx(0.1 + (service - 0.1) * BASELINE_WEIGHT)
    spell = make_state()
    m.observe(spell, 0.1, now=1.0)
    m.observe(spell, 0.8, now=2.0)  # far slower: noise until confirmed
    m.observe(spell, 0.8, now=2.0)  # confirmed: a spell
    est = learned(spell)
    assert est.service > 2.0 * est.baseline
    before = est.baseline
    m.observe(spell, 0.8, now=2.1)
    assert est.baseline == pytest.approx(before + (est.service - before) * BASELINE_WEIGHT * 0.25)


_STEPS = st.lists(
    st.tuples(
        st.sampled_from(["acquire", "acquire", "success", "failure", "cancel", "wait", "add"]),
        st.floats(0.0, 3.0),
        st.integers(0, 1 << 16),
    ),
    min_size=4,
    max_size=60,
)


@settings(max_examples=120, deadline=None)
@example(steps=[("acquire", 5e-324, 0), ("success", 1.0, 0)], cost=0.0)
@given(steps=_STEPS, cost=st.sampled_from([0.0, 0.5, 1.0, 3.0, 40.0]))
def test_every_state_a_pool_reaches_scores_a_finite_delay(
    steps: list[tuple[str, float, int]], cost: float
) -> None:
    """Every backend, in every state a pool reaches — unmeasured, measured, slower than the pool (relaxing), in slow start, after failures, with work in flight and silent, after a request of a vanishing cost — scores a finite delay >= 0, the same through :meth:`delays` (a pick's) and :meth:`delay` (one backend's). If this fails, a NaN or infinite score has reached the pick, where ``min`` and the tie band silently misorder backends (a request of cost 5e-324 once made a service time of inf seconds, and every later score at cost 0 NaN)."""
    clock = eb.ManualClock(1000.0)
    pool = eb.BackendPool(
        [f"http://b{i}.test" for i in range(3)],
        balancer=eb.ShortestExpectedDelay,
        clock=clock,
        rng=random.Random(1),
        slow_start=eb.SlowStart(window=60.0),
    )
    balancer = pool.balancer
    assert isinstance(balancer, eb.ShortestExpectedDelay)
    m = balancer.metric
    assert isinstance(m, ExpectedDelay)
    # Warm: every backend measured (some faster than the pool's typical, some slower),
    # a newcomer measured inside its slow start, and one backend holding a request
    # placed before its latest answer — so the steps below start where the fast path
    # applies and move out of it.
    for i in range(12):
        pool.release(pool.acquire(), latency=0.02 + 0.01 * (i % 5))
    pool.add("http://warm.test")
    others = [f"http://b{i}.test" for i in range(3)]
    pool.release(pool.acquire(exclude=others), latency=0.01)
    b0_only = [*others[1:], "http://warm.test"]
    leases: list[eb.Lease] = [pool.acquire(exclude=b0_only)]
    clock.advance(0.5)
    pool.release(pool.acquire(exclude=b0_only), latency=0.01)
    added = 0
    checked = 0
    relaxing = 0  # backends checked while slower than the typical (relaxed)
    for op, x, k in steps:
        if op == "acquire":
            # Every backend ejected raises; the states are still worth checking.
            with contextlib.suppress(eb.NoBackendAvailable):
                leases.append(pool.acquire(cost=x))
        elif op == "wait":
            clock.advance(x)
        elif op == "add":
            added += 1
            pool.add(f"http://new{added}.test")
        elif leases:
            lease = leases.pop(k % len(leases))
            outcome = {
                "success": eb.Outcome.SUCCESS,
                "failure": eb.Outcome.FAILURE,
                "cancel": eb.Outcome.CANCELLED,
            }[op]
            pool.release(lease, outcome, latency=x if outcome is eb.Outcome.SUCCESS else None)
        states = list(pool._states.values())
        now = clock()
        for prior in (balancer.prior, None, (0.05, 4.0)):
            got = m.delays(states, now, cost, prior)
            assert all(0.0 <= d < math.inf for d in got), got
            assert got == [m.delay(s, now, cost, prior) for s in states]
            checked += len(states)
            # The pick's scores and the probe test agree on the relaxing (relaxed_by): for
            # a measured, unpenalised backend out of slow start, below its knee and
            # idle or holding one probe (no silence bound then), one unit's delay is
            # its relaxed service time.
            for st_ in states:
                est = st_.metric_state
                if (
                    prior is not None
                    and isinstance(est, DelayEstimate)
                    and est.samples
                    and (
                        not st_.pending
                        or (st_.pending == 1 and m.relaxed_by(st_, now, prior) > 1.0)
                    )
                    and st_.outstanding_cost + 1.0 <= max(est.slots, 1.0)
                    and st_.penalty == 0.0
                    and now - st_.admitted_at >= st_.slow_start.window
                ):
                    scored = _steady(est)  # the baseline, for noise above it
                    relaxed = scored / m.relaxed_by(st_, now, prior)
                    assert m.delay(st_, now, 1.0, prior) == pytest.approx(relaxed / st_.weight)
                    relaxing += est.service > prior[0]
    assert checked or not steps
    assert relaxing or not steps
