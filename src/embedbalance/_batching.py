"""Cutting a list of texts into sub-batches: pure arithmetic, no I/O.

Why contiguous slices (of whatever order the caller chose, input or length-sorted):
slices of one sequence partition it by construction, so no text can be dropped or sent
twice. Why a token estimate: the balancer weighs each sub-batch by
its cost, and a worker's forward pass costs roughly its padded tokens, not its
number of texts.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import attrs
import numpy as np
import numpy.typing as npt

__all__ = [
    "CHARS_PER_TOKEN",
    "MIN_SPLIT_TEXTS",
    "SPECIAL_TOKENS",
    "Encoder",
    "Job",
    "TokenCounter",
    "assemble",
    "estimate_tokens",
    "plan",
    "plan_jobs",
    "token_counter",
]

#: English prose averages about four characters per WordPiece/BPE token; a rough
#: estimate is enough to weigh sub-batches against each other.
CHARS_PER_TOKEN = 4.0
#: ``[CLS]``/``[SEP]`` or their equivalents, added to every text by most models.
SPECIAL_TOKENS = 2

#: Below this many texts per backend, splitting costs more in overhead than it saves.
MIN_SPLIT_TEXTS = 8

TokenCounter = Callable[[str], int]
FloatMatrix = npt.NDArray[np.float32]


@runtime_checkable
class Encoder(Protocol):
    """Anything with ``encode(text) -> token ids``: a Hugging Face tokenizer, tiktoken."""

    def encode(self, text: str) -> Sequence[int]: ...


def estimate_tokens(text: str) -> int:
    """Character-based token estimate, at least one."""
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN) + SPECIAL_TOKENS)


def token_counter(tokenizer: Encoder | TokenCounter | None) -> TokenCounter:
    """A ``str -> int`` counter from what the user gave: an encoder, a counting
    function, or nothing (the character estimate)."""
    if tokenizer is None:
        return estimate_tokens
    if isinstance(tokenizer, Encoder):
        enc = tokenizer
        return lambda text: max(1, len(enc.encode(text)))
    if callable(tokenizer):
        count = tokenizer

        def counted(text: str) -> int:
            n = count(text)
            if isinstance(n, bool) or not isinstance(n, int):
                raise TypeError(f"tokenizer must return an int, got {type(n).__name__}")
            return max(1, n)

        return counted
    raise TypeError(
        "tokenizer must have an encode(text) method or be a callable returning a "
        f"token count, got {type(tokenizer).__name__}"
    )


def plan(
    tokens: Sequence[int], *, max_tokens: int, max_texts: int, min_parts: int = 1
) -> list[slice]:
    """Contiguous slices covering ``range(len(tokens))`` in order.

    Each slice holds at most ``max_texts`` items and at most ``max_tokens`` tokens,
    except that one item larger than ``max_tokens`` travels alone. There are at least
    ``min_parts`` slices when there are that many items, and slices are about equally
    heavy: equal cuts keep every backend busy until the end instead of leaving one
    small straggler.
    """
    if max_tokens < 1 or max_texts < 1:
        raise ValueError("max_tokens and max_texts must be >= 1")
    n = len(tokens)
    if n == 0:
        return []
    total = sum(tokens)
    parts = max(
        1,
        min(min_parts, n),
        math.ceil(n / max_texts),
        math.ceil(total / max_tokens),
    )
    # First cut by cumulative weight into ``parts`` near-equal slices...
    cuts = [0]
    target = total / parts
    acc = 0
    for i, t in enumerate(tokens[:-1], start=1):
        acc += t
        if len(cuts) < parts and (acc >= target * len(cuts) or n - i <= parts - len(cuts)):
            cuts.append(i)
    cuts.append(n)
    # ...then split any slice that still breaks a limit (outliers skew equal cuts).
    out: list[slice] = []
    for lo, hi in itertools.pairwise(cuts):
        start, weight = lo, 0
        for i in range(lo, hi):
            if i > start and (i - start >= max_texts or weight + tokens[i] > max_tokens):
                out.append(slice(start, i))
                start, weight = i, 0
            weight += tokens[i]
        out.append(slice(start, hi))
    return out


@attrs.frozen
class Job:
    """One sub-batch: the input positions it carries, in the order sent, and its cost."""

    indices: npt.NDArray[np.intp]
    cost: int

    def texts(self, texts: list[str]) -> list[str]:
        return [texts[i] for i in self.indices]


def plan_jobs(
    texts: list[str],
    count_tokens: TokenCounter,
    *,
    backends: int,
    max_texts: int,
    max_tokens: int,
    sort_by_length: bool = True,
) -> list[Job]:
    """Sub-batches of similar length, split at least once per backend when there is
    enough work for each (``MIN_SPLIT_TEXTS`` texts per part).

    Why sort by length: a worker pads every text of a forward pass to the longest
    one, so a sub-batch mixing a 10-token and a 256-token text pays for 512. Rows go
    back to their input positions in :func:`assemble`.
    """
    tokens = [count_tokens(t) for t in texts]
    order = (
        np.argsort(np.asarray(tokens), kind="stable") if sort_by_length else np.arange(len(texts))
    )
    ordered = [tokens[i] for i in order]
    min_parts = min(backends, len(texts) // MIN_SPLIT_TEXTS)
    slices = plan(ordered, max_tokens=max_tokens, max_texts=max_texts, min_parts=min_parts)
    return [Job(order[s], sum(ordered[s])) for s in slices]


def assemble(n: int, jobs: list[Job], parts: list[FloatMatrix]) -> FloatMatrix:
    """Put every sub-batch's rows back at its texts' input positions.

    Every position is written exactly once: the jobs partition ``range(n)`` and each
    answer was checked to have one row per text and the client's one dimension.
    No jobs (the cache answered every text): an empty matrix, never read.
    """
    if not parts:
        return np.empty((0, 0), dtype=np.float32)
    out = np.empty((n, parts[0].shape[1]), dtype=parts[0].dtype)
    for job, rows in zip(jobs, parts, strict=True):
        out[job.indices] = rows
    return out
