"""OpenTelemetry: one span per attempt, under the caller's span, with the HTTP client
semantic-convention attributes; the httpx instrumentation's own spans nest under the
attempt; health probes stay out of traces. Real control servers, the SDK's in-memory
exporter."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

import embedbalance as eb
from embedbalance.health_runner import async_http_probe, http_probe

pytest.importorskip("opentelemetry.sdk", reason="the otel extra (opentelemetry-sdk) is needed")

from opentelemetry import trace
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

pytestmark = pytest.mark.timeout(120)

REQUESTS = 6


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    """The process's tracer provider (set once: OpenTelemetry refuses a second one)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return memory


@pytest.fixture
def spans(exporter: InMemorySpanExporter) -> Iterator[Callable[[], list[ReadableSpan]]]:
    exporter.clear()
    yield lambda: list(exporter.get_finished_spans())
    exporter.clear()


@contextlib.contextmanager
def instrumented() -> Iterator[None]:
    """httpx instrumented (its transports' requests become spans) for the block only:
    the servers' own start-up polls stay out."""
    HTTPXClientInstrumentor().instrument()
    try:
        yield
    finally:
        HTTPXClientInstrumentor().uninstrument()


def _check_attempts(
    finished: list[ReadableSpan], caller: ReadableSpan, good: Any, bad: Any
) -> list[ReadableSpan]:
    """The attempt spans: each under the caller's span, a failed first attempt on the
    failing server followed by a resend on the good one."""
    attempts = [s for s in finished if "embedbalance.backend" in (s.attributes or {})]
    assert attempts, [s.name for s in finished]
    for span in attempts:
        attrs = dict(span.attributes or {})
        assert span.kind is trace.SpanKind.CLIENT
        assert span.parent is not None
        assert span.parent.span_id == caller.context.span_id
        assert attrs["http.request.method"] == "POST"
        assert attrs["server.address"] == "127.0.0.1"
        assert attrs["embedbalance.balancer"] == "RoundRobin"
        assert attrs["url.full"].endswith("/embed")
        port = attrs["server.port"]
        if port == bad.port:
            assert attrs["http.response.status_code"] == 500
            assert span.status.status_code is trace.StatusCode.ERROR
            assert attrs["error.type"] == "HTTP 500"
        else:
            assert port == good.port
            assert attrs["http.response.status_code"] == 200
            assert attrs["embedbalance.outcome"] == "success"
            assert span.status.status_code is not trace.StatusCode.ERROR
    failed = [s for s in attempts if s.attributes["server.port"] == bad.port]  # type: ignore[index]
    resent = [s for s in attempts if s.attributes.get("http.request.resend_count") == 1]  # type: ignore[union-attr]
    # Round-robin over the two: about half the requests start on the failing server and
    # each is resent once, on the good one; the others take one attempt.
    assert failed, "no request was tried on the failing server"
    assert len(resent) == len(failed)
    assert len(attempts) == REQUESTS + len(failed)
    return attempts


def test_sync_attempt_spans_nest_under_the_caller(
    servers: Callable[..., list[Any]],
    spans: Callable[[], list[ReadableSpan]],
) -> None:
    """If this fails, a sync attempt gets no span, loses its parent, misses a semantic-
    convention attribute, a retry is not counted as a resend, or the inner request's
    span (httpx instrumentation) does not nest under its attempt."""
    good, bad = servers(1)[0], servers(1, mode="fail")[0]
    transport = eb.BalancingTransport(
        [good.url, bad.url], balancer=eb.RoundRobin(), retry=eb.Retry(attempts=2)
    )
    tracer = trace.get_tracer("test")
    with (
        instrumented(),
        httpx.Client(transport=transport, base_url="http://embedders") as client,
        tracer.start_as_current_span("caller"),
    ):
        for i in range(REQUESTS):
            client.post("/embed", json={"inputs": [f"t{i}"]}).raise_for_status()
    finished = spans()
    caller = next(s for s in finished if s.name == "caller")
    attempts = _check_attempts(finished, caller, good, bad)
    ids = {s.context.span_id for s in attempts}
    inner = [s for s in finished if s not in attempts and s.name != "caller"]
    assert inner, "the httpx instrumentation recorded nothing"
    orphans = [
        (s.name, s.parent, dict(s.attributes or {}))
        for s in inner
        if s.parent is None or s.parent.span_id not in ids
    ]
    assert not orphans, orphans


@pytest.mark.anyio
async def test_async_attempt_spans_nest_under_the_caller(
    servers: Callable[..., list[Any]], spans: Callable[[], list[ReadableSpan]]
) -> None:
    """If this fails, the async twin's attempts lose their spans or their parent."""
    good, bad = servers(1)[0], servers(1, mode="fail")[0]
    transport = eb.AsyncBalancingTransport(
        [good.url, bad.url], balancer=eb.RoundRobin(), retry=eb.Retry(attempts=2)
    )
    tracer = trace.get_tracer("test")
    async with httpx.AsyncClient(transport=transport, base_url="http://embedders") as client:
        with tracer.start_as_current_span("caller"):
            for i in range(REQUESTS):
                (await client.post("/embed", json={"inputs": [f"t{i}"]})).raise_for_status()
    finished = spans()
    caller = next(s for s in finished if s.name == "caller")
    _check_attempts(finished, caller, good, bad)


def test_hedge_loser_ends_with_its_own_late_answer_not_an_error(
    servers: Callable[..., list[Any]], spans: Callable[[], list[ReadableSpan]]
) -> None:
    """If this fails, a hedge's copy is not marked as one, or the copy that lost the
    race is reported as an error instead of the late success it was."""
    slow, fast = servers(2)
    transport = eb.BalancingTransport(
        [slow.url, fast.url],
        balancer=eb.RoundRobin(),
        hedge=eb.Hedge(min_samples=1, min_delay=0.05, budget_ratio=1.0),
    )
    with httpx.Client(transport=transport, base_url="http://embedders") as client:
        for _ in range(4):  # latency samples for the hedge delay, both servers fast
            client.post("/embed", json={"inputs": ["x"]}).raise_for_status()
        slow.control(delay=2.0)
        spans_before = len(spans())
        for _ in range(2):  # round-robin: one of the two starts on `slow`
            client.post("/embed", json={"inputs": ["x"]}).raise_for_status()
        deadline = time.monotonic() + 10  # the loser answers late, by itself
        while transport.stats().pool.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
    attempts = [s for s in spans()[spans_before:] if "embedbalance.backend" in (s.attributes or {})]
    hedges = [s for s in attempts if s.attributes["embedbalance.hedge"]]  # type: ignore[index]
    assert hedges, [dict(s.attributes or {}) for s in attempts]
    for hedge in hedges:
        assert hedge.attributes["server.port"] == fast.port  # type: ignore[index]
        assert hedge.attributes["http.request.resend_count"] == 1  # type: ignore[index]
    losers = [s for s in attempts if s.attributes["server.port"] == slow.port]  # type: ignore[index]
    assert len(losers) == len(hedges)
    for loser in losers:
        assert loser.attributes["embedbalance.outcome"] == "success"  # type: ignore[index]
        assert loser.status.status_code is not trace.StatusCode.ERROR


@pytest.mark.anyio
async def test_health_probes_stay_out_of_traces(
    servers: Callable[..., list[Any]],
    spans: Callable[[], list[ReadableSpan]],
) -> None:
    """If this fails, every health probe (sync or async) becomes a span in the user's
    traces under the httpx instrumentation."""
    server = servers(1)[0]
    backend = eb.Backend(server.url)
    policy = eb.HealthCheck()
    with instrumented():
        with httpx.HTTPTransport() as inner:
            assert http_probe(policy, lambda _: inner)(backend)
            with httpx.Client(transport=inner) as plain:  # the control: instrumentation is on
                plain.get(server.url + "/health")  # noqa: ASYNC212 - a sync transport's own client
        async with httpx.AsyncHTTPTransport() as ainner:
            assert await async_http_probe(policy, lambda _: ainner)(backend)
    finished = spans()
    assert len(finished) == 1, [(s.name, s.attributes) for s in finished]


def test_sync_client_sub_batches_keep_the_callers_trace(
    servers: Callable[..., list[Any]], spans: Callable[[], list[ReadableSpan]]
) -> None:
    """If this fails, the sync EmbeddingClient's sub-batches (sent from its thread pool)
    start traces of their own instead of joining the caller's."""
    backends = servers(2)
    tracer = trace.get_tracer("test")
    with (
        eb.EmbeddingClient(
            [s.url for s in backends], batch_size=2, health_check=None, max_concurrency=4
        ) as client,
        tracer.start_as_current_span("caller"),
    ):
        rows = client.embed([f"text {i}" for i in range(8)])
    assert rows.shape[0] == 8
    finished = spans()
    caller = next(s for s in finished if s.name == "caller")
    posts = [
        s for s in finished if (s.attributes or {}).get("embedbalance.backend") and s.name == "POST"
    ]
    assert len(posts) >= 4, [s.name for s in finished]
    for span in posts:
        assert span.context.trace_id == caller.context.trace_id
        assert span.parent is not None
        assert span.parent.span_id == caller.context.span_id


@pytest.mark.parametrize("twin", ["sync", "async"])
def test_an_attempt_past_its_timeout_is_a_failure_named_in_the_error_and_its_span(
    spans: Callable[[], list[ReadableSpan]], twin: str
) -> None:
    """An attempt abandoned at ``attempt_timeout`` fails with a ReadTimeout that says so,
    is listed in AllAttemptsFailed, counts as its backend's failure, and its span ends
    with ``error.type`` "timeout". If this fails, a hung replica's attempts look like
    successes or cancellations in traces, or the error does not say what happened."""
    import anyio
    from echo_server import echo_servers

    with echo_servers(1) as (server,):
        server.hang = True
        kwargs: dict[str, Any] = {
            "health_check": None,
            "attempt_timeout": 0.2,
            "retry": eb.Retry(attempts=1),
        }
        if twin == "sync":
            transport = eb.BalancingTransport([server.url], **kwargs)
            with (
                httpx.Client(transport=transport, base_url="http://e") as client,
                pytest.raises(eb.AllAttemptsFailed) as failed,
            ):
                client.post("/embed", json={"inputs": ["x"]})
            server.hang = False  # the abandoned attempt ends now, not at its read timeout
        else:
            atransport = eb.AsyncBalancingTransport([server.url], **kwargs)

            async def main() -> None:
                async with httpx.AsyncClient(transport=atransport, base_url="http://e") as client:
                    await client.post("/embed", json={"inputs": ["x"]})

            with pytest.raises(eb.AllAttemptsFailed) as failed:
                anyio.run(main)
            transport = atransport  # type: ignore[assignment]
        server.hang = False
    assert [str(a) for a in failed.value.attempts] == [
        f"{server.url}: attempt timed out after 0.2s"
    ]
    assert isinstance(failed.value.__cause__, httpx.ReadTimeout)
    assert transport.stats().pool.by_url()[server.url].failures == 1
    attempts = [s for s in spans() if "embedbalance.backend" in (s.attributes or {})]
    assert len(attempts) == 1
    attrs = dict(attempts[0].attributes or {})
    assert (attrs["embedbalance.outcome"], attrs["error.type"]) == ("failure", "timeout")


def test_a_transport_error_ends_its_span_and_counts_under_its_backend(
    spans: Callable[[], list[ReadableSpan]],
) -> None:
    """The dropped attempt's span: outcome ``failure``, ``error.type`` the error's class,
    an error status; ``embedbalance_requests_total`` counts one failure under the
    dropping server's URL. If this fails, transport errors vanish from traces or from
    the per-backend failure rate that alerts read."""
    from prometheus_client import CollectorRegistry
    from tests.helpers.dropper import Dropper

    registry = CollectorRegistry()
    with Dropper() as dropper:
        transport = eb.BalancingTransport(
            [dropper.url],
            health_check=None,
            retry=False,
            metrics=eb.PrometheusMetrics(registry),
        )
        with (
            httpx.Client(transport=transport, base_url="http://e") as client,
            pytest.raises(eb.AllAttemptsFailed) as failed,
        ):
            client.post("/embed", json={"inputs": ["x"]})
    error = type(failed.value.__cause__).__name__
    assert error in {"RemoteProtocolError", "ReadError"}
    attempts = [s for s in spans() if "embedbalance.backend" in (s.attributes or {})]
    assert len(attempts) == 1
    attrs = dict(attempts[0].attributes or {})
    assert (attrs["embedbalance.outcome"], attrs["error.type"]) == ("failure", error)
    assert attempts[0].status.status_code is trace.StatusCode.ERROR
    labels = {"backend": dropper.url, "outcome": "failure"}
    assert registry.get_sample_value("embedbalance_requests_total", labels) == 1


@pytest.mark.anyio
async def test_an_attempt_its_caller_cancelled_ends_its_span_as_cancelled(
    spans: Callable[[], list[ReadableSpan]],
) -> None:
    """A caller that gives up (a cancel scope) while its attempt waits on a hung server:
    the attempt's span ends with outcome ``cancelled`` and no error status (the backend
    did nothing wrong). If this fails, cancelled attempts are unmarked in traces, or
    look like the backend's errors."""
    import anyio
    from echo_server import echo_servers

    with echo_servers(1) as (server,):
        server.hang = True
        transport = eb.AsyncBalancingTransport([server.url], health_check=None, hedge=None)
        async with httpx.AsyncClient(transport=transport, base_url="http://e") as client:
            with anyio.move_on_after(0.3) as scope:
                await client.post("/embed", json={"inputs": ["x"]})
            assert scope.cancelled_caught
            server.hang = False
    attempts = [s for s in spans() if "embedbalance.backend" in (s.attributes or {})]
    assert len(attempts) == 1
    attrs = dict(attempts[0].attributes or {})
    assert attrs["embedbalance.outcome"] == "cancelled"
    assert "error.type" not in attrs
    assert attempts[0].status.status_code is not trace.StatusCode.ERROR
    assert transport.stats().pool.by_url()[server.url].cancelled == 1
