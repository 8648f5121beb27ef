"""Deadlines and hedging, judged by outcome (who answered, what was raised, what the
servers observed), never by a stopwatch, and the same for both twins: ``attempt_timeout``
is a whole-attempt deadline, ``total_timeout`` an overall one; hedging never caps how many
requests run at once, never hedges what cannot be resent, retries a fast failure at once,
and raises the same exception types as the unhedged path."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest
from tei_stub import Concurrency, TeiStub, tei_vector

import embedbalance as eb

from .conftest import Favourite, quiet

pytestmark = pytest.mark.timeout(90)

Stubs = Callable[..., list[TeiStub]]
BODY = {"inputs": ["hello"]}


def _sync(urls: list[str], **kwargs: Any) -> tuple[eb.BalancingTransport, httpx.Client]:
    transport = eb.BalancingTransport(urls, **quiet(**kwargs))
    return transport, httpx.Client(transport=transport, base_url="http://tei", timeout=30)


def _outcome_sync(urls: list[str], extensions: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    """What one request ends in: (status, attempts) or the exception type."""
    _, client = _sync(urls, **kwargs)
    with client:
        try:
            r = client.post("/embed", json=BODY, extensions=extensions or {})
        except Exception as exc:  # the outcome is the type
            return type(exc)
        return r.status_code, [a.url for a in r.extensions.get(eb.ATTEMPTS_EXTENSION, ())]


async def _outcome_async(
    urls: list[str], extensions: dict[str, Any] | None = None, **kwargs: Any
) -> Any:
    transport = eb.AsyncBalancingTransport(urls, **quiet(**kwargs))
    async with httpx.AsyncClient(transport=transport, base_url="http://tei", timeout=30) as client:
        try:
            r = await client.post("/embed", json=BODY, extensions=extensions or {})
        except Exception as exc:
            return type(exc)
        return r.status_code, [a.url for a in r.extensions.get(eb.ATTEMPTS_EXTENSION, ())]


async def _both(
    urls: list[str], extensions: dict[str, Any] | None = None, **kwargs: Any
) -> tuple[Any, Any]:
    sync = await anyio.to_thread.run_sync(lambda: _outcome_sync(urls, extensions, **kwargs))
    return sync, await _outcome_async(urls, extensions, **kwargs)


# -- attempt_timeout: a whole-attempt deadline, the same in both twins ----------------


@pytest.mark.anyio
async def test_attempt_timeout_covers_a_trickling_answer_in_both_twins(stubs: Stubs) -> None:
    """An answer that dribbles out (no single read ever slow) is cut at attempt_timeout and retried elsewhere by both twins (else the sync twin caps each phase only and waits the whole trickle)."""
    slow, good = stubs(2)
    slow.mode, slow.trickle_seconds = "trickle", 6.0
    urls = [slow.url, good.url]
    sync, async_ = await _both(urls, balancer=lambda: Favourite(slow.url), attempt_timeout=1.0)
    assert sync == async_ == (200, [slow.url])


@pytest.mark.anyio
async def test_attempt_timeout_alone_is_not_a_deadline_error(stubs: Stubs) -> None:
    """A lone hung backend past attempt_timeout ends in AllAttemptsFailed (not DeadlineExceeded) in both twins (else the two deadlines cannot be told apart)."""
    (hung,) = stubs(1)
    hung.mode = "hang"
    sync, async_ = await _both([hung.url], attempt_timeout=0.5)
    assert sync is async_ is eb.AllAttemptsFailed


@pytest.mark.anyio
async def test_total_timeout_raises_deadline_exceeded_in_both_twins(stubs: Stubs) -> None:
    """total_timeout (constructor or per request) ends a request whose every backend hangs with DeadlineExceeded in both twins (else 'retries included' is not true)."""
    hung = stubs(2)
    for stub in hung:
        stub.mode = "hang"
    urls = [s.url for s in hung]
    assert await _both(urls, total_timeout=0.8) == (eb.DeadlineExceeded, eb.DeadlineExceeded)
    per_request = {eb.TOTAL_TIMEOUT_EXTENSION: 0.8}
    assert await _both(urls, per_request) == (eb.DeadlineExceeded, eb.DeadlineExceeded)
    # A per-attempt limit longer than the overall one: the overall one still wins.
    assert await _both(urls, total_timeout=0.8, attempt_timeout=20.0) == (
        eb.DeadlineExceeded,
        eb.DeadlineExceeded,
    )


@pytest.mark.anyio
async def test_total_timeout_leaves_room_for_a_retry_that_answers(stubs: Stubs) -> None:
    """With attempt_timeout inside total_timeout, a hung first backend is abandoned and the retry's answer returned by both twins (else the overall deadline swallows the retry)."""
    hung, good = stubs(2)
    hung.mode = "hang"
    sync, async_ = await _both(
        [hung.url, good.url],
        balancer=lambda: Favourite(hung.url),
        attempt_timeout=1.0,
        total_timeout=20.0,
    )
    assert sync == async_ == (200, [hung.url])


def test_an_abandoned_attempt_counts_as_a_failure_of_its_backend(stubs: Stubs) -> None:
    """An attempt past attempt_timeout is counted as a failure of its backend and its lease released (else a hanging backend is never ejected and looks busy forever)."""
    hung, good = stubs(2)
    hung.mode = "hang"
    transport, client = _sync(
        [hung.url, good.url], balancer=Favourite(hung.url), attempt_timeout=0.5
    )
    with client:
        assert client.post("/embed", json=BODY).status_code == 200
    stats = transport.stats().pool.by_url()
    assert stats[hung.url].failures == 1
    assert stats[hung.url].pending == 0


# -- hedging ---------------------------------------------------------------------------


def _hedge(**kwargs: Any) -> eb.Hedge:
    return eb.Hedge(**{"min_samples": 3, "percentile": 50.0, "min_delay": 0.05, **kwargs})


def _warm(client: httpx.Client, n: int = 4) -> None:
    for _ in range(n):
        assert client.post("/embed", json=BODY).status_code == 200


@pytest.fixture
def shared() -> Concurrency:
    return Concurrency()


def test_hedging_never_caps_concurrency_sync(stubs: Stubs, shared: Concurrency) -> None:
    """24 concurrent requests through a hedged sync transport are all in flight at the servers at once (else hedging's executor caps concurrency at its pool size)."""
    replicas = stubs(2, concurrency=shared)
    _, client = _sync([s.url for s in replicas], hedge=_hedge())
    barrier = threading.Barrier(24)
    statuses: list[int] = []

    def one(i: int) -> None:
        barrier.wait(timeout=20)
        r = client.post("/embed", json=BODY, headers={"x-request-id": str(i)})
        statuses.append(r.status_code)

    with client:
        _warm(client)
        for stub in replicas:
            stub.delay = 1.5
        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert statuses == [200] * 24
    assert shared.max_distinct == 24


@pytest.mark.anyio
async def test_hedging_never_caps_concurrency_async(stubs: Stubs, shared: Concurrency) -> None:
    """24 concurrent requests through a hedged async transport are all in flight at once (else async hedging serialises requests)."""
    replicas = stubs(2, concurrency=shared)
    transport = eb.AsyncBalancingTransport([s.url for s in replicas], **quiet(hedge=_hedge()))
    statuses: list[int] = []
    async with httpx.AsyncClient(transport=transport, base_url="http://tei", timeout=30) as client:
        for _ in range(4):
            await client.post("/embed", json=BODY)
        for stub in replicas:
            stub.delay = 1.5

        async def one(i: int) -> None:
            r = await client.post("/embed", json=BODY, headers={"x-request-id": str(i)})
            statuses.append(r.status_code)

        async with anyio.create_task_group() as tg:
            for i in range(24):
                tg.start_soon(one, i)
    assert statuses == [200] * 24
    assert shared.max_distinct == 24


def test_a_request_that_cannot_be_resent_is_never_hedged(stubs: Stubs) -> None:
    """A streamed (non-replayable) body is never hedged, however slow the answer (else a hedge would send a half-consumed body)."""
    replicas = stubs(2)
    transport, client = _sync([s.url for s in replicas], hedge=_hedge())
    with client:
        _warm(client)
        for stub in replicas:
            stub.delay = 0.6
        before = sum(s.embed_requests for s in replicas)
        hedges_before = transport.stats().hedges

        def body() -> Iterator[bytes]:
            yield b'{"inputs": '
            yield b'["streamed"]}'

        r = client.post("/embed", content=body(), headers={"content-type": "application/json"})
    assert r.status_code == 200
    assert r.json() == [tei_vector("streamed")]
    assert transport.stats().hedges == hedges_before
    assert sum(s.embed_requests for s in replicas) - before == 1


def test_a_fast_failure_under_hedging_is_retried_at_once_sync(stubs: Stubs) -> None:
    """Under hedging, a first attempt that fails fast is retried at once, not hedged after the delay (else every fast failure waits the hedge delay and burns hedge budget)."""
    bad, good = stubs(2)
    transport, client = _sync(
        [bad.url, good.url], balancer=Favourite(bad.url), hedge=_hedge(min_delay=5.0)
    )
    with client:
        _warm(client)  # on ``bad`` while it still answers: hedging is now armed
        bad.mode = "424"
        r = client.post("/embed", json=BODY)
        stats = transport.stats()
    assert r.status_code == 200
    assert r.extensions[eb.ATTEMPTS_EXTENSION] == (eb.Attempt(bad.url, "HTTP 424"),)
    assert stats.hedges == 0
    assert stats.retries == 1


@pytest.mark.anyio
async def test_a_fast_failure_under_hedging_is_retried_at_once_async(stubs: Stubs) -> None:
    """The async twin also retries a fast failure at once under hedging (else it waits the whole hedge delay first)."""
    bad, good = stubs(2)
    transport = eb.AsyncBalancingTransport(
        [bad.url, good.url], **quiet(balancer=Favourite(bad.url), hedge=_hedge(min_delay=5.0))
    )
    async with httpx.AsyncClient(transport=transport, base_url="http://tei", timeout=30) as client:
        for _ in range(4):
            await client.post("/embed", json=BODY)
        bad.mode = "424"
        r = await client.post("/embed", json=BODY)
        stats = transport.stats()
    assert r.status_code == 200
    assert r.extensions[eb.ATTEMPTS_EXTENSION] == (eb.Attempt(bad.url, "HTTP 424"),)
    assert stats.hedges == 0


def test_a_connect_failure_under_hedging_is_retried_not_hedged(stubs: Stubs) -> None:
    """A backend that refuses connections (the request never sent) is retried, never hedged (else hedges fire for requests that were never sent)."""
    doomed, good = stubs(2)
    transport, client = _sync(
        [doomed.url, good.url], balancer=Favourite(doomed.url), hedge=_hedge(min_delay=5.0)
    )
    with client:
        _warm(client)
        doomed.stop()
        r = client.post("/embed", json=BODY)
    assert r.status_code == 200
    assert [a.url for a in r.extensions[eb.ATTEMPTS_EXTENSION]] == [doomed.url]
    assert transport.stats().hedges == 0


def _types_after_warmup_sync(urls: list[str], stop: Callable[[], None], **kwargs: Any) -> type:
    _, client = _sync(urls, **kwargs)
    with client:
        _warm(client)
        stop()
        try:
            client.post("/embed", json=BODY)
        except Exception as exc:
            return type(exc)
    return type(None)


async def _types_after_warmup_async(
    urls: list[str], stop: Callable[[], None], **kwargs: Any
) -> type:
    transport = eb.AsyncBalancingTransport(urls, **quiet(**kwargs))
    async with httpx.AsyncClient(transport=transport, base_url="http://tei", timeout=30) as client:
        for _ in range(4):
            await client.post("/embed", json=BODY)
        stop()
        try:
            await client.post("/embed", json=BODY)
        except Exception as exc:
            return type(exc)
    return type(None)


@pytest.mark.anyio
@pytest.mark.parametrize("failure", ["refused", "hung"])
async def test_exception_types_are_the_same_hedged_or_not(stubs: Stubs, failure: str) -> None:
    """Refused connections raise AllAttemptsFailed and hung backends past total_timeout raise DeadlineExceeded, hedged or not, in both twins (else callers need a different except clause per configuration)."""
    seen = []
    for hedge in (None, _hedge()):
        for twin in ("sync", "async"):
            replicas = stubs(2)
            urls = [s.url for s in replicas]

            def stop(replicas: list[TeiStub] = replicas) -> None:
                for stub in replicas:
                    if failure == "refused":
                        stub.stop()
                    else:
                        stub.mode = "hang"

            options: dict[str, Any] = {
                "hedge": hedge,
                "total_timeout": 1.0 if failure == "hung" else None,
            }
            if twin == "sync":
                seen.append(
                    await anyio.to_thread.run_sync(
                        lambda u=urls, f=stop, o=options: _types_after_warmup_sync(u, f, **o)
                    )
                )
            else:
                seen.append(await _types_after_warmup_async(urls, stop, **options))
    expected = eb.AllAttemptsFailed if failure == "refused" else eb.DeadlineExceeded
    assert seen == [expected] * 4
