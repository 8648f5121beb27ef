"""What callers hand the embedding clients, checked before any request is made.

Why up front: a bad item found after half the sub-batches were sent would leave the
call neither done nor undone; checked first, a call either sends everything or nothing.
Why empty strings are refused: every server we speak to refuses an empty input, and it
would fail one sub-batch (and its retries) instead of the call.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator

__all__ = ["achunks", "check_item", "check_iterable", "chunks", "collect"]


def check_item(i: int, item: object) -> str:
    """``item`` (at input position ``i``) as a text, or a clear error naming it."""
    if not isinstance(item, str):
        raise TypeError(f"texts[{i}] is {type(item).__name__}, expected str")
    if not item:
        raise ValueError(f"texts[{i}] is an empty string; backends refuse empty inputs")
    return item


def check_iterable(texts: object) -> None:
    """Refuse ``bytes``: iterating them yields ints, never what the caller meant."""
    if isinstance(texts, bytes):
        raise TypeError("texts must be str or an iterable of str, not bytes")


def collect(texts: Iterable[str]) -> list[str]:
    """Every item, checked, before any request is made."""
    check_iterable(texts)
    return [check_item(i, t) for i, t in enumerate(texts)]


def chunks(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    """Checked lists of ``size`` items; only one is held at a time."""
    check_iterable(texts)
    if isinstance(texts, str):
        raise TypeError("embed_iter takes an iterable of str; use embed() for one text")
    chunk: list[str] = []
    for i, t in enumerate(texts):
        chunk.append(check_item(i, t))
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


async def achunks(texts: Iterable[str] | AsyncIterable[str], size: int) -> AsyncIterator[list[str]]:
    """:func:`chunks` for a sync or an async iterable."""
    if not isinstance(texts, AsyncIterable):
        for chunk in chunks(texts, size):
            yield chunk
        return
    pending: list[str] = []
    i = 0
    async for t in texts:
        pending.append(check_item(i, t))
        i += 1
        if len(pending) == size:
            yield pending
            pending = []
    if pending:
        yield pending
