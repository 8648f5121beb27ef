"""Promises the sync client kept under test and its async twin did not (found by
mutation testing: the async lines could change and no test noticed): limits learned
from ``/info`` once, from a replica of the client's model, and a failed ``/info`` that
only means nothing is learned; one ``str`` in, one row out; concurrency that follows
the live membership; a closed client that says so; rows checked against the texts
sent; a bulk sub-batch's tokens as its cost. Each runs against both clients where both
have the promise. Real servers on loopback (``FakeBackend``)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import anyio
import httpx
import numpy as np
import pytest
from tests.client.fake_server import FakeBackend, InFlight

import embedbalance as eb
from embedbalance._batching import estimate_tokens

QUIET = {"health_check": None, "balancer": eb.RoundRobin}
TEXTS = [f"text number {i} " + "x" * i for i in range(24)]

pytestmark = pytest.mark.anyio


def _expected(dim: int, texts: Sequence[str]) -> np.ndarray:
    return np.array([[float(len(t))] + [0.5] * (dim - 1) for t in texts], dtype=np.float32)


def _info_gets(server: FakeBackend) -> int:
    return sum(1 for method, path, _ in server.requests if (method, path) == ("GET", "/info"))


async def _embed(kind: str, backends: list[object], texts: list[str], **options: object) -> list:
    """Embed ``texts`` twice through one client of ``kind``; the two results."""
    if kind == "sync":
        with eb.EmbeddingClient(backends, **{**QUIET, **options}) as client:  # type: ignore[arg-type]
            return [client.embed(texts), client.embed(texts)]
    async with eb.AsyncEmbeddingClient(backends, **{**QUIET, **options}) as aclient:  # type: ignore[arg-type]
        return [await aclient.embed(texts), await aclient.embed(texts)]


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_info_limits_are_asked_once_and_cap_sub_batches_from_the_first_call(
    kind: str,
) -> None:
    """``max_client_batch_size`` in ``/info`` caps sub-batches before any 413, and
    ``/info`` is asked once per client, not per call. If this fails, the first call of
    every client is refused and split, or every call costs an extra round trip."""
    with FakeBackend(max_batch=4) as server:
        first, second = await _embed(kind, [server.url], TEXTS[:16], batch_size=16)
    np.testing.assert_array_equal(first, _expected(7, TEXTS[:16]))
    np.testing.assert_array_equal(second, first)
    assert _info_gets(server) == 1
    sizes = [len(body["inputs"]) for body in server.embed_requests]
    assert max(sizes) <= 4
    assert sum(sizes) == 32  # nothing refused, nothing sent twice


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_probe_info_false_asks_nothing(kind: str) -> None:
    """``probe_info=False``: no ``GET /info``; the first sub-batch goes at the configured
    size and the server's 413 teaches the limit. If this fails, the switch for servers
    without ``/info`` does nothing."""
    with FakeBackend(max_batch=4) as server:
        first, _ = await _embed(kind, [server.url], TEXTS[:16], batch_size=16, probe_info=False)
    np.testing.assert_array_equal(first, _expected(7, TEXTS[:16]))
    assert _info_gets(server) == 0
    assert len(server.embed_requests[0]["inputs"]) == 16  # refused, then split


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_info_limits_come_from_a_replica_of_the_clients_model(kind: str) -> None:
    """The limits probe goes where the client's own requests go. A client of model
    "large" (limit 3) next to a "small" replica with no limit never sends "large" more
    than 3 texts at once. If this fails, the probe reads the other model's replica and
    the first call is refused. Eight fresh clients, so a lucky first pick cannot pass."""
    with FakeBackend(dim=5) as small, FakeBackend(dim=7, max_batch=3) as large:
        backends: list[object] = [
            eb.Backend(small.url, model="small"),
            eb.Backend(large.url, model="large"),
        ]
        for _ in range(8):
            rows, _ = await _embed(kind, backends, TEXTS[:12], model="large", batch_size=16)
            np.testing.assert_array_equal(rows, _expected(7, TEXTS[:12]))
    assert _info_gets(small) == 0
    assert _info_gets(large) == 8
    assert max(len(body["inputs"]) for body in large.embed_requests) == 3


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_an_info_probe_that_fails_only_means_nothing_is_learned(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``/info`` dropping the connection: the call still embeds with the configured
    limits, says why at DEBUG, and does not ask again. If this fails, a server without
    a working ``/info`` fails every call, or the reason is lost."""
    caplog.set_level(logging.DEBUG, logger="embedbalance.client")
    with FakeBackend(mode="info_drop") as server:
        first, second = await _embed(kind, [server.url], TEXTS[:6], batch_size=16)
    np.testing.assert_array_equal(first, _expected(7, TEXTS[:6]))
    np.testing.assert_array_equal(second, first)
    assert _info_gets(server) == 1
    said = [
        r
        for r in caplog.records
        if r.name == "embedbalance.client" and r.getMessage().startswith("GET /info failed (")
    ]
    assert len(said) == 1, caplog.text
    assert said[0].levelno == logging.DEBUG
    message = said[0].getMessage()
    assert message.endswith("): using the configured limits")
    assert server.url in message  # the reason names the replica


async def test_async_single_string_gives_one_row() -> None:
    """``await embed("text")`` returns that text's row, shape ``(dim,)``, like the sync
    client. If this fails, async callers get a matrix or None for one text."""
    with FakeBackend() as server:
        async with eb.AsyncEmbeddingClient([server.url], **QUIET) as client:  # type: ignore[arg-type]
            row = await client.embed("hello")
            rows = await client.embed(["hello", "hi"])
    assert row.shape == (7,)
    np.testing.assert_array_equal(row, rows[0])
    assert server.embed_requests[0]["inputs"] == ["hello"]


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_closed_client_says_so_whatever_is_called(kind: str) -> None:
    """After close, every call raises ``RuntimeError("the client is closed")``: an
    embed, an empty embed (even one that needs no request), ``info()``. If this fails,
    the caller reads httpx's message about some inner client it never made, or an empty
    embed answers after shutdown as if nothing had happened."""
    calls = {
        "embed": lambda c: c.embed(["a"]),
        "empty": lambda c: c.embed([]),
        "info": lambda c: c.info(),
    }
    with FakeBackend() as server:
        for name, call in calls.items():
            options = {**QUIET, "dimension": 7 if name == "empty" else None}
            if kind == "sync":
                client = eb.EmbeddingClient([server.url], **options)  # type: ignore[arg-type]
                client.close()
                client.close()
                with pytest.raises(RuntimeError, match=r"^the client is closed$"):
                    call(client)
            else:
                aclient = eb.AsyncEmbeddingClient([server.url], **options)  # type: ignore[arg-type]
                await aclient.aclose()
                await aclient.aclose()
                with pytest.raises(RuntimeError, match=r"^the client is closed$"):
                    await call(aclient)
    assert server.requests == []


async def test_async_concurrency_follows_the_live_membership() -> None:
    """The async twin of the sync rule: sub-batches in flight are sized from the pool
    as it is now, so a client made with one backend uses more once more join (and
    fewer again when they leave). If this fails, a client made while DNS discovery was
    still filling stays at one replica's concurrency for its whole life."""
    group = InFlight()
    backends = [FakeBackend(delay=0.05, group=group) for _ in range(4)]
    try:
        async with eb.AsyncEmbeddingClient(
            [backends[0].url], batch_size=1, slow_start=None, probe_info=False, **QUIET
        ) as client:  # type: ignore[arg-type]
            await client.embed(TEXTS[:12])
            assert group.peak == 2  # two per live backend
            for extra in backends[1:]:
                client.transport.pool.add(extra.url)
            await client.embed(TEXTS[:24])
            assert group.peak > 2
            assert all(b.embed_requests for b in backends[1:])
            for extra in backends[1:]:
                client.transport.pool.remove(extra.url)
            group.peak = 0
            await client.embed(TEXTS[:12])
            assert group.peak == 2
    finally:
        for backend in backends:
            backend.close()


async def test_async_a_replica_answering_too_few_rows_is_routed_around() -> None:
    """A replica answering one row short fails its attempts; the rows come from the
    good one, every row right. If this fails, the async client pairs rows with the
    wrong texts."""
    with FakeBackend() as good, FakeBackend(mode="wrong_rows") as bad:
        async with eb.AsyncEmbeddingClient(
            [good.url, bad.url], batch_size=4, probe_info=False, **QUIET
        ) as client:  # type: ignore[arg-type]
            rows = await client.embed(TEXTS)
            stats = client.stats().pool.by_url()
    np.testing.assert_array_equal(rows, _expected(7, TEXTS))
    assert bad.embed_requests, "the bad replica was tried"
    assert stats[bad.url].successes == 0


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_bulk_sub_batch_is_measured_per_token(kind: str) -> None:
    """The bulk limit compares latencies per token (its baseline is seconds per token
    of the sub-batch), so a small sub-batch's quick answer does not pass for the pool's
    idle latency. One sub-batch of known tokens against a replica that takes at least
    50 ms: the baseline lies between 50 ms and the call's wall time, both divided by
    those tokens. If this fails, the cost is not passed and the baseline is a whole
    request's latency."""
    texts = TEXTS[:4]
    tokens = sum(estimate_tokens(t) for t in texts)
    options = {**QUIET, "priority": "bulk", "batch_size": 8, "probe_info": False}
    with FakeBackend(delay=0.05) as server:
        started = time.monotonic()
        if kind == "sync":
            with eb.EmbeddingClient([server.url], **options) as client:  # type: ignore[arg-type]
                client.embed(texts)
                gate = client._gate
        else:
            async with eb.AsyncEmbeddingClient([server.url], **options) as aclient:  # type: ignore[arg-type]
                await aclient.embed(texts)
                gate = aclient._gate  # type: ignore[assignment]
        elapsed = time.monotonic() - started
    assert len(server.embed_requests) == 1
    assert gate is not None
    baseline = gate.limiter.baseline
    assert baseline is not None
    assert 0.05 / tokens <= baseline <= elapsed / tokens


async def test_async_embed_draws_a_bar_with_the_calls_total(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``await embed(texts)`` past the progress threshold draws a bar that knows the
    call's total, as the sync client does. If this fails, a large async call shows a
    bar without an end, or none."""
    pytest.importorskip("tqdm", reason="the progress extra (tqdm) draws the bar")
    with FakeBackend(dim=3) as server:
        async with eb.AsyncEmbeddingClient(
            [server.url], probe_info=False, progress_threshold=50, **QUIET
        ) as client:  # type: ignore[arg-type]
            await client.embed([f"t{i}" for i in range(10)])
            assert "embedding" not in capsys.readouterr().err
            await client.embed([f"t{i}" for i in range(60)])
            assert "60/60" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_tokenizer_drives_the_split_and_each_event_carries_its_counts(
    kind: str,
) -> None:
    """A user tokenizer's counts size the sub-batches, and every ``BatchEvent`` carries
    its sub-batch's texts and tokens. If this fails, ``on_batch`` consumers (cost
    accounting, dashboards) read other numbers than those sent."""
    events: list[eb.BatchEvent] = []
    texts = [f"t{i}" for i in range(20)]
    options = {"tokenizer": lambda text: 100, "batch_tokens": 300, "on_batch": events.append}
    with FakeBackend() as server:
        rows, _ = await _embed(kind, [server.url], texts, probe_info=False, **options)
    np.testing.assert_array_equal(rows, _expected(7, texts))
    assert max(e.texts for e in events) == 3
    assert sum(e.texts for e in events) == 40  # two calls of 20
    assert all(e.tokens == 100 * e.texts for e in events)
    assert {e.backend for e in events} == {server.url}


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_call_for_another_model_is_checked_and_split_for_that_model(
    kind: str,
) -> None:
    """A client of model "small" (one string and a list) asks for model "large": rows of
    large's size, from large's replica only, its 413 split sent to large again with each
    half's share of the tokens, and sub-batches planned for large's one replica (not
    the pool's three). If this fails,
    a per-call model's rows are checked against the client's own dimension, or its
    split halves land on another model."""
    with (
        FakeBackend(dim=5) as small1,
        FakeBackend(dim=5) as small2,
        FakeBackend(dim=7, max_batch=16, mode="413_plain") as large,
    ):
        backends: list[object] = [
            eb.Backend(small1.url, model="small"),
            eb.Backend(small2.url, model="small"),
            eb.Backend(large.url, model="large"),
        ]
        texts = TEXTS  # 24: three sub-batches for three replicas, one for one
        events: list[eb.BatchEvent] = []
        options = {
            **QUIET,
            "model": "small",
            "probe_info": False,
            "batch_size": 32,
            "on_batch": events.append,
        }
        if kind == "sync":
            with eb.EmbeddingClient(backends, **options) as client:  # type: ignore[arg-type]
                own = client.embed(texts)
                row = client.embed("hello", model="large")
                rows = client.embed(texts, model="large")
        else:
            async with eb.AsyncEmbeddingClient(backends, **options) as aclient:  # type: ignore[arg-type]
                own = await aclient.embed(texts)
                row = await aclient.embed("hello", model="large")
                rows = await aclient.embed(texts, model="large")
    assert own.shape == (24, 5)
    assert row.shape == (7,)
    np.testing.assert_array_equal(rows, _expected(7, texts))
    sizes = [len(body["inputs"]) for body in large.embed_requests]
    # "hello"; then all 24 in one sub-batch (large has one replica), refused, halved.
    assert sizes == [1, 24, 12, 12]
    # Each half carries its share of the refused sub-batch's tokens, in whole tokens.
    halves = [e.tokens for e in events if e.backend == large.url and e.texts == 12]
    whole = sum(estimate_tokens(t) for t in texts)
    assert len(halves) == 2
    assert all(isinstance(t, int) for t in halves)
    assert whole - 1 <= sum(halves) <= whole


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_sub_batch_refused_for_the_callers_error_raises_that_error_itself(
    kind: str,
) -> None:
    """One text the server refuses (413 on a single input): the call raises the
    ``EmbeddingRequestError`` itself, not a wrapper and not another sub-batch's error.
    If this fails, async callers catch an ``IndexError`` or an exception group where
    the docs promise the request error."""
    with FakeBackend(max_batch=0) as server, pytest.raises(eb.EmbeddingRequestError) as info:
        await _embed(kind, [server.url], ["one"], probe_info=False)
    assert info.value.status == 413
    assert len(server.embed_requests) == 1


def test_the_sync_clients_threads_follow_the_membership_and_are_reused() -> None:
    """The sync client's sub-batch threads: two per live backend, one pool reused from
    call to call while that holds, a larger one as soon as more backends join, a
    smaller one only once the need falls to half or less (not on every departure),
    and a resize that never waits for the old pool's work. If this fails, each call
    builds (and leaks) a thread pool, a pool that grew for a rollout never shrinks, or
    every call stalls behind a slow sub-batch while backends join."""
    urls = [f"http://127.0.0.1:{port}" for port in (9, 10, 11, 12)]
    with eb.EmbeddingClient(urls[:1], health_check=None) as client:
        first = client._pool()
        assert client._pool() is first  # reused
        name = first.submit(lambda: threading.current_thread().name).result()
        assert name.startswith("embedbalance-client")  # findable in a thread dump
        assert client._executor_size == 2
        for url in urls[1:]:
            client.transport.pool.add(url)
        # A resize does not wait for the old pool's work: a sub-batch still running
        # there (held until released below) is left to finish on its own.
        held = threading.Event()
        running = first.submit(held.wait, 5)
        grown = client._pool()
        assert not running.done()  # _pool() returned while the old work still ran
        held.set()
        assert running.result(timeout=10) is True
        assert grown is not first
        assert client._executor_size == 8
        client.transport.pool.remove(urls[3])
        assert client._pool() is grown  # 6 needed: more than half of 8, kept
        client.transport.pool.remove(urls[2])
        shrunk = client._pool()  # 4 needed: half of 8
        assert shrunk is not grown
        assert client._executor_size == 4


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_halves_of_a_refused_sub_batch_cost_at_least_one_token(kind: str) -> None:
    """Two texts a tokenizer counts as nothing (a text costs at least 1) and a 413:
    each one-text half carries a cost of 1, its share of the 2, neither 0 nor more.
    If this fails, split sub-batches go out as free, or as costing more than they do."""
    events: list[eb.BatchEvent] = []
    options = {"tokenizer": lambda text: 0, "on_batch": events.append, "probe_info": False}
    with FakeBackend(max_batch=1, mode="413_plain") as server:
        rows, _ = await _embed(kind, [server.url], TEXTS[:2], **options)
    np.testing.assert_array_equal(rows, _expected(7, TEXTS[:2]))
    # The second call starts at the limit the 413 taught (1 text), refused nothing.
    assert [len(body["inputs"]) for body in server.embed_requests] == [2, 1, 1, 1, 1]
    assert [e.tokens for e in events][:2] == [1, 1]


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_stated_limit_of_one_text_and_an_info_without_limits(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``max_client_batch_size: 1`` in ``/info`` is a limit like any other: one text a
    sub-batch from the first call. A replica whose ``/info`` answers 404 leaves the
    configured limits and says so at DEBUG, naming the status. If this fails, the
    smallest stated limit is ignored (every call refused first), or a missing
    ``/info`` goes unexplained."""
    caplog.set_level(logging.DEBUG, logger="embedbalance.client")
    with FakeBackend(max_batch=1) as one:
        rows, _ = await _embed(kind, [one.url], TEXTS[:3])
    np.testing.assert_array_equal(rows, _expected(7, TEXTS[:3]))
    assert [len(body["inputs"]) for body in one.embed_requests] == [1] * 6
    with FakeBackend(mode="info_missing") as missing:
        await _embed(kind, [missing.url], TEXTS[:3])
    said = [
        r
        for r in caplog.records
        if r.getMessage() == "GET /info answered HTTP 404: using the configured limits"
    ]
    assert [r.levelno for r in said] == [logging.DEBUG]


def test_the_sync_clients_sub_batches_run_in_the_callers_context() -> None:
    """Each sub-batch runs in a copy of the caller's context (contextvars), as an async
    task would: ``on_batch`` (called on the pool's thread) sees the caller's values.
    If this fails, a request id, tenant or tracing span set by the caller is lost in
    the sub-batches."""
    import contextvars

    tenant: contextvars.ContextVar[str] = contextvars.ContextVar("tenant")
    seen: list[str | None] = []
    with (
        FakeBackend() as server,
        eb.EmbeddingClient(
            [server.url],
            batch_size=2,
            on_batch=lambda event: seen.append(tenant.get(None)),
            probe_info=False,
            **QUIET,  # type: ignore[arg-type]
        ) as client,
    ):
        tenant.set("acme")
        client.embed(TEXTS[:6])
    assert len(seen) >= 3  # six texts, at most two a sub-batch
    assert set(seen) == {"acme"}


@pytest.mark.parametrize(
    ("stated", "taken"),
    [
        ({"max_client_batch_size": 0, "max_batch_tokens": 0}, (None, None)),
        ({"max_client_batch_size": -4, "max_batch_tokens": -1}, (None, None)),
        ({"max_client_batch_size": True, "max_batch_tokens": "512"}, (None, None)),
        ({"max_client_batch_size": 2.5, "max_batch_tokens": None}, (None, None)),
        ({"max_client_batch_size": 1, "max_batch_tokens": 1}, (1, 1)),
        ({"max_client_batch_size": 32, "max_batch_tokens": 16384}, (32, 16384)),
    ],
)
def test_only_positive_whole_limits_in_info_are_taken(
    stated: dict[str, object], taken: tuple[int | None, int | None]
) -> None:
    """A limit in ``/info`` counts only as a positive whole number: 0, negatives,
    booleans, strings and fractions leave the configured limits as they were (and a
    sub-batch of at least one text). If this fails, a server stating 0 (meaning "no
    limit") makes the client plan empty sub-batches."""
    with eb.EmbeddingClient(["http://127.0.0.1:9"], health_check=None) as client:
        client._cfg.learn_info(httpx.Response(200, json=stated))
        assert (client._cfg.server_texts, client._cfg.server_tokens) == taken


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_each_batch_event_says_when_its_sub_batch_started_and_how_long_it_took(
    kind: str,
) -> None:
    """``BatchEvent.started`` is a ``time.monotonic()`` reading taken inside the call,
    and ``latency`` the time from there to the answer: at least the replica's 20 ms
    delay, ending before the call returned. If this fails, a caller's per-sub-batch
    timings (the documented way to see which replica was slow) are missing or wrong."""
    events: list[eb.BatchEvent] = []
    options = {"on_batch": events.append, "probe_info": False, "batch_size": 2}
    with FakeBackend(delay=0.02) as server:
        before = time.monotonic()
        await _embed(kind, [server.url], TEXTS[:4], **options)
        after = time.monotonic()
    assert len(events) >= 4  # at least two sub-batches a call, two calls
    for event in events:
        assert before <= event.started
        assert event.latency >= 0.02
        assert event.started + event.latency <= after


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_halves_of_a_refused_sub_batch_cost_whole_shares_of_its_tokens(kind: str) -> None:
    """Three texts of 3 tokens each, refused (413) down to one text a request: each
    text goes out costing 3, a whole number, whichever split it came through. If this
    fails, split sub-batches carry fractional costs (``BatchEvent.tokens`` is an
    ``int``) or shares that do not add up to what they carry."""
    events: list[eb.BatchEvent] = []
    texts = ["one", "two", "six"]
    options = {"tokenizer": lambda text: 3, "on_batch": events.append, "probe_info": False}
    with FakeBackend(max_batch=1, mode="413_plain") as server:
        rows, _ = await _embed(kind, [server.url], texts, **options)
    np.testing.assert_array_equal(rows, _expected(7, texts))
    first_call = events[:3]
    assert [e.texts for e in first_call] == [1, 1, 1]
    assert [e.tokens for e in first_call] == [3, 3, 3]
    assert all(type(e.tokens) is int for e in first_call)


def test_close_waits_for_the_running_sub_batch_and_drops_the_queued_ones() -> None:
    """The sync client's ``close()`` (as documented): a sub-batch already sent is
    waited for (its answer arrives before ``close`` returns), the three still queued
    are never sent, and the call they belonged to, in another thread, raises "the
    client is closed". If this fails, closing cuts a running request off, sends the
    rest of a call that nobody will read, or leaves that call waiting forever (as
    ``shutdown(cancel_futures=True)`` did: it never wakes ``as_completed``)."""
    hold = threading.Event()
    events: list[eb.BatchEvent] = []
    outcome: list[object] = []
    with FakeBackend(hold=hold) as server:
        client = eb.EmbeddingClient(
            [server.url],
            batch_size=1,
            max_concurrency=1,
            probe_info=False,
            on_batch=events.append,
            **QUIET,  # type: ignore[arg-type]
        )

        def call() -> None:
            try:
                outcome.append(client.embed(TEXTS[:4]))
            except BaseException as exc:  # what the interrupted call raises
                outcome.append(exc)

        caller = threading.Thread(target=call)
        caller.start()
        for _ in range(500):  # bounded: until the first sub-batch is in flight
            if server.embed_requests:
                break
            time.sleep(0.01)
        assert len(server.embed_requests) == 1
        closer = threading.Thread(target=client.close)
        closer.start()
        closer.join(0.3)
        assert closer.is_alive()  # still waiting for the held sub-batch
        hold.set()
        closer.join(10)
        caller.join(10)
        assert not closer.is_alive()
        assert len(events) == 1  # the running sub-batch finished before close returned
        assert len(server.embed_requests) == 1  # the queued ones were never sent
    assert len(outcome) == 1  # the interrupted call ended: it did not wait forever
    assert isinstance(outcome[0], RuntimeError)
    assert str(outcome[0]) == "the client is closed"


@pytest.mark.parametrize("concurrency", [1, 2])
async def test_aclose_waits_for_the_running_sub_batch_and_drops_the_queued_ones(
    concurrency: int,
) -> None:
    """The async client's ``aclose()``, like the sync ``close()``: a sub-batch already
    sent is waited for (the server answers it, the client records it), the three still
    queued are never sent, and the call they belonged to, in another task, raises "the
    client is closed". If this fails, closing cuts a running request off — its call
    then failed as ``AllAttemptsFailed`` (a read error), as if the replica had failed —
    or sends the rest of a call nobody will read."""
    hold = threading.Event()
    events: list[eb.BatchEvent] = []
    with FakeBackend(hold=hold) as server:
        client = eb.AsyncEmbeddingClient(
            [server.url],
            batch_size=1,
            max_concurrency=concurrency,
            probe_info=False,
            on_batch=events.append,
            **QUIET,  # type: ignore[arg-type]
        )
        outcome: list[object] = []

        async def call() -> None:
            try:
                outcome.append(await client.embed(TEXTS[:4]))
            except BaseException as exc:  # what the interrupted call raises
                outcome.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            for _ in range(500):  # bounded: until the first sub-batches are in flight
                if len(server.embed_requests) >= concurrency:
                    break
                await anyio.sleep(0.01)
            assert len(server.embed_requests) == concurrency
            closed = anyio.Event()

            async def close() -> None:
                await client.aclose()
                closed.set()

            tg.start_soon(close)
            await anyio.sleep(0.3)
            assert not closed.is_set()  # still waiting for the held sub-batch
            hold.set()
            with anyio.fail_after(10):
                await closed.wait()
        assert len(events) == concurrency  # the running ones were answered and recorded
        assert len(server.embed_requests) == concurrency  # the queued ones never sent
    assert len(outcome) == 1
    assert isinstance(outcome[0], RuntimeError)
    assert str(outcome[0]) == "the client is closed"
    assert client.stats().pool.backends[0].failures == 0  # no blame on the replica


def test_a_call_whose_pool_was_replaced_meanwhile_uses_the_new_one() -> None:
    """Between ``_pool()`` handing a call its thread pool and the call submitting to
    it, another thread's call may resize (shut down and replace) that pool, or close
    the client. Resized: the call's sub-batches go to the new pool and it answers
    in full. Closed: the call raises "the client is closed". If this fails, a rollout
    that adds backends fails calls in flight with "cannot schedule new futures after
    shutdown". (The race is too narrow to hit on purpose: ``_pool`` hands out a pool
    already shut down, once.)"""
    with FakeBackend() as server:
        with eb.EmbeddingClient(
            [server.url],
            batch_size=2,
            probe_info=False,
            **QUIET,  # type: ignore[arg-type]
        ) as client:
            real = client._pool
            stale = ThreadPoolExecutor(1)
            stale.shutdown()
            handed = iter([stale])
            client._pool = lambda: next(handed, None) or real()  # type: ignore[method-assign]
            rows = client.embed(TEXTS[:6])
            np.testing.assert_array_equal(rows, _expected(7, TEXTS[:6]))
            assert sum(len(body["inputs"]) for body in server.embed_requests) == 6

        closing = eb.EmbeddingClient([server.url], probe_info=False, **QUIET)  # type: ignore[arg-type]

        def closed_meanwhile() -> ThreadPoolExecutor:
            closing.close()
            return stale

        closing._pool = closed_meanwhile  # type: ignore[method-assign]
        with pytest.raises(RuntimeError, match=r"^the client is closed$"):
            closing.embed(TEXTS[:2])
