"""Reading load hints from HTTP responses: ``Retry-After`` and the queue-depth header.

Kept apart from the transports so both twins (and the client) parse them the same way.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Mapping

__all__ = ["QUEUE_DEPTH_HEADER", "parse_queue_depth", "parse_retry_after"]

#: Response header where a worker reports requests waiting in its queue (docs/worker.md).
QUEUE_DEPTH_HEADER = "x-queue-depth"


def parse_retry_after(value: str | None, *, cap: float = 300.0) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delay-seconds or HTTP-date), capped
    so a misconfigured server cannot park a backend for hours; None if absent/invalid."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), cap)


def parse_queue_depth(headers: Mapping[str, str]) -> float | None:
    """The worker-reported queue depth, or None when absent or not a number."""
    raw = headers.get(QUEUE_DEPTH_HEADER)
    if raw is None:
        return None
    try:
        depth = float(raw)
    except ValueError:
        return None
    return depth if math.isfinite(depth) and depth >= 0 else None
