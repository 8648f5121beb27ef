"""A bounded cache of embeddings across calls: the same text is not embedded twice.

Why: RAG ingestion re-embeds the same things again and again — boilerplate headers and
footers, chunks repeated across documents, whole documents that did not change since
the last run. Within one call the client already sends each distinct text once; this
cache carries that across calls.

What it promises:

- **Bounded by bytes, not entries.** Every entry is charged its vector's ``nbytes``
  plus :data:`ENTRY_OVERHEAD` (the key, the array header, the dictionary slot), and
  the total never exceeds ``max_bytes``: the least recently used entries go first. An
  entry larger than the whole bound is not cached at all.
- **Keys hold no text.** A key is a 16-byte BLAKE2b digest of the *namespace* (the
  API, model and every option that changes a vector) followed by the text's UTF-8
  bytes, so memory does not grow with text length and two clients asking for different
  models, dimensions, dtypes or normalisation never read each other's rows.
- **Cached rows equal fresh ones.** Rows are stored exactly as the client returned them
  (after its dtype, normalisation and dimension steps), each in its own read-only array,
  and the client copies them into the matrix it returns: a caller who mutates a result
  cannot change what the next call gets.
- **Thread-safe.** One lock guards the table; hashing happens outside it. Nothing here
  blocks on I/O, so the async client calls it directly from the event loop.

This module is pure (attrs, numpy and the standard library): no I/O, no clock.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence

import attrs
import numpy as np
import numpy.typing as npt

__all__ = ["ENTRY_OVERHEAD", "CacheStats", "EmbeddingCache", "cache_keys"]

#: Bytes charged per entry on top of the vector's own ``nbytes``: the 16-byte digest as
#: a ``bytes`` object (49), the ndarray header (112), the ordered dictionary's slot,
#: node and spare capacity (about 80-140) — measured with ``tracemalloc`` on CPython
#: 3.11 at about 240 bytes, rounded up so the bound holds right after a table resize.
ENTRY_OVERHEAD = 320
#: BLAKE2b digest size: 128 bits make an accidental collision across even 10^12 texts
#: about as likely as a cosmic-ray bit flip, at a third of SHA-256's key memory.
DIGEST_SIZE = 16

Row = npt.NDArray[np.floating]


def cache_keys(namespace: Hashable, texts: Sequence[str]) -> list[bytes]:
    """The cache key of each text under ``namespace`` (a tuple of plain values).

    ``repr(namespace)`` is hashed first and ended by a NUL byte, which a ``repr``
    never contains, so no (namespace, text) pair can produce another's input bytes.
    """
    base = hashlib.blake2b(digest_size=DIGEST_SIZE)
    base.update(repr(namespace).encode("utf-8"))
    base.update(b"\0")
    keys = []
    for text in texts:
        h = base.copy()
        h.update(text.encode("utf-8"))
        keys.append(h.digest())
    return keys


@attrs.frozen
class CacheStats:
    """A snapshot of one :class:`EmbeddingCache`.

    ``hits`` and ``misses`` count texts looked up; ``evictions`` entries dropped to
    stay within the bound; ``too_large`` rows refused because one alone exceeds
    ``max_bytes``; ``entries`` and ``bytes`` what is held now (``bytes`` includes the
    per-entry overhead, and is never above ``max_bytes``).
    """

    hits: int
    misses: int
    evictions: int
    too_large: int
    entries: int
    bytes: int
    max_bytes: int

    @property
    def hit_ratio(self) -> float:
        """Hits over lookups; 0.0 before any lookup."""
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0


def _entry_bytes(row: Row) -> int:
    return int(row.nbytes) + ENTRY_OVERHEAD


def _check_max_bytes(_: object, __: object, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"max_bytes must be an int >= 0, got {value!r}")


@attrs.define(repr=False)
class EmbeddingCache:
    """Embeddings already computed, least recently used first out, within ``max_bytes``.

    Pass one to :class:`~embedbalance.EmbeddingClient` or
    :class:`~embedbalance.AsyncEmbeddingClient` as ``cache=``. ``max_bytes`` counts
    vectors plus :data:`ENTRY_OVERHEAD` per entry (``0``: nothing is ever kept, every
    lookup misses). With 384 float32 dimensions an entry costs 1,856 bytes, so the
    default 256 MiB holds about 145,000 texts. The empty cache itself (its first,
    small hash table) costs about 1-2 KiB more, once.

    A cache may be shared by several clients that talk to the *same* deployment: the
    key covers the API, model and options, but not which servers answer, so sharing
    one between clients of two different deployments of the same model name would mix
    their vectors.
    """

    max_bytes: int = attrs.field(default=256 * 2**20, validator=_check_max_bytes)
    _rows: OrderedDict[bytes, Row] = attrs.field(factory=OrderedDict, init=False)
    _bytes: int = attrs.field(default=0, init=False)
    _hits: int = attrs.field(default=0, init=False)
    _misses: int = attrs.field(default=0, init=False)
    _evictions: int = attrs.field(default=0, init=False)
    _too_large: int = attrs.field(default=0, init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)

    def __repr__(self) -> str:
        return f"<EmbeddingCache entries={len(self._rows)} bytes={self._bytes}/{self.max_bytes}>"

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is held; neither counts as a lookup nor refreshes recency."""
        return key in self._rows

    def get_many(self, keys: Sequence[bytes]) -> list[Row | None]:
        """Each key's row (read-only; copy it before handing it out), or ``None``.

        Every found key becomes the most recently used; hits and misses are counted.
        """
        found: list[Row | None] = []
        with self._lock:
            for key in keys:
                row = self._rows.get(key)
                if row is not None:
                    self._rows.move_to_end(key)
                found.append(row)
            hits = sum(row is not None for row in found)
            self._hits += hits
            self._misses += len(keys) - hits
        return found

    def put_many(self, keys: Sequence[bytes], rows: npt.NDArray[np.floating]) -> None:
        """Store ``rows[i]`` under ``keys[i]``, evicting least recently used entries to
        stay within ``max_bytes``; a key already held is only refreshed.

        Each row is copied into its own read-only array: a view would keep the whole
        batch matrix alive (far more memory than counted) and let its owner change it.
        """
        if len(keys) != len(rows):
            raise ValueError(f"{len(keys)} keys for {len(rows)} rows")
        with self._lock:
            for key, row in zip(keys, rows, strict=True):
                if key in self._rows:
                    self._rows.move_to_end(key)
                    continue
                size = _entry_bytes(row)
                if size > self.max_bytes:
                    self._too_large += 1
                    continue
                while self._bytes + size > self.max_bytes:
                    _, old = self._rows.popitem(last=False)
                    self._bytes -= _entry_bytes(old)
                    self._evictions += 1
                kept = np.array(row, copy=True)
                kept.flags.writeable = False
                self._rows[key] = kept
                self._bytes += size

    def clear(self) -> None:
        """Drop every entry (the counters are kept)."""
        with self._lock:
            self._rows.clear()
            self._bytes = 0

    def stats(self) -> CacheStats:
        """Counters and current size, read together under the lock."""
        with self._lock:
            return CacheStats(
                hits=self._hits,
                misses=self._misses,
                evictions=self._evictions,
                too_large=self._too_large,
                entries=len(self._rows),
                bytes=self._bytes,
                max_bytes=self.max_bytes,
            )


@attrs.frozen
class CacheLookup:
    """One call's texts split into those the cache answered and those still to embed.

    ``missing`` are the texts to send, in order; :meth:`merge` takes their fresh rows,
    stores them, and returns every text's row in the original order.
    """

    cache: EmbeddingCache
    keys: list[bytes]
    found: list[Row | None]
    missing: list[str]

    @classmethod
    def of(cls, cache: EmbeddingCache, namespace: Hashable, texts: list[str]) -> CacheLookup:
        keys = cache_keys(namespace, texts)
        found = cache.get_many(keys)
        missing = [t for t, row in zip(texts, found, strict=True) if row is None]
        return cls(cache, keys, found, missing)

    def merge(self, fresh: npt.NDArray[np.floating]) -> npt.NDArray[np.floating]:
        """Store ``fresh`` (one row per missing text, already validated) and return a
        new matrix with a row for every text, cached ones copied in."""
        miss_keys = [k for k, row in zip(self.keys, self.found, strict=True) if row is None]
        if miss_keys:
            self.cache.put_many(miss_keys, fresh)
        if len(miss_keys) == len(self.keys):
            return fresh
        hits = [row for row in self.found if row is not None]
        out = np.empty((len(self.keys), hits[0].shape[0]), dtype=hits[0].dtype)
        is_hit = np.fromiter((row is not None for row in self.found), bool, len(self.found))
        out[is_hit] = hits
        if miss_keys:
            out[~is_hit] = fresh
        return out
