"""Reading load hints from HTTP responses: ``Retry-After``, queue depth and timings.

Kept apart from the transports so both twins (and the client) parse them the same way.
Two servers' hints are understood:

- our worker's ``X-Queue-Depth`` (requests waiting for a forward pass) and
  ``X-In-Flight`` (requests admitted and not yet answered), read when the response
  was written (``docs/worker.md``);
- Hugging Face TEI's ``x-queue-time`` (milliseconds the request waited in TEI's
  batching queue) and ``x-inference-time`` (milliseconds of the forward pass its batch
  took), which TEI's router sets on every successful ``/embed`` response.

A balancer trusts these over its own guesses: a server that says how long a request
queued and how long it ran separates "slow" from "busy" exactly.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Mapping

import attrs

__all__ = [
    "INFERENCE_TIME_HEADER",
    "IN_FLIGHT_HEADER",
    "QUEUE_DEPTH_HEADER",
    "QUEUE_TIME_HEADER",
    "ServerHints",
    "parse_hints",
    "parse_queue_depth",
    "parse_retry_after",
]

#: Response header where a worker reports requests waiting in its queue (docs/worker.md).
QUEUE_DEPTH_HEADER = "x-queue-depth"
#: Our worker: embedding requests admitted and not yet answered (its own included).
IN_FLIGHT_HEADER = "x-in-flight"
#: TEI: milliseconds the request spent in the batching queue.
QUEUE_TIME_HEADER = "x-queue-time"
#: TEI: milliseconds of inference for the batch the request ran in.
INFERENCE_TIME_HEADER = "x-inference-time"


@attrs.frozen
class ServerHints:
    """What a server said about its own load in one response (``None``: not sent).

    Counts are requests; times are seconds (TEI sends milliseconds; they are converted).
    """

    queue_depth: float | None = None
    in_flight: float | None = None
    queue_time: float | None = None
    inference_time: float | None = None


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


def _number(headers: Mapping[str, str], name: str) -> float | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def parse_hints(headers: Mapping[str, str]) -> ServerHints | None:
    """Every load hint in ``headers``, or None when the server sent none (the common
    case for servers that send nothing, kept allocation-free). Malformed, negative or
    non-finite values count as absent: a hint is advice, never a reason to fail."""
    depth = _number(headers, QUEUE_DEPTH_HEADER)
    in_flight = _number(headers, IN_FLIGHT_HEADER)
    queue_ms = _number(headers, QUEUE_TIME_HEADER)
    inference_ms = _number(headers, INFERENCE_TIME_HEADER)
    if depth is None and in_flight is None and queue_ms is None and inference_ms is None:
        return None
    return ServerHints(
        queue_depth=depth,
        in_flight=in_flight,
        queue_time=None if queue_ms is None else queue_ms / 1000.0,
        inference_time=None if inference_ms is None else inference_ms / 1000.0,
    )
