"""EmbeddingCache on its own: keys, the LRU-by-bytes bound, read-only rows, merging a
call's cached and fresh rows, and threads. Pure: no servers, no clock."""

from __future__ import annotations

import threading
import tracemalloc
from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embedbalance import CacheStats, EmbeddingCache
from embedbalance.cache import ENTRY_OVERHEAD, CacheLookup, cache_keys


def _row(value: float, dim: int = 4, dtype: type = np.float32) -> np.ndarray:
    return np.full(dim, value, dtype=dtype)


def _put(cache: EmbeddingCache, key: bytes, row: np.ndarray) -> None:
    cache.put_many([key], row[None, :])


# -- keys --------------------------------------------------------------------------------


def test_keys_are_short_digests_that_depend_on_namespace_and_text() -> None:
    """A key is 16 bytes whatever the text's length, equal for equal inputs and
    different when the text or any namespace field differs. If this fails, two models
    or option sets could read each other's rows, or keys hold the text itself."""
    ns = ("tei", "/embed", None, True, None, None, "float", "float32")
    long_text = "boilerplate " * 10_000
    (a, b, c) = cache_keys(ns, ["hello", "hello", long_text])
    assert a == b
    assert len(a) == len(c) == 16
    assert cache_keys(ns, ["hello!"])[0] != a
    for i in range(len(ns)):
        other = (*ns[:i], "something else", *ns[i + 1 :])
        assert cache_keys(other, ["hello"])[0] != a, f"namespace field {i} is ignored"


def test_namespace_and_text_cannot_run_into_each_other() -> None:
    """Moving characters between the namespace and the text changes the key. If this
    fails, a crafted text could read another namespace's row."""
    assert cache_keys(("a",), ["bc"]) != cache_keys(("ab",), ["c"])
    assert cache_keys(("a",), ["')\x00x"]) != cache_keys(("a')",), ["x"])


def test_max_bytes_must_be_a_non_negative_int() -> None:
    """A negative, fractional or boolean bound is refused at construction. If this
    fails, a typo like max_bytes=-1 silently caches nothing or everything."""
    for bad in (-1, 1.5, True, "10"):
        with pytest.raises(ValueError, match="max_bytes"):
            EmbeddingCache(max_bytes=bad)  # type: ignore[arg-type]


# -- the bound ---------------------------------------------------------------------------


def test_least_recently_used_goes_first_and_a_hit_refreshes() -> None:
    """With room for two entries, a third evicts the least recently *used* one: a get
    makes an entry recent again. If this fails, the cache is FIFO (or worse) and hot
    boilerplate is evicted by one-off texts."""
    size = _row(0).nbytes + ENTRY_OVERHEAD
    cache = EmbeddingCache(max_bytes=2 * size)
    _put(cache, b"a", _row(1))
    _put(cache, b"b", _row(2))
    assert cache.get_many([b"a"])[0] is not None  # a is now the most recent
    _put(cache, b"c", _row(3))
    assert b"a" in cache
    assert b"c" in cache
    assert b"b" not in cache
    stats = cache.stats()
    assert stats == CacheStats(
        hits=1, misses=0, evictions=1, too_large=0, entries=2, bytes=2 * size, max_bytes=2 * size
    )


def test_an_entry_bigger_than_the_bound_is_not_cached_and_evicts_nothing() -> None:
    """A row that alone exceeds max_bytes is refused (counted as too_large) and the
    entries already held stay. If this fails, one huge vector empties the cache or
    breaks the bound."""
    small = _row(1, dim=4)
    cache = EmbeddingCache(max_bytes=small.nbytes + ENTRY_OVERHEAD)
    _put(cache, b"small", small)
    _put(cache, b"huge", _row(2, dim=1000))
    assert b"small" in cache
    assert b"huge" not in cache
    assert cache.stats().too_large == 1
    assert cache.stats().evictions == 0


def test_zero_bytes_caches_nothing() -> None:
    """max_bytes=0 keeps nothing and every lookup misses. If this fails, 0 does not
    mean "off" as documented."""
    cache = EmbeddingCache(max_bytes=0)
    _put(cache, b"a", _row(1))
    assert cache.get_many([b"a"]) == [None]
    assert cache.stats().bytes == 0


class _ModelLru:
    """The obvious reference: a list in recency order, evicting from the front."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.items: OrderedDict[bytes, int] = OrderedDict()

    def get(self, key: bytes) -> bool:
        if key in self.items:
            self.items.move_to_end(key)
            return True
        return False

    def put(self, key: bytes, size: int) -> None:
        if key in self.items:
            self.items.move_to_end(key)
            return
        if size > self.max_bytes:
            return
        while sum(self.items.values()) + size > self.max_bytes:
            self.items.popitem(last=False)
        self.items[key] = size


_ops = st.lists(
    st.tuples(
        st.sampled_from(["get", "put"]),
        st.integers(0, 12).map(lambda i: b"k%d" % i),
        st.integers(1, 40),  # row dimension
    ),
    max_size=80,
)


@settings(max_examples=200, deadline=None)
@given(max_entries=st.integers(0, 8), dim_scale=st.integers(1, 40), ops=_ops)
def test_bytes_never_exceed_the_bound_and_the_most_recent_are_kept(
    max_entries: int, dim_scale: int, ops: list[tuple[str, bytes, int]]
) -> None:
    """Under any sequence of gets and puts of rows of any size, the counted bytes equal
    the held rows' nbytes plus overhead, never exceed max_bytes, and the entries held
    are exactly those a plain LRU-by-bytes keeps (the most recently used). If this
    fails, the bound leaks or the wrong entries are evicted."""
    max_bytes = max_entries * (dim_scale * 4 + ENTRY_OVERHEAD)
    cache = EmbeddingCache(max_bytes=max_bytes)
    model = _ModelLru(max_bytes)
    for op, key, dim in ops:
        if op == "get":
            got = cache.get_many([key])[0]
            assert (got is not None) == model.get(key)
        else:
            row = _row(float(dim), dim=dim)
            _put(cache, key, row)
            model.put(key, row.nbytes + ENTRY_OVERHEAD)
        stats = cache.stats()
        assert stats.bytes <= max_bytes
        assert stats.bytes == sum(model.items.values())
        assert list(cache._rows) == list(model.items)
        held = sum(r.nbytes + ENTRY_OVERHEAD for r in cache._rows.values())
        assert held == stats.bytes


def test_counted_bytes_cover_the_real_memory() -> None:
    """tracemalloc's measure of a filling cache (keys, arrays, table growth) stays
    within the bytes it reports plus a fixed 2 KiB for the first table, at several fill
    levels (the table's spare capacity varies). If this fails, ENTRY_OVERHEAD
    understates the cost and max_bytes is not a real bound."""
    rng = np.random.default_rng(0)
    for n, dim in ((1, 384), (2, 1), (11, 384), (700, 384), (1366, 8), (2800, 1)):
        rows = rng.random((n, dim), dtype=np.float32)
        keys = cache_keys(("ns",), [str(i) for i in range(n)])
        cache = EmbeddingCache(max_bytes=10**9)
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(n):  # one at a time, as calls arrive
            cache.put_many(keys[i : i + 1], rows[i : i + 1])
        used = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        assert used <= cache.stats().bytes + 2048, (n, dim, used, cache.stats().bytes)
        if n > 100:  # past the first tables, the per-entry charge alone covers it
            assert used <= cache.stats().bytes, (n, dim, used, cache.stats().bytes)


# -- rows are safe -----------------------------------------------------------------------


def test_clear_drops_every_row_and_keeps_the_counters() -> None:
    """``clear()`` empties the cache (entries and bytes to 0, every key a miss again)
    and keeps hits and misses. If this fails, the documented remedy for rows a wrong
    replica served before the canary ejected it leaves them in place."""
    cache = EmbeddingCache(max_bytes=1 << 20)
    _put(cache, b"a" * 16, _row(1.0))
    _put(cache, b"b" * 16, _row(2.0))
    assert cache.get_many([b"a" * 16])[0] is not None
    cache.clear()
    stats = cache.stats()
    assert (len(cache), stats.entries, stats.bytes, stats.hits) == (0, 0, 0, 1)
    assert cache.get_many([b"a" * 16, b"b" * 16]) == [None, None]


def test_stored_rows_are_read_only_copies() -> None:
    """put_many copies each row: changing the caller's matrix afterwards does not
    change the cache, and the stored row refuses writes. If this fails, a caller can
    poison later calls' results."""
    cache = EmbeddingCache()
    rows = np.arange(8, dtype=np.float32).reshape(2, 4)
    cache.put_many([b"a", b"b"], rows)
    rows[:] = -1
    got = cache.get_many([b"a"])[0]
    assert got is not None
    np.testing.assert_array_equal(got, [0, 1, 2, 3])
    assert got.base is None or got.base is not rows  # not a view into the batch
    with pytest.raises(ValueError, match="read-only"):
        got[0] = 99


def test_lookup_merges_cached_and_fresh_rows_in_order_into_a_new_matrix() -> None:
    """A lookup sends only the missing texts; merge puts fresh and cached rows back in
    the input order, stores the fresh ones, and the result is a new writable matrix.
    If this fails, rows are misplaced or the returned matrix aliases the cache."""
    cache = EmbeddingCache()
    ns = ("ns",)
    first = CacheLookup.of(cache, ns, ["a", "b"])
    assert first.missing == ["a", "b"]
    out1 = first.merge(np.array([[1, 1], [2, 2]], dtype=np.float32))
    second = CacheLookup.of(cache, ns, ["c", "b", "a"])
    assert second.missing == ["c"]
    out2 = second.merge(np.array([[3, 3]], dtype=np.float32))
    np.testing.assert_array_equal(out2, [[3, 3], [2, 2], [1, 1]])
    out2[:] = 0
    out1[:] = 0
    third = CacheLookup.of(cache, ns, ["a", "b", "c"])
    assert third.missing == []
    np.testing.assert_array_equal(
        third.merge(np.empty((0, 0), np.float32)), [[1, 1], [2, 2], [3, 3]]
    )
    assert cache.stats().hits == 5
    assert cache.stats().misses == 3


def test_lookup_keeps_the_float16_dtype() -> None:
    """Cached float16 rows come back float16, bit for bit. If this fails, a float16
    client gets float32 rows (or rounded ones) from the cache."""
    cache = EmbeddingCache()
    fresh = np.array([[0.1, 0.2]], dtype=np.float16)
    CacheLookup.of(cache, ("ns",), ["a"]).merge(fresh)
    again = CacheLookup.of(cache, ("ns",), ["a", "a"]).merge(np.empty((0, 0), np.float16))
    assert again.dtype == np.float16
    np.testing.assert_array_equal(again, np.vstack([fresh, fresh]))


def test_threads_sharing_a_cache_keep_the_bound_and_the_counts() -> None:
    """Eight threads putting and getting at once leave consistent counters (every
    lookup counted once) and bytes within the bound. If this fails, the lock does not
    cover the table and the sync client's worker threads corrupt it."""
    size = _row(0).nbytes + ENTRY_OVERHEAD
    cache = EmbeddingCache(max_bytes=50 * size)
    keys = [b"k%d" % i for i in range(200)]
    barrier = threading.Barrier(8)

    def work(t: int) -> None:
        barrier.wait()
        for i in range(300):
            key = keys[(i * 7 + t) % len(keys)]
            if cache.get_many([key])[0] is None:
                _put(cache, key, _row(float(i)))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    stats = cache.stats()
    assert stats.hits + stats.misses == 8 * 300
    assert stats.bytes == stats.entries * size <= 50 * size
