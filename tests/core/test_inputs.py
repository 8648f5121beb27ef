"""The clients' input checks and sub-batch plans, without any server."""

from __future__ import annotations

import anyio
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embedbalance._batching import assemble, estimate_tokens, plan_jobs
from embedbalance._inputs import achunks, chunks, collect

TEXTS = st.lists(st.text(min_size=1, max_size=40), max_size=60)


@given(texts=TEXTS, size=st.integers(1, 9))
def test_chunks_keep_every_text_in_order(texts: list[str], size: int) -> None:
    """If this fails, embed_iter drops, repeats or reorders texts at chunk edges."""
    got = list(chunks(iter(texts), size))
    assert [t for c in got for t in c] == texts
    assert all(len(c) == size for c in got[:-1])


def test_a_bad_item_is_named_by_its_position() -> None:
    """If this fails, a caller cannot tell which of 10,000 texts was wrong."""
    with pytest.raises(TypeError, match=r"texts\[2\] is int"):
        collect(["a", "b", 3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"texts\[1\] is an empty string"):
        collect(["a", ""])
    with pytest.raises(TypeError, match="not bytes"):
        collect(b"abc")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="use embed"):
        list(chunks("one text", 4))


def test_async_chunks_accept_async_iterables() -> None:
    """If this fails, embed_iter on the async client loses texts from async sources."""

    async def source():  # type: ignore[no-untyped-def]
        for i in range(7):
            yield f"t{i}"

    async def run() -> list[list[str]]:
        return [c async for c in achunks(source(), 3)]

    assert anyio.run(run) == [["t0", "t1", "t2"], ["t3", "t4", "t5"], ["t6"]]


@settings(max_examples=60)
@given(
    texts=st.lists(st.text(min_size=1, max_size=200), min_size=1, max_size=80),
    backends=st.integers(1, 6),
    max_texts=st.integers(1, 16),
    sort=st.booleans(),
)
def test_planned_jobs_put_every_row_back_at_its_input_position(
    texts: list[str], backends: int, max_texts: int, sort: bool
) -> None:
    """If this fails, a sub-batch plan drops or repeats a text, or assembled rows land
    at the wrong input positions."""
    jobs = plan_jobs(
        texts,
        estimate_tokens,
        backends=backends,
        max_texts=max_texts,
        max_tokens=256,
        sort_by_length=sort,
    )
    sent = np.concatenate([job.indices for job in jobs])
    assert sorted(sent.tolist()) == list(range(len(texts)))
    assert all(len(job.indices) <= max_texts for job in jobs)
    # Each "row" is its input position: assembled, row i must say i.
    parts = [job.indices.astype(np.float32).reshape(-1, 1) for job in jobs]
    rows = assemble(len(texts), jobs, parts)
    assert rows[:, 0].tolist() == list(range(len(texts)))
