"""The canary probes over a real socket: an answer that is not embeddings is judged
wrong, naming the replica that gave it.

Why here and not only through a client (``tests/client/test_canary_real.py``): the
probe's own verdict, exactly as it reaches the pool, including the URL in the reason
operators read in stats and logs.
"""

from __future__ import annotations

import anyio
import httpx
import pytest
from echo_server import echo_servers

import embedbalance as eb
from embedbalance.health_runner import (
    HealthChecker,
    async_http_canary_probe,
    async_http_info,
    async_http_probe,
    http_canary_probe,
    http_info,
    http_probe,
    run_async_checks,
)

POLICY = eb.HealthCheck(timeout=5.0, canary=eb.Canary(texts=["x", "y"], timeout=5.0))


def test_a_json_object_is_a_wrong_canary_answer_naming_the_replica() -> None:
    """The echo server answers 200 with a JSON object, not rows. If this fails, a
    replica answering nonsense is admitted, or the reason names no replica."""
    with echo_servers(1) as (server,), httpx.HTTPTransport() as inner:
        answer = http_canary_probe(POLICY, lambda b: inner)(eb.Backend(server.url))
    assert answer.rows is None
    assert answer.wrong is True
    assert answer.error == f"backend {server.url} answered dict, not a list"


def test_the_async_probe_judges_the_same_answer_the_same_way() -> None:
    async def main() -> None:
        async with httpx.AsyncHTTPTransport() as inner:
            probe = async_http_canary_probe(POLICY, lambda b: inner)
            answer = await probe(eb.Backend(server.url))
        assert answer.rows is None
        assert answer.wrong is True
        assert answer.error == f"backend {server.url} answered dict, not a list"

    with echo_servers(1) as (server,):
        anyio.run(main)


@pytest.mark.parametrize("status", [404, 503])
def test_an_http_error_is_no_answer_not_a_wrong_one(status: int) -> None:
    with echo_servers(1) as (server,), httpx.HTTPTransport() as inner:
        server.answer(status)
        answer = http_canary_probe(POLICY, lambda b: inner)(eb.Backend(server.url))
    assert (answer.rows, answer.wrong, answer.error) == (None, False, f"HTTP {status}")


def _canary_pool(url: str) -> eb.BackendPool:
    return eb.BackendPool([url], health_check=POLICY, clock=eb.ManualClock())


def test_a_checker_given_only_a_liveness_probe_sends_its_canary_through_the_transport() -> None:
    """With a canary in the policy and no canary probe given, the checker builds one over
    its transport. If this fails, a custom liveness probe silently turns the canary off
    (or crashes every round)."""
    with echo_servers(1) as (server,), httpx.HTTPTransport() as inner:
        pool = _canary_pool(server.url)
        checker = HealthChecker(pool, POLICY, transport=inner, probe=lambda b: True)
        checker.run_round()
    row = pool.stats().by_url()[server.url]
    assert row.state == "ejected"
    assert row.canary == f"canary: wrong answer (backend {server.url} answered dict, not a list)"


def test_the_async_runner_given_only_a_liveness_probe_sends_its_canary_too() -> None:
    async def alive(backend: eb.Backend) -> bool:
        return True

    async def main(pool: eb.BackendPool) -> None:
        async with httpx.AsyncHTTPTransport() as inner, anyio.create_task_group() as tg:
            with anyio.fail_after(10):
                await tg.start(
                    lambda task_status: run_async_checks(
                        pool, POLICY, transport=inner, probe=alive, task_status=task_status
                    )
                )
            tg.cancel_scope.cancel()

    with echo_servers(1) as (server,):
        pool = _canary_pool(server.url)
        anyio.run(main, pool)
    row = pool.stats().by_url()[server.url]
    assert row.state == "ejected"
    assert row.canary == f"canary: wrong answer (backend {server.url} answered dict, not a list)"


@pytest.mark.parametrize("twin", ["sync", "async"])
def test_a_check_answered_503_is_a_failure_logged_with_the_status(
    twin: str, caplog: pytest.LogCaptureFixture
) -> None:
    """If this fails, a draining replica's 503 counts as healthy, or the log does not
    say which replica answered what."""
    import logging

    with echo_servers(1) as (server,), caplog.at_level(logging.DEBUG, "embedbalance.health"):
        server.health_status = 503
        backend = eb.Backend(server.url)
        if twin == "sync":
            with httpx.HTTPTransport() as inner:
                assert http_probe(POLICY, lambda b: inner)(backend) is False
        else:

            async def check() -> bool:
                async with httpx.AsyncHTTPTransport() as inner:
                    return await async_http_probe(POLICY, lambda b: inner)(backend)

            assert anyio.run(check) is False
    assert f"health check of {server.url} answered HTTP 503" in [
        r.getMessage() for r in caplog.records
    ]


def test_info_probes_read_the_model_a_server_names() -> None:
    """``GET /info`` through the backend's own inner transport (looked up by backend)
    reads TEI's ``model_id``, sync and async. If this fails, replicas' models are never
    learned, so requests naming a model find none of them."""
    from tei_stub import tei_stubs

    with tei_stubs(1, model_id="org/small") as (stub,):
        backend = eb.Backend(stub.url)
        with httpx.HTTPTransport() as inner:
            by_url = {stub.url: inner}
            assert http_info(POLICY, lambda b: by_url[b.url])(backend) == (True, "org/small")

        async def ask() -> tuple[bool, str | None]:
            async with httpx.AsyncHTTPTransport() as ainner:
                aby_url = {stub.url: ainner}
                return await async_http_info(POLICY, lambda b: aby_url[b.url])(backend)

        assert anyio.run(ask) == (True, "org/small")
