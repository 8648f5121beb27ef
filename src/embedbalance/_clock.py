"""Clocks: the only way the library reads time.

Every stateful part takes ``clock=`` so that tests drive time by hand instead of
sleeping; production code uses :func:`time.monotonic` because wall-clock jumps
(NTP, DST) must never eject a backend or reset an EWMA.
"""

from __future__ import annotations

import time
from typing import Protocol

import attrs

__all__ = ["Clock", "ManualClock", "monotonic"]


class Clock(Protocol):
    """A callable returning seconds from an arbitrary, monotonic origin."""

    def __call__(self) -> float: ...


def monotonic() -> float:
    """The default clock: seconds from :func:`time.monotonic`."""
    return time.monotonic()


@attrs.define
class ManualClock:
    """A clock that moves only when told to — for deterministic tests and simulations.

    >>> clock = ManualClock()
    >>> clock.advance(1.5)
    >>> clock()
    1.5
    """

    now: float = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward; moving it backwards is a bug in the caller."""
        if seconds < 0:
            raise ValueError(f"a clock cannot go backwards (advance({seconds!r}))")
        self.now += seconds
