"""Load metrics: turn a backend's live state into one comparable float.

A metric knows how to measure; it never decides who is picked (that is a strategy's
job) — the separation tower and Finagle draw. Lower is less loaded. Every metric
divides by the backend's effective weight (so a weight-4 GPU box at 4 pending looks
like a weight-1 pod at 1) and multiplies by the backend's failure penalty (so a
backend that fails in a millisecond never looks idle — the black-hole problem).
"""

from __future__ import annotations

import math
from typing import Protocol

import attrs

from ._state import BackendState

__all__ = [
    "DEFAULT_FAILURE_DECAY",
    "ExpectedDelay",
    "LoadMetric",
    "OutstandingTokens",
    "PeakEwmaLatency",
    "PendingRequests",
]

#: How much more a never-measured backend costs per request it already holds.
UNMEASURED_BUSY_FACTOR = 4.0

#: Time constant (seconds) of the failure penalty's decay.
DEFAULT_FAILURE_DECAY = 5.0


class LoadMetric(Protocol):
    """What a balancer needs from a metric."""

    def load(self, state: BackendState, now: float) -> float:
        """Current load of ``state``'s backend; lower is better."""
        ...

    def observe(
        self, state: BackendState, latency: float, now: float, load_at_start: float = 1.0
    ) -> None:
        """Feed one successful response's latency (seconds); ``load_at_start`` is the
        work in flight on the backend when the request was placed, its own included."""
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
        self, state: BackendState, latency: float, now: float, load_at_start: float = 1.0
    ) -> None:
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
        self, state: BackendState, latency: float, now: float, load_at_start: float = 1.0
    ) -> None:
        return None


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

    def _seed(self, state: BackendState, now: float) -> None:
        if state.rtt_samples == 0 and state.rtt == 0.0:
            state.rtt = self.default_rtt
            state.rtt_stamp = now

    def estimate(self, state: BackendState, now: float) -> float:
        """The estimate decayed to ``now`` (mutates the state, as Finagle does)."""
        self._seed(state, now)
        self._update(state, 0.0, now)
        return state.rtt

    def _update(self, state: BackendState, sample: float, now: float) -> None:
        if sample > state.rtt:
            state.rtt = sample
        else:
            elapsed = now - state.rtt_stamp
            if elapsed > 0:
                w = math.exp(-elapsed / self.tau)
                state.rtt = state.rtt * w + sample * (1.0 - w)
        if now > state.rtt_stamp:
            state.rtt_stamp = now

    def load(self, state: BackendState, now: float) -> float:
        # This runs twice per pick; it is estimate(), penalty_factor() and
        # effective_weight() inlined (the tests pin it against those).
        rtt = state.rtt
        if rtt == 0.0 and state.rtt_samples == 0:
            rtt = state.rtt = self.default_rtt
            state.rtt_stamp = now
        elif now > state.rtt_stamp:
            rtt = state.rtt = rtt * math.exp((state.rtt_stamp - now) / self.tau)
            state.rtt_stamp = now
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
        self, state: BackendState, latency: float, now: float, load_at_start: float = 1.0
    ) -> None:
        # _seed() then _update(), inlined: this runs once per successful request.
        sample = latency if latency > 0.0 else 0.0
        rtt = state.rtt
        if rtt == 0.0 and state.rtt_samples == 0:
            rtt = self.default_rtt
            state.rtt_stamp = now
        if sample > rtt:
            rtt = sample
        elif now > state.rtt_stamp:
            w = math.exp((state.rtt_stamp - now) / self.tau)
            rtt = rtt * w + sample * (1.0 - w)
        state.rtt = rtt
        if now > state.rtt_stamp:
            state.rtt_stamp = now
        state.rtt_samples += 1


@attrs.frozen
class ExpectedDelay:
    """How long a new request would take here: seconds per unit of work in flight ×
    (work in flight + its own cost), and never less than the age of the oldest request
    still waiting.

    - Each success yields a sample ``latency / load_at_start``: the latency divided by the
      work it shared the backend with. On a saturated backend with ``c`` slots and
      service time ``s`` that is ``s / c`` — its *drain rate*, which is what decides how
      soon one more request gets served. Raw latency (what peak-EWMA tracks) mixes
      speed with queue length and cannot tell a slow 2-slot box from a fast 8-slot one
      with a queue; this can, without anyone setting weights.
    - Samples are averaged with weight ``exp(-Δt/tau)`` on the old value (no peak
      replacement: samples vary with concurrency, and one uncrowded request must not
      make a big server look slow).
    - The oldest request still in flight bounds the estimate from below: a backend that
      has stopped answering (or was never measured) cannot keep looking cheap while its
      requests age — the fast-failure and the long-stall cases both.
    - An estimate not refreshed for a while decays toward zero with time constant
      ``idle_decay`` so a backend that was slow once is probed again.
    - Before a backend's first answer its unit is the *prior* the balancer passes (the
      average of what the pool measures), else ``default_delay``: a new backend looks
      like a typical one, gets work and is measured. A fixed guess would be wrong by
      orders of magnitude once costs are token counts, and a new backend would starve.
      While it has no answer yet, each request it holds makes it much dearer, so it is
      probed a request at a time instead of being handed a burst.

    Cost-aware: with per-request costs (tokens), the unit is seconds per token and the
    estimate covers the new request's own size (see :class:`~embedbalance.ShortestExpectedDelay`).
    The idea is IPVS's "shortest expected delay" scheduler with learned service rates.
    """

    tau: float = 2.0
    idle_decay: float = 30.0
    default_delay: float = 0.05
    failure_decay: float = DEFAULT_FAILURE_DECAY

    def __attrs_post_init__(self) -> None:
        for name in ("tau", "idle_decay", "default_delay"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")

    def unit(self, state: BackendState, now: float, prior: float | None = None) -> float:
        """Seconds per unit of work in flight, decayed for idleness; ``prior`` (what the
        rest of the pool measures) stands in before the first sample, else
        ``default_delay``."""
        if state.delay_samples == 0:
            return self.default_delay if prior is None else prior
        idle = now - state.delay_stamp
        if idle <= 0.0:
            return state.delay_unit
        return state.delay_unit * math.exp(-idle / self.idle_decay)

    def delay(
        self, state: BackendState, now: float, cost: float = 1.0, prior: float | None = None
    ) -> float:
        """Expected seconds until a request of ``cost`` placed now would be answered,
        scaled by weight and failure penalty like every metric here."""
        expected = self.unit(state, now, prior) * (state.outstanding_cost + cost)
        if state.delay_samples == 0 and state.pending:
            # Never measured and already busy: its speed is a guess, so one request at
            # a time probes it rather than a queue of them (a slow newcomer would
            # otherwise collect a burst before its first answer says what it is).
            expected *= 1.0 + UNMEASURED_BUSY_FACTOR * state.pending
        if state.pending:
            age = state.oldest_age(now)
            if age > expected:
                expected = age
        if state.penalty > 0.0:
            penalty = state.penalty_factor(now, self.failure_decay)
            # A failure carries no latency sample: each recent one counts as at least one
            # typical request's worth of work (the pool's average unit when known — a
            # fixed guess would dwarf a fast pool's units and shun a recovered backend).
            floor = self.default_delay if prior is None else prior * (cost + 1.0)
            expected = max(expected, floor * (penalty - 1.0)) * penalty
        if now - state.admitted_at < state.slow_start.window:
            return expected / state.effective_weight(now)
        return expected / state.weight

    def load(self, state: BackendState, now: float) -> float:
        return self.delay(state, now, 1.0)

    def observe(
        self, state: BackendState, latency: float, now: float, load_at_start: float = 1.0
    ) -> None:
        sample = max(latency, 0.0) / max(load_at_start, 1e-9)
        if state.delay_samples == 0:
            state.delay_unit = sample
        else:
            elapsed = now - state.delay_stamp
            w = math.exp(-elapsed / self.tau) if elapsed > 0 else 1.0
            # Always let a sample count for something, even at the same instant.
            w = min(w, 0.9)
            state.delay_unit = state.delay_unit * w + sample * (1.0 - w)
        state.delay_stamp = now
        state.delay_samples += 1
