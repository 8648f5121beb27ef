"""Admission at the door: requests inside and large bodies in intake are bounded, small
bodies always pass the byte bound, and every ticket gives back what it took."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from embedbalance_worker import Admission, Refused

MIB = 1024 * 1024


def _gate(**changes: int) -> Admission:
    base = dict(max_requests=4, max_intake_bytes=8 * MIB, small_body_bytes=64 * 1024)
    return Admission(max_body_bytes=4 * MIB, **{**base, **changes})


def test_request_bound_refuses_the_next_one() -> None:
    """max_requests tickets are granted; the next is refused until one closes."""
    gate = _gate()
    tickets = [gate.enter(100) for _ in range(4)]
    with pytest.raises(Refused, match="limit 4"):
        gate.enter(100)
    tickets[0].close()
    gate.enter(100)


def test_large_bodies_are_bounded_but_small_ones_pass() -> None:
    """Two 4 MiB bodies fill an 8 MiB intake; a third is refused, a short body is not."""
    gate = _gate(max_requests=100)
    gate.enter(4 * MIB)
    gate.enter(4 * MIB)
    with pytest.raises(Refused, match="body bytes"):
        gate.enter(4 * MIB)
    gate.enter(200)


def test_unknown_length_counts_as_the_payload_limit() -> None:
    """A body without Content-Length is charged the payload limit."""
    gate = _gate(max_requests=100)
    gate.enter(None)
    assert gate.intake_bytes == 4 * MIB


def test_a_body_larger_than_the_intake_bound_gets_in_alone() -> None:
    """On an empty intake the first large body is admitted, so a maximal request is
    possible on an idle worker."""
    gate = _gate(max_intake_bytes=1 * MIB)
    gate.enter(4 * MIB)
    with pytest.raises(Refused):
        gate.enter(2 * MIB)


@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=5 * MIB), st.booleans(), st.booleans()),
        max_size=60,
    )
)
def test_tickets_give_back_exactly_what_they_took(ops: list[tuple[int, bool, bool]]) -> None:
    """However tickets end (intake ended, closed, closed twice), the counters return to
    zero and never exceed their bounds for large bodies."""
    gate = _gate(max_requests=10)
    tickets = []
    for size, end_intake, close in ops:
        try:
            ticket = gate.enter(size)
        except Refused:
            continue
        tickets.append(ticket)
        assert gate.requests <= gate.max_requests
        if end_intake:
            ticket.end_intake()
        if close:
            ticket.close()
            ticket.close()
    for ticket in tickets:
        ticket.close()
    assert gate.requests == 0
    assert gate.intake_bytes == 0
