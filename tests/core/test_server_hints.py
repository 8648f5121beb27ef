"""Parsing of server load hints: our worker's X-Queue-Depth / X-In-Flight and TEI's
x-queue-time / x-inference-time (milliseconds), into one frozen ServerHints."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import embedbalance as eb
from embedbalance._hints import parse_hints


def test_worker_headers_are_read_as_counts() -> None:
    """X-Queue-Depth and X-In-Flight come back as floats, whatever the header case (else the knee hint is lost)."""
    hints = parse_hints({"x-queue-depth": "3", "x-in-flight": "11"})
    assert hints == eb.ServerHints(queue_depth=3.0, in_flight=11.0)


def test_tei_timings_are_converted_from_milliseconds() -> None:
    """TEI's x-queue-time and x-inference-time are milliseconds; hints hold seconds (else service times are off by 1000x)."""
    hints = parse_hints({"x-queue-time": "250", "x-inference-time": "40", "x-total-time": "300"})
    assert hints is not None
    assert hints.queue_time == pytest.approx(0.25)
    assert hints.inference_time == pytest.approx(0.04)
    assert hints.queue_depth is None
    assert hints.in_flight is None


def test_no_hint_headers_give_none() -> None:
    """A response without hint headers yields None, so release() skips hint handling entirely."""
    assert parse_hints({"content-type": "application/json"}) is None


@given(
    st.sampled_from(["x-queue-depth", "x-in-flight", "x-queue-time", "x-inference-time"]),
    st.one_of(
        st.text(alphabet="abc!?;", min_size=1, max_size=8),
        st.sampled_from(["nan", "inf", "-inf", "-1", "-0.5"]),
    ),
)
def test_malformed_or_negative_hints_count_as_absent(name: str, raw: str) -> None:
    """A malformed, negative or non-finite hint is ignored (None), never an exception: hints are advice."""
    assert parse_hints({name: raw}) is None


@given(st.floats(0.0, 1e9, allow_nan=False))
def test_valid_values_round_trip(value: float) -> None:
    """Any finite non-negative value is read back as given (milliseconds ÷ 1000 for TEI)."""
    hints = parse_hints({"x-in-flight": repr(value), "x-inference-time": repr(value)})
    assert hints is not None
    assert hints.in_flight == value
    assert hints.inference_time == pytest.approx(value / 1000.0)
