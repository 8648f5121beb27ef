"""The pure planning arithmetic: sub-batches partition the input and respect limits."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from embedbalance._batching import Job, assemble, estimate_tokens, plan, token_counter

token_lists = st.lists(st.integers(min_value=1, max_value=600), max_size=300)


@given(
    tokens=token_lists,
    max_tokens=st.integers(1, 2000),
    max_texts=st.integers(1, 64),
    min_parts=st.integers(1, 8),
)
def test_plan_partitions_in_order_within_limits(
    tokens: list[int], max_tokens: int, max_texts: int, min_parts: int
) -> None:
    """Slices cover every index once, in order, and break a limit only for a lone giant."""
    slices = plan(tokens, max_tokens=max_tokens, max_texts=max_texts, min_parts=min_parts)
    covered = [i for s in slices for i in range(s.start, s.stop)]
    assert covered == list(range(len(tokens)))
    for s in slices:
        assert 1 <= s.stop - s.start <= max_texts
        assert sum(tokens[s]) <= max_tokens or s.stop - s.start == 1
    assert len(slices) >= min(min_parts, len(tokens))


def test_plan_cuts_equal_weights() -> None:
    """Equal texts split into equal sub-batches rather than full ones plus a straggler."""
    slices = plan([10] * 40, max_tokens=10_000, max_texts=32, min_parts=1)
    assert [s.stop - s.start for s in slices] == [20, 20]


def test_plan_rejects_zero_limits() -> None:
    """A zero budget is a configuration error, not an infinite loop."""
    with pytest.raises(ValueError, match="must be >= 1"):
        plan([1], max_tokens=0, max_texts=1)


@given(st.permutations(list(range(30))), st.integers(1, 30))
def test_assemble_puts_rows_back_at_input_positions(order: list[int], cut: int) -> None:
    """Rows of length-sorted sub-batches land at their texts' original positions."""
    idx = np.asarray(order, dtype=np.intp)
    jobs = [Job(idx[:cut], 1), Job(idx[cut:], 1)] if cut < 30 else [Job(idx, 1)]
    parts = [np.asarray(job.indices, dtype=np.float32)[:, None] for job in jobs]
    out = assemble(30, jobs, parts)
    assert out[:, 0].tolist() == list(range(30))


def test_token_counter_accepts_encoders_and_functions() -> None:
    """An ``encode`` method, a counting function and nothing each yield a counter."""

    class Enc:
        def encode(self, text: str) -> list[int]:
            return [0] * len(text.split())

    assert token_counter(Enc())("a b c") == 3
    assert token_counter(lambda t: 42)("x") == 42
    assert token_counter(None)("x" * 40) == estimate_tokens("x" * 40) == 12
    with pytest.raises(TypeError, match="must return an int"):
        token_counter(lambda t: "many")("x")  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="encode"):
        token_counter(3)  # type: ignore[arg-type]
