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
    "LoadMetric",
    "OutstandingTokens",
    "PeakEwmaLatency",
    "PendingRequests",
]

#: Time constant (seconds) of the failure penalty's decay.
DEFAULT_FAILURE_DECAY = 5.0


class LoadMetric(Protocol):
    """What a balancer needs from a metric."""

    def load(self, state: BackendState, now: float) -> float:
        """Current load of ``state``'s backend; lower is better."""
        ...

    def observe(self, state: BackendState, latency: float, now: float) -> None:
        """Feed one successful response's latency (seconds)."""
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

    def observe(self, state: BackendState, latency: float, now: float) -> None:
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

    def observe(self, state: BackendState, latency: float, now: float) -> None:
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

    def observe(self, state: BackendState, latency: float, now: float) -> None:
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
