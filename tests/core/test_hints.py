"""Properties of the load-hint parsers: ``Retry-After`` and the queue-depth header."""

from __future__ import annotations

import email.utils
import math
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from embedbalance._hints import (
    IN_FLIGHT_HEADER,
    INFERENCE_TIME_HEADER,
    QUEUE_DEPTH_HEADER,
    QUEUE_TIME_HEADER,
    ServerHints,
    parse_hints,
    parse_queue_depth,
    parse_retry_after,
)

# A string float() rejects and that no HTTP-date parser reads as a date.
garbage = st.text(alphabet="abcxyz!?#@;", min_size=1, max_size=12)


@given(st.floats(min_value=0.0, max_value=299.0, allow_nan=False))
def test_delay_seconds_are_read_as_given(seconds: float) -> None:
    """A plain delay-seconds value under the cap comes back unchanged (else a server's back-off is misread)."""
    assert parse_retry_after(repr(seconds)) == seconds


@given(st.integers(min_value=0, max_value=299), st.sampled_from(["", " ", "\t", "  \n"]))
def test_surrounding_whitespace_is_ignored(seconds: int, pad: str) -> None:
    """Whitespace around the value does not turn a valid Retry-After into None."""
    assert parse_retry_after(f"{pad}{seconds}{pad}") == float(seconds)


@given(st.floats(min_value=300.0, max_value=1e12, allow_nan=False))
def test_default_cap_is_300_seconds(seconds: float) -> None:
    """A huge Retry-After parks a backend for at most 300 s, so a misconfigured server cannot remove it for hours."""
    assert parse_retry_after(repr(seconds)) == 300.0


@given(
    st.floats(min_value=0.0, max_value=1e6, allow_nan=False),
    st.floats(min_value=0.001, max_value=1e4, allow_nan=False),
)
def test_cap_argument_bounds_the_result(seconds: float, cap: float) -> None:
    """The result is min(value, cap) for any cap, so callers can tighten the bound."""
    assert parse_retry_after(repr(seconds), cap=cap) == min(seconds, cap)


@given(st.floats(max_value=-1e-9, allow_nan=False, allow_infinity=False))
def test_negative_values_clamp_to_zero(seconds: float) -> None:
    """A negative delay means 'now', never a negative back-off that would sort before the present."""
    assert parse_retry_after(repr(seconds)) == 0.0


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "Infinity", "NaN"])
def test_non_finite_numbers_are_ignored(value: str) -> None:
    """NaN or infinite values are treated as absent rather than parking a backend forever or never."""
    assert parse_retry_after(value) is None


@given(garbage)
def test_garbage_is_ignored(value: str) -> None:
    """A value that is neither a number nor an HTTP date is ignored (None), never an exception."""
    assert parse_retry_after(value) is None


def test_absent_or_empty_is_none() -> None:
    """No header (or an empty one) means no hint: the pool falls back to its default back-off."""
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("   ") is None


@given(st.integers(min_value=5, max_value=250))
def test_http_date_in_the_future_is_seconds_from_now(ahead: int) -> None:
    """An HTTP-date Retry-After is converted to the seconds left until that date."""
    value = email.utils.formatdate(time.time() + ahead, usegmt=True)
    got = parse_retry_after(value)
    assert got is not None
    assert ahead - 2.0 <= got <= ahead + 1.0


@given(st.integers(min_value=1, max_value=10**6))
def test_http_date_in_the_past_is_zero(ago: int) -> None:
    """An HTTP-date already past means retry now (0), not a negative delay."""
    value = email.utils.formatdate(time.time() - ago - 2, usegmt=True)
    assert parse_retry_after(value) == 0.0


def test_http_date_far_ahead_is_capped() -> None:
    """A date days ahead is capped like a huge delay-seconds value."""
    value = email.utils.formatdate(time.time() + 3 * 86400, usegmt=True)
    assert parse_retry_after(value) == 300.0
    assert parse_retry_after(value, cap=60.0) == 60.0


def test_the_header_name_is_the_documented_one() -> None:
    """The worker and the client agree on the header name documented in docs/worker.md."""
    assert QUEUE_DEPTH_HEADER == "x-queue-depth"


@given(st.floats(min_value=0.0, max_value=1e9, allow_nan=False))
def test_queue_depth_is_read_as_a_number(depth: float) -> None:
    """A non-negative finite depth comes back as the float sent."""
    assert parse_queue_depth({QUEUE_DEPTH_HEADER: repr(depth)}) == depth


@given(st.integers(min_value=0, max_value=10**6))
def test_queue_depth_integers(depth: int) -> None:
    """The worker sends integers; they are read exactly."""
    assert parse_queue_depth({QUEUE_DEPTH_HEADER: str(depth)}) == float(depth)


@given(st.floats(max_value=-1e-9, allow_nan=False))
def test_negative_queue_depth_is_ignored(depth: float) -> None:
    """A negative depth is nonsense and is ignored rather than making a backend look idler than idle."""
    assert parse_queue_depth({QUEUE_DEPTH_HEADER: repr(depth)}) is None


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "", "many", "1,5"])
def test_bad_queue_depth_is_ignored(value: str) -> None:
    """Non-numbers and non-finite depths are ignored (None), never an exception."""
    assert parse_queue_depth({QUEUE_DEPTH_HEADER: value}) is None


@given(garbage)
def test_garbage_queue_depth_is_ignored(value: str) -> None:
    """Any garbage in the header is ignored (None)."""
    assert parse_queue_depth({QUEUE_DEPTH_HEADER: value}) is None


def test_missing_queue_depth_is_none() -> None:
    """Without the header there is no reading; other headers are not mistaken for it."""
    assert parse_queue_depth({}) is None
    assert parse_queue_depth({"x-queue": "3", "retry-after": "4"}) is None


def test_zero_queue_depth_is_kept() -> None:
    """An idle worker's 0 is a reading, not an absence."""
    got = parse_queue_depth({QUEUE_DEPTH_HEADER: "0"})
    assert got == 0.0
    assert got is not None
    assert not math.isnan(got)


HINT_HEADERS = st.sampled_from(
    ["x-queue-depth", "x-in-flight", "x-queue-time", "x-inference-time", "x-other"]
)


def test_no_hints_is_none() -> None:
    """A response without any hint header yields None (no hint object for the balancer to trust)."""
    assert parse_hints({}) is None
    assert parse_hints({"content-type": "application/json"}) is None


@given(
    depth=st.none() | st.integers(0, 1000),
    in_flight=st.none() | st.integers(0, 1000),
    queue_ms=st.none() | st.integers(0, 10**6),
    inference_ms=st.none() | st.integers(0, 10**6),
)
def test_each_hint_is_read_on_its_own_and_times_become_seconds(
    depth: int | None, in_flight: int | None, queue_ms: int | None, inference_ms: int | None
) -> None:
    """Each hint header fills exactly its own field; TEI's millisecond timings come back in seconds."""
    sent = {
        QUEUE_DEPTH_HEADER: depth,
        IN_FLIGHT_HEADER: in_flight,
        QUEUE_TIME_HEADER: queue_ms,
        INFERENCE_TIME_HEADER: inference_ms,
    }
    headers = {k: str(v) for k, v in sent.items() if v is not None}
    hints = parse_hints(headers)
    if not headers:
        assert hints is None
        return
    assert hints == ServerHints(
        queue_depth=None if depth is None else float(depth),
        in_flight=None if in_flight is None else float(in_flight),
        queue_time=None if queue_ms is None else queue_ms / 1000.0,
        inference_time=None if inference_ms is None else inference_ms / 1000.0,
    )


@given(name=HINT_HEADERS, value=garbage | st.sampled_from(["-1", "nan", "inf", "-0.5"]))
def test_malformed_hints_count_as_absent(name: str, value: str) -> None:
    """A malformed, negative or non-finite hint is ignored, never an exception, and never hides the valid ones."""
    assert parse_hints({name: value, "x-queue-depth-unrelated": "1"}) is None
    other = QUEUE_TIME_HEADER if name == IN_FLIGHT_HEADER else IN_FLIGHT_HEADER
    hints = parse_hints({name: value, other: "3"})
    assert hints is not None
    if other == IN_FLIGHT_HEADER:
        assert hints == ServerHints(in_flight=3.0)
    else:
        assert hints == ServerHints(queue_time=0.003)


def test_zero_hints_are_readings() -> None:
    """Zeros (an idle server) are readings, not absences."""
    assert parse_hints({IN_FLIGHT_HEADER: "0"}) == ServerHints(in_flight=0.0)
    assert parse_hints({QUEUE_TIME_HEADER: "0", INFERENCE_TIME_HEADER: "0"}) == ServerHints(
        queue_time=0.0, inference_time=0.0
    )
