"""Canary checks: are the replicas' *answers* right, not only their ``/health``?

A rolling update that mixes model versions, a replica that loaded the wrong weights or
dtype, or a GPU that computes garbage still answers ``/health`` with 200. A canary
check embeds a small fixed set of texts on every replica and compares the vectors:

- with each other, by majority vote: two replicas *agree* when every canary row of one
  has a cosine similarity of at least ``threshold`` with the same row of the other;
  the largest group of replicas that agree with one replica is the majority, and a
  replica outside it *disagrees*. A tie (two groups of the same size) or a lone
  replica gives no verdict: nothing says who is right.
- with a reference, when the user gives one (the vectors the right model gives for
  the canary texts): then each replica is judged against the reference alone, which
  also settles ties and single replicas.

This module is pure (attrs and numpy only) and deterministic: the I/O (sending the
canary through the transport, on a schedule) lives in ``health_runner`` and the
consequences (no traffic to a replica that disagrees or has not passed yet) in the
pool.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import numpy as np
import numpy.typing as npt

__all__ = ["DEFAULT_CANARY_TEXTS", "Canary", "CanaryVerdict", "judge", "min_row_cosine"]

FloatMatrix = npt.NDArray[np.floating[Any]]

#: Short, varied texts (prose, fact, code, another language): a wrong model, wrong
#: weights or a broken kernel moves at least one of them far.
DEFAULT_CANARY_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital and largest city of France.",
    "def add(a, b):\n    return a + b",
    "¿Dónde está la biblioteca más cercana?",
    "Embedding models map text to vectors of numbers.",
)

#: Slack on the threshold: the same vector computed twice in float32 can come out a
#: few ulps short of a cosine of 1.
_EPS = 1e-6


def _texts(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        raise ValueError("canary texts must be a sequence of strings, not one string")
    try:
        texts: tuple[object, ...] = tuple(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"canary texts must be a sequence of strings, got {value!r}") from None
    if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise ValueError("canary texts must be one or more non-empty strings")
    return texts  # type: ignore[return-value]  # all str, checked just above


def _reference(value: object) -> tuple[tuple[float, ...], ...] | None:
    """Reference rows as a hashable tuple of tuples (the policy stays frozen and
    comparable); refuses anything that is not equal-length rows of finite numbers."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        raise ValueError(
            "a canary reference is a sequence of rows in the order of the texts; "
            "build from a mapping of text to vector with Canary.from_reference()"
        )
    try:
        raw = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("canary reference must be equal-length rows of numbers") from None
    if raw.ndim != 2 or raw.shape[0] == 0 or raw.shape[1] == 0:
        raise ValueError(f"canary reference must be a (texts, dim) matrix, got shape {raw.shape}")
    if not np.isfinite(raw).all():
        raise ValueError("canary reference holds NaN or infinite values")
    if not (np.linalg.norm(raw, axis=1) > 0).all():
        raise ValueError("canary reference holds a zero row (it has no direction)")
    return tuple(tuple(float(x) for x in row) for row in raw)


def _threshold(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not (
        isinstance(value, (int, float)) and math.isfinite(value) and 0 < value <= 1
    ):
        raise ValueError(f"{attribute.name} must be > 0 and <= 1, got {value!r}")


def _positive(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not (
        isinstance(value, (int, float)) and math.isfinite(value) and value > 0
    ):
        raise ValueError(f"{attribute.name} must be a finite number > 0, got {value!r}")


def _api(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in ("tei", "openai"):
        raise ValueError(f"{attribute.name} must be 'tei' or 'openai', got {value!r}")


def _path(_: object, attribute: attrs.Attribute[str | None], value: str | None) -> None:
    if value is not None and not (isinstance(value, str) and value.startswith("/")):
        raise ValueError(f"{attribute.name} must start with '/', got {value!r}")


@attrs.frozen
class Canary:
    """The correctness check of :class:`~embedbalance.HealthCheck` (``canary=``).

    - ``texts``: embedded on every replica when it joins and every ``interval``
      seconds (at most as often as the health checks run).
    - ``threshold``: the lowest cosine similarity, row by row, at which two answers (or
      an answer and the reference) count as the same. ``0.99`` tolerates a GPU's and
      a CPU's rounding, batch-size effects and float16 serving; another model, other
      weights or garbage fall far below it.
    - ``interval``: seconds between canary rounds over all replicas. A new replica is
      checked at the next health round, whatever the interval.
    - ``reference``: the right vectors for ``texts`` (one row per text, any scale),
      or ``None`` to rely on the majority alone. See :meth:`from_reference`.
    - ``timeout``: seconds one canary request may take (a busy replica's queue
      included); a canary that times out gives no verdict.
    - ``api``, ``path``, ``model``: how to ask — ``"tei"`` (``POST /embed``) or
      ``"openai"`` (``POST /v1/embeddings``), another path, and the model name an
      OpenAI-style server wants.
    """

    texts: tuple[str, ...] = attrs.field(default=DEFAULT_CANARY_TEXTS, converter=_texts)
    threshold: float = attrs.field(default=0.99, validator=_threshold)
    interval: float = attrs.field(default=10.0, validator=_positive)
    reference: tuple[tuple[float, ...], ...] | None = attrs.field(
        default=None, converter=_reference, repr=False
    )
    timeout: float = attrs.field(default=5.0, validator=_positive)
    api: str = attrs.field(default="tei", validator=_api)
    path: str | None = attrs.field(default=None, validator=_path)
    model: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.reference is not None and len(self.reference) != len(self.texts):
            raise ValueError(
                f"canary reference has {len(self.reference)} rows for {len(self.texts)} texts"
            )

    @classmethod
    def from_reference(cls, vectors: Mapping[str, Sequence[float]], **kwargs: Any) -> Canary:
        """A canary whose texts and reference come from one mapping of text to vector
        (embed the texts once with the model you trust, keep the result)."""
        return cls(texts=tuple(vectors), reference=list(vectors.values()), **kwargs)

    @property
    def reference_matrix(self) -> npt.NDArray[np.float64] | None:
        """The reference as a ``(texts, dim)`` array, or None."""
        return None if self.reference is None else np.asarray(self.reference, dtype=np.float64)

    def judge(self, answers: Mapping[str, FloatMatrix]) -> dict[str, CanaryVerdict]:
        """:func:`judge` with this canary's threshold and reference."""
        return judge(answers, self.threshold, self.reference_matrix)


@attrs.frozen
class CanaryVerdict:
    """What one round says of one replica.

    ``agrees``: True or False, or None when nothing can tell (a tie, a lone replica,
    no reference). ``cosine``: the lowest row cosine against what it was compared with
    (for one that disagrees with the majority: against the member it came closest
    to); None when the shapes differ or there is no verdict. ``detail``: the reason,
    naming the check, as logs and pool stats show it.
    """

    agrees: bool | None
    detail: str
    cosine: float | None = None


def _unit(rows: FloatMatrix) -> npt.NDArray[np.float64]:
    rows64 = np.asarray(rows, dtype=np.float64)
    norms = np.linalg.norm(rows64, axis=-1, keepdims=True)
    out: npt.NDArray[np.float64] = np.divide(
        rows64, norms, out=np.zeros_like(rows64), where=norms > 0
    )
    return out


def min_row_cosine(a: FloatMatrix, b: FloatMatrix) -> float:
    """The lowest cosine similarity between row ``i`` of ``a`` and row ``i`` of ``b``
    (a zero row has cosine 0 with anything). Shapes must match."""
    if np.shape(a) != np.shape(b):
        raise ValueError(f"shapes differ: {np.shape(a)} and {np.shape(b)}")
    return float(np.min(np.sum(_unit(a) * _unit(b), axis=-1)))


def _shape_text(shape: tuple[int, ...]) -> str:
    return f"{shape[0]} rows of dimension {shape[1]}" if len(shape) == 2 else f"shape {shape}"


def _against_reference(
    answers: Mapping[str, FloatMatrix], threshold: float, reference: FloatMatrix
) -> dict[str, CanaryVerdict]:
    out: dict[str, CanaryVerdict] = {}
    for url, rows in answers.items():
        if np.shape(rows) != reference.shape:
            out[url] = CanaryVerdict(
                False,
                f"canary: {_shape_text(np.shape(rows))}, the reference has "
                f"{_shape_text(reference.shape)}",
            )
            continue
        cos = min_row_cosine(rows, reference)
        if cos >= threshold - _EPS:
            out[url] = CanaryVerdict(
                True, f"canary: cosine {cos:.3f} >= {threshold:g} vs reference", cos
            )
        else:
            out[url] = CanaryVerdict(
                False, f"canary: cosine {cos:.3f} < {threshold:g} vs reference", cos
            )
    return out


def judge(
    answers: Mapping[str, FloatMatrix],
    threshold: float = 0.99,
    reference: FloatMatrix | None = None,
) -> dict[str, CanaryVerdict]:
    """One verdict per replica from its canary answer (``(texts, dim)`` rows each).

    With a ``reference``, each replica is compared with it alone. Without, by
    majority: replicas ``i`` and ``j`` agree when :func:`min_row_cosine` of their
    answers is at least ``threshold`` (answers of different shapes never agree); each
    replica's group is itself and those it agrees with; the largest group is the
    majority if no other group of the same size differs from it and it holds at least
    two replicas. Members agree, the others disagree; without a majority, every
    verdict is None. Depends only on the answers, not on the order or names of the
    replicas, nor on the scale of any row.
    """
    if reference is not None:
        return _against_reference(answers, threshold, np.asarray(reference, dtype=np.float64))
    urls = list(answers)
    n = len(urls)
    if n == 0:
        return {}
    sims = np.full((n, n), -np.inf)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, url in enumerate(urls):
        by_shape.setdefault(tuple(np.shape(answers[url])), []).append(i)
    for members in by_shape.values():
        stacked = _unit(np.stack([np.asarray(answers[urls[i]]) for i in members]))
        # (m, m, rows): cosine of every row between every pair, then the worst row.
        pair = np.einsum("ird,jrd->ijr", stacked, stacked).min(axis=-1)
        sims[np.ix_(members, members)] = pair
    agree = sims >= threshold - _EPS
    np.fill_diagonal(agree, True)
    groups = {frozenset(np.flatnonzero(agree[i]).tolist()) for i in range(n)}
    size = max(len(g) for g in groups)
    largest = [g for g in groups if len(g) == size]
    if size < 2 or len(largest) > 1:
        why = "a lone replica" if n == 1 else f"no majority among {n} replicas"
        return {url: CanaryVerdict(None, f"canary: {why}, no verdict") for url in urls}
    majority = sorted(largest[0])
    out: dict[str, CanaryVerdict] = {}
    for i, url in enumerate(urls):
        if i in largest[0]:
            # Its closest peer: every member agrees with at least one (the one whose
            # group this is), so this is >= threshold; agreement need not be transitive.
            others = [j for j in majority if j != i]
            cos = float(sims[i, others].max())
            out[url] = CanaryVerdict(
                True, f"canary: cosine {cos:.3f} >= {threshold:g} vs majority of {size}", cos
            )
            continue
        best = float(sims[i, majority].max())
        if math.isfinite(best):
            out[url] = CanaryVerdict(
                False, f"canary: cosine {best:.3f} < {threshold:g} vs majority of {size}", best
            )
        else:
            shape = tuple(np.shape(answers[urls[majority[0]]]))
            out[url] = CanaryVerdict(
                False,
                f"canary: {_shape_text(tuple(np.shape(answers[url])))}, the majority of "
                f"{size} has {_shape_text(shape)}",
            )
    return out
