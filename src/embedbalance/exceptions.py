"""Every error the library raises on purpose derives from :class:`EmbedbalanceError`.

Callers catch one base class; each subclass carries structured detail (which
backend, why) rather than asking anyone to parse a message.

The errors a *transport* raises (:class:`NoBackendAvailable`, :class:`AllAttemptsFailed`)
also derive from ``httpx.TransportError``: code that already handles failed requests
the httpx way (``except httpx.HTTPError``, stamina or tenacity retrying on
``httpx.TransportError``, the OpenAI SDK's own retry loop) keeps working unchanged when
the balancing transport is swapped in. That is the one reason this module imports
httpx; it holds no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import httpx

__all__ = [
    "AllAttemptsFailed",
    "Attempt",
    "ConfigError",
    "DeadlineExceeded",
    "DimensionMismatch",
    "EmbedbalanceError",
    "NoBackendAvailable",
    "ResponseFormatError",
    "Unavailability",
]


class EmbedbalanceError(Exception):
    """Base class of every exception embedbalance raises deliberately."""


class ConfigError(EmbedbalanceError, ValueError):
    """A setting is missing, unknown or malformed; the message names it (``retry.attempts``,
    or the environment variable) and what was expected. Raised by ``from_env`` and
    ``from_config``; a ``ValueError`` so that code validating settings catches it."""


@attrs.frozen
class Unavailability:
    """Why one backend could not be picked: ``reason`` is one of ``"ejected"``,
    ``"unhealthy"``, ``"overloaded"``, ``"overloaded (bulk)"`` (it refused bulk work:
    only bulk requests avoid it), ``"excluded"``, ``"draining"``, or the canary
    check's word (starting with ``"canary:"``); ``until`` is the clock time the state
    ends at, where known."""

    url: str
    reason: str
    until: float | None = None

    def __str__(self) -> str:
        tail = f" until t={self.until:.3f}" if self.until is not None else ""
        return f"{self.url}: {self.reason}{tail}"


class NoBackendAvailable(EmbedbalanceError, httpx.ConnectError):
    """Nothing could be picked: no backend configured, or every one is unusable.

    ``reasons`` names each backend and why; it is empty when none is configured.
    ``model`` is the model the request asked for (``None``: any), and ``served`` the
    models the pool's backends serve, so that a request for a model no backend serves
    says so. Like ``httpx.ConnectError``, it means the request was never sent.
    """

    def __init__(
        self,
        reasons: Sequence[Unavailability] = (),
        *,
        model: str | None = None,
        served: Sequence[str] = (),
    ) -> None:
        self.reasons: tuple[Unavailability, ...] = tuple(reasons)
        self.model = model
        self.served: tuple[str, ...] = tuple(served)
        if model is not None and not self.reasons:
            listed = ", ".join(repr(m) for m in self.served) or "none"
            msg = f"no backend serves model {model!r} (models served: {listed})"
        elif self.reasons:
            detail = "; ".join(str(r) for r in self.reasons)
            msg = f"no backend available ({detail})"
            if model is not None:
                msg = f"no backend available for model {model!r} ({detail})"
        else:
            msg = "no backend available: none configured"
        super().__init__(msg)


@attrs.frozen
class Attempt:
    """One try of a request: the backend it went to and what went wrong
    (an exception's text or ``"HTTP 503"``)."""

    url: str
    error: str

    def __str__(self) -> str:
        return f"{self.url}: {self.error}"


class AllAttemptsFailed(EmbedbalanceError, httpx.TransportError):
    """Every attempt of a request failed without an HTTP answer to return (connection
    errors, timeouts, an exhausted retry budget or deadline after such errors);
    ``attempts`` lists each, in order, and ``__cause__`` is the last error.

    When the last attempt *did* get an HTTP answer (a 503 after every retry, say), the
    transport returns that response instead, as a proxy would.
    """

    def __init__(self, attempts: Sequence[Attempt], *, why: str = "all attempts failed") -> None:
        self.attempts: tuple[Attempt, ...] = tuple(attempts)
        self.why = why
        detail = "; ".join(str(a) for a in self.attempts)
        super().__init__(f"{why} after {len(self.attempts)} attempt(s): {detail}")


class DeadlineExceeded(AllAttemptsFailed, httpx.TimeoutException):
    """The request's overall deadline (``total_timeout``) ran out before any attempt
    got an answer; also an ``httpx.TimeoutException``, so timeout handlers see it."""


class DimensionMismatch(EmbedbalanceError):
    """Backends returned embeddings of different sizes — a wrong model is
    deployed somewhere. Names the backend and both dimensions."""

    def __init__(self, url: str, expected: int, got: int) -> None:
        self.url, self.expected, self.got = url, expected, got
        super().__init__(
            f"backend {url} returned {got}-dimensional embeddings, expected {expected}: "
            "is a different model deployed there?"
        )


class ResponseFormatError(EmbedbalanceError):
    """A backend's answer did not have the documented shape (wrong JSON, wrong
    number of rows)."""
