"""One call's texts, each distinct one sent once: within-call dedup and the cache's
share, and the mapping that puts every input position's row back.

Why apart from the clients: both twins use it, and it is pure bookkeeping (numpy and
the cache's lookup), tested without any server.
"""

from __future__ import annotations

import attrs
import numpy as np
import numpy.typing as npt

from .cache import CacheLookup

__all__ = ["Unique"]

FloatMatrix = npt.NDArray[np.float32]


@attrs.frozen
class Unique:
    """The texts of one call still to embed, and where each input position finds its
    row: identical texts are embedded once (RAG corpora repeat boilerplate), and texts
    the cache holds are not sent at all."""

    texts: list[str]
    inverse: npt.NDArray[np.intp] | None  # None: every text was distinct
    cached: CacheLookup | None = None  # None: no cache

    @classmethod
    def of(cls, texts: list[str], dedupe: bool = True) -> Unique:
        if not dedupe:
            return cls(texts, None)
        first: dict[str, int] = {}
        inverse = [first.setdefault(t, len(first)) for t in texts]
        if len(first) == len(texts):
            return cls(texts, None)
        return cls(list(first), np.asarray(inverse, dtype=np.intp))

    def expand(self, rows: FloatMatrix) -> FloatMatrix:
        if self.cached is not None:
            rows = self.cached.merge(rows)
        return rows if self.inverse is None else rows[self.inverse]
