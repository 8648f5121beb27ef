"""What happens to a sync hedge's losing copy after the request was answered: it
settles with its own outcome (a failure if its connection breaks), or, when the
transport closed meanwhile, is released as cancelled. Real sockets; no sleeps to
wait out a policy: every wait is a bounded poll of the pool's books.

Why: the loser is work its server still holds. If its end is not booked, the pool's
in-flight count leaks (the balancer then shuns that replica for good); if closing is
booked as the replica's failure, a clean shutdown ejects healthy replicas.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import httpx
import pytest
from echo_server import EchoServer, echo_servers
from tests.helpers.waiting import wait_until

import embedbalance as eb

pytestmark = pytest.mark.timeout(60)


class Breaker:
    """A loopback server that accepts, holds each connection until told, then closes it
    without answering (a crashed replica, as the client sees it)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.held: list[socket.socket] = []
        self.accepted = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)
            self.accepted.set()

    def break_all(self) -> None:
        for conn in self.held:
            conn.close()
        self.held.clear()

    def close(self) -> None:
        self.break_all()
        self.sock.close()


@pytest.fixture
def good() -> Iterator[EchoServer]:
    with echo_servers(1) as (server,):
        yield server


def _hedged(good: str, **kwargs: object) -> eb.BalancingTransport:
    """A transport that hedges after 50 ms, starting with ``good`` alone."""
    return eb.BalancingTransport(
        [good],
        **kwargs,  # type: ignore[arg-type]
        health_check=None,
        outlier_detection=None,
        slow_start=None,
        balancer=eb.RoundRobin(),
        hedge=eb.Hedge(per_backend=False, percentile=50, multiple=1, min_samples=0, min_delay=0.05),
    )


def _first_copy_on(transport: eb.BalancingTransport, client: httpx.Client, url: str) -> None:
    """Earn the hedge budget on the good backend, add ``url``, then send requests until
    one's first copy went there (round-robin alternates)."""
    for _ in range(40):
        assert client.get("/x").status_code == 200
    transport.pool.add(url)
    for _ in range(4):
        before = transport.stats().pool.by_url()[url].requests
        assert client.get("/x").status_code == 200
        if transport.stats().pool.by_url()[url].requests > before:
            return
    raise AssertionError(f"no request went to {url}")


def test_a_loser_whose_connection_breaks_settles_as_its_backends_failure(
    good: EchoServer,
) -> None:
    """If this fails, a losing copy that errors is never released (the pool counts it in
    flight forever) or is booked as cancelled instead of its replica's failure."""
    breaker = Breaker()
    try:
        transport = _hedged(good.url)
        with httpx.Client(transport=transport, base_url="http://e") as client:
            _first_copy_on(transport, client, breaker.url)
            row = transport.stats().pool.by_url()[breaker.url]
            assert row.pending == 1  # the loser, still held by the breaker
            breaker.break_all()
            assert wait_until(
                lambda: transport.stats().pool.by_url()[breaker.url].pending == 0, 10.0
            )
            row = transport.stats().pool.by_url()[breaker.url]
            assert (row.failures, row.cancelled) == (1, 0)
    finally:
        breaker.close()


def test_a_loser_still_running_when_the_transport_closes_is_released_as_cancelled(
    good: EchoServer,
) -> None:
    """If this fails, closing a transport books its hedge losers as their replicas'
    failures (a clean shutdown that ejects healthy replicas), or leaves them in flight."""
    prometheus_client = pytest.importorskip("prometheus_client")
    from embedbalance.metrics import PrometheusMetrics

    registry = prometheus_client.CollectorRegistry()
    breaker = Breaker()
    try:
        transport = _hedged(good.url, metrics=PrometheusMetrics(registry))
        with httpx.Client(transport=transport, base_url="http://e") as client:
            _first_copy_on(transport, client, breaker.url)
            # The loser's connection breaks while the client's exit is closing the
            # transport (close() waits a while for attempts still running).
            threading.Timer(0.3, breaker.break_all).start()
        assert wait_until(lambda: transport.stats().pool.by_url()[breaker.url].pending == 0, 10.0)
        row = transport.stats().pool.by_url()[breaker.url]
        assert (row.failures, row.cancelled) == (0, 1)
        labels = {"backend": breaker.url, "outcome": "cancelled"}
        assert registry.get_sample_value("embedbalance_requests_total", labels) == 1
    finally:
        breaker.close()
