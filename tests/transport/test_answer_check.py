"""The answer check (``VALIDATE_EXTENSION``) on every path an attempt can take: the sync
and async transports, each awaited directly (no hedge) and raced (a hedge delay
exists). A 2xx answer the check refuses is its backend's failure and the request goes
elsewhere; an accepted one carries what the check returned.

Why a file of its own: mutation testing showed that any one of these paths could drop
the check (pass ``None`` on) and the suite stayed green — the client's own tests check
its rows again after the transport, so a skipped transport check there only moved the
error, and no test drove the transport with a check directly. The four paths run
against real servers on loopback; the edges below (costs, refusals, odd statuses) on
mock transports, where the answer is the subject, not the socket.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
from echo_server import echo_servers

import embedbalance as eb

BACKENDS = ["http://b0.test", "http://b1.test"]


def _check(response: httpx.Response) -> int:
    rows = int(response.json()["rows"])
    if rows != 1:
        raise ValueError(f"expected 1 row, got {rows}")
    return rows


def _embed(check: Any = _check, **extensions: Any) -> httpx.Request:
    """One embedding request with the answer check ``check`` (None: without one)."""
    ext = dict(extensions)
    if check is not None:
        ext[eb.VALIDATE_EXTENSION] = check
    return httpx.Request("POST", "http://svc/embed", json={"inputs": ["x"]}, extensions=ext)


def _options(raced: bool) -> dict[str, Any]:
    hedge = (
        eb.Hedge(min_samples=1, min_delay=0.5, multiple=100.0, budget_ratio=1.0) if raced else None
    )
    return {
        "balancer": eb.RoundRobin(),
        "health_check": None,
        "outlier_detection": None,
        "hedge": hedge,
    }


def _answer_once(handler: Callable[[httpx.Request], httpx.Response]) -> httpx.Response:
    """One checked request through a direct-path sync transport over mock backends that
    all answer with ``handler``; the answer read, the transport closed."""
    transport = eb.BalancingTransport(
        BACKENDS, transport=httpx.MockTransport(handler), **_options(False)
    )
    response = transport.handle_request(_embed())
    response.read()
    transport.close()
    return response


def _refusing(port: int) -> Any:
    """An answer check that refuses every answer from the server on ``port``."""

    def check(response: httpx.Response) -> int:
        if response.request.url.port == port:
            raise ValueError("expected 1 row, got 0")
        return 1

    return check


@pytest.mark.parametrize("raced", [False, True], ids=["direct", "raced"])
def test_the_sync_transport_checks_every_answer(raced: bool) -> None:
    """Two real servers on loopback; the check refuses the first one's answers: every
    checked request ends answered by the second, with the check's result attached, and
    the first is charged a failure each time. If this fails, one of the sync paths
    hands back an answer nobody checked."""
    with echo_servers(2) as (wrong, right):
        transport = eb.BalancingTransport([wrong.url, right.url], **_options(raced))
        try:
            # a latency sample from each: the next requests race
            for _ in range(2):
                transport.handle_request(_embed(None)).read()
            for _ in range(4):
                response = transport.handle_request(_embed(_refusing(wrong.port)))
                response.read()
                assert response.status_code == 200
                assert response.extensions[eb.VALIDATED_EXTENSION] == 1
                assert response.request.url.port == right.port
            assert transport.stats().pool.by_url()[wrong.url].failures >= 2
        finally:
            transport.close()


@pytest.mark.anyio
@pytest.mark.parametrize("raced", [False, True], ids=["direct", "raced"])
async def test_the_async_transport_checks_every_answer(raced: bool) -> None:
    """The async twin of the test above, on both of its paths."""
    with echo_servers(2) as (wrong, right):
        transport = eb.AsyncBalancingTransport([wrong.url, right.url], **_options(raced))
        try:
            for _ in range(2):
                await (await transport.handle_async_request(_embed(None))).aread()
            for _ in range(4):
                with anyio.fail_after(10):
                    response = await transport.handle_async_request(_embed(_refusing(wrong.port)))
                    await response.aread()
                assert response.status_code == 200
                assert response.extensions[eb.VALIDATED_EXTENSION] == 1
                assert response.request.url.port == right.port
            assert transport.stats().pool.by_url()[wrong.url].failures >= 2
        finally:
            await transport.aclose()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_raced_connection_error_is_named_in_the_attempts(kind: str) -> None:
    """Both backends refuse the connection on the raced path: the error lists each
    attempt with the error's own type and message. If this fails, a raced attempt's
    transport error is settled without the error (the caller reads "NoneType")."""

    def refuse(request: httpx.Request) -> httpx.Response:
        if warming[0]:
            return httpx.Response(200, json={})
        raise httpx.ConnectError("refused here", request=request)

    async def arefuse(request: httpx.Request) -> httpx.Response:
        return refuse(request)

    warming = [True]
    request = httpx.Request("POST", "http://svc/embed", json={"inputs": ["x"]})
    failed: eb.AllAttemptsFailed
    if kind == "sync":
        transport = eb.BalancingTransport(
            BACKENDS, transport=httpx.MockTransport(refuse), **_options(True)
        )
        transport.handle_request(request).read()
        warming[0] = False
        with pytest.raises(eb.AllAttemptsFailed) as caught:
            transport.handle_request(request)
        transport.close()
        failed = caught.value
    else:
        atransport = eb.AsyncBalancingTransport(
            BACKENDS, transport=httpx.MockTransport(arefuse), **_options(True)
        )

        async def main() -> eb.AllAttemptsFailed:
            await (await atransport.handle_async_request(request)).aread()
            warming[0] = False
            try:
                with pytest.raises(eb.AllAttemptsFailed) as got:
                    await atransport.handle_async_request(request)
            finally:
                await atransport.aclose()
            return got.value

        failed = anyio.run(main)
    attempts = failed.attempts
    assert len(attempts) == 2
    for attempt in attempts:
        assert "ConnectError: refused here" in str(attempt), attempt


def test_every_answer_refused_names_the_checks_reason() -> None:
    """Both backends answer wrong rows: the last answer comes back (as from a proxy, for
    the caller's own check to raise on), and the attempts it carries name the check's
    reason. If this fails, the caller cannot tell a wrong answer from a dead backend."""

    def wrong(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"rows": 0})

    response = _answer_once(wrong)
    attempts = response.extensions[eb.ATTEMPTS_EXTENSION]
    assert attempts
    for attempt in attempts:
        assert "invalid answer: expected 1 row, got 0" in str(attempt), attempt


@pytest.mark.parametrize("cost", [0, 0.5, 1, 7.25])
def test_any_finite_cost_from_zero_up_is_accepted(cost: float) -> None:
    """Costs of 0 and fractions are valid (an empty or tiny request); the request holds
    exactly that cost while in flight, and one without the extension holds 1."""
    held: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        held.append(transport.stats().pool.by_url()["http://b0.test"].outstanding_cost)
        return httpx.Response(200, json={"rows": 1})

    transport = eb.BalancingTransport(
        ["http://b0.test"], transport=httpx.MockTransport(handler), **_options(False)
    )
    with httpx.Client(transport=transport, base_url="http://svc") as client:
        client.post("/embed", json={}, extensions={eb.COST_EXTENSION: cost})
        client.post("/embed", json={})
    assert held == [float(cost), 1.0]


@pytest.mark.parametrize("cost", [-1, -0.5, float("nan"), float("inf")])
def test_a_negative_or_non_finite_cost_is_refused(cost: float) -> None:
    """If this fails, a negative cost frees capacity that was never taken (the balancer's
    books go below zero) or an infinite one blocks a backend for good."""
    transport = eb.BalancingTransport(
        ["http://b0.test"],
        transport=httpx.MockTransport(lambda r: httpx.Response(200, json={})),
        **_options(False),
    )
    with (
        httpx.Client(transport=transport, base_url="http://svc") as client,
        pytest.raises(ValueError, match=r"embedbalance\.cost must be a finite number >= 0"),
    ):
        client.post("/embed", json={}, extensions={eb.COST_EXTENSION: cost})


@pytest.mark.anyio
async def test_a_requests_total_timeout_extension_ends_it() -> None:
    """``TOTAL_TIMEOUT_EXTENSION`` on one request bounds it, retries included, though the
    transport sets no total timeout: a backend that never answers costs the caller that
    long, not forever. If this fails, the per-request bound is ignored."""

    async def hang(request: httpx.Request) -> httpx.Response:
        await anyio.sleep(30)
        return httpx.Response(200, json={})

    transport = eb.AsyncBalancingTransport(
        BACKENDS, transport=httpx.MockTransport(hang), **_options(False)
    )
    request = _embed(None, **{eb.TOTAL_TIMEOUT_EXTENSION: 0.2})
    try:
        with anyio.fail_after(10), pytest.raises((eb.AllAttemptsFailed, httpx.TimeoutException)):
            await transport.handle_async_request(request)
    finally:
        await transport.aclose()


@pytest.mark.parametrize("status", [204, 300, 404])
def test_only_a_2xx_answer_is_checked(status: int) -> None:
    """The check reads 2xx answers only: a 300 or a 404 comes back as it is, from the
    first backend, with no attempt recorded; a 204 is checked (here refused, so the
    next backend's is too). If this fails, a redirect or an error page is read as rows."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=b"not json")

    response = _answer_once(handler)
    assert response.status_code == status
    checked = eb.ATTEMPTS_EXTENSION in response.extensions
    assert checked == (status == 204)


def test_a_check_that_fails_with_a_bug_reaches_the_caller() -> None:
    """A check raising something other than ``ValueError`` (a bug in it) reaches the
    caller as it is, unretried, and frees the backend's slot. If this fails, the bug is
    replaced by an error of the transport's own cleanup."""
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.host)
        return httpx.Response(200, json={"rows": 1})

    def buggy(response: httpx.Response) -> int:
        return int(response.json()["missing"])

    transport = eb.BalancingTransport(
        BACKENDS, transport=httpx.MockTransport(handler), **_options(False)
    )
    request = _embed(buggy)
    with pytest.raises(KeyError, match="missing"):
        transport.handle_request(request)
    assert len(calls) == 1
    assert transport.stats().pool.in_flight == 0
    transport.close()
