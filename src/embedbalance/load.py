"""Load metrics: turn a backend's live state into one comparable float.

A metric knows how to measure; it never decides who is picked (that is a strategy's
job) — the separation tower and Finagle draw. Lower is less loaded. Every metric
divides by the backend's effective weight (so a weight-4 GPU box at 4 pending looks
like a weight-1 pod at 1) and multiplies by the backend's failure penalty (so a
backend that fails in a millisecond never looks idle — the black-hole problem).

Each metric owns its per-backend state (tower's ``PeakEwma`` keeps its ``RttEstimate``
beside the endpoint): the shared :class:`~embedbalance._state.BackendState` holds only
generic facts (pending, outstanding cost, failure penalty, weight, admission time,
server hints) plus one slot, ``metric_state``, where the metric keeps its own record.
A new metric is one class; two metrics never fight over a field.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import attrs

from ._hints import ServerHints
from ._state import BackendState

__all__ = [
    "DEFAULT_FAILURE_DECAY",
    "DelayEstimate",
    "ExpectedDelay",
    "LoadMetric",
    "OutstandingTokens",
    "PeakEwmaLatency",
    "PendingRequests",
    "RttEstimate",
]

#: Time constant (seconds) of the failure penalty's decay.
DEFAULT_FAILURE_DECAY = 5.0


class LoadMetric(Protocol):
    """What a balancer needs from a metric."""

    def load(self, state: BackendState, now: float) -> float:
        """Current load of ``state``'s backend; lower is better."""
        ...

    def observe(
        self,
        state: BackendState,
        latency: float,
        now: float,
        load_at_start: float = 1.0,
        cost: float = 1.0,
        hints: ServerHints | None = None,
    ) -> None:
        """Feed one successful response's latency (seconds); ``load_at_start`` is the
        work in flight on the backend when the request was placed, its own included;
        ``cost`` the request's own; ``hints`` what the server said about its load."""
        ...

    def estimate(self, state: BackendState, now: float) -> float | None:
        """The metric's learned latency for one unit of work on this backend (seconds),
        or None when it learns nothing (for stats)."""
        ...


@attrs.frozen
class PendingRequests:
    """Requests in flight, plus the one about to be placed: ``(pending + 1) / weight``.

    The ``+ 1`` makes weights matter even when every backend is idle.
    """

    failure_decay: float = DEFAULT_FAILURE_DECAY

    def load(self, state: BackendState, now: float) -> float:
        # effective_weight() and penalty_factor() inlined for their common case: this
        # runs for every candidate of every pick.
        load = (state.pending + 1) / (
            state.weight
            if now - state.admitted_at >= state.slow_start.window
            else state.effective_weight(now)
        )
        if state.penalty > 0.0:
            load *= state.penalty_factor(now, self.failure_decay)
        return load

    def observe(
        self,
        state: BackendState,
        latency: float,
        now: float,
        load_at_start: float = 1.0,
        cost: float = 1.0,
        hints: ServerHints | None = None,
    ) -> None:
        return None

    def estimate(self, state: BackendState, now: float) -> float | None:
        return None


@attrs.frozen
class OutstandingTokens:
    """Work in flight, measured in request cost (tokens, say): ``(outstanding + 1) / weight``.

    Right when requests vary a lot in size (one 512-text batch is not one 1-text
    request); callers pass each request's cost when they acquire.
    """

    failure_decay: float = DEFAULT_FAILURE_DECAY

    def load(self, state: BackendState, now: float) -> float:
        load = (state.outstanding_cost + 1.0) / (
            state.weight
            if now - state.admitted_at >= state.slow_start.window
            else state.effective_weight(now)
        )
        if state.penalty > 0.0:
            load *= state.penalty_factor(now, self.failure_decay)
        return load

    def observe(
        self,
        state: BackendState,
        latency: float,
        now: float,
        load_at_start: float = 1.0,
        cost: float = 1.0,
        hints: ServerHints | None = None,
    ) -> None:
        return None

    def estimate(self, state: BackendState, now: float) -> float | None:
        return None


@attrs.define(slots=True, eq=False)
class RttEstimate:
    """:class:`PeakEwmaLatency`'s record of one backend: the estimate (seconds), when it
    was last moved, and how many samples it has seen."""

    rtt: float = 0.0
    stamp: float = 0.0
    samples: int = 0


def _rtt(state: BackendState) -> RttEstimate:
    est = state.metric_state
    if type(est) is not RttEstimate:
        est = state.metric_state = RttEstimate()
    return est


@attrs.frozen
class PeakEwmaLatency:
    """Peak-EWMA latency × (pending + 1), with Finagle's and linkerd's semantics.

    - A sample above the estimate replaces it at once (peak-sensitive: a backend that
      slows down is avoided immediately).
    - Otherwise the estimate moves toward the sample with weight ``exp(-Δt/τ)`` on the
      old value, Δt being the time since the previous update.
    - Reading the load decays the estimate toward zero the same way (an observation of
      0): a backend that has not been measured for a while looks cheaper and gets
      probed again, so one slow spell is not held against it forever.
    - A backend with no samples starts at ``default_rtt``, so it neither wins every
      pick (an estimate of 0) nor starves.
    - Recent failures (which carry no latency sample) floor the estimate at
      ``default_rtt × recent failures`` before the failure penalty multiplies it, so a
      backend that fails instantly never looks fast.

    Its per-backend record is an :class:`RttEstimate` in ``state.metric_state``.

    Where it misleads: latency is a proxy for load only if requests cost about the
    same; mixed huge and tiny batches make it noisy (use
    :class:`~embedbalance.LeastOutstandingTokens` there).
    """

    tau: float = 10.0
    default_rtt: float = 0.05
    failure_decay: float = DEFAULT_FAILURE_DECAY

    def __attrs_post_init__(self) -> None:
        if not (self.tau > 0 and math.isfinite(self.tau)):
            raise ValueError(f"tau must be a finite number > 0, got {self.tau!r}")
        if not (self.default_rtt > 0 and math.isfinite(self.default_rtt)):
            raise ValueError(f"default_rtt must be a finite number > 0, got {self.default_rtt!r}")

    def _seed(self, est: RttEstimate, now: float) -> None:
        if est.samples == 0 and est.rtt == 0.0:
            est.rtt = self.default_rtt
            est.stamp = now

    def decayed(self, state: BackendState, now: float) -> float:
        """The estimate decayed to ``now`` (mutates the record, as Finagle does)."""
        est = _rtt(state)
        self._seed(est, now)
        self._update(est, 0.0, now)
        return est.rtt

    def estimate(self, state: BackendState, now: float) -> float | None:
        est = state.metric_state
        if type(est) is not RttEstimate or est.samples == 0:
            return None
        return est.rtt

    def _update(self, est: RttEstimate, sample: float, now: float) -> None:
        if sample > est.rtt:
            est.rtt = sample
        else:
            elapsed = now - est.stamp
            if elapsed > 0:
                w = math.exp(-elapsed / self.tau)
                est.rtt = est.rtt * w + sample * (1.0 - w)
        if now > est.stamp:
            est.stamp = now

    def load(self, state: BackendState, now: float) -> float:
        # This runs twice per pick; it is decayed(), penalty_factor() and
        # effective_weight() inlined (the tests pin it against those).
        est = state.metric_state
        if type(est) is not RttEstimate:
            est = state.metric_state = RttEstimate()
        rtt = est.rtt
        if rtt == 0.0 and est.samples == 0:
            rtt = est.rtt = self.default_rtt
            est.stamp = now
        elif now > est.stamp:
            rtt = est.rtt = rtt * math.exp((est.stamp - now) / self.tau)
            est.stamp = now
        if state.penalty > 0.0:
            penalty = state.penalty_factor(now, self.failure_decay)
            # Failures feed no latency sample, so a backend that only fails sees its
            # estimate decay toward 0, and a multiplier on ~0 is still ~0: it would end
            # up winning every pick. Each recent failure therefore counts as at least
            # ``default_rtt`` of latency (the floor decays with the penalty).
            rtt = max(rtt, self.default_rtt * (penalty - 1.0)) * penalty
        if now - state.admitted_at < state.slow_start.window:
            return rtt * (state.pending + 1) / state.effective_weight(now)
        return rtt * (state.pending + 1) / state.weight

    def observe(
        self,
        state: BackendState,
        latency: float,
        now: float,
        load_at_start: float = 1.0,
        cost: float = 1.0,
        hints: ServerHints | None = None,
    ) -> None:
        # _seed() then _update(), inlined: this runs once per successful request.
        est = state.metric_state
        if type(est) is not RttEstimate:
            est = state.metric_state = RttEstimate()
        sample = latency if latency > 0.0 else 0.0
        rtt = est.rtt
        if rtt == 0.0 and est.samples == 0:
            rtt = self.default_rtt
            est.stamp = now
        if sample > rtt:
            rtt = sample
        elif now > est.stamp:
            w = math.exp((est.stamp - now) / self.tau)
            rtt = rtt * w + sample * (1.0 - w)
        est.rtt = rtt
        if now > est.stamp:
            est.stamp = now
        est.samples += 1


@attrs.define(slots=True, eq=False)
class DelayEstimate:
    """:class:`ExpectedDelay`'s record of one backend.

    ``service``: seconds per unit of cost while the backend has a free slot (its base
    service time); ``slots``: its concurrency in units of cost — the knee past which
    requests queue; ``stamp``: when the last answer arrived; ``samples``: answers seen.
    """

    service: float = 0.0
    slots: float = 1.0
    stamp: float = 0.0
    samples: int = 0
    #: Mean absolute relative deviation of service samples: the backend's own noise,
    #: so a slow-by-chance answer is not read as a queue.
    spread: float = 0.0
    #: When the request started whose answer last showed a recovery (under half the
    #: estimate): slower answers to requests started before it describe the backend
    #: as it was, and are not learned from.
    recovered_from: float = -math.inf
    #: When the newest request whose answer has arrived was *placed*: how old the
    #: knowledge is. A slow answer arriving now describes the backend as it was when
    #: the request went out, so a backend back from a slow spell, still returning the
    #: slow requests it took during it, is not thereby known to be slow now.
    news: float = -math.inf
    #: A slow moving average of ``service``: what this backend is usually like, so a
    #: slow spell (``service`` far above it) is told from a backend that is simply slow.
    baseline: float = 0.0
    #: Whether ``slots`` was ever learned from queueing (an answer slowed by company,
    #: or a server saying it had a queue). Until then ``slots`` is only the most the
    #: backend was seen to hold — the first answer's company, often one request — and
    #: it is scored as at least the pool's typical knee (see :meth:`ExpectedDelay.delays`).
    knee_seen: bool = False
    #: When the request started whose answer was far slower than the estimate (over
    #: twice), with no answer to a later request back to normal since (-inf: none). One
    #: such answer is noise — a pause, a straggler — and moves the estimate as little as
    #: any slow one; a second while this is set confirms a slow spell.
    slow_news: float = -math.inf


#: The least a sample must exceed the service estimate by (relative) to count as
#: having queued; the margin also widens with the backend's own noise (``spread``).
QUEUE_MARGIN = 0.2
#: How many mean absolute deviations of a backend's service times count as noise.
NOISE_SPREADS = 2.5
#: The least cost learned from per unit: below it seconds per unit are meaningless
#: (and overflow), so such a request counts as one unit, as a cost of 0 does.
MIN_UNIT = 1e-6
#: Share of each answer's estimate that moves a backend's ``baseline``.
BASELINE_WEIGHT = 0.02
#: A backend whose estimate is within this factor of its own baseline is as it always
#: is: its stale estimate is re-tested this many times more slowly.
SETTLED = 4.0
#: Answers before a baseline is trusted: a first answer is often a cold start (the
#: connection, the model's first pass). Few, because a slow replica in a large pool
#: sees few requests, and until then it is probed at the fast rate (at 20, the scale
#: simulation's p99 at 100 backends rose from 1.09x to 1.16x the oracle's).
SETTLE_SAMPLES = 3
#: An estimate above a backend's own baseline by less than this factor scores as the
#: baseline: a slow answer or two (a GC pause, a scheduler hiccup) lifts a fast
#: estimate for a while, and identical backends would otherwise take turns being shunned.
STEADY_BAND = 1.5


def _steady(est: DelayEstimate) -> float:
    """The service time to score ``est`` by: its baseline while the estimate is above it
    by less than ``STEADY_BAND`` (noise, not a change), else the estimate."""
    service = est.service
    base = est.baseline
    if base < service <= base * STEADY_BAND:
        return base
    return service


def _news_age(state: BackendState, est: DelayEstimate, now: float) -> float:
    """How old the latest news of a backend is: since the newest request placed on it
    (its answer will be news) or, with none placed since, since the newest answered
    one was placed. Placements are tracked when the balancer asks for them
    (``needs_oldest``); without, work in flight means news is awaited (age 0)."""
    since = est.news
    queue = state.in_flight
    if queue:
        placed = queue[-1].started_at
        if placed > since:
            since = placed
    elif state.outstanding_cost > 0.0:
        return 0.0
    return now - since


@attrs.frozen
class ExpectedDelay:
    """How long a new request would take here, from a model of the backend with a knee.

    A batching server's latency is flat while it has a free slot and grows with the
    queue once its slots are full. The metric learns both numbers per backend from the
    answers it sees — no hand-set weights:

    - **service** ``s`` (seconds per unit of cost on a free slot) and **slots** ``K`` (the
      concurrency, in units of cost, past which latency grows). The expected delay of a
      request of cost ``c`` placed on a backend holding ``W`` units is
      ``s × c × max(1, (W + c) / K)``: its service time while ``W + c <= K``, and beyond
      the knee the queue adds in proportion (a saturated ``K``-slot server drains ``K``
      requests per service time).
    - **Learning from an answer** of latency ``y`` to a request placed when ``L`` units
      were in flight (its own included): when ``y`` is within the backend's noise of
      what a free slot gives (``s × c``; the margin is ``QUEUE_MARGIN`` or, for a noisy
      backend, ``NOISE_SPREADS`` mean deviations), it is a service sample, and if ``L``
      exceeded ``K`` the backend evidently held ``L`` without queueing, so ``K`` moves
      up toward ``L``. When it is slower and other work shared the backend, the excess
      is read as queueing: ``K`` moves toward ``L × s × c / y`` (the concurrency that
      explains it), and ``s`` moves only a little. Alone on the backend, a slow answer
      is a slow service time. Until queueing has been seen, ``K`` is only the most the
      backend was seen to hold, and scores as at least the pool's typical knee.
    - **Server hints win over guesses**: TEI's ``x-inference-time`` is the service time
      and ``x-queue-time`` the queueing, exactly; our worker's ``X-Queue-Depth`` of 0
      makes the answer a service sample (and ``X-In-Flight`` a lower bound of the knee);
      with a queue, ``X-In-Flight - X-Queue-Depth`` (what it serves at once while
      others wait) is the knee, and the answer is divided by the queueing those headers
      imply — not by as much as its slowness would take.
    - **One odd answer is noise**: outside a slow spell an answer over twice the
      estimate counts as twice it, one under half as half, at the ordinary weights; a
      second far-slow answer before a newer normal one confirms a spell. An estimate
      above the backend's own ``baseline`` by less than ``STEADY_BAND`` scores as the
      baseline. Identical backends thus stay in one another's tie band.
    - **Recovery asymmetry** (peak-EWMA's, mirrored): in a spell (the estimate over
      twice the baseline), an answer under half the estimate moves it by the share it
      improves on it (one good answer after a slow spell counts almost in full), a
      confirmed one over twice the estimate by half that; ordinary noise moves it by
      ``better`` (down) or ``worse`` (up). After such a recovery, slower answers to
      requests placed *before* the one that showed it are older news and are not
      learned from: a backend back from a slow spell still returns the slow requests it
      took during it, and they would undo the recovery.
    - **Stale knowledge is re-tested, not only decayed**: an estimate worse than the
      pool's typical one relaxes toward it with time constant ``retest``, so it is
      probed again now and then — sooner the older the news. The news is as old as
      the newest request placed there (each placement starts the relaxing over, so
      probes are spaced, however slow their answers), or the newest answered one's
      placement: a slow answer arriving now says how the backend was when its request
      went out, so the slow requests a recovered backend still returns from its slow
      spell do not keep it shunned. The first answer after ``Δt`` of silence
      replaces ``1 - exp(-Δt/retest)`` of the old estimate.
    - **Silence bounds the estimate from below**: a backend holding work that has not
      answered anything for ``t`` seconds is expected to take at least ``t`` — a hung
      backend stops looking cheap, while one with a rare straggler but other answers
      flowing does not.
    - **Unmeasured backends** start at the *prior* the balancer passes (the pool's
      typical service time and concurrency), else ``default_delay`` and one slot, and
      are probed a request at a time until they answer.
    - **Slow start ramps concurrency, not delay**: a newly admitted backend's slots are
      scaled by its slow-start factor, so while it has a free (ramped) slot its delay is
      its service time and it competes on equal terms (the balancer lets it take part
      in a pick with a probability equal to its ramp) — it gets a growing share even in
      an idle pool, where a delay divided by a small weight lost every tie.

    The idea is IPVS's "shortest expected delay" scheduler with learned service rates
    and a concurrency knee. Its per-backend record is a :class:`DelayEstimate` in
    ``state.metric_state``.
    """

    better: float = 0.2
    worse: float = 0.1
    retest: float = 0.25
    default_delay: float = 0.05
    failure_decay: float = DEFAULT_FAILURE_DECAY

    def __attrs_post_init__(self) -> None:
        for name in ("retest", "default_delay"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        for name in ("better", "worse"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ValueError(f"{name} must be > 0 and <= 1, got {value!r}")

    def _retest(self, est: DelayEstimate) -> float:
        """The relaxing time constant for ``est``: ``retest`` while the backend is in a
        spell (its estimate more than twice its own baseline) or too new to have a
        baseline — so that its recovery is found quickly — and ``SETTLED`` times longer
        for a backend that is slower than the pool but as it always is (a small CPU
        replica beside GPUs), whose probes would only confirm it and cost the tail."""
        if est.samples < SETTLE_SAMPLES or est.service > 2.0 * est.baseline:
            return self.retest
        return self.retest * SETTLED

    def _relaxed(
        self, state: BackendState, est: DelayEstimate, now: float, typical: float, service: float
    ) -> float:
        """``service`` (``est``'s, as scored), worse than ``typical``, relaxed toward it by
        the age of its news (unchanged while news is awaited)."""
        age = _news_age(state, est, now)
        if age <= 0.0:
            return service
        w = math.exp(-age / self._retest(est))
        return service * w + typical * (1.0 - w)

    def record(self, state: BackendState) -> DelayEstimate:
        """This metric's record of ``state``'s backend (created on first use)."""
        est = state.metric_state
        if type(est) is not DelayEstimate:
            est = state.metric_state = DelayEstimate()
        return est

    def _model(
        self, state: BackendState, now: float, cost: float, prior: tuple[float, float] | None
    ) -> tuple[float, float]:
        """``(service, slots)`` to score with (see :meth:`delay`)."""
        est = state.metric_state
        if type(est) is DelayEstimate and est.samples > 0:
            service, slots = _steady(est), est.slots
            if not est.knee_seen and prior is not None and slots < prior[1]:
                slots = prior[1]
            if prior is not None and service > prior[0]:
                service = self._relaxed(state, est, now, prior[0], service)
            if now - state.admitted_at < state.slow_start.window:
                slots *= state.effective_weight(now) / state.weight
        else:
            service = self.default_delay if prior is None else prior[0]
            slots = 1.0
        return service, (slots if slots > cost else cost)

    def assess(
        self,
        state: BackendState,
        now: float,
        cost: float = 1.0,
        prior: tuple[float, float] | None = None,
    ) -> tuple[float, float]:
        """``(expected delay, free room)``: :meth:`delay`, and the units of cost the
        backend can still take before it queues (0 when it is past its knee)."""
        _, slots = self._model(state, now, cost, prior)
        room = slots - state.outstanding_cost
        if room < 0.0:
            room = 0.0
        if state.penalty > 0.0:
            room /= state.penalty_factor(now, self.failure_decay)
        return self.delay(state, now, cost, prior), room

    def delay(
        self,
        state: BackendState,
        now: float,
        cost: float = 1.0,
        prior: tuple[float, float] | None = None,
    ) -> float:
        """Expected seconds until a request of ``cost`` placed now would be answered,
        scaled by weight and failure penalty like every metric here (:meth:`delays`
        of one backend)."""
        return self.delays((state,), now, cost, prior)[0]

    def delays(
        self,
        states: Sequence[BackendState],
        now: float,
        cost: float = 1.0,
        prior: tuple[float, float] | None = None,
    ) -> list[float]:
        """:meth:`delay` of each of ``states``, in order: a whole pick's scores in one
        call. The model is written out inline, but for the relaxing of a stale record
        (:meth:`_relaxed`, its one home): this runs for every candidate of every pick,
        and calls are most of what Python costs here."""
        typical = math.inf if prior is None else prior[0]
        out: list[float] = []
        append = out.append
        for state in states:
            est = state.metric_state
            probing = False
            if type(est) is DelayEstimate and est.samples:
                service = est.service
                base = est.baseline
                if base < service <= base * STEADY_BAND:
                    service = base  # _steady(), inlined
                slots = est.slots
                if not est.knee_seen and prior is not None and slots < prior[1]:
                    slots = prior[1]  # no queue seen yet: as the pool's typical
                if service > typical:
                    # Stale and worse than the pool: relax toward it, so that it is
                    # tried again now and then — the relaxing starts over at each
                    # request placed there — sooner the older the news.
                    relaxed = self._relaxed(state, est, now, typical, service)
                    probing = relaxed < service
                    service = relaxed
                if now - state.admitted_at < state.slow_start.window:
                    slots *= state.effective_weight(now) / state.weight
            else:
                # Never answered: its speed is the pool's typical one (or a guess), and
                # one request at a time probes it rather than a queue of them.
                service = self.default_delay if prior is None else typical
                slots = 1.0
            if slots < cost:
                slots = cost
            work = state.outstanding_cost + cost
            expected = service * cost
            if work > slots:
                expected *= work / slots
            if state.in_flight and (state.pending > 1 or (state.pending and not probing)):
                # Silence: how long it has held work without answering anything. A slow
                # backend being probed is expected to be silent a while: one probe out
                # does not bar the next (a probe that went out just before a recovery
                # can take a slow-spell time to answer), two do.
                since = state.oldest_started()
                if state.answered_at > since:
                    since = state.answered_at
                silence = now - since
                if silence > expected:
                    expected = silence
            if state.penalty > 0.0:
                penalty = state.penalty_factor(now, self.failure_decay)
                # A failure carries no latency sample: each recent one counts as at
                # least one typical request's worth of work (the pool's when known — a
                # fixed guess would dwarf a fast pool's units and shun a recovered
                # backend).
                floor = self.default_delay if prior is None else typical * (cost + 1.0)
                expected = max(expected, floor * (penalty - 1.0)) * penalty
            append(expected / state.weight)
        return out

    def load(self, state: BackendState, now: float) -> float:
        return self.delay(state, now, 1.0)

    def relaxed_by(
        self, state: BackendState, now: float, prior: tuple[float, float] | None
    ) -> float:
        """The factor by which staleness lowers ``state``'s service estimate now (1:
        not at all — fresh, no worse than ``prior``'s typical, or unmeasured)."""
        est = state.metric_state
        if prior is None or type(est) is not DelayEstimate or not est.samples:
            return 1.0
        service = _steady(est)
        if service <= prior[0]:
            return 1.0
        return service / self._relaxed(state, est, now, prior[0], service)

    def estimate(self, state: BackendState, now: float) -> float | None:
        est = state.metric_state
        if type(est) is not DelayEstimate or est.samples == 0:
            return None
        return est.service

    def concurrency(self, state: BackendState) -> float | None:
        """The learned knee (units of cost), or None before the first answer."""
        est = state.metric_state
        if type(est) is not DelayEstimate or est.samples == 0:
            return None
        return est.slots

    def observe(
        self,
        state: BackendState,
        latency: float,
        now: float,
        load_at_start: float = 1.0,
        cost: float = 1.0,
        hints: ServerHints | None = None,
    ) -> None:
        est = state.metric_state
        if type(est) is not DelayEstimate:
            est = state.metric_state = DelayEstimate()
        # A cost of 0 counts as one unit; so does a vanishing one (a denormal cost made
        # a service time of 1e308 seconds per unit, and every score inf or NaN).
        unit = cost if cost >= MIN_UNIT else 1.0
        y = latency if latency > 0.0 else 0.0
        work = load_at_start if load_at_start > unit else unit
        sample = y / unit  # seconds per unit of cost, queueing included
        queue_factor: float | None = None  # y / service time, when a hint says it
        if hints is not None:
            if hints.inference_time is not None:
                run = hints.inference_time
                waited = hints.queue_time or 0.0
                if run > 0.0:
                    sample = run / unit
                    queue_factor = (run + waited) / run
            elif hints.queue_depth is not None and hints.queue_depth <= 0.0:
                queue_factor = 1.0  # the server had no queue: this was a service time
            elif hints.queue_depth is not None and hints.in_flight is not None:
                # A queue, and how many the server serves at once: the request waited
                # about as its company overfilled those. Read from the hint, not from
                # how slow the answer was: reading any slowness as queueing up to a
                # cap leaves only the answers slower than the cap to move the estimate
                # — a ratchet that lifted a fast backend's estimate 4x under a queue,
                # and hid a backend 8x slower in a spell.
                serving = (hints.in_flight - hints.queue_depth) * unit
                if serving >= unit:
                    held = hints.in_flight * unit
                    if work > held:
                        held = work
                    queue_factor = held / serving
                    sample /= queue_factor
        if est.samples == 0:
            # One point cannot split speed from queueing: take it as a service time
            # at a concurrency of everything in flight (which reproduces it exactly);
            # later answers below and above the knee pull the two apart.
            est.service = sample
            est.slots = work
            if queue_factor is not None and queue_factor > 1.0 + QUEUE_MARGIN:
                est.slots = max(unit, work / queue_factor)
                est.knee_seen = True
            if hints is not None and hints.in_flight is not None:
                serving = hints.in_flight - (hints.queue_depth or 0.0)
                if hints.queue_depth:
                    if serving >= 1.0:
                        est.slots = serving * unit
                        est.knee_seen = True
                elif serving * unit > est.slots:
                    est.slots = serving * unit  # no queue: it serves all it holds
            est.stamp = now
            est.news = now - y
            est.baseline = est.service
            est.samples = 1
            return
        service, slots = est.service, est.slots
        ratio = sample / service if service > 0.0 else 1.0
        started = now - y
        if ratio > 1.0 and started < est.recovered_from:
            # Older news: this request was placed before one whose answer showed the
            # backend had recovered (after a slow spell, its slow answers keep arriving
            # for a while and would undo the recovery).
            return
        age = now - est.stamp
        stale = 1.0 - math.exp(-age / self.retest) if age > 0.0 else 0.0
        margin = NOISE_SPREADS * est.spread
        if margin < QUEUE_MARGIN:
            margin = QUEUE_MARGIN
        elif margin > 0.8:
            margin = 0.8
        clear = True  # whether the sample is unambiguous evidence of the service time
        if queue_factor is None:
            ratio = sample / service if service > 0.0 else 1.0
            if work <= unit or ratio <= 1.0 + margin:
                # Alone on the backend a slow answer is a slow service time; with
                # company, an answer within the noise shows no queue.
                queue_factor = 1.0
            else:
                # Slower than a free slot gives, with company: read it as queueing
                # (at most as much as serving everything in flight one by one).
                queue_factor = min(ratio, work / unit)
                sample /= queue_factor
                clear = False
        if clear and service > 0.0 and work <= slots:
            # Noise is measured below the knee only (and the margin is capped): past
            # it, queueing would pass for noise and widen the margin that hides it.
            deviation = abs(sample / service - 1.0)
            est.spread += ((deviation if deviation < 1.0 else 1.0) - est.spread) * 0.05
        # Recovery asymmetry: in a slow spell, a sample far better than the estimate
        # (under half of it) moves it by the share it improves on it — one good answer
        # after a slow spell counts almost in full; a far worse one (over twice), once
        # a second confirms it, by half that. Ordinary noise, and luck either way
        # outside a spell (clipped to half or twice the estimate), moves it by
        # ``better`` or ``worse``.
        ratio = sample / service if service > 0.0 else 1.0
        if ratio <= 2.0:
            if clear and started > est.slow_news:
                # Newer news, back to normal (not an answer read as queueing: that
                # says nothing of the service time).
                est.slow_news = -math.inf
            if ratio >= 1.0:
                w = self.worse
            elif ratio >= 0.5:
                w = self.better
            elif est.samples < SETTLE_SAMPLES or service > 2.0 * est.baseline:
                # A recovery: from a slow spell (or a cold first answer).
                w = 1.0 - ratio
                if started > est.recovered_from:
                    est.recovered_from = started
            else:
                # Outside a spell a far faster answer is luck, and counts as half the
                # estimate at the ordinary weight: taken in full, it made its backend
                # the best by a third, and the tie band, measured from the best, shut
                # out backends that were as fast.
                sample = 0.5 * service
                w = self.better
        elif est.slow_news == -math.inf and est.service <= 2.0 * est.baseline:
            # The first far-slow answer: as much as twice the estimate, as ordinary
            # noise. A pause or a straggler would otherwise lift a fast backend's
            # estimate by half or more and shun it until the estimate relaxed.
            est.slow_news = started
            sample = 2.0 * service
            w = self.worse
        else:
            w = 0.5 * (1.0 - 1.0 / ratio)
        if not clear:
            w *= 0.5
        if stale > w:
            w = stale
        est.service = service + (sample - service) * w
        # The knee.
        if hints is not None and hints.in_flight is not None and hints.queue_depth:
            serving = hints.in_flight - hints.queue_depth
            if serving >= 1.0:
                est.slots = slots + (serving * unit - slots) * 0.5
                est.knee_seen = True
        elif queue_factor <= 1.0 + margin:
            held = work
            if hints is not None and hints.in_flight is not None and hints.in_flight * unit > held:
                held = hints.in_flight * unit  # no queue at the server: it serves them all
            if held > slots:
                # It held more than we thought without queueing. The tolerance lets
                # picks go a little past a backend's knee, so a knee learned too low
                # (during a bad spell, say) is tested and grows back this way.
                est.slots = slots + (held - slots) * 0.5
        else:
            target = work / queue_factor
            if target < unit:
                target = unit
            est.slots = slots + (target - slots) * 0.25
            est.knee_seen = True
        if now > est.stamp:
            est.stamp = now
        if started > est.news:
            est.news = started
        # In a spell (over twice the baseline) a quarter as fast: a spell is not what
        # the backend is usually like, and a baseline it lifted would make the
        # recovered backend look "as slow as it always is" and be re-tested slowly.
        shift = (est.service - est.baseline) * BASELINE_WEIGHT
        est.baseline += shift * 0.25 if est.service > 2.0 * est.baseline else shift
        est.samples += 1
