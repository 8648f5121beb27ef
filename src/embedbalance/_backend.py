"""The :class:`Backend` record: one replica the balancer may send requests to."""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import attrs

__all__ = ["Backend", "BackendLike", "as_backend"]


def _check_url(_: object, __: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str):
        raise ValueError(f"Backend url must be a string, got {type(value).__name__}")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"Backend url {value!r} must start with http:// or https://")
    if not parts.hostname:
        raise ValueError(f"Backend url {value!r} has no host")
    try:
        parts.port  # noqa: B018 - evaluated for its validation side effect
    except ValueError as exc:
        raise ValueError(f"Backend url {value!r} has an invalid port") from exc
    if parts.query or parts.fragment:
        raise ValueError(f"Backend url {value!r} must not carry a query or fragment")
    if parts.username is not None or parts.password is not None:
        # Refused rather than half-supported: credentials in a URL end up in logs, stats,
        # exceptions and metric labels, and would apply to some requests and not others.
        redacted = value.replace(parts.netloc, parts.netloc.rpartition("@")[2])
        raise ValueError(
            f"Backend url {redacted!r} carries credentials, which are not supported: send "
            "them as a header instead (httpx.Client(headers={'Authorization': ...}), or "
            "HealthCheck(headers=...) for health checks)"
        )


def _check_weight(_: object, __: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"Backend weight must be a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"Backend weight must be a finite number > 0, got {value!r}")


def _check_tier(_: object, __: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"Backend tier must be an int >= 0 (0 = most preferred), got {value!r}")


def _check_name(_: object, attribute: attrs.Attribute[str | None], value: str | None) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ValueError(
            f"Backend {attribute.name} must be a non-empty string or None, got {value!r}"
        )


def _freeze_labels(value: Mapping[str, str] | None) -> Mapping[str, str]:
    return MappingProxyType(dict(value or {}))


def _normalise_url(value: str) -> str:
    return value.rstrip("/") if isinstance(value, str) else value


@attrs.frozen(repr=False)
class Backend:
    """One replica: where it is, how much it can take, how preferred it is.

    Backends are immutable and compared by value, so the same URL given twice is the
    same backend. ``weight`` is relative capacity (a GPU box might be 8, a CPU pod 1);
    ``tier`` orders preference for :class:`~embedbalance.GpuPriority` (0 is the most
    preferred); ``labels`` are free-form metadata carried into stats and metrics.
    The URL may carry a path prefix (``http://10.0.0.5:8000/v2``), which transports
    prepend to each request's path. ``tls_server_name``: for an https backend reached by
    address (a pod IP), the name its certificate is issued for — sent as TLS SNI,
    verified, and used as the ``Host`` header. Credentials in the URL are refused.

    ``model``: the model this replica serves, so that requests naming a model go only
    where it is served (``None``: learned from the server's ``GET /info`` when health
    checks run, and until then the backend serves any request). ``zone``: where the
    replica runs (a cloud zone or region, free-form); a transport told its own zone
    keeps traffic there while that zone can carry it (``None``: in no zone, so never
    local).
    """

    url: str = attrs.field(converter=_normalise_url, validator=_check_url)
    weight: float = attrs.field(default=1.0, validator=_check_weight)
    tier: int = attrs.field(default=0, validator=_check_tier)
    labels: Mapping[str, str] = attrs.field(
        factory=dict, converter=_freeze_labels, eq=False, hash=False
    )
    tls_server_name: str | None = attrs.field(default=None, kw_only=True)
    model: str | None = attrs.field(default=None, kw_only=True, validator=_check_name)
    zone: str | None = attrs.field(default=None, kw_only=True, validator=_check_name)

    def __repr__(self) -> str:
        extra = ""
        if self.weight != 1.0:
            extra += f", weight={self.weight:g}"
        if self.tier:
            extra += f", tier={self.tier}"
        if self.labels:
            extra += f", labels={dict(self.labels)!r}"
        if self.tls_server_name is not None:
            extra += f", tls_server_name={self.tls_server_name!r}"
        if self.model is not None:
            extra += f", model={self.model!r}"
        if self.zone is not None:
            extra += f", zone={self.zone!r}"
        return f"Backend({self.url!r}{extra})"

    @property
    def scheme(self) -> str:
        """``http`` or ``https``."""
        return urlsplit(self.url).scheme

    @property
    def host(self) -> str:
        """Host name or address, without brackets for IPv6."""
        host = urlsplit(self.url).hostname
        assert host is not None  # guaranteed by the validator
        return host

    @property
    def port(self) -> int:
        """Explicit port, or the scheme's default."""
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def path_prefix(self) -> str:
        """Path the backend is mounted under (``""`` for the root)."""
        return urlsplit(self.url).path.rstrip("/")


BackendLike = Backend | str


def as_backend(value: Any) -> Backend:
    """Coerce a URL string (or a :class:`Backend`) into a :class:`Backend`."""
    if isinstance(value, Backend):
        return value
    if isinstance(value, str):
        return Backend(value)
    raise TypeError(f"expected a Backend or a URL string, got {type(value).__name__}")
