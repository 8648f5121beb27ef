"""The one retry / hedge / deadline decision, shared by both transports.

Why a separate, I/O-free object: the sync and async twins used to spell these rules
out twice and drifted (a hedge that waited out its delay after a fast failure in one,
a per-phase cap where the other had a whole-attempt deadline). Here every rule is
written once; a twin only waits, sends and reads (stamina's attempt iterator and
urllib3's ``Retry.increment`` are the models). A request's life:

.. code-block:: python

    flow = policy.begin(cost, resendable)
    while (step := flow.next_step()) is not None:    # a lease, its timeout, a hedge delay
        ...send step.lease's attempt; maybe flow.hedge_lease() after step.hedge_after...
        flow.record(result)                           # per attempt that ended
    return flow.finish()                              # the response, or raises

Nothing here reads a clock of its own for waiting: deadlines are computed from the
``wall`` clock the twins also wait with (real time), while leases keep the pool's
injectable clock for latency bookkeeping.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

import attrs

from . import _forksafe
from .exceptions import AllAttemptsFailed, Attempt, DeadlineExceeded, NoBackendAvailable
from .pool import BackendPool, Lease, Outcome
from .retry import Hedge, LatencyWindow, Retry, RetryBudget, RetryBudgetPolicy

__all__ = ["AttemptPolicy", "AttemptResult", "Flow", "Step"]

log = logging.getLogger("embedbalance.transport")


@attrs.define(eq=False)
class AttemptResult:
    """How one attempt ended, as the I/O edge saw it.

    ``response`` is opaque here (an ``httpx.Response`` in the transports); ``answered``
    says whether there is one. ``retryable``: worth another backend by the status or
    error alone; ``sent``: the request may have reached the server (a connect error was
    not sent, and so may be resent even when it is not idempotent).
    """

    lease: Lease
    outcome: Outcome
    description: str
    response: Any = None
    error: BaseException | None = None
    retryable: bool = False
    sent: bool = True

    @property
    def answered(self) -> bool:
        return self.response is not None

    @property
    def final(self) -> bool:
        """A result to hand back as it is: a success, or an answer not worth retrying."""
        return self.outcome is Outcome.SUCCESS or (self.answered and not self.retryable)


#: Hedge checks that find no free slot (a quarter of the hedge delay apart) before a
#: hedge may take a queue place instead, when the first copy's backend has answered
#: nothing since it was sent: two more hedge delays.
HEDGE_PATIENCE = 8


@attrs.frozen
class Step:
    """One attempt to start now: where (``lease``), for how long at most (``timeout``,
    seconds of real time, ``None`` for no limit) and after how long a hedge copy may be
    sent (``hedge_after``; ``None``: not hedged)."""

    lease: Lease
    number: int
    timeout: float | None
    hedge_after: float | None


@attrs.define(eq=False)
class AttemptPolicy:
    """The I/O-free half of a transport: pool, retry and hedge policies, their budgets,
    deadlines and counters. One per transport; thread-safe."""

    pool: BackendPool
    retry: Retry
    hedge: Hedge | None
    attempt_timeout: float | Literal["auto"] | None
    total_timeout: float | None
    #: With ``attempt_timeout="auto"``: an attempt may take this many times its backend's
    #: recent p99 (the pool's, before the backend has one).
    auto_multiple: float = 4.0
    #: ...but never less than this (seconds): a scheduling hiccup on a busy client must
    #: not abandon a healthy backend whose answers usually take microseconds.
    auto_floor: float = 0.1
    on_retry: Callable[[], None] = lambda: None
    on_hedge: Callable[[], None] = lambda: None
    on_budget_exhausted: Callable[[], None] = lambda: None
    wall: Callable[[], float] = time.monotonic
    budget: RetryBudget = attrs.field(init=False)
    hedge_budget: RetryBudget = attrs.field(init=False)
    latencies: LatencyWindow = attrs.field(init=False, factory=LatencyWindow)
    requests: int = attrs.field(init=False, default=0)
    retries: int = attrs.field(init=False, default=0)
    hedges: int = attrs.field(init=False, default=0)
    #: Hedges not sent because no other backend had a free slot.
    hedges_declined: int = attrs.field(init=False, default=0)
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock)

    def __attrs_post_init__(self) -> None:
        for name in ("attempt_timeout", "total_timeout"):
            value = getattr(self, name)
            if value is None or (name == "attempt_timeout" and value == "auto"):
                continue
            if isinstance(value, str) or not (value > 0 and math.isfinite(value)):
                allowed = "a finite number > 0"
                if name == "attempt_timeout":
                    allowed += ', "auto"'
                raise ValueError(f"{name} must be {allowed} or None, got {value!r}")
        clock = self.pool.clock
        self.budget = RetryBudget(self.retry.budget, clock)
        _forksafe.register(self.budget)
        _forksafe.register(self.latencies)
        _forksafe.register(self)
        hedge = self.hedge
        self.hedge_budget = RetryBudget(
            RetryBudgetPolicy(ratio=hedge.budget_ratio, window=10.0, min_per_second=1.0)
            if hedge is not None
            else RetryBudgetPolicy(),
            clock,
        )
        _forksafe.register(self.hedge_budget)

    def begin(
        self,
        cost: float,
        resendable: bool,
        total_timeout: float | None = None,
        model: str | None = None,
        bulk: bool = False,
    ) -> Flow:
        """Start one request's flow; ``total_timeout`` overrides the transport's;
        ``model`` limits it to backends serving that model; ``bulk``: a bulk-priority
        request (its overloads keep only bulk requests away)."""
        with self._lock:
            self.requests += 1
        self.budget.deposit()
        if self.hedge is not None:
            self.hedge_budget.deposit()
        total = self.total_timeout if total_timeout is None else total_timeout
        if total is not None and not (total > 0 and math.isfinite(total)):
            raise ValueError(f"total timeout must be a finite number > 0, got {total!r}")
        now = self.wall()
        return Flow(
            self,
            cost,
            resendable,
            now + total if total is not None else math.inf,
            model=model,
            bulk=bulk,
        )

    def hedge_delay(self, lease: Lease | None = None) -> float | None:
        """Seconds to wait before hedging an attempt on ``lease``'s backend, or None when
        not hedging now: a multiple of that backend's recent percentile (the transport's
        while it has too few answers, or without ``per_backend``). A probe (see
        :attr:`Lease.probe`) is hedged after the transport's percentile itself: it
        re-tests a backend thought slow, so it is late by the pool's measure, not by the
        spell it tests, and a copy that goes early keeps the re-testing off the tail."""
        return self.hedge_delays(lease)[0]

    def hedge_delays(self, lease: Lease | None = None) -> tuple[float | None, float | None]:
        """:meth:`hedge_delay`, and the earlier point from which the attempt may be
        hedged if its backend has gone quiet (see :meth:`~embedbalance.BackendPool.quiet`):
        the backend's own recent percentile, without the multiple. The second is None
        where there is no earlier point (a probe, the transport's window standing in, a
        multiple of 1 or less). One percentile lookup for both: this runs per request."""
        hedge = self.hedge
        if hedge is None:
            return None, None
        p = None
        probe = lease is not None and lease.probe
        if hedge.per_backend and lease is not None and not probe:
            p = self.pool.recent_latency(lease.backend, hedge.percentile, hedge.min_samples)
        if p is not None:
            full = max(p * hedge.multiple, hedge.min_delay)
            early = max(p, hedge.min_delay)
            return full, (early if early < full else None)
        if len(self.latencies) < hedge.min_samples:
            return None, None
        p = self.latencies.percentile(hedge.percentile)
        if p is None:
            return None, None
        return max(p if probe else p * hedge.multiple, hedge.min_delay), None

    def _allow_retry(self) -> bool:
        if self.budget.try_withdraw():
            with self._lock:
                self.retries += 1
            self.on_retry()
            return True
        self.on_budget_exhausted()
        return False

    def _hedge_lease(
        self,
        cost: float,
        exclude: set[str],
        model: str | None,
        bulk: bool,
        queue: bool,
        near: Lease | None = None,
    ) -> tuple[Lease | None, bool]:
        """A lease for a hedge copy, and whether it was refused for want of a free slot
        (not of budget): within the hedge budget, and only onto a free slot in the zone
        of ``near`` (the attempt it copies, where the pool has a zone preference) unless
        ``queue`` (a copy queued behind others adds load to a busy pool and raises
        everyone's median for one request's tail; a hung replica's copy may cross
        zones); the budget is refunded when there is no slot."""
        if not self.hedge_budget.try_withdraw():
            return None, False
        if queue:
            try:
                lease: Lease | None = self.pool.acquire(cost, exclude, model=model, bulk=bulk)
            except NoBackendAvailable:
                lease = None
        else:
            lease = self.pool.acquire_spare(cost, exclude, model=model, bulk=bulk, near=near)
        with self._lock:
            if lease is None:
                self.hedges_declined += 1
            else:
                self.hedges += 1
        if lease is None:
            self.hedge_budget.refund()
            return None, True
        self.on_hedge()
        return lease, False


@attrs.define(eq=False)
class Flow:
    """One request's attempts: which backend next, when to hedge, when to stop, and
    what the caller gets. Used by one task or thread at a time."""

    policy: AttemptPolicy
    cost: float
    resendable: bool
    deadline: float
    model: str | None = None
    bulk: bool = False
    exclude: set[str] = attrs.Factory(set)
    attempts: list[Attempt] = attrs.Factory(list)
    results: list[AttemptResult] = attrs.Factory(list)
    _number: int = 0
    _final: AttemptResult | None = None
    _why: str = "all attempts failed"
    _stopped: bool = False
    _hedges: int = 0
    _hedge_waits: bool = False
    _declines: int = 0
    _current: Lease | None = None
    #: The early (quiet-backend) hedge point of the step in flight, when it has one,
    #: and when its full hedge delay ends (``policy.wall()`` time).
    _quiet: float | None = None
    _full: float = math.inf
    _full_at: float = math.inf
    _early: bool = False

    def _remaining(self) -> float | None:
        if self.deadline == math.inf:
            return None
        return self.deadline - self.policy.wall()

    def _attempt_timeout(self, lease: Lease | None = None) -> float | None:
        """This attempt's deadline: the smaller of the per-attempt limit and what is
        left of the request's; ``"auto"`` asks the pool for a multiple of what the
        chosen backend has shown (its recent p99)."""
        remaining = self._remaining()
        per_attempt = self.policy.attempt_timeout
        if per_attempt == "auto":
            if lease is None:
                return remaining
            deadline = self.policy.pool.attempt_deadline(
                lease.backend, multiple=self.policy.auto_multiple, ceiling=remaining
            )
            if deadline is None or deadline >= self.policy.auto_floor:
                return deadline
            return (
                self.policy.auto_floor
                if remaining is None
                else min(self.policy.auto_floor, remaining)
            )
        if remaining is None:
            return per_attempt
        return remaining if per_attempt is None else min(per_attempt, remaining)

    def next_step(self) -> Step | None:
        """The next attempt to make, or ``None`` when the request is done."""
        if self._stopped or self._final is not None:
            return None
        n = self._number
        if n:
            last = self.results[-1] if self.results else None
            if last is None or not self._may_resend(last):
                self._stop()
                return None
            if n >= self.policy.retry.attempts:
                self._stop("all attempts failed")
                return None
        timeout = self._attempt_timeout()
        if timeout is not None and timeout <= 0:
            self._stop("deadline exceeded")
            return None
        if n and not self.policy._allow_retry():
            self._stop("retry budget exhausted")
            return None
        try:
            lease = self.policy.pool.acquire(
                self.cost, self.exclude, model=self.model, bulk=self.bulk
            )
        except NoBackendAvailable:
            if not self.attempts:
                raise
            self._stop("no other backend to try")
            return None
        lease.attempt = len(self.exclude)
        self.exclude.add(lease.backend.url)
        self._number = n + 1
        self._current = lease
        if self.policy.attempt_timeout == "auto":
            timeout = self._attempt_timeout(lease)
        if n:
            log.info(
                "retrying on %s (attempt %d of %d; previous: %s)",
                lease.backend.url,
                n + 1,
                self.policy.retry.attempts,
                self.attempts[-1],
            )
        # A lone backend has no one to take a copy: no race, the direct path.
        hedge_after, quiet = (
            self.policy.hedge_delays(lease)
            if n == 0 and self.resendable and lease.choices > 1
            else (None, None)
        )
        if hedge_after is not None and timeout is not None and hedge_after >= timeout:
            hedge_after = None
        self._quiet = None
        if hedge_after is not None and quiet is not None:
            # A hung backend shows before the hedge delay: it stops answering while it
            # holds work. From the backend's own percentile on, the step is looked at
            # again for that (see hedge_lease); the full delay still applies otherwise.
            self._quiet, self._full = quiet, hedge_after
            self._full_at = self.policy.wall() + hedge_after
            hedge_after = quiet
        return Step(lease, n + 1, timeout, hedge_after)

    def hedge_lease(self) -> Lease | None:
        """A second backend for the step in flight, or None (no budget, no free slot
        anywhere else, or not yet: before the full hedge delay only a copy whose
        backend has gone quiet is hedged)."""
        self._hedge_waits = False
        if not self.resendable or self._final is not None:
            return None
        current = self._current
        # Before the full hedge delay, only a quiet backend is hedged (it holds other
        # work and has answered nothing for as long as this copy's whole usual time):
        # a hung one, whose copies would otherwise wait out the whole delay. Into a
        # free slot, as any hedge: an 8x-slow backend at high load looks as quiet, and
        # queued copies for it raised a busy pool's median by a tenth (degrade85).
        quiet = (
            self._quiet is not None
            and current is not None
            and self.policy.pool.quiet(current, self._quiet)
        )
        if self._quiet is not None and not quiet and self.policy.wall() < self._full_at:
            self._hedge_waits = True
            self._early = True
            return None
        self._early = False
        # After waiting two more hedge delays for a free slot, a first copy whose
        # backend has answered nothing at all since it was sent is stuck on a hung
        # backend: take a queue place. (A backend that is only slow still answers its
        # other requests; queueing hedges for those kept a busy pool congested.)
        queue = (
            self._declines >= HEDGE_PATIENCE
            and current is not None
            and self.policy.pool.silent_since(current)
        )
        lease, no_slot = self.policy._hedge_lease(
            self.cost, self.exclude, self.model, self.bulk, queue, current
        )
        if lease is None:
            # No free slot elsewhere (not the budget): look again a little later.
            self._hedge_waits = no_slot
            self._declines += no_slot
            return None
        self._hedges += 1
        lease.attempt = len(self.exclude)
        lease.hedge = True
        self.exclude.add(lease.backend.url)
        log.debug("hedging on %s", lease.backend.url)
        return lease

    def next_hedge_check(self, now: float, step: Step) -> float:
        """When to try a hedge again after :meth:`hedge_lease` (``math.inf``: never):
        a copy that found no free slot looks again after a quarter of the hedge delay,
        so a request stuck on a hung backend is still rescued once a slot frees up."""
        if not self._hedge_waits or self._hedges or step.hedge_after is None:
            return math.inf
        if self._early:  # before the full delay: look for quiet again, or at the delay
            return min(now + max(step.hedge_after / 4.0, 0.001), self._full_at)
        full = step.hedge_after if self._quiet is None else self._full
        return now + max(full / 4.0, 0.001)

    @property
    def settled(self) -> bool:
        """Whether an answer settled the request (copies still running were outrun)."""
        return self._final is not None

    def record(self, result: AttemptResult) -> bool:
        """Note how one attempt ended; True when it settles the request (stop waiting
        for any other copy in flight)."""
        self.results.append(result)
        if result.final:
            if self._final is None:
                self._final = result
            return True
        self.attempts.append(Attempt(result.lease.backend.url, result.description))
        return False

    def _may_resend(self, result: AttemptResult) -> bool:
        return result.retryable and (self.resendable or not result.sent)

    def _stop(self, why: str | None = None) -> None:
        if why is not None:
            self._why = why
        self._stopped = True
        return None

    def finish(self) -> Any:
        """The response to hand back, or raise.

        A settled answer is returned; otherwise the last attempt's answer when it had
        one (a 503 after every retry comes back as the 503, as from a proxy); otherwise
        :class:`~embedbalance.AllAttemptsFailed` (or its timeout form
        :class:`~embedbalance.DeadlineExceeded`) from the last error.
        """
        if self._final is not None:
            return self._final.response
        answered = [r for r in self.results if r.answered]
        if answered:
            return answered[-1].response
        last = self.results[-1] if self.results else None
        error_type = DeadlineExceeded if self._why == "deadline exceeded" else AllAttemptsFailed
        error = error_type(self.attempts, why=self._why)
        raise error from (last.error if last is not None else None)
