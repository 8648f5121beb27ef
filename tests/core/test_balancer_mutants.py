"""Balancer promises that mutation testing found unpinned: argument checks and their
messages, defaults, reprs, the zone split and its cache, round-robin's rotation under
slow start, the expected-delay scan's edges, and how the priority balancer hands each
call to its tier's balancer (manual clock, fixed or seeded random draws, no I/O)."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

import embedbalance as eb
from embedbalance import Backend, SlowStart
from embedbalance._hints import ServerHints
from embedbalance._state import BackendState
from embedbalance.balancers import PRIOR_SETTLING
from embedbalance.load import DelayEstimate, ExpectedDelay
from embedbalance.locality import Locality

from .conftest import make_state

NOW = 1000.0


class Fixed(random.Random):
    """An rng whose ``random()`` returns one chosen value (to hit exact boundaries)."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value
        self.draws = 0

    def random(self) -> float:
        self.draws += 1
        return self.value


def zoned(i: int, zone: str, *, weight: float = 1.0, pending: int = 0) -> BackendState:
    state = BackendState(
        backend=Backend(f"http://z{i}.test:8000", weight=weight, zone=zone),
        weight=weight,
        tier=0,
        admitted_at=-1e9,
        slow_start=SlowStart(window=0.0),
    )
    state.pending = pending
    return state


def ramping(i: int, *, weight: float = 1.0, elapsed: float = 1.0, tier: int = 0) -> BackendState:
    """A backend ``elapsed`` seconds into a 10 s slow start (factor elapsed / 10)."""
    state = make_state(i, weight=weight, tier=tier)
    state.slow_start = SlowStart(window=10.0)
    state.admitted_at = NOW - elapsed
    return state


class Recorder(eb.Balancer):
    """Records what each call received; picks the first candidate."""

    def __init__(self) -> None:
        self.picks: list[tuple[list[BackendState], object, object, list[BackendState]]] = []
        self.observed: list[tuple[object, ...]] = []
        self.scored: list[tuple[object, object]] = []

    def pick(
        self,
        candidates: Sequence[BackendState],
        *,
        cost: float,
        now: float,
        rng: random.Random,
        population: Sequence[BackendState],
    ) -> BackendState:
        self.picks.append((list(candidates), cost, rng, list(population)))
        return candidates[0]

    def observe(self, state: BackendState, latency: float, now: float, *rest: object) -> None:
        self.observed.append((state, latency, now, *rest))

    def score(self, backend: eb.BackendView, now: float) -> float:
        self.scored.append((backend, now))
        return 7.0

    def estimate(self, state: BackendState, now: float) -> float | None:
        self.scored.append((state, now))
        return 0.5

    def concurrency(self, state: BackendState) -> float | None:
        self.scored.append((state, None))
        return 3.0


# -- base class -------------------------------------------------------------------


def test_base_score_without_metric_is_zero_and_repr_names_the_class() -> None:
    """A balancer without a load metric scores every backend 0 and reprs as its class.
    If this fails, a subclass adding to the base score is offset, or logs show the
    wrong balancer."""
    assert eb.RoundRobin().score(make_state(0).view, NOW) == 0.0
    assert repr(eb.RoundRobin()) == "RoundRobin()"
    assert repr(eb.LeastConnections()) == "LeastConnections()"


def test_choose_without_locality_passes_cost_and_population_through() -> None:
    """With no zone preference, ``choose`` hands the request's cost and the whole
    population to ``pick`` unchanged. If this fails, a custom balancer (or the
    priority balancer's pinning) sees no cost or no population."""
    b = Recorder()
    cands = [make_state(0), make_state(1)]
    pop = [*cands, make_state(2)]
    rng = random.Random(1)
    assert b.choose(cands, cost=5.0, now=NOW, rng=rng, population=pop) is cands[0]
    assert b.picks == [(cands, 5.0, rng, pop)]


def test_zone_split_shares_and_populations() -> None:
    """The local share is ``min(1, overprovisioning x available local weight / all
    local weight)``, with the local and remote populations split by zone. If this
    fails, traffic leaves the caller's zone too early or too late."""
    loc = Locality("a", overprovisioning=2.0)
    a0, a1, a2, a3 = (zoned(i, "a") for i in range(4))
    r0, r1 = zoned(4, "b"), zoned(5, "b")
    cands = [a0, r0]  # a1..a3 and r1 are members that are not candidates
    pop = [a0, a1, a2, a3, r0, r1]
    split = eb.RoundRobin()._zone_split(loc, cands, pop, NOW)
    assert split is not None
    share, local, local_pop, remote, remote_pop = split
    assert share == pytest.approx(0.5)  # 2.0 x 1 / 4
    assert (local, local_pop, remote, remote_pop) == ([a0], [a0, a1, a2, a3], [r0], [r0, r1])
    # Nothing available elsewhere: the local zone keeps everything.
    r0.pending = 5
    sat = Locality("a", overprovisioning=2.0, saturation=1.0)
    split = eb.RoundRobin()._zone_split(sat, cands, pop, NOW)
    assert split is not None
    assert split[0] == 1.0


def test_saturation_counts_per_unit_of_weight() -> None:
    """A backend is full at ``saturation x weight`` pending requests: a weight-2
    backend with one request is not. If this fails, heavy backends count as full at
    a fraction of their capacity and traffic leaves the zone."""
    loc = Locality("a", saturation=1.0, overprovisioning=1.0)
    a0 = zoned(0, "a", weight=2.0, pending=1)
    r0 = zoned(1, "b")
    split = eb.RoundRobin()._zone_split(loc, [a0, r0], [a0, r0], NOW)
    assert split is not None
    assert split[0] == 1.0
    a0.pending = 2
    split = eb.RoundRobin()._zone_split(loc, [a0, r0], [a0, r0], NOW)
    assert split is not None
    assert split[0] == 0.0


def test_knee_reads_each_backends_learned_concurrency() -> None:
    """With a knee, a backend whose outstanding work reaches knee x its learned slots
    counts as full. If this fails, the knee reads the wrong backend (or none) and
    the zone keeps traffic it cannot serve."""
    sed = eb.ShortestExpectedDelay()
    loc = Locality("a", knee=1.0, overprovisioning=1.0)
    a0, r0 = zoned(0, "a"), zoned(1, "b")
    sed.observe(a0, 0.1, NOW, load_at_start=2.0)  # learns 2 slots
    a0.outstanding_cost = 2.0
    split = sed._zone_split(loc, [a0, r0], [a0, r0], NOW)
    assert split is not None
    assert split[0] == 0.0
    a0.outstanding_cost = 1.0
    split = sed._zone_split(loc, [a0, r0], [a0, r0], NOW)
    assert split is not None
    assert split[0] == 1.0


def test_all_local_candidates_need_no_split() -> None:
    """When every candidate is local the zone choice is skipped, even if all are full.
    If this fails, a full local zone with nothing remote picks from an empty list."""
    loc = Locality("a", saturation=1.0)
    cands = [zoned(0, "a", pending=3), zoned(1, "a", pending=3)]
    b = eb.RoundRobin()
    b.use_locality(loc)
    assert b._zone_split(loc, cands, cands, NOW) is None
    assert b.choose(cands, cost=1.0, now=NOW, rng=random.Random(1), population=cands) in cands


class CountingSplit(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.splits = 0

    def _zone_split(self, *args: object) -> object:  # type: ignore[override]
        self.splits += 1
        return super()._zone_split(*args)  # type: ignore[arg-type]


def test_zone_split_is_cached_for_the_same_lists_within_its_ttl() -> None:
    """The split is reused while the pool hands over the same list objects and less
    than ``ZONE_SPLIT_TTL`` has passed, recomputed otherwise. If this fails, each pick
    costs a scan of the pool, or a changed membership keeps a stale split."""
    b = CountingSplit()
    b.use_locality(Locality("a"))
    cands = [zoned(0, "a"), zoned(1, "b")]
    pop = list(cands)
    rng = random.Random(2)
    b.choose(cands, cost=1.0, now=NOW, rng=rng, population=pop)
    b.choose(cands, cost=1.0, now=NOW + 0.2, rng=rng, population=pop)
    assert b.splits == 1
    b.choose(cands, cost=1.0, now=NOW + 0.25, rng=rng, population=pop)  # TTL over
    assert b.splits == 2
    b.choose(list(cands), cost=1.0, now=NOW + 0.25, rng=rng, population=pop)
    assert b.splits == 3
    b.choose(cands, cost=1.0, now=NOW + 0.25, rng=rng, population=list(pop))
    assert b.splits == 4
    # The pick sees the chosen zone's candidates and population only.
    assert all(len(c) == 1 and len(p) == 1 for c, _, _, p in b.picks)


# -- round robin ------------------------------------------------------------------


def test_round_robin_rotates_from_the_first() -> None:
    """Warm backends are taken in order starting with the first, one step per pick,
    with no random draw. If this fails, rotation skips or repeats backends, or draws
    randomness that shifts every later seeded pick."""
    cands = [make_state(i) for i in range(3)]
    b = eb.RoundRobin()
    rng = Fixed(0.5)
    picks = [b.pick(cands, cost=1.0, now=NOW, rng=rng, population=cands) for _ in range(7)]
    assert picks == [cands[i % 3] for i in range(7)]
    assert rng.draws == 0


def test_round_robin_warm_at_the_end_of_its_window_costs_no_draw() -> None:
    """A backend exactly ``window`` seconds after admission is warm: no draw. If this
    fails, seeded round-robin picks shift when a ramp ends."""
    cands = [ramping(0, elapsed=10.0), make_state(1)]
    rng = Fixed(0.5)
    assert eb.RoundRobin().pick(cands, cost=1.0, now=NOW, rng=rng, population=cands) is cands[0]
    assert rng.draws == 0


def test_round_robin_ramping_backend_takes_its_turn_with_its_ramp() -> None:
    """A ramping backend takes its turn with probability = its slow-start factor (per
    unit of weight), else the turn passes to the next one. If this fails, a cold
    replica gets a full share at once, or never its ramped share."""
    b = eb.RoundRobin()
    cands = [ramping(0, weight=2.0, elapsed=5.0), make_state(1), make_state(2)]
    # factor 0.5: the draw 0.5 is not below it (x weight 2 vs effective weight 1).
    assert b.pick(cands, cost=1.0, now=NOW, rng=Fixed(0.5), population=cands) is cands[1]
    assert b.pick(cands, cost=1.0, now=NOW, rng=Fixed(0.5), population=cands) is cands[2]
    b2 = eb.RoundRobin()
    assert b2.pick(cands, cost=1.0, now=NOW, rng=Fixed(0.49), population=cands) is cands[0]
    assert b2.pick(cands, cost=1.0, now=NOW, rng=Fixed(0.49), population=cands) is cands[1]


def test_round_robin_all_declining_falls_back_to_plain_rotation() -> None:
    """When every backend is ramping and each declines, the turn's owner is taken and
    the rotation moves one step. If this fails, some backends are skipped while all
    ramp."""
    cands = [ramping(i, elapsed=1.0) for i in range(3)]
    b = eb.RoundRobin()
    picks = [b.pick(cands, cost=1.0, now=NOW, rng=Fixed(0.99), population=cands) for _ in range(4)]
    assert picks == [cands[0], cands[1], cands[2], cands[0]]


# -- shortest expected delay ------------------------------------------------------


def test_sed_defaults_and_repr() -> None:
    """The documented defaults: retest 0.25 s, default delay 0.05 s, tolerance 0.5,
    an exact scan up to 16 candidates, 4 samples above. If this fails, the default
    balancer behaves otherwise than the docs say."""
    b = eb.ShortestExpectedDelay()
    m = b.metric
    assert isinstance(m, ExpectedDelay)
    assert (m.retest, m.default_delay, b.tolerance, b.scan_limit, b.choices) == (
        0.25,
        0.05,
        0.5,
        16,
        4,
    )
    assert repr(b) == "ShortestExpectedDelay(retest=0.25, tolerance=0.5, default_delay=0.05)"


def test_sed_argument_bounds_are_checked_with_a_message() -> None:
    """choices >= 2 and 0 <= tolerance < 10 are accepted at their edges; outside is a
    ValueError saying what was wrong. If this fails, a valid setting is refused or a
    nonsense one accepted silently."""
    assert eb.ShortestExpectedDelay(choices=2).choices == 2
    assert eb.ShortestExpectedDelay(tolerance=0.0).tolerance == 0.0
    assert eb.ShortestExpectedDelay(tolerance=9.99).tolerance == 9.99
    with pytest.raises(ValueError, match=r"choices must be >= 2, got 1"):
        eb.ShortestExpectedDelay(choices=1)
    for bad in (-0.1, 10.0, 10.5):
        with pytest.raises(ValueError, match=r"tolerance must be >= 0 and < 10, got"):
            eb.ShortestExpectedDelay(tolerance=bad)


def test_sed_subclass_score_is_used() -> None:
    """A subclass that overrides ``score`` gets the lowest of its own scores, ties
    broken with the pick's rng. If this fails, the documented way to customise the default balancer is ignored."""

    class Last(eb.ShortestExpectedDelay):
        def score(self, backend: eb.BackendView, now: float) -> float:
            assert now == NOW
            return -float(backend.url.split("//b")[1].split(".")[0])

    cands = [make_state(i) for i in range(4)]
    assert Last().pick(cands, cost=1.0, now=NOW, rng=random.Random(1), population=cands) is cands[3]

    class Flat(eb.ShortestExpectedDelay):
        def score(self, backend: eb.BackendView, now: float) -> float:
            return 1.0

    rng = random.Random(2)
    picks = {
        id(Flat().pick(cands, cost=1.0, now=NOW, rng=rng, population=cands)) for _ in range(40)
    }
    assert len(picks) == 4  # ties broken with the pick's rng


def test_sed_scans_exactly_up_to_scan_limit() -> None:
    """At ``scan_limit`` candidates the scan is exact (the idle one always wins);
    above it, random samples that still reach every index. If this fails, pools of
    exactly the limit get sampled picks, or the samples always land on one backend."""
    b = eb.ShortestExpectedDelay(scan_limit=4, choices=2)
    cands = [make_state(i) for i in range(4)]
    for s in cands[1:]:
        s.outstanding_cost = 5.0
    rng = random.Random(3)
    assert all(
        b.pick(cands, cost=1.0, now=NOW, rng=rng, population=cands) is cands[0] for _ in range(30)
    )
    many = [make_state(i) for i in range(8)]
    picked = {id(b.pick(many, cost=1.0, now=NOW, rng=rng, population=many)) for _ in range(60)}
    assert len(picked) > 4


def test_sed_equal_delays_at_zero_tolerance_share_the_traffic() -> None:
    """With tolerance 0, backends with exactly the best delay are all in the running
    (ties at random). If this fails, the first of equal backends takes every pick."""
    b = eb.ShortestExpectedDelay(tolerance=0.0)
    cands = [make_state(0), make_state(1)]
    rng = random.Random(4)
    picks = {id(b.pick(cands, cost=1.0, now=NOW, rng=rng, population=cands)) for _ in range(20)}
    assert picks == {id(cands[0]), id(cands[1])}


def test_sed_ties_are_kept_with_equal_chance() -> None:
    """Among backends tied on outstanding work, reservoir sampling keeps each with
    equal chance; a draw of exactly 1/ties does not switch. If this fails, ties
    favour some backends over others."""
    b = eb.ShortestExpectedDelay()
    cands = [make_state(i) for i in range(2)]
    assert b.pick(cands, cost=1.0, now=NOW, rng=Fixed(0.5), population=cands) is cands[0]
    assert b.pick(cands, cost=1.0, now=NOW, rng=Fixed(0.49), population=cands) is cands[1]
    rng = random.Random(5)
    firsts = sum(
        b.pick(cands, cost=1.0, now=NOW, rng=rng, population=cands) is cands[0] for _ in range(2000)
    )
    assert 900 < firsts < 1100


def test_sed_ramping_backend_takes_part_with_its_ramp() -> None:
    """A ramping backend is in the running with probability = its slow-start factor
    (per unit of weight); when it declines, the scan moves on to the next backend,
    and when every one declines the best delay wins. If this fails, a cold replica
    takes a warm one's share, or the scan skips or mislabels later backends."""
    b = eb.ShortestExpectedDelay(tolerance=9.0)
    busy, cold, idle = make_state(0), ramping(1, weight=2.0, elapsed=5.0), make_state(2)
    busy.outstanding_cost = 0.5
    cands = [busy, cold, idle]
    # cold's factor is 0.5: a draw of 0.5 (x weight 2 = 1.0) is not below its
    # effective weight 1.0, so it sits out; idle (least held) wins.
    assert b.pick(cands, cost=1.0, now=NOW, rng=Fixed(0.5), population=cands) is idle
    # a draw of 0.49 lets it in, and it holds nothing: it ties with idle.
    assert b.pick(cands, cost=1.0, now=NOW, rng=Fixed(0.49), population=cands) in (cold, idle)
    # All ramping and declining: the best delay (the first, idle) wins.
    rs = [ramping(i, elapsed=1.0) for i in range(3)]
    rs[1].outstanding_cost = rs[2].outstanding_cost = 2.0
    assert b.pick(rs, cost=1.0, now=NOW, rng=Fixed(0.99), population=rs) is rs[0]
    rs[0].outstanding_cost = 3.0
    assert b.pick(rs, cost=1.0, now=NOW, rng=Fixed(0.99), population=rs) is rs[1]


def test_sed_warm_at_the_end_of_its_window_costs_no_draw() -> None:
    """A backend exactly ``window`` seconds after admission is warm: the scan draws
    nothing for it. If this fails, seeded picks shift when a ramp ends."""
    b = eb.ShortestExpectedDelay()
    cands = [ramping(0, elapsed=10.0), make_state(1)]
    cands[1].outstanding_cost = 1.0
    rng = Fixed(0.5)
    assert b.pick(cands, cost=1.0, now=NOW, rng=rng, population=cands) is cands[0]
    assert rng.draws == 0


def test_sed_score_uses_the_pool_prior_for_one_unit() -> None:
    """``score`` is the expected delay of one unit of work, with the pool's typical
    service time standing in for an unmeasured backend. If this fails, custom
    scores and stats disagree with what picks use."""
    b = eb.ShortestExpectedDelay()
    seen, fresh = make_state(0), make_state(1)
    b.observe(seen, 0.2, NOW)
    m = b.metric
    assert isinstance(m, ExpectedDelay)
    assert b.score(fresh.view, NOW) == m.delay(fresh, NOW, 1.0, b.prior)
    assert b.score(fresh.view, NOW) == pytest.approx(0.2)
    fresh.outstanding_cost = 1.0
    assert b.score(fresh.view, NOW) == pytest.approx(0.4)


def test_sed_observe_defaults_and_prior_average() -> None:
    """``observe`` defaults to one unit of cost sharing the backend with nothing else,
    and the pool's prior is a 10% moving average of every backend's (service,
    slots). If this fails, unmeasured backends are scored from the wrong typical
    speed or concurrency."""
    b = eb.ShortestExpectedDelay()
    a, c = make_state(0), make_state(1)
    b.observe(a, 0.1, NOW)
    assert (a.metric_state.service, a.metric_state.slots) == (0.1, 1.0)
    assert b.prior == (0.1, 1.0)
    b.observe(c, 0.3, NOW, 5.0, 1.0)  # five in flight: 5 slots
    # While the typical settles it moves freely (see the tie-band test for after).
    assert b.prior == pytest.approx((0.1 + 0.2 * 0.1, 1.0 + 4.0 * 0.1))


@pytest.mark.parametrize(
    ("service", "target"), [(0.12, 0.12), (0.15, 0.15), (0.9, 0.15), (0.05, 0.1 / 1.5)]
)
def test_sed_prior_moves_at_most_to_the_tie_band(service: float, target: float) -> None:
    """Once settled, one backend in a slow (or fast) spell moves the pool's typical
    service time a tenth of the way toward its own, but no further than the tie band
    (``1 + tolerance`` either way). If this fails, an 8x-slow backend's answers drag the
    typical up, and every stale estimate relaxing toward it (the recovered backend's
    included) stays shunned."""
    b = eb.ShortestExpectedDelay()
    b.prior = (0.1, 4.0)
    b._answers = PRIOR_SETTLING
    s = make_state(0)
    s.metric_state = DelayEstimate(service=service, slots=4.0, stamp=NOW, samples=50, news=NOW)
    b.observe(s, service, NOW)
    assert b.prior[0] == pytest.approx(0.1 + (target - 0.1) * 0.1)


def test_sed_prior_moves_freely_while_it_settles() -> None:
    """For the first PRIOR_SETTLING answers the typical follows each answer's estimate
    a tenth of the way, unclipped. If this fails, a cold first answer (20x slow) keeps
    the typical slow for hundreds of answers and every unmeasured replica, scored by
    it, is never picked while a measured one is free."""
    b = eb.ShortestExpectedDelay()
    fast = make_state(0)
    b.observe(make_state(1), 2.0, NOW)  # a cold start: the first typical is 2 s
    assert b.prior is not None
    assert b.prior[0] == pytest.approx(2.0)
    for _ in range(PRIOR_SETTLING - 1):
        b.observe(fast, 0.1, NOW)
    assert b.prior[0] < 0.12


def test_the_base_balancer_never_probes() -> None:
    """``Balancer.is_probe`` is false for a balancer that does not override it (the pool
    then never asks it at all). If this fails, a subclass that calls the base, or a
    caller asking any balancer, marks ordinary picks as probes."""
    for balancer in (eb.RoundRobin(), eb.LeastConnections(), eb.PeakEwma()):
        assert balancer.is_probe(make_state(0), NOW) is False


def test_sed_prior_settling_ends_after_exactly_prior_settling_answers() -> None:
    """The first answer sets the typical; the next ``PRIOR_SETTLING`` move it freely;
    the one after is clipped to the tie band. Each answer here is a fresh backend's
    first, so its estimate is exactly its latency. If this fails, the settling ends an
    answer early or late (or counts answers twice)."""
    b = eb.ShortestExpectedDelay()
    for i in range(PRIOR_SETTLING):  # the first and PRIOR_SETTLING - 1 free ones
        b.observe(make_state(i), 0.1, NOW)
    assert b.prior is not None
    assert b.prior[0] == pytest.approx(0.1)
    b.observe(make_state(900), 10.0, NOW)  # the last free answer
    assert b.prior[0] == pytest.approx(0.1 + 9.9 * 0.1)
    moved = b.prior[0]
    b.observe(make_state(901), 100.0, NOW)  # the first clipped one
    assert b.prior[0] == pytest.approx(moved + (moved * 1.5 - moved) * 0.1)


def test_sed_a_record_just_placed_is_no_probe_even_with_no_tie_band() -> None:
    """With ``tolerance=0`` a worse record whose news is fresh (a request placed just
    now) is relaxed by exactly 1, the band's width: not a probe (the test is strictly
    above the band). If this fails, every pick of a slower backend is marked a probe
    and hedged by the pool's latency instead of its own."""
    b = eb.ShortestExpectedDelay(tolerance=0.0)
    b.prior = (0.1, 8.0)
    s = make_state(0)
    s.metric_state = DelayEstimate(service=0.8, slots=8.0, stamp=NOW, samples=50, news=NOW)
    assert not b.is_probe(s, NOW)


def _in_a_spell(b: eb.ShortestExpectedDelay) -> BackendState:
    """A backend whose record says 1 s per unit (8 slots), in a pool whose typical is
    0.1 s: a slow spell, not yet known to be over."""
    b.prior = (0.1, 8.0)
    b._answers = PRIOR_SETTLING + 1
    s = make_state(0)
    s.metric_state = DelayEstimate(service=1.0, slots=8.0, stamp=NOW, samples=50, news=NOW)
    return s


def test_sed_only_the_answer_that_shows_a_recovery_restarts_the_record() -> None:
    """A recovery (an answer under half the record) restarts the backend from the pool's
    typical; a later, slower answer is learned as usual (the record goes up). If this
    fails, every answer after a backend's first recovery caps its record at the typical,
    and a backend that slows down again is never seen to."""
    b = eb.ShortestExpectedDelay()
    s = _in_a_spell(b)
    b.observe(s, 0.12, NOW + 1.0)
    assert s.metric_state.service == pytest.approx(0.1)  # restarted
    b.observe(s, 0.14, NOW + 2.0)  # slower, placed after the recovery, not one itself
    assert s.metric_state.service > 0.12


@pytest.mark.parametrize(
    ("cost", "latency"), [(4.0, 0.48), (0.5, 0.06), (0.0, 0.12)], ids=["4", "0.5", "0"]
)
def test_sed_a_recovery_is_judged_per_unit_of_cost(cost: float, latency: float) -> None:
    """Whether a recovery's sample is close enough to the typical to restart from the
    typical is judged per unit of cost (a cost of 0 counts as its latency): 0.12 s per
    unit is within the band of 0.1 s, whatever the request's size. If this fails, a big
    batch's recovery restarts from its whole latency (and a cost of 0 divides by
    zero)."""
    b = eb.ShortestExpectedDelay()
    s = _in_a_spell(b)
    b.observe(s, latency, NOW + 1.0, load_at_start=max(cost, 1.0), cost=cost)
    assert s.metric_state.service == pytest.approx(0.1)


def test_sed_a_recovery_clearly_slower_than_the_typical_restarts_from_its_sample() -> None:
    """A recovery whose sample, per unit of cost, is past the band twice over (0.3 s per
    unit: 0.15 s for half a unit, against 0.1 x 1.5 x 1.5) restarts from that sample,
    not the typical. If this fails, small requests' recoveries are judged by their whole
    latency and a backend still three times as slow as the pool rejoins as if it were
    typical."""
    b = eb.ShortestExpectedDelay()
    s = _in_a_spell(b)
    b.observe(s, 0.15, NOW + 1.0, load_at_start=1.0, cost=0.5)
    assert s.metric_state.service == pytest.approx(0.3)


def test_sed_a_recovery_at_the_edge_restarts_from_the_typical() -> None:
    """A recovering sample exactly at the edge (typical x (1 + tolerance) squared) still
    restarts from the typical (the edge is inside), and so does one merely outside the
    tie band — one answer 1.5x slow by chance. If this fails, the edge moved."""
    b = eb.ShortestExpectedDelay()
    s = _in_a_spell(b)
    assert b.prior is not None
    edge = b.prior[0] * b._widen * b._widen
    b.observe(s, edge, NOW + 1.0)
    assert s.metric_state.service == pytest.approx(0.1)
    b = eb.ShortestExpectedDelay()
    s = _in_a_spell(b)
    assert b.prior is not None
    b.observe(s, b.prior[0] * b._widen * 1.2, NOW + 1.0)
    assert s.metric_state.service == pytest.approx(0.1)


def test_sed_a_recovery_drops_the_baseline_the_spell_lifted() -> None:
    """After a recovery restarts a backend, its baseline is no higher than its restarted
    estimate. If this fails, a spell that lifted the baseline makes the recovered
    backend look "as slow as it always is" and it is re-tested four times more slowly."""
    b = eb.ShortestExpectedDelay()
    s = _in_a_spell(b)
    s.metric_state.baseline = 0.4
    b.observe(s, 0.1, NOW + 1.0)
    assert s.metric_state.service == pytest.approx(0.1)
    assert s.metric_state.baseline == pytest.approx(0.1)
    low = _in_a_spell(b)
    low.metric_state.baseline = 0.05
    b.observe(low, 0.1, NOW + 1.0)
    assert 0.05 <= low.metric_state.baseline < 0.06  # not raised to the restart


# -- priority tiers ----------------------------------------------------------------


def test_gpu_priority_argument_bounds() -> None:
    """overprovisioning >= 1 and saturation > 0 (or None) are accepted at their
    edges; outside is a ValueError naming the value. If this fails, valid settings
    are refused or nonsense ones accepted."""
    assert eb.GpuPriority(overprovisioning=1.0).overprovisioning == 1.0
    assert eb.GpuPriority(saturation=0.5).saturation == 0.5
    with pytest.raises(ValueError, match=r"overprovisioning must be >= 1, got 0.9"):
        eb.GpuPriority(overprovisioning=0.9)
    for bad in (0, -1.0):
        with pytest.raises(ValueError, match=r"saturation must be > 0 or None, got"):
            eb.GpuPriority(saturation=bad)


def test_gpu_priority_makes_each_tier_balancer_once() -> None:
    """Tier 0's balancer is made at construction (its ``needs_oldest`` is the
    priority balancer's) and each tier's balancer is made once. If this fails,
    tiers lose what their balancers learned, or the pool stops tracking the ages
    the default inner balancer reads."""
    made: list[Recorder] = []

    def factory() -> Recorder:
        made.append(Recorder())
        return made[-1]

    g = eb.GpuPriority(factory)
    assert len(made) == 1
    assert g.tier_balancer(0) is made[0]
    assert g.tier_balancer(1) is g.tier_balancer(1)
    assert len(made) == 2
    assert eb.GpuPriority().needs_oldest is True
    assert eb.GpuPriority(eb.RoundRobin).needs_oldest is False


def _tiered(
    pin: float | None = None, saturation: float | None = None
) -> tuple[eb.GpuPriority, list[Recorder]]:
    made: list[Recorder] = []

    def factory() -> Recorder:
        made.append(Recorder())
        return made[-1]

    return eb.GpuPriority(factory, pin_cost_above=pin, saturation=saturation), made


def test_gpu_priority_forwards_each_call_to_the_tiers_balancer() -> None:
    """observe, score, estimate and concurrency go to the balancer of the backend's
    tier, with every argument. If this fails, a tier learns from another tier's
    answers or stats read the wrong model."""
    g, made = _tiered()
    s0 = make_state(0, tier=0)
    s1 = make_state(1, tier=1)
    hints = ServerHints(queue_depth=0.0)
    g.observe(s1, 0.2, NOW, hints=hints)
    g.observe(s0, 0.1, NOW, 3.0, 2.0)
    t0, t1 = g.tier_balancer(0), g.tier_balancer(1)
    assert isinstance(t0, Recorder)
    assert isinstance(t1, Recorder)
    assert t1.observed == [(s1, 0.2, NOW, 1.0, 1.0, hints)]
    assert t0.observed == [(s0, 0.1, NOW, 3.0, 2.0, None)]
    assert g.score(s1.view, NOW) == 7.0
    assert g.estimate(s1, NOW) == 0.5
    assert g.concurrency(s1) == 3.0
    assert t1.scored == [(s1.view, NOW), (s1, NOW), (s1, None)]
    assert t0.scored == []
    assert len(made) == 2


def test_gpu_priority_pick_hands_the_tier_its_part() -> None:
    """A pick goes to the chosen tier's own balancer with the request's cost, rng and
    the population; with a zone preference, with the tier's part of the population.
    If this fails, the inner balancer reasons about the wrong backends or tier."""
    g, _ = _tiered()
    cands = [make_state(0), make_state(1)]
    pop = [*cands, make_state(2, tier=1)]
    rng = random.Random(1)
    g.pick(cands, cost=2.0, now=NOW, rng=rng, population=pop)
    t0 = g.tier_balancer(0)
    assert isinstance(t0, Recorder)
    assert t0.picks == [(cands, 2.0, rng, pop)]

    g, _ = _tiered()
    g.use_locality(Locality("z"))
    down = make_state(3)  # a tier-0 member that is not a candidate
    pop = [*pop, down]
    g.choose(cands, cost=3.0, now=NOW, rng=rng, population=pop)
    t0 = g.tier_balancer(0)
    assert isinstance(t0, Recorder)
    assert t0.picks == [(cands, 3.0, rng, [*cands, down])]
    # A candidate whose tier has no member in the population: its tier's candidates.
    g, _ = _tiered()
    g.use_locality(Locality("z"))
    lone = [make_state(4, tier=1)]
    g.choose(lone, cost=1.0, now=NOW, rng=rng, population=cands)
    t1 = g.tier_balancer(1)
    assert isinstance(t1, Recorder)
    assert t1.picks == [(lone, 1.0, rng, lone)]


def test_gpu_priority_pins_only_costs_above_the_threshold() -> None:
    """A request costing more than ``pin_cost_above`` stays on the preferred tier
    even when it is full; one costing exactly the threshold spills like any other.
    If this fails, big batches land on CPUs, or the threshold is off by one."""
    g, _ = _tiered(pin=10.0, saturation=1.0)
    gpu = make_state(0, tier=0, pending=1)  # full
    cpu = make_state(1, tier=1)
    cands = [gpu, cpu]
    rng = random.Random(1)
    assert g.choose(cands, cost=11.0, now=NOW, rng=rng, population=cands) is gpu
    assert g.choose(cands, cost=10.0, now=NOW, rng=rng, population=cands) is cpu


def test_gpu_priority_saturation_counts_per_unit_of_weight() -> None:
    """A backend is full at ``saturation x weight`` pending requests. If this fails,
    heavy backends count as full too early."""
    g = eb.GpuPriority(saturation=1.0)
    assert not g.saturated(make_state(0, weight=2.0, pending=1))
    assert g.saturated(make_state(0, weight=2.0, pending=2))


def test_shares_count_a_candidate_outside_the_population() -> None:
    """A candidate whose tier has no member in ``population`` still counts with its
    own weight, and as unavailable when full. If this fails, such a tier gets a share
    it cannot serve or the split fails."""
    g = eb.GpuPriority(saturation=1.0)
    gpu = make_state(0, tier=0)
    cpu = make_state(1, tier=1)
    assert g.shares([gpu, cpu], [gpu], NOW) == ([0, 1], [1.0, 0.0])
    gpu.pending = 1  # full: all to the CPU
    assert g.shares([gpu, cpu], [gpu], NOW) == ([0, 1], [0.0, 1.0])
    cpu.pending = 1  # both full
    assert g.shares([gpu, cpu], [gpu], NOW) == ([0, 1], [0.0, 0.0])
    # A quarter of the GPUs free, and a half-ramped CPU outside the population: the
    # CPU tier's availability is 0.5, the shares 0.25 : 0.5, normalised.
    g = eb.GpuPriority(saturation=1.0, overprovisioning=1.0)
    gpus = [make_state(i, tier=0, pending=1) for i in range(4)]
    gpus[0].pending = 0
    half = ramping(9, elapsed=5.0, tier=1)
    tiers, shares = g.shares([*gpus, half], gpus, NOW)
    assert tiers == [0, 1]
    assert shares == pytest.approx([1 / 3, 2 / 3])


class CountingShares(eb.GpuPriority):
    calls = 0

    def shares(self, *args: object) -> tuple[list[int], list[float]]:
        self.calls += 1
        return super().shares(*args)  # type: ignore[arg-type]


def test_gpu_priority_plan_is_cached_for_the_same_lists_within_its_ttl() -> None:
    """The tier plan is reused while the lists are the same objects and less than
    ``SHARES_TTL`` has passed. If this fails, every pick rescans the pool, or a
    changed membership keeps a stale plan."""
    g = CountingShares(eb.RoundRobin)
    cands = [make_state(0), make_state(1, tier=1)]
    pop = list(cands)
    rng = random.Random(1)
    g.pick(cands, cost=1.0, now=NOW, rng=rng, population=pop)
    g.pick(cands, cost=1.0, now=NOW + 0.2, rng=rng, population=pop)
    assert g.calls == 1
    g.pick(cands, cost=1.0, now=NOW + 0.25, rng=rng, population=pop)
    assert g.calls == 2
    g.pick(list(cands), cost=1.0, now=NOW + 0.25, rng=rng, population=pop)
    assert g.calls == 3
    g.pick(cands, cost=1.0, now=NOW + 0.25, rng=rng, population=list(pop))
    assert g.calls == 4


def test_gpu_priority_spreads_by_share_and_skips_empty_tiers() -> None:
    """Picks fall on each tier in proportion to its share; a tier with no share is
    skipped (not the end of the search). If this fails, spill-over goes to the wrong
    tier or in the wrong amounts."""
    g = eb.GpuPriority(eb.RoundRobin, saturation=1.0, overprovisioning=1.0)
    full = make_state(0, tier=0, pending=1)
    half = [make_state(1, tier=1), make_state(2, tier=1, pending=1)]  # 50% available
    spare = make_state(3, tier=2)
    cands = [full, *half, spare]
    rng = random.Random(6)
    tiers = [g.pick(cands, cost=1.0, now=NOW, rng=rng, population=cands).tier for _ in range(2000)]
    assert tiers.count(0) == 0
    assert 900 < tiers.count(1) < 1100
    assert 900 < tiers.count(2) < 1100
    # A draw of exactly a tier's share belongs to the next tier.
    assert g.pick(cands, cost=1.0, now=NOW, rng=Fixed(0.5), population=cands).tier == 2
    # Three tiers with shares 0.25, 0.5 and 0.25.
    quarter = [make_state(10 + i, tier=0, pending=1) for i in range(4)]
    quarter[0].pending = 0
    cands = [*quarter, *half, spare]
    tiers = [g.pick(cands, cost=1.0, now=NOW, rng=rng, population=cands).tier for _ in range(2000)]
    assert 400 < tiers.count(0) < 600
    assert 900 < tiers.count(1) < 1100
    assert 400 < tiers.count(2) < 600


class RecordingMetric:
    """A load metric that records what it is told (all loads equal)."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    def load(self, state: BackendState, now: float) -> float:
        return 1.0

    def observe(
        self,
        state: BackendState,
        latency: float,
        now: float,
        load_at_start: float = -1.0,
        cost: float = -1.0,
        hints: ServerHints | None = None,
    ) -> None:
        self.calls.append((state, latency, now, load_at_start, cost, hints))

    def estimate(self, state: BackendState, now: float) -> float | None:
        self.calls.append((state, now))
        return 0.25


def test_base_observe_and_estimate_forward_everything_to_the_metric() -> None:
    """``observe`` hands the metric every argument (one unit of cost sharing the
    backend with nothing else by default) and ``estimate`` the time. If this fails,
    a metric learns from wrong loads or costs, or ignores the server's hints."""
    b = eb.Balancer()
    metric = RecordingMetric()
    b.metric = metric
    s = make_state(0)
    hints = ServerHints(queue_depth=0.0)
    b.observe(s, 0.1, NOW)
    b.observe(s, 0.2, NOW + 1, 3.0, 2.0, hints)
    assert b.estimate(s, NOW + 2) == 0.25
    assert metric.calls == [
        (s, 0.1, NOW, 1.0, 1.0, None),
        (s, 0.2, NOW + 1, 3.0, 2.0, hints),
        (s, NOW + 2),
    ]


def test_a_balancer_without_metric_still_picks() -> None:
    """The base balancer and a power-of-two subclass without a metric pick among
    equal scores. If this fails, a custom balancer without a metric crashes."""

    class Bare(eb.PowerOfTwoChoices):
        def __init__(self) -> None:
            self.metric = None

    cands = [make_state(0), make_state(1)]
    rng = random.Random(1)
    for b in (eb.Balancer(), Bare()):
        assert b.pick(cands, cost=1.0, now=NOW, rng=rng, population=cands) in cands


def test_p2c_subclass_score_reads_the_time() -> None:
    """A power-of-two subclass with its own score gets the pick's time for both
    samples. If this fails, time-dependent custom scores see None."""

    class Timed(eb.PowerOfTwoChoices):
        def score(self, backend: eb.BackendView, now: float) -> float:
            return now - NOW + (1.0 if backend.url == cands[0].backend.url else 0.0)

    cands = [make_state(0), make_state(1)]
    assert Timed().pick(cands, cost=1.0, now=NOW, rng=Fixed(0.0), population=cands) is cands[1]


def test_peak_ewma_and_sed_settings_reach_their_metrics() -> None:
    """PeakEwma defaults to tau 10 s and a 50 ms default RTT; every
    ShortestExpectedDelay setting reaches its metric. If this fails, documented
    settings are silently ignored."""
    assert repr(eb.PeakEwma()) == "PeakEwma(tau=10, default_rtt=0.05)"
    m = eb.ShortestExpectedDelay(better=0.3, worse=0.2, retest=0.5, default_delay=0.1).metric
    assert isinstance(m, ExpectedDelay)
    assert (m.better, m.worse, m.retest, m.default_delay) == (0.3, 0.2, 0.5, 0.1)
