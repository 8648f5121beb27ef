"""The user-facing balancers: each one strategy composed with one load metric.

Subclass one and override :meth:`Balancer.score` (lower is better) to make your own;
``docs/strategies.md`` shows one in a few lines. ``score`` receives a read-only
:class:`~embedbalance.BackendView`. A balancer instance keeps per-pool state (a
round-robin counter, per-tier inner balancers, the pool's typical service time), so
give each pool its own — pass the class (or any factory) as ``balancer=`` and the
pool makes one.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

from . import strategies
from ._hints import ServerHints
from ._state import BackendState, BackendView
from .load import (
    DelayEstimate,
    ExpectedDelay,
    LoadMetric,
    OutstandingTokens,
    PeakEwmaLatency,
    PendingRequests,
)
from .locality import Locality, local_share, prefer_local

__all__ = [
    "Balancer",
    "GpuPriority",
    "LeastConnections",
    "LeastOutstandingTokens",
    "PeakEwma",
    "PowerOfTwoChoices",
    "Random",
    "RoundRobin",
    "ShortestExpectedDelay",
    "WeightedRoundRobin",
]


class Balancer:
    """Base class: picks one of the usable backends for a request.

    The pool calls :meth:`pick` under its lock with the usable candidates (never
    empty) and :meth:`observe` with each success's latency. Subclasses usually only
    override :meth:`score`; the default pick is a full scan for the lowest score with
    random tie-breaking.
    """

    #: The metric :meth:`score` reads; ``None`` for balancers that ignore load.
    metric: LoadMetric | None = None
    #: Whether scores read the age of a backend's oldest request in flight (the pool
    #: tracks it only when asked).
    needs_oldest: bool = False
    #: Set by the pool that uses this instance: one balancer, one pool.
    _claimed: bool = False
    #: The caller's zone preference, set by the pool (:meth:`use_locality`).
    locality: Locality | None = None
    _zone_cache: tuple[object, object, float, _ZoneSplit | None] | None = None

    def use_locality(self, locality: Locality | None) -> None:
        """Prefer backends in ``locality.zone`` (the pool calls this once)."""
        self.locality = locality

    def is_probe(self, state: BackendState, now: float) -> bool:
        """Whether a request placed on ``state`` now is a *probe*: sent to re-test a
        backend whose own record says it is slower, not because it is expected to be
        quick. The pool marks its lease (:attr:`Lease.probe`), and hedging then judges
        its lateness by the pool's latency rather than by the slow spell it tests. The
        base balancer never probes."""
        return False

    def choose(
        self,
        candidates: Sequence[BackendState],
        *,
        cost: float,
        now: float,
        rng: random.Random,
        population: Sequence[BackendState],
    ) -> BackendState:
        """What the pool calls: narrow to the caller's zone while it can carry the
        traffic (see :mod:`embedbalance.locality`), then :meth:`pick`. Overriding
        :meth:`pick` or :meth:`score` keeps the zone preference."""
        locality = self.locality
        if locality is not None and len(candidates) > 1:
            candidates, population = self._zone_subset(locality, candidates, population, now, rng)
        return self.pick(candidates, cost=cost, now=now, rng=rng, population=population)

    #: How long a zone split stays valid while the candidate lists are the same objects
    #: (slow start moves effective weights with time, so not forever).
    ZONE_SPLIT_TTL = 0.25

    def _zone_subset(
        self,
        locality: Locality,
        candidates: Sequence[BackendState],
        population: Sequence[BackendState],
        now: float,
        rng: random.Random,
    ) -> tuple[Sequence[BackendState], Sequence[BackendState]]:
        """The local candidates or the others, drawn by :func:`~embedbalance.locality.
        local_share`; each with the matching part of ``population``.

        The pool hands over the same list objects until membership or health changes, so
        without a load-dependent "full" test the split is reused and a pick stays O(1)."""
        cached = self._zone_cache
        if (
            cached is not None
            and cached[0] is candidates
            and cached[1] is population
            and now - cached[2] < self.ZONE_SPLIT_TTL
            and locality.saturation is None
            and locality.knee is None
        ):
            split = cached[3]
        else:
            split = self._zone_split(locality, candidates, population, now)
            self._zone_cache = (candidates, population, now, split)
        if split is None:
            return candidates, population  # nothing to choose between
        share, local, local_population, remote, remote_population = split
        if prefer_local(share, rng):
            return local, local_population
        return remote, remote_population

    def _zone_split(
        self,
        locality: Locality,
        candidates: Sequence[BackendState],
        population: Sequence[BackendState],
        now: float,
    ) -> _ZoneSplit | None:
        zone = locality.zone
        local = [s for s in candidates if s.backend.zone == zone]
        if not local or len(local) == len(candidates):
            return None
        remote = [s for s in candidates if s.backend.zone != zone]
        local_population = [s for s in population if s.backend.zone == zone]
        remote_population = [s for s in population if s.backend.zone != zone]
        share = local_share(
            self._available(locality, local, now),
            sum(s.weight for s in local_population),
            self._available(locality, remote, now),
            locality.overprovisioning,
        )
        return share, local, local_population, remote, remote_population

    def _available(self, locality: Locality, states: Sequence[BackendState], now: float) -> float:
        """Effective weight of the backends in ``states`` that are not full."""
        saturation, knee = locality.saturation, locality.knee
        total = 0.0
        for s in states:
            if saturation is not None and s.pending >= saturation * s.weight:
                continue
            if knee is not None:
                slots = self.concurrency(s)
                if slots is not None and s.outstanding_cost >= knee * slots:
                    continue
            total += s.effective_weight(now)
        return total

    def score(self, backend: BackendView, now: float) -> float:
        """Load of one backend as this balancer sees it; lower is better. ``backend`` is
        a read-only view of the pool's live record."""
        if self.metric is None:
            return 0.0
        return self.metric.load(backend._state, now)

    def pick(
        self,
        candidates: Sequence[BackendState],
        *,
        cost: float,
        now: float,
        rng: random.Random,
        population: Sequence[BackendState],
    ) -> BackendState:
        """Choose among ``candidates``. ``population`` is every live backend (healthy
        or not), for balancers that reason about capacity, like :class:`GpuPriority`."""
        if len(candidates) == 1:
            return candidates[0]
        metric = self.metric
        if metric is not None and _plain_score(self):
            loads = [metric.load(s, now) for s in candidates]
        else:
            loads = [self.score(s.view, now) for s in candidates]
        return candidates[strategies.least_loaded(loads, rng)]

    def observe(
        self,
        state: BackendState,
        latency: float,
        now: float,
        load_at_start: float = 1.0,
        cost: float = 1.0,
        hints: ServerHints | None = None,
    ) -> None:
        """A request of ``cost`` to ``state``'s backend succeeded in ``latency``
        seconds, having shared the backend with ``load_at_start`` units of work (its
        own included); ``hints`` is what the server reported about its load."""
        if self.metric is not None:
            self.metric.observe(state, latency, now, load_at_start, cost, hints)

    def estimate(self, state: BackendState, now: float) -> float | None:
        """The metric's learned latency for one unit of work here (for stats)."""
        return None if self.metric is None else self.metric.estimate(state, now)

    def concurrency(self, state: BackendState) -> float | None:
        """The learned concurrency (knee) of this backend, where the metric learns one."""
        metric = self.metric
        knee = getattr(metric, "concurrency", None)
        return None if knee is None else knee(state)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


#: A zone split: the local share, then the local candidates and population, then the others'.
_ZoneSplit = tuple[
    float, list[BackendState], list[BackendState], list[BackendState], list[BackendState]
]


def _plain_score(balancer: Balancer) -> bool:
    """Whether ``balancer.score`` is the base one (the metric's load, unchanged)."""
    return type(balancer).score is Balancer.score


class _P2C(Balancer):
    """Power-of-two-choices over :meth:`score`: O(1) per pick at any pool size."""

    def pick(
        self,
        candidates: Sequence[BackendState],
        *,
        cost: float,
        now: float,
        rng: random.Random,
        population: Sequence[BackendState],
    ) -> BackendState:
        n = len(candidates)
        if n == 1:
            return candidates[0]
        # strategies.two_distinct, inlined (same draws, so the same picks for a seed).
        random_ = rng.random
        a = int(random_() * n)
        b = int(random_() * (n - 1))
        if b >= a:
            b += 1
        sa, sb = candidates[a], candidates[b]
        metric = self.metric
        # Skip one call layer when score is not overridden (it runs twice per pick).
        if metric is not None and _plain_score(self):
            load = metric.load
            return sb if load(sb, now) < load(sa, now) else sa
        score = self.score
        return sb if score(sb.view, now) < score(sa.view, now) else sa


class RoundRobin(Balancer):
    """Each usable backend in turn, ignoring load and weight.

    The baseline: right for identical backends and uniform requests, wrong as soon
    as one replica is slower — it keeps sending it a full share (nginx's and
    HAProxy's default). Slow start still applies: a backend still ramping takes its
    turn only with probability (its slow-start factor), else the turn passes to the
    next, so a cold replica is not handed its full share at once (Envoy does the same
    for its round robin).
    """

    def __init__(self) -> None:
        self._counter = 0

    def pick(
        self,
        candidates: Sequence[BackendState],
        *,
        cost: float,
        now: float,
        rng: random.Random,
        population: Sequence[BackendState],
    ) -> BackendState:
        counter = self._counter
        n = len(candidates)
        for k in range(n):
            state = candidates[(counter + k) % n]
            if now - state.admitted_at >= state.slow_start.window:
                break  # warm: the common case costs one comparison
            if rng.random() * state.weight < state.effective_weight(now):
                break
        else:
            k = 0  # every one is ramping and each declined: plain rotation
            state = candidates[counter % n]
        self._counter = counter + k + 1
        return state


class WeightedRoundRobin(Balancer):
    """nginx's smooth weighted round-robin over effective weights (weight × slow start).

    Exact proportions with even interleaving and no bursts; right when capacities
    are known and stable. It does not react to load: a slowed backend keeps its share.
    """

    def pick(
        self,
        candidates: Sequence[BackendState],
        *,
        cost: float,
        now: float,
        rng: random.Random,
        population: Sequence[BackendState],
    ) -> BackendState:
        if len(candidates) == 1:
            return candidates[0]
        weights = [s.effective_weight(now) for s in candidates]
        current = [s.swrr_current for s in candidates]
        i = strategies.smooth_weighted_round_robin(weights, current)
        for s, c in zip(candidates, current, strict=True):
            s.swrr_current = c
        return candidates[i]


class Random(Balancer):
    """A random backend, with probability proportional to effective weight.

    Stateless and cheap; with many independent clients it spreads load about as
    well as round-robin, without their picks falling into step.
    """

    def pick(
        self,
        candidates: Sequence[BackendState],
        *,
        cost: float,
        now: float,
        rng: random.Random,
        population: Sequence[BackendState],
    ) -> BackendState:
        weights = [s.effective_weight(now) for s in candidates]
        return candidates[strategies.weighted_random(weights, rng)]


class LeastConnections(Balancer):
    """Full scan for the fewest pending requests per unit of weight.

    Exact, and O(n) per pick: ideal up to a few dozen backends; beyond that prefer
    :class:`PowerOfTwoChoices`, which is nearly as good at O(1) (HAProxy ``leastconn``,
    nginx ``least_conn``).
    """

    def __init__(self) -> None:
        self.metric = PendingRequests()


class PowerOfTwoChoices(_P2C):
    """Two distinct random backends, the one with fewer pending requests per weight wins.

    O(1) per pick and flat in the number of backends; avoids the herd effect of
    many clients all choosing the same least-loaded backend (Mitzenmacher; Envoy's
    ``LEAST_REQUEST``).
    """

    def __init__(self) -> None:
        self.metric = PendingRequests()


class PeakEwma(_P2C):
    """Power-of-two-choices over peak-EWMA latency × (pending + 1): Finagle's and
    linkerd's default, with their semantics.

    Learns each backend's latency from its answers and reacts at once to a slowdown.
    It cannot tell a slow backend from a busy one (both just answer late), so with
    backends of very different capacity under load it lets queues build on the slow
    ones; :class:`ShortestExpectedDelay`, our default, learns drain rates instead.
    ``tau`` (seconds) is how fast old latency is forgotten; ``default_rtt`` is assumed
    for a backend not yet measured.
    """

    def __init__(self, *, tau: float = 10.0, default_rtt: float = 0.05) -> None:
        self.metric = PeakEwmaLatency(tau=tau, default_rtt=default_rtt)

    def __repr__(self) -> str:
        m = self.metric
        assert isinstance(m, PeakEwmaLatency)
        return f"PeakEwma(tau={m.tau:g}, default_rtt={m.default_rtt:g})"


#: Answers during which the pool's typical backend moves freely (after, within the tie
#: band per answer): 0.9 ** 50 leaves 0.5% of a cold first answer's error.
PRIOR_SETTLING = 50


class ShortestExpectedDelay(Balancer):
    """Send each request where it is expected to be answered soonest, from a model of
    each backend with a concurrency knee (see :class:`~embedbalance.load.ExpectedDelay`).

    It learns each backend's service time and how many requests it serves at once. A
    free slot on the fastest backend wins; when every fast slot is taken, the shortest
    expected delay — a queue on a fast backend or a free slot on a slow one, whichever
    answers sooner. Unlike peak-EWMA it tells *slow* from *busy*, and unlike a linear
    model it tells a free slot from a queue, without hand-set weights. It is cost-aware:
    with request costs (the embedding client passes token counts) a big batch weighs
    what it is.

    Backends whose expected delays are within ``tolerance`` (relative) of the best are
    treated as equally good — the estimates are noisy, and a lasting preference for
    the luckier of two identical backends would idle the other. Among those the least
    loaded wins, ties at random; a slow-starting backend takes part with a
    probability equal to its ramp, so its share grows with the ramp even in an idle
    pool.

    Picks are an exact scan up to ``scan_limit`` candidates; above it the same rule over
    ``choices`` random ones, so the cost per pick stays flat at thousands of backends.
    ``choices`` is 4 rather than 2 because backends here differ in speed: with two
    samples, a pair of slow backends (a 1-in-16 chance when a quarter are slow) forces
    a slow pick far more often than their capacity allows.
    """

    metric: ExpectedDelay

    def __init__(
        self,
        *,
        better: float = 0.2,
        worse: float = 0.1,
        retest: float = 0.25,
        default_delay: float = 0.05,
        tolerance: float = 0.5,
        scan_limit: int = 16,
        choices: int = 4,
    ) -> None:
        if choices < 2:
            raise ValueError(f"choices must be >= 2, got {choices!r}")
        if not (tolerance >= 0 and tolerance < 10):
            raise ValueError(f"tolerance must be >= 0 and < 10, got {tolerance!r}")
        self.metric = ExpectedDelay(
            better=better, worse=worse, retest=retest, default_delay=default_delay
        )
        # Whether a subclass scores by its own score(): asked once, not per pick.
        self._own_score = type(self).score is not ShortestExpectedDelay.score
        self.needs_oldest = True
        #: The pool's typical ``(service, slots)``: a moving average over every answer,
        #: the estimate for a backend not yet measured and the level a stale, worse
        #: estimate relaxes toward (None until the first answer anywhere).
        self.prior: tuple[float, float] | None = None
        self._answers = 0
        self.tolerance = tolerance
        self._widen = 1.0 + tolerance
        self.scan_limit = max(scan_limit, choices)
        self.choices = choices

    def __repr__(self) -> str:
        m = self.metric
        return (
            f"ShortestExpectedDelay(retest={m.retest:g}, tolerance={self.tolerance:g}, "
            f"default_delay={m.default_delay:g})"
        )

    def pick(
        self,
        candidates: Sequence[BackendState],
        *,
        cost: float,
        now: float,
        rng: random.Random,
        population: Sequence[BackendState],
    ) -> BackendState:
        n = len(candidates)
        if n == 1:
            return candidates[0]
        if self._own_score:  # a subclass's own score
            loads = [self.score(s.view, now) for s in candidates]
            return candidates[strategies.least_loaded(loads, rng)]
        if n > self.scan_limit:
            random_ = rng.random
            pool: Sequence[BackendState] = [
                candidates[int(random_() * n)] for _ in range(self.choices)
            ]
        else:
            pool = candidates
        delays = self.metric.delays(pool, now, cost, self.prior)
        best = min(delays)
        limit = best * self._widen
        # Among backends about as good as the best: the least loaded, ties at random.
        # Past its knee a backend's delay grows and it leaves this set; within it, the
        # estimates' noise must not pick favourites. A slow-starting backend takes part
        # with a probability equal to its ramp, so its share grows with the ramp even
        # in an idle pool (where dividing its score by a small weight lost every tie).
        chosen = -1
        ties = 0
        least = math.inf
        i = 0
        for d in delays:
            if d <= limit:
                s = pool[i]
                if now - s.admitted_at < s.slow_start.window and rng.random() * s.weight >= (
                    s.effective_weight(now)
                ):
                    i += 1
                    continue
                held = s.outstanding_cost
                if held < least:
                    least, chosen, ties = held, i, 1
                elif held == least:
                    # Reservoir sampling: each of the tied is kept with equal chance.
                    ties += 1
                    if rng.random() * ties < 1.0:
                        chosen = i
            i += 1
        if chosen < 0:
            chosen = delays.index(best)
        return pool[chosen]

    def score(self, backend: BackendView, now: float) -> float:
        metric = self.metric
        return metric.delay(backend._state, now, 1.0, self.prior)

    def is_probe(self, state: BackendState, now: float) -> bool:
        """A pick that the stale estimate's relaxing brought into the tie band: the
        backend's record is worse than the pool's typical by more than the band, and
        only its age made it look competitive."""
        prior = self.prior
        est = state.metric_state
        # The relaxed estimate lies between the typical and the record, so a record
        # within the band of the typical cannot be relaxed by more than the band: no
        # probe, without the exponential (this runs after every pick).
        if prior is None or type(est) is not DelayEstimate or est.service <= prior[0] * self._widen:
            return False
        return self.metric.relaxed_by(state, now, prior) > self._widen

    def observe(
        self,
        state: BackendState,
        latency: float,
        now: float,
        load_at_start: float = 1.0,
        cost: float = 1.0,
        hints: ServerHints | None = None,
    ) -> None:
        metric = self.metric
        before = state.metric_state
        recovered = before.recovered_from if type(before) is DelayEstimate else -math.inf
        metric.observe(state, latency, now, load_at_start, cost, hints)
        est = state.metric_state
        prior = self.prior
        if prior is not None and est.recovered_from > recovered:
            # The answer showed a recovery from a slow spell: what was learned during
            # it (a slow service time, a knee read from its queue) is void. Restart
            # from the pool's typical backend — from this one's sample only when that
            # is clearly slower, past the tie band twice over (one sample is noisy: a
            # first answer 1.5x slow by chance kept a recovered backend out of the
            # band for a second) — so the recovered backend
            # rejoins the picks at once instead of being re-learned a probe at a time.
            sample = latency / cost if cost > 0.0 else latency
            restart = prior[0] if sample <= prior[0] * self._widen * self._widen else sample
            est.service = min(est.service, restart)
            est.slots = max(est.slots, prior[1])
            # Nor is the spell what it is usually like (its baseline decides how
            # slowly a slower-than-typical backend is re-tested).
            if est.baseline > restart:
                est.baseline = restart
        if prior is None:
            self.prior = (est.service, est.slots)
        else:
            # Each answer moves the typical backend a tenth of the way toward the one
            # that answered, but by no more than the tie band: one backend in a slow
            # spell (8x) would otherwise drag the typical up by most of a service time
            # per answer, and with it every stale estimate relaxing toward it; nor do
            # the luckiest answers drag it down (slow backends relaxing toward a
            # typical that is too fast are probed too often). Not for the first
            # answers: the first may be a cold start, 20x slow, and a clipped typical
            # would take hundreds of answers to leave it (every unmeasured backend,
            # scored by it, unpicked meanwhile).
            service, slots = prior
            target = est.service
            self._answers += 1
            if self._answers > PRIOR_SETTLING:
                if target > service * self._widen:
                    target = service * self._widen
                elif target * self._widen < service:
                    target = service / self._widen
            self.prior = (service + (target - service) * 0.1, slots + (est.slots - slots) * 0.1)


class LeastOutstandingTokens(Balancer):
    """Full scan for the least outstanding request cost (tokens) per unit of weight.

    Right when request sizes vary widely — embedding one text and embedding 512 are
    not the same load. Pass each request's cost (the embedding client passes its
    token estimate).
    """

    def __init__(self) -> None:
        self.metric = OutstandingTokens()


class GpuPriority(Balancer):
    """Priority tiers (``Backend.tier``; 0 = most preferred, e.g. GPU), each balanced
    by its own inner balancer.

    Traffic stays on the most preferred tier while its healthy, unsaturated capacity
    covers it, and spills to the next tier in proportion with Envoy's
    ``overprovisioning`` factor (1.4: spilling starts when less than ~71% of a tier's
    weight is available). A backend is saturated when its pending requests reach
    ``saturation × weight`` (``None``: only health and overload answers count).
    Requests whose cost exceeds ``pin_cost_above`` stay on the most preferred tier
    that has any usable backend — big batches belong on GPUs even when they are busy.
    """

    def __init__(
        self,
        inner: Callable[[], Balancer] = ShortestExpectedDelay,
        *,
        overprovisioning: float = 1.4,
        saturation: float | None = None,
        pin_cost_above: float | None = None,
    ) -> None:
        if overprovisioning < 1.0:
            raise ValueError(f"overprovisioning must be >= 1, got {overprovisioning!r}")
        if saturation is not None and saturation <= 0:
            raise ValueError(f"saturation must be > 0 or None, got {saturation!r}")
        self.inner = inner
        self.overprovisioning = overprovisioning
        self.saturation = saturation
        self.pin_cost_above = pin_cost_above
        self._tiers: dict[int, Balancer] = {}
        self.needs_oldest = self.tier_balancer(0).needs_oldest
        self._tier_population: dict[int, list[BackendState]] = {}
        self._cache_key: tuple[object, object, float] | None = None
        self._cache_plan: tuple[dict[int, list[BackendState]], list[int], list[float]] = (
            {},
            [],
            [],
        )

    def __repr__(self) -> str:
        return (
            f"GpuPriority(overprovisioning={self.overprovisioning:g}, "
            f"saturation={self.saturation}, pin_cost_above={self.pin_cost_above})"
        )

    def tier_balancer(self, tier: int) -> Balancer:
        """The inner balancer of one tier (created on first use)."""
        balancer = self._tiers.get(tier)
        if balancer is None:
            balancer = self._tiers[tier] = self.inner()
            balancer.use_locality(self.locality)
        return balancer

    def use_locality(self, locality: Locality | None) -> None:
        """Zone preference applies *within* a tier: each tier's balancer gets it, and
        the tier itself is chosen over every zone (a remote GPU beats a local CPU)."""
        self.locality = locality
        for balancer in self._tiers.values():
            balancer.use_locality(locality)

    def choose(
        self,
        candidates: Sequence[BackendState],
        *,
        cost: float,
        now: float,
        rng: random.Random,
        population: Sequence[BackendState],
    ) -> BackendState:
        return self.pick(candidates, cost=cost, now=now, rng=rng, population=population)

    def saturated(self, state: BackendState) -> bool:
        """Whether a backend counts as full for spill-over decisions."""
        return self.saturation is not None and state.pending >= self.saturation * state.weight

    def shares(
        self, candidates: Sequence[BackendState], population: Sequence[BackendState], now: float
    ) -> tuple[list[int], list[float]]:
        """Tiers present (sorted) and the share of traffic each should take."""
        total: dict[int, float] = {}
        for s in population:
            total[s.tier] = total.get(s.tier, 0.0) + s.weight
        available: dict[int, float] = dict.fromkeys(total, 0.0)
        for s in candidates:
            total.setdefault(s.tier, s.weight)
            if not self.saturated(s):
                available[s.tier] = available.get(s.tier, 0.0) + s.effective_weight(now)
        tiers = sorted(total)
        shares = strategies.tier_shares(
            [available.get(t, 0.0) for t in tiers], [total[t] for t in tiers], self.overprovisioning
        )
        return tiers, shares

    #: How long a computed split stays valid while membership and health are unchanged
    #: (slow start moves effective weights with time, so it cannot be cached forever).
    SHARES_TTL = 0.25

    def _plan(
        self, candidates: Sequence[BackendState], population: Sequence[BackendState], now: float
    ) -> tuple[dict[int, list[BackendState]], list[int], list[float]]:
        """Candidates grouped by tier, and each tier's share of traffic.

        The pool hands over the same list objects until membership or health changes,
        so without saturation (which moves with every request) the plan is reused and a
        pick stays O(1) in the number of backends.
        """
        key = self._cache_key
        if (
            self.saturation is None
            and key is not None
            and key[0] is candidates
            and key[1] is population
            and now - key[2] < self.SHARES_TTL
        ):
            return self._cache_plan
        by_tier: dict[int, list[BackendState]] = {}
        for s in candidates:
            by_tier.setdefault(s.tier, []).append(s)
        if self.locality is not None:
            tier_population: dict[int, list[BackendState]] = {}
            for s in population:
                tier_population.setdefault(s.tier, []).append(s)
            self._tier_population = tier_population
        tiers, shares = self.shares(candidates, population, now)
        plan = (by_tier, tiers, shares)
        self._cache_key = (candidates, population, now)
        self._cache_plan = plan
        return plan

    def pick(
        self,
        candidates: Sequence[BackendState],
        *,
        cost: float,
        now: float,
        rng: random.Random,
        population: Sequence[BackendState],
    ) -> BackendState:
        by_tier, tiers, shares = self._plan(candidates, population, now)
        if self.pin_cost_above is not None and cost > self.pin_cost_above:
            tier = min(by_tier)
        elif len(by_tier) == 1:
            tier = next(iter(by_tier))
        elif sum(shares) <= 0:  # everything saturated: least-bad is the preferred tier
            tier = min(by_tier)
        else:
            x = rng.random()
            tier = max(t for t, share in zip(tiers, shares, strict=True) if share > 0)
            for t, share in zip(tiers, shares, strict=True):
                if share <= 0:
                    continue
                if x < share:
                    tier = t
                    break
                x -= share
            if tier not in by_tier:
                tier = min(by_tier)
        inner = self.tier_balancer(tier)
        if self.locality is None:
            return inner.pick(by_tier[tier], cost=cost, now=now, rng=rng, population=population)
        return inner.choose(
            by_tier[tier],
            cost=cost,
            now=now,
            rng=rng,
            population=self._tier_population.get(tier, by_tier[tier]),
        )

    def observe(
        self,
        state: BackendState,
        latency: float,
        now: float,
        load_at_start: float = 1.0,
        cost: float = 1.0,
        hints: ServerHints | None = None,
    ) -> None:
        self.tier_balancer(state.tier).observe(state, latency, now, load_at_start, cost, hints)

    def score(self, backend: BackendView, now: float) -> float:
        return self.tier_balancer(backend.tier).score(backend, now)

    def estimate(self, state: BackendState, now: float) -> float | None:
        return self.tier_balancer(state.tier).estimate(state, now)

    def concurrency(self, state: BackendState) -> float | None:
        return self.tier_balancer(state.tier).concurrency(state)
