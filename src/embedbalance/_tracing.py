"""OpenTelemetry spans for the transports' attempts, when ``opentelemetry-api`` is installed.

Why a span per attempt, not per request: the caller's own HTTP span (from
``opentelemetry-instrumentation-httpx`` on its client, or its framework) already covers
the request; what it cannot show is that the request went to two backends, which one
failed and how, and which one a hedge beat. Each attempt is a ``CLIENT`` span, child of
whatever span is current where the request was made, with the stable HTTP client
semantic-convention attributes (``http.request.method``, ``server.address``,
``server.port``, ``url.full``, ``http.request.resend_count`` from the second attempt on,
``http.response.status_code``, ``error.type``) and the balancer's part
(``embedbalance.backend``, ``embedbalance.balancer``, ``embedbalance.hedge``,
``embedbalance.outcome``).

While an attempt is sent its span is the current one, also on the thread that sends a
raced sync attempt, so a span the httpx instrumentation makes for the inner transport's
request nests under the attempt. Health probes, canaries and ``/info`` reads are
sent with HTTP instrumentation suppressed: a probe every few seconds per backend is not
the user's traffic.

Everything here is a no-op without ``opentelemetry-api``. With the API but no SDK
configured, each attempt still creates (and ends) the API's non-recording span: a small
object per attempt, no attributes, nothing exported.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

    from .pool import Lease

try:
    from opentelemetry import context as _context
    from opentelemetry import trace as _trace

    _HAVE_OTEL = True
except ImportError:  # pragma: no cover - exercised where the extra is not installed
    _HAVE_OTEL = False

__all__ = ["activate", "end_attempt", "start_attempt", "suppressed"]

_tracer: Any = None


def _get_tracer() -> Any:
    global _tracer
    if _tracer is None and _HAVE_OTEL:
        from importlib.metadata import PackageNotFoundError, version

        try:
            __version__ = version("embedbalance")
        except PackageNotFoundError:  # pragma: no cover - run from a source tree
            __version__ = ""
        # A proxy until the application sets a provider; it follows the provider set later.
        _tracer = _trace.get_tracer("embedbalance", __version__)
    return _tracer


def start_attempt(
    request: httpx.Request, lease: Lease, routed_url: httpx.URL, balancer: str
) -> None:
    """Open the attempt's span (kept on the lease until the attempt settles)."""
    tracer = _get_tracer()
    if tracer is None:
        return
    span = tracer.start_span(request.method, kind=_trace.SpanKind.CLIENT)
    if span.is_recording():
        attributes: dict[str, Any] = {
            "http.request.method": request.method,
            "server.address": routed_url.host,
            "url.full": str(routed_url.copy_with(query=None)),
            "embedbalance.backend": lease.backend.url,
            "embedbalance.balancer": balancer,
            "embedbalance.hedge": lease.hedge,
        }
        if routed_url.port is not None:
            attributes["server.port"] = routed_url.port
        if lease.attempt:
            attributes["http.request.resend_count"] = lease.attempt
        span.set_attributes(attributes)
    lease.span = span


@contextlib.contextmanager
def activate(lease: Lease) -> Iterator[None]:
    """Make the attempt's span current while its request is sent."""
    span = lease.span
    if span is None:
        yield
        return
    with _trace.use_span(span, end_on_exit=False, record_exception=False):
        yield


def end_attempt(
    lease: Lease, outcome: str, status: int | None = None, error: str | None = None
) -> None:
    """Close the attempt's span with how it ended; an error status for anything but a
    success (a cancelled attempt is not an error: it is marked by its outcome)."""
    span = lease.span
    if span is None:
        return
    lease.span = None
    if span.is_recording():
        span.set_attribute("embedbalance.outcome", outcome)
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        if error is not None:
            span.set_attribute("error.type", error)
            span.set_status(_trace.Status(_trace.StatusCode.ERROR, error))
    span.end()


@contextlib.contextmanager
def suppressed() -> Iterator[None]:
    """Keep a health probe out of traces: HTTP instrumentation (the httpx
    instrumentor's spans) is suppressed while it is sent."""
    if not _HAVE_OTEL:
        yield
        return
    # The API's own keys (unique objects, not names): the instrumentations read them.
    keys = [
        getattr(_context, name, None)
        for name in ("_SUPPRESS_HTTP_INSTRUMENTATION_KEY", "_SUPPRESS_INSTRUMENTATION_KEY")
    ]
    ctx = _context.get_current()
    for key in keys:
        if key is not None:
            ctx = _context.set_value(key, True, ctx)
    token = _context.attach(ctx)
    try:
        yield
    finally:
        _context.detach(token)
