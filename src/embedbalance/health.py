"""Health policies and the pure state machines behind them.

Policies are frozen attrs records — immutable, shareable, varied with
:func:`attrs.evolve` (the urllib3 ``Retry`` habit). The functions and small state
classes here decide *what* happens (eject, re-admit, ramp up); the pool applies them
and the I/O edges (``health_runner``, the transports) feed them observations.
Nothing here does I/O or reads a clock: time is always an argument.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from .canary import Canary

__all__ = [
    "ActiveCheckState",
    "HealthCheck",
    "OutlierDetection",
    "SlowStart",
    "ejection_duration",
    "max_ejectable",
]


def _positive(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name} must be a finite number > 0, got {value!r}")


def _non_negative(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{attribute.name} must be a finite number >= 0, got {value!r}")


def _int_at_least(low: int) -> Callable[[object, attrs.Attribute[int], int], None]:
    """A validator: an ``int`` (not a bool) of at least ``low``."""

    def check(_: object, attribute: attrs.Attribute[int], value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{attribute.name} must be an int >= {low}, got {value!r}")

    return check


_at_least_one = _int_at_least(1)


def _fraction(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (isinstance(value, (int, float)) and 0 <= value <= 1):
        raise ValueError(f"{attribute.name} must be between 0 and 1, got {value!r}")


def _percent(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (isinstance(value, (int, float)) and 0 <= value <= 100):
        raise ValueError(f"{attribute.name} must be between 0 and 100, got {value!r}")


def _positive_percent(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    # A zero floor would give a just-admitted backend weight 0, and every
    # weight-relative load metric divides by the weight.
    if not (isinstance(value, (int, float)) and 0 < value <= 100):
        raise ValueError(f"{attribute.name} must be > 0 and <= 100, got {value!r}")


def _canary(value: object) -> Canary | None:
    """``True`` is the default canary, ``False``/``None`` none, a :class:`Canary` itself."""
    if value is None or value is False:
        return None
    if value is True:
        return Canary()
    if isinstance(value, Canary):
        return value
    raise ValueError(f"canary must be a bool or a Canary, got {value!r}")


def _header_pairs(value: object) -> tuple[tuple[str, str], ...]:
    """Headers as a hashable tuple of ``(name, value)`` pairs, from a mapping or pairs."""
    items: Any = value.items() if isinstance(value, Mapping) else value
    try:
        pairs = tuple((str(k), str(v)) for k, v in items)
    except (TypeError, ValueError):
        raise ValueError(f"headers must be a mapping of str to str, got {value!r}") from None
    return pairs


@attrs.frozen
class HealthCheck:
    """Active health checking: ``GET path`` every ``interval`` seconds per backend.

    - ``timeout``: a check slower than this counts as a failure (keep it short: a
      check that hangs must not hold a verdict back).
    - ``jitter``: each interval is stretched or shrunk by up to this fraction, so that
      many clients started together do not probe in lock-step (0 disables).
    - ``fall``: consecutive failures that mark a backend unhealthy; ``rise``:
      consecutive successes that mark it healthy again (HAProxy's names and defaults).
    - ``uneject_on_success``: a backend ejected by passive outlier detection is
      re-admitted early once ``rise`` checks pass, as Envoy does — a restarted pod
      comes back in seconds, not after the ejection time.
    - ``headers``: sent with every check (an ``Authorization`` header for workers that
      require one). Checks go through the transport's own inner transport, so TLS
      trust, client certificates and proxies are the same as for real requests.
    - ``canary``: also check that answers are *right* (``True`` for the defaults, or a
      :class:`~embedbalance.Canary`): a fixed set of texts is embedded on every
      replica when it joins and periodically, and a replica whose vectors disagree
      with the majority (or with a given reference) gets no traffic until a later
      canary agrees. With it on, a replica gets no traffic before its first canary
      passes. ``None`` (the default) checks liveness only. See ``docs/canary.md``.
    """

    path: str = "/health"
    interval: float = attrs.field(default=2.0, validator=_positive)
    timeout: float = attrs.field(default=1.0, validator=_positive)
    jitter: float = attrs.field(default=0.1, validator=_fraction)
    rise: int = attrs.field(default=2, validator=_at_least_one)
    fall: int = attrs.field(default=3, validator=_at_least_one)
    uneject_on_success: bool = True
    headers: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_header_pairs)
    canary: Canary | None = attrs.field(default=None, converter=_canary)

    def __attrs_post_init__(self) -> None:
        if not self.path.startswith("/"):
            raise ValueError(f"HealthCheck path must start with '/', got {self.path!r}")


@attrs.frozen
class OutlierDetection:
    """Passive outlier detection from real traffic (Envoy's ``consecutive_5xx``).

    - ``consecutive_failures``: failures in a row (connect errors, resets, timeouts,
      5xx other than overload) that eject a backend. Overload answers (429, 503 with
      ``Retry-After``) are load, not death, and never count.
    - ``base_ejection_time``: the first ejection lasts this long; the n-th lasts
      ``n × base_ejection_time``, capped at ``max_ejection_time``. The count falls back
      to zero once a backend has stayed in for ``max_ejection_time``.
    - ``max_ejection_percent``: never eject more than this share of backends (at least
      one is always ejectable), so a client-side fault cannot empty the pool.
    - ``enabled=False`` turns passive ejection off.
    """

    consecutive_failures: int = attrs.field(default=5, validator=_at_least_one)
    base_ejection_time: float = attrs.field(default=30.0, validator=_positive)
    max_ejection_time: float = attrs.field(default=300.0, validator=_positive)
    max_ejection_percent: float = attrs.field(default=50.0, validator=_percent)
    enabled: bool = True


@attrs.frozen
class SlowStart:
    """Ramp a newly admitted backend's weight up over ``window`` seconds (Envoy's
    slow start): a cold replica — empty caches, lazy CUDA kernels — is not handed its
    full share at once.

    The factor is ``max(min_weight_percent / 100, (elapsed / window) ** (1 / aggression))``;
    ``aggression`` above 1 ramps faster early. ``window=0`` disables slow start.

    Time alone is a guess; answers are evidence. Each answer during the ramp that is
    no slower than the backend's usual p99 (its own from before, or the pool's for a
    newcomer) moves the ramp on by ``window / warm_answers``, so a replica that comes
    back warm (a restarted process with its model cached, a pod that only lost its
    network) is at full share after about ``warm_answers`` good answers instead of idling
    part of the pool for the whole window, while a cold one — whose first answers are
    slow — still ramps by time. ``warm_answers=0`` ramps by time only (Envoy's rule).
    """

    window: float = attrs.field(default=10.0, validator=_non_negative)
    aggression: float = attrs.field(default=1.0, validator=_positive)
    min_weight_percent: float = attrs.field(default=10.0, validator=_positive_percent)
    warm_answers: int = attrs.field(default=10, validator=_int_at_least(0))

    def credit(self) -> float:
        """Seconds of ramp one good answer is worth (0 when ramping by time only)."""
        return self.window / self.warm_answers if self.warm_answers else 0.0

    def factor(self, elapsed: float) -> float:
        """Share of its weight a backend admitted ``elapsed`` seconds ago gets."""
        if self.window <= 0 or elapsed >= self.window:
            return 1.0
        ramp = max(elapsed, 0.0) / self.window
        if self.aggression != 1.0:
            ramp = ramp ** (1.0 / self.aggression)
        return max(self.min_weight_percent / 100.0, ramp)


def ejection_duration(policy: OutlierDetection, ejections: int) -> float:
    """How long the ``ejections``-th ejection (1-based) lasts."""
    return min(policy.base_ejection_time * max(ejections, 1), policy.max_ejection_time)


def max_ejectable(policy: OutlierDetection, backends: int) -> int:
    """How many of ``backends`` may be ejected at once (at least one)."""
    return max(1, math.floor(backends * policy.max_ejection_percent / 100.0))


@attrs.define(slots=True)
class ActiveCheckState:
    """Rise/fall counter for one backend's active checks.

    ``healthy`` is ``None`` until the first verdict: unknown backends are served
    (optimistic start), so a client does not wait a full check round before its
    first request.
    """

    healthy: bool | None = None
    streak: int = 0  # > 0: consecutive successes, < 0: consecutive failures

    def record(self, ok: bool, policy: HealthCheck) -> bool:
        """Count one check result; return True when the verdict changed."""
        if ok:
            self.streak = self.streak + 1 if self.streak > 0 else 1
            if self.healthy is not True and self.streak >= policy.rise:
                self.healthy = True
                return True
            if self.healthy is None:
                # First success on an unknown backend: it is serving, keep it in.
                return False
        else:
            self.streak = self.streak - 1 if self.streak < 0 else -1
            if self.healthy is not False and -self.streak >= policy.fall:
                self.healthy = False
                return True
        return False
