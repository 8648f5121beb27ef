"""How an attempt that ends in a transport error (no HTTP answer) is settled, on real
sockets: whether it may be sent again, what it counts as, what its span and its metric
say. Found by mutation testing: these lines could change and no test noticed.

- a connection refused was never sent: any request goes elsewhere; an error after the
  request left (the server dropped the connection) was sent: a request not marked
  idempotent is not sent twice;
- a read timeout of the inner client is a failure of the backend, except for bulk work,
  which a priority-aware worker holds back on purpose: an overload, never an ejection;
- the span of such an attempt ends as a failure named by the error's type, and the
  request counter counts it under its backend's URL.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from tests.helpers.control_proc import free_port
from tests.helpers.dropper import Dropper
from tests.helpers.echo_server import echo_servers

import embedbalance as eb

pytestmark = pytest.mark.timeout(60)

BULK = {eb.PRIORITY_EXTENSION: "bulk"}


@pytest.fixture
def dropper() -> Iterator[Dropper]:
    server = Dropper()
    try:
        yield server
    finally:
        server.close()


class First(eb.Balancer):
    """Scores one backend a million times idler: every request's first attempt goes
    there while it may be picked, whatever the order of the pool."""

    def __init__(self, url: str) -> None:
        self.url = url

    def score(self, state: Any, now: float) -> float:
        return 0.0 if state.backend.url == self.url else 1e6


def test_a_post_dropped_after_it_was_sent_is_not_resent_unless_idempotent(
    dropper: Dropper,
) -> None:
    """``/orders`` (not idempotent) to a server that drops the connection after reading
    the request: one attempt, AllAttemptsFailed, the good server never sees it. The
    same to ``/embed`` (idempotent) is answered by the good server. If this fails, a
    POST the first server may have acted on is executed twice."""
    with echo_servers(1) as (good,):
        transport = eb.BalancingTransport(
            [dropper.url, good.url],
            health_check=None,
            balancer=First(dropper.url),
            outlier_detection=None,
            retry=eb.Retry(attempts=3),
        )
        with httpx.Client(transport=transport, base_url="http://e") as client:
            with pytest.raises(eb.AllAttemptsFailed) as failed:
                client.post("/orders", json={})
            assert good.hits == 0
            assert [a.url for a in failed.value.attempts] == [dropper.url]
            assert client.post("/embed", json={"inputs": ["x"]}).status_code == 200
        assert good.hits == 1
    assert dropper.connections >= 2


def test_a_refused_connection_was_never_sent_so_any_request_goes_elsewhere() -> None:
    """``/orders`` (not idempotent) to a port nobody listens on, then to a good server:
    answered, as nothing was sent the first time. If this fails, one dead replica fails
    every non-idempotent request that lands on it first."""
    dead = f"http://127.0.0.1:{free_port()}"
    with echo_servers(1) as (good,):
        transport = eb.BalancingTransport(
            [dead, good.url],
            health_check=None,
            balancer=First(dead),
            outlier_detection=None,
            retry=eb.Retry(attempts=3),
        )
        with httpx.Client(transport=transport, base_url="http://e") as client:
            response = client.post("/orders", json={})
        assert response.status_code == 200
        assert good.hits == 1
        assert [a.url for a in response.extensions[eb.ATTEMPTS_EXTENSION]] == [dead]


@pytest.mark.parametrize("twin", ["sync", "async"])
def test_an_inner_read_timeout_overloads_bulk_work_and_fails_interactive_work(twin: str) -> None:
    """The inner client's own read timeout (``timeout=`` of the request, no attempt
    deadline), one failure enough to eject: a bulk attempt is an overload (no failure,
    no ejection, bulk kept away a while), an interactive one a failure of the backend.
    If this fails, either every bulk backlog ejects healthy replicas, or a hung
    replica's interactive timeouts stop counting."""
    import anyio

    kwargs: dict[str, Any] = {
        "health_check": None,
        "retry": False,
        "attempt_timeout": None,
        "outlier_detection": eb.OutlierDetection(consecutive_failures=1),
    }
    rows: list[Any] = []
    with echo_servers(1) as (server,):
        server.hang = True
        if twin == "sync":
            transport = eb.BalancingTransport([server.url], **kwargs)
            with httpx.Client(transport=transport, base_url="http://e", timeout=0.2) as client:
                for extensions in (BULK, {}):
                    with pytest.raises(eb.AllAttemptsFailed) as failed:
                        client.post("/embed", json={"inputs": ["x"]}, extensions=extensions)
                    assert "ReadTimeout" in str(failed.value.attempts[0])
                    rows.append(transport.stats().pool.by_url()[server.url])
        else:
            atransport = eb.AsyncBalancingTransport([server.url], **kwargs)

            async def main() -> None:
                async with httpx.AsyncClient(
                    transport=atransport, base_url="http://e", timeout=0.2
                ) as client:
                    for extensions in (BULK, {}):
                        with pytest.raises(eb.AllAttemptsFailed) as failed:
                            await client.post(
                                "/embed", json={"inputs": ["x"]}, extensions=extensions
                            )
                        assert "ReadTimeout" in str(failed.value.attempts[0])
                        rows.append(atransport.stats().pool.by_url()[server.url])

            anyio.run(main)
        server.hang = False
    after_bulk, after_interactive = rows
    assert (after_bulk.overloads, after_bulk.failures, after_bulk.ejections) == (1, 0, 0)
    assert (after_interactive.failures, after_interactive.ejections) == (1, 1)


def test_a_hedged_async_request_ends_at_its_attempt_deadline() -> None:
    """Async, hedging on: both replicas hang after a warm-up, the hedge goes to the
    second, and at ``attempt_timeout`` both copies are charged as timed out (and the
    request fails) rather than waiting for the servers. Fast answers meanwhile are not
    cut short. If this fails, a hedged async request on hung replicas waits as long as
    they hang, or the deadline fires at once."""
    import anyio

    with echo_servers(2) as (a, b):
        transport = eb.AsyncBalancingTransport(
            [a.url, b.url],
            health_check=None,
            balancer=eb.RoundRobin(),
            hedge=eb.Hedge(min_samples=1, min_delay=0.05, budget_ratio=1.0),
            attempt_timeout=0.5,
            retry=False,
            outlier_detection=None,
        )

        async def main() -> list[str]:
            async with httpx.AsyncClient(transport=transport, base_url="http://e") as client:
                for _ in range(4):  # samples for the hedge delay; none cut short
                    assert (await client.post("/embed", json={})).status_code == 200
                a.hang = b.hang = True
                with anyio.fail_after(10), pytest.raises(eb.AllAttemptsFailed) as failed:
                    await client.post("/embed", json={})
                a.hang = b.hang = False
                return sorted(str(x) for x in failed.value.attempts)

        try:
            attempts = anyio.run(main)
        finally:
            a.hang = b.hang = False
    assert attempts == sorted(f"{s.url}: attempt timed out after 0.5s" for s in (a, b))
    rows = transport.stats().pool.by_url()
    # At least: on a busy machine a warm-up hedge's losing copy may time out too.
    assert rows[a.url].failures >= 1
    assert rows[b.url].failures >= 1
