"""Not embedding the same text twice: within one call (both clients, per-call options,
``dedupe=False``) and across calls through an ``EmbeddingCache``. Against the real
workers of this suite's fixtures (what each worker embedded is read from its own
``/metrics``), and against fakes where a server must misbehave or be counted exactly."""

from __future__ import annotations

import re

import httpx
import numpy as np
import pytest
from tests.client._checks import assert_rows_match
from tests.client.fake_server import FakeBackend

import embedbalance as eb
from embedbalance import AsyncEmbeddingClient, EmbeddingCache, EmbeddingClient

QUIET = {"health_check": None, "balancer": eb.RoundRobin}
_BATCH_SUM = re.compile(r"^embedbalance_worker_batch_size_sum (\S+)$", re.M)


def _texts_seen(urls: list[str]) -> int:
    """Texts the workers have run through the model so far, from their /metrics."""
    total = 0.0
    for url in urls:
        match = _BATCH_SUM.search(httpx.get(url + "/metrics", timeout=10).text)
        assert match, "the worker exports embedbalance_worker_batch_size"
        total += float(match.group(1))
    return int(total)


def _sent(server: FakeBackend) -> list[str]:
    return [t for body in server.embed_requests for t in body.get("inputs", body.get("input", []))]


def _calls(corpus: list[str]) -> tuple[list[str], list[str]]:
    """Two calls: 20 distinct texts with 10 repeated inside the call, then 20 new texts
    mixed with 15 seen in the first call."""
    first = corpus[:20] + corpus[:10]
    second = corpus[10:40] + corpus[:5]
    return first, second


def test_a_second_call_sends_only_new_texts_to_real_workers(
    urls: list[str], corpus: list[str], reference: dict[str, np.ndarray]
) -> None:
    """The workers embed each distinct text once across two calls; every row equals its
    text's own embedding, in input order, and a cached row is bit-identical to the
    fresh one. If this fails, the cache re-sends texts it holds, or returns rows that
    differ from what a server would answer."""
    first, second = _calls(corpus)
    cache = EmbeddingCache(max_bytes=1 << 20)
    with EmbeddingClient(urls, batch_size=8, truncate=True, cache=cache) as client:
        seen = _texts_seen(urls)
        rows1 = client.embed(first)
        after_first = _texts_seen(urls)
        rows2 = client.embed(second)
        after_second = _texts_seen(urls)
        stats = client.stats()
    assert after_first - seen == 20  # 10 in-call repeats folded
    assert after_second - after_first == 20  # only corpus[20:40] was new
    assert_rows_match(rows1, first, reference)
    assert_rows_match(rows2, second, reference)
    np.testing.assert_array_equal(rows2[:10], rows1[10:20])  # cached == fresh, bit for bit
    assert stats.duplicates == 10
    assert stats.cache is not None
    assert (stats.cache.hits, stats.cache.misses, stats.cache.entries) == (15, 40, 40)
    assert isinstance(stats, eb.TransportStats)  # the old snapshot, extended


@pytest.mark.anyio
async def test_the_async_client_sends_only_new_texts_to_real_workers(
    urls: list[str], corpus: list[str], reference: dict[str, np.ndarray]
) -> None:
    """The async twin folds repeats and reads the cache the same way, on asyncio and
    trio. If this fails, the async client bypasses the dedup or cache hook."""
    first, second = _calls(corpus[40:])
    cache = EmbeddingCache(max_bytes=1 << 20)
    async with AsyncEmbeddingClient(urls, batch_size=8, truncate=True, cache=cache) as client:
        seen = _texts_seen(urls)
        rows1 = await client.embed(first)
        after_first = _texts_seen(urls)
        rows2 = await client.embed(second)
        after_second = _texts_seen(urls)
        stats = client.stats()
    assert (after_first - seen, after_second - after_first) == (20, 20)
    assert_rows_match(rows1, first, reference)
    assert_rows_match(rows2, second, reference)
    assert stats.duplicates == 10
    assert stats.cache is not None
    assert stats.cache.hits == 15


def test_a_caller_mutating_a_result_cannot_poison_the_cache(fake: FakeBackend) -> None:
    """Writing into a returned matrix (rows served fresh or from the cache) leaves the
    next call's rows intact. If this fails, the cache hands out its own arrays."""
    texts = ["alpha", "beta", "gamma"]
    with EmbeddingClient([fake.url], cache=EmbeddingCache(), **QUIET) as client:
        fresh = client.embed(texts)
        expected = fresh.copy()
        fresh[:] = -1
        cached = client.embed(texts)
        np.testing.assert_array_equal(cached, expected)
        cached[:] = -2
        np.testing.assert_array_equal(client.embed(texts), expected)
        assert client.embed("beta")[0] == expected[1][0]
    assert len(fake.embed_requests) == 1


def test_a_call_the_cache_answers_whole_sends_nothing(fake: FakeBackend) -> None:
    """When every text is cached, no embed request is made and the result keeps the
    client's dtype and shape (float16 here). If this fails, fully cached calls still
    cost a round trip or come back in the wrong dtype."""
    with EmbeddingClient([fake.url], dtype="float16", cache=EmbeddingCache(), **QUIET) as client:
        client.embed(["a", "bb", "ccc"])
        rows = client.embed(["ccc", "a", "ccc"])
    assert len(fake.embed_requests) == 1
    assert rows.dtype == np.float16
    assert rows.shape == (3, 7)
    np.testing.assert_array_equal(rows[:, 0], [3, 1, 3])


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_per_call_model_is_part_of_the_key_and_repeats_fold_per_call(kind: str) -> None:
    """Over the OpenAI API, embed(model=...) with another model misses the cache, a
    second call for that model hits it, and repeats inside that call are still sent
    once (both clients). If this fails, a per-call model reads another model's rows,
    or its rows are stored under one key and looked up under another."""
    calls: list[tuple[list[str], str | None]] = [
        (["x", "y", "x"], None),
        (["x", "y", "x"], "m2"),
        (["y", "x"], "m2"),
        (["x"], None),
        (["z"], None),
        (["z"], "m1"),  # the client's own model, named: a hit
    ]
    options = {"api": "openai", "model": "m1", "cache": EmbeddingCache(), **QUIET}
    with FakeBackend() as server:
        if kind == "sync":
            with EmbeddingClient([server.url], **options) as client:  # type: ignore[arg-type]
                for texts, model in calls:
                    client.embed(texts, model=model)
                stats = client.stats()
        else:
            async with AsyncEmbeddingClient([server.url], **options) as aclient:  # type: ignore[arg-type]
                for texts, model in calls:
                    await aclient.embed(texts, model=model)
                stats = aclient.stats()
    assert _sent(server) == ["x", "y", "x", "y", "z"]
    assert [body["model"] for body in server.embed_requests] == ["m1", "m2", "m1"]
    assert stats.duplicates == 2
    assert stats.cache is not None
    assert (stats.cache.hits, stats.cache.misses) == (4, 5)


def test_per_call_model_repeats_fold_in_the_sync_client_without_a_cache() -> None:
    """Without a cache, the sync client still sends repeats once per call, with a
    per-call model, and counts them in stats(). If this fails, within-call dedup
    depends on the cache or on the client's default options."""
    with FakeBackend() as server, EmbeddingClient([server.url], api="openai", **QUIET) as client:
        rows = client.embed(["x", "y", "x", "x"], model="m2")
        client.embed(["x", "y"], model="m2")
        stats = client.stats()
    assert _sent(server) == ["x", "y", "x", "y"]
    assert server.embed_requests[0]["model"] == "m2"
    np.testing.assert_array_equal(rows[:, 0], [1, 1, 1, 1])
    assert stats.duplicates == 2
    assert stats.cache is None


@pytest.mark.anyio
async def test_dedupe_false_sends_every_text_as_given(fake: FakeBackend) -> None:
    """dedupe=False turns within-call folding off, in both clients. If this fails, the
    documented switch (used by the benchmark's baseline) does nothing."""
    texts = ["a", "b", "a", "a"]
    with EmbeddingClient([fake.url], dedupe=False, **QUIET) as client:
        client.embed(texts)
        assert client.stats().duplicates == 0
    async with AsyncEmbeddingClient([fake.url], dedupe=False, **QUIET) as aclient:
        await aclient.embed(texts)
    assert _sent(fake) == texts + texts


def test_only_validated_rows_are_cached() -> None:
    """A call whose answers are wrong everywhere caches nothing; with a bad replica
    beside a good one only the good rows are stored, and they come back right. If this
    fails, a NaN row could be served from the cache forever."""
    texts = [f"text {i}" for i in range(6)]
    cache = EmbeddingCache()
    with FakeBackend(mode="nan") as bad:
        with (
            EmbeddingClient([bad.url], cache=cache, **QUIET) as client,
            pytest.raises(eb.ResponseFormatError),
        ):
            client.embed(texts)
        assert len(cache) == 0
        with (
            FakeBackend() as good,
            EmbeddingClient([bad.url, good.url], batch_size=2, cache=cache, **QUIET) as c,
        ):
            rows = c.embed(texts)
            again = c.embed(texts)
    np.testing.assert_array_equal(rows[:, 0], [6.0] * 6)
    np.testing.assert_array_equal(again, rows)
    assert np.isfinite(again).all()
    assert len(cache) == 6


def test_embed_iter_reads_and_fills_the_cache(fake: FakeBackend) -> None:
    """A second pass of embed_iter over the same corpus is answered by the cache, chunk
    by chunk, in order. If this fails, the streaming path skips the cache hook."""
    texts = [f"doc {i} " + "x" * (i % 9) for i in range(50)]
    with EmbeddingClient([fake.url], cache=EmbeddingCache(), **QUIET) as client:
        first = np.vstack(list(client.embed_iter(texts, chunk_size=16)))
        sent = len(_sent(fake))
        second = np.vstack(list(client.embed_iter(texts, chunk_size=16)))
    assert sent == 50
    assert len(_sent(fake)) == 50
    np.testing.assert_array_equal(first, second)


def test_prometheus_exports_duplicates_and_cache_counters(fake: FakeBackend) -> None:
    """PrometheusMetrics given to a client with a cache exports duplicates folded,
    hits, misses, evictions, entries and bytes within the bound. If this fails, the
    savings are invisible on dashboards."""
    prometheus_client = pytest.importorskip("prometheus_client")
    from embedbalance.cache import ENTRY_OVERHEAD

    registry = prometheus_client.CollectorRegistry()
    entry = 7 * 4 + ENTRY_OVERHEAD
    cache = EmbeddingCache(max_bytes=3 * entry)
    metrics = eb.PrometheusMetrics(registry)
    with EmbeddingClient([fake.url], cache=cache, metrics=metrics, **QUIET) as client:
        client.embed(["a", "b", "a"])
        client.embed(["a", "c", "d"])
    value = registry.get_sample_value
    assert value("embedbalance_duplicates_folded_total") == 1
    assert value("embedbalance_cache_hits_total") == 1
    assert value("embedbalance_cache_misses_total") == 4
    assert value("embedbalance_cache_evictions_total") == 1
    assert value("embedbalance_cache_entries") == 3
    assert value("embedbalance_cache_bytes") == 3 * entry
    assert value("embedbalance_cache_max_bytes") == 3 * entry


def test_a_cache_argument_of_the_wrong_type_is_refused() -> None:
    """cache= takes an EmbeddingCache; anything else raises TypeError at construction.
    If this fails, cache=True or a dict fails later, mid-call, with an obscure error."""
    with pytest.raises(TypeError, match="EmbeddingCache"):
        EmbeddingClient(["http://127.0.0.1:9"], cache={}, **QUIET)  # type: ignore[arg-type]
