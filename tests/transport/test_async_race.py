"""The async transport's raced path (an attempt that may be hedged), pinned directly.

Why apart from the hedging tests in ``test_load.py``: those check that a request stuck
on a hung backend is answered elsewhere. Mutation testing showed that the raced path's
own duties could break with the suite green: the answer check (``VALIDATE_EXTENSION``)
skipped, the answer's request lost, a bug in an inner transport swallowed, and the
settling of a copy whose answer came in the same event-loop step as the winner's. Each
test here drives ``AsyncBalancingTransport._race`` (a hedge delay exists for the
request) through ``httpx.MockTransport`` handlers that decide when each copy answers.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import httpx
import pytest

import embedbalance as eb

pytestmark = pytest.mark.anyio

Handler = Callable[[httpx.Request], Coroutine[Any, Any, httpx.Response]]


def _transport(handler: Handler, backends: int = 2) -> eb.AsyncBalancingTransport:
    """Round-robin over ``backends`` mock backends, hedging after 5 ms from the first
    answer on, with budget for every request to hedge."""
    return eb.AsyncBalancingTransport(
        [f"http://b{i}.test" for i in range(backends)],
        balancer=eb.RoundRobin(),
        health_check=None,
        outlier_detection=None,
        hedge=eb.Hedge(min_samples=1, min_delay=0.005, multiple=1.0, budget_ratio=1.0),
        transport=httpx.MockTransport(handler),
    )


async def _send(
    transport: eb.AsyncBalancingTransport, extensions: dict[str, object] | None = None
) -> httpx.Response:
    """One request, called directly (its answer then holds the request as sent)."""
    request = httpx.Request(
        "POST", "http://svc/embed", json={"inputs": ["x"]}, extensions=extensions or {}
    )
    response = await transport.handle_async_request(request)
    await response.aread()
    return response


async def _warm(transport: eb.AsyncBalancingTransport, warming: list[bool]) -> None:
    """One answer, so that the next requests have a hedge delay (and race)."""
    warming[0] = True
    assert (await _send(transport)).status_code == 200
    warming[0] = False


async def test_a_raced_answer_is_checked_and_a_wrong_one_retried_elsewhere() -> None:
    """A raced request's answer goes through its answer check: b0 answers wrong rows,
    every request ends answered by b1, validated, carrying the request as b1 got it. If
    this fails, the raced path hands the caller an unchecked answer (or one without its
    request)."""
    warming = [False]

    async def handler(request: httpx.Request) -> httpx.Response:
        wrong = request.url.host == "b0.test" and not warming[0]
        return httpx.Response(200, json={"rows": 0 if wrong else 1})

    def check(response: httpx.Response) -> int:
        rows = int(response.json()["rows"])
        if rows != 1:
            raise ValueError(f"expected 1 row, got {rows}")
        return rows

    transport = _transport(handler)
    try:
        await _warm(transport, warming)
        for _ in range(6):
            response = await _send(transport, {eb.VALIDATE_EXTENSION: check})
            assert response.status_code == 200
            assert response.json() == {"rows": 1}
            assert response.extensions[eb.VALIDATED_EXTENSION] == 1
            assert response.request.url.host == "b1.test"
            assert response.extensions[eb.BACKEND_EXTENSION].url == "http://b1.test"
    finally:
        await transport.aclose()
    rows = transport.stats().pool.by_url()
    assert rows["http://b0.test"].failures >= 3  # the wrong answers count against it


async def test_a_bug_in_an_inner_transport_reaches_the_caller_from_the_race() -> None:
    """An inner transport raising a non-httpx error in a raced attempt: the caller gets
    that error, unretried and unwrapped, and nothing stays in flight. If this fails, the
    race swallows the bug (the request then ends as if nobody answered)."""
    warming = [False]
    calls = []

    async def handler(request: httpx.Request) -> httpx.Response:
        if not warming[0]:
            calls.append(request.url.host)
            raise RuntimeError("bug in the inner transport")
        return httpx.Response(200, json={})

    transport = _transport(handler)
    try:
        await _warm(transport, warming)
        with pytest.raises(RuntimeError, match=r"^bug in the inner transport$"):
            await _send(transport)
    finally:
        await transport.aclose()
    assert len(calls) == 1
    assert transport.stats().pool.in_flight == 0


@pytest.mark.parametrize("loser", ["answers", "fails", "fails later"])
async def test_a_copy_answering_in_the_same_step_as_the_winner_settles_itself(
    loser: str,
) -> None:
    """Both copies of a hedged request finish in the same event-loop step: the first is
    the answer, the second is settled from the queue the race drains — as a success
    when it answered, as its backend's failure when its connection failed — never as
    cancelled; and so is a loser that fails after the race is over (it settles itself).
    If this fails, the loser is settled with the wrong arguments and its backend's books
    read "cancelled" (a failing backend then goes unnoticed)."""
    warming = [False]
    arrived: list[str] = []
    both = anyio.Event()
    later = anyio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        if warming[0]:
            return httpx.Response(200, json={"from": request.url.host})
        arrived.append(request.url.host)
        second = len(arrived) == 2
        if second:
            both.set()
        await both.wait()
        if second and loser != "answers":
            if loser == "fails later":
                await later.wait()
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json={"from": request.url.host})

    transport = _transport(handler)
    try:
        await _warm(transport, warming)
        before = transport.stats().pool.by_url()
        with anyio.fail_after(5):
            response = await _send(transport)
        assert response.status_code == 200
        assert len(arrived) == 2  # the first copy and its hedge
        assert transport.stats().hedges == 1
        later.set()
        with anyio.fail_after(5):
            while transport.stats().pool.in_flight:
                await anyio.sleep(0.001)
        after = transport.stats().pool.by_url()
    finally:
        await transport.aclose()
    first, second = (f"http://{host}" for host in arrived)
    winner = f"http://{response.request.url.host}"
    assert winner in (first, second)
    for url in (first, second):
        assert after[url].cancelled == before[url].cancelled, url
    if loser == "answers":
        assert after[first].successes - before[first].successes == 1
        assert after[second].successes - before[second].successes == 1
    else:
        assert winner == first
        assert after[second].failures - before[second].failures == 1


async def test_a_failed_copy_leaves_the_race_waiting_for_the_other() -> None:
    """The first copy fails (its connection is refused) after its hedge went out: the
    race keeps waiting for the hedge, which answers; no third backend is tried and the
    hedge is not cancelled. If this fails, one failed copy ends the race, cancels the
    copy still running and sends a retry elsewhere."""
    warming = [False]
    arrived: list[str] = []
    hedged = anyio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        if warming[0]:
            return httpx.Response(200, json={})
        arrived.append(request.url.host)
        if len(arrived) == 1:
            await hedged.wait()
            raise httpx.ConnectError("refused", request=request)
        hedged.set()
        await anyio.sleep(0.05)
        return httpx.Response(200, json={"from": request.url.host})

    transport = _transport(handler, backends=3)
    try:
        await _warm(transport, warming)
        before = transport.stats().pool.by_url()
        with anyio.fail_after(5):
            response = await _send(transport)
        assert response.status_code == 200
        assert len(arrived) == 2, arrived
        assert response.request.url.host == arrived[1]
        after = transport.stats().pool.by_url()
    finally:
        await transport.aclose()
    hedge = f"http://{arrived[1]}"
    assert after[hedge].successes - before[hedge].successes == 1
    assert after[hedge].cancelled == before[hedge].cancelled


async def test_a_caller_cancelled_mid_race_releases_every_copy() -> None:
    """The caller gives up while both copies of a hedged request are still out: both are
    cancelled and released as such, nothing stays in flight, and the caller's
    cancellation is all that propagates. If this fails, the race's cleanup fails on the
    leases it must release and leaves them in flight."""
    warming = [False]
    arrived: list[str] = []
    both = anyio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        if warming[0]:
            return httpx.Response(200, json={})
        arrived.append(request.url.host)
        if len(arrived) == 2:
            both.set()
        await anyio.sleep(60)
        return httpx.Response(200, json={})

    transport = _transport(handler)
    try:
        await _warm(transport, warming)
        with anyio.move_on_after(5) as scope:
            async with anyio.create_task_group() as tg:

                async def call() -> None:
                    await _send(transport)

                tg.start_soon(call)
                await both.wait()
                tg.cancel_scope.cancel()
        assert not scope.cancelled_caught
        with anyio.fail_after(5):
            while transport.stats().pool.in_flight:
                await anyio.sleep(0.001)
        rows = transport.stats().pool.by_url()
    finally:
        await transport.aclose()
    assert sum(row.cancelled for row in rows.values()) == 2
