"""Backend validation and coercion."""

from __future__ import annotations

import pytest

import embedbalance as eb
from embedbalance._backend import as_backend


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "ftp://a.test"}, "must start with http:// or https://"),
        ({"url": "a.test:8000"}, "must start with http:// or https://"),
        ({"url": "http://"}, "has no host"),
        ({"url": "http://a.test:99999"}, "invalid port"),
        ({"url": "http://a.test:port"}, "invalid port"),
        ({"url": "http://a.test/?x=1"}, "query or fragment"),
        ({"url": "http://a.test/#top"}, "query or fragment"),
        ({"url": 8000}, "must be a string"),
        ({"url": "http://a.test", "weight": 0}, "weight must be a finite number > 0"),
        ({"url": "http://a.test", "weight": -2.0}, "weight must be a finite number > 0"),
        ({"url": "http://a.test", "weight": float("nan")}, "weight must be a finite number"),
        ({"url": "http://a.test", "weight": float("inf")}, "weight must be a finite number"),
        ({"url": "http://a.test", "weight": True}, "weight must be a number"),
        ({"url": "http://a.test", "weight": "2"}, "weight must be a number"),
        ({"url": "http://a.test", "tier": -1}, "tier must be an int >= 0"),
        ({"url": "http://a.test", "tier": 1.5}, "tier must be an int >= 0"),
    ],
)
def test_backend_rejects_bad_input_with_a_clear_message(
    kwargs: dict[str, object], message: str
) -> None:
    """Each invalid Backend field raises ValueError saying what is wrong."""
    with pytest.raises(ValueError, match=message):
        eb.Backend(**kwargs)  # type: ignore[arg-type]


def test_backend_normalises_and_compares_by_value() -> None:
    """A trailing slash is dropped and equal URLs with equal weight/tier are one backend."""
    a = eb.Backend("http://10.0.0.5:8000/", labels={"zone": "a"})
    b = eb.Backend("http://10.0.0.5:8000")
    assert a == b
    assert hash(a) == hash(b)
    assert a.url == "http://10.0.0.5:8000"
    assert (a.scheme, a.host, a.port, a.path_prefix) == ("http", "10.0.0.5", 8000, "")


def test_backend_parts() -> None:
    """Host, default port and path prefix are derived from the URL (IPv6 unbracketed)."""
    b = eb.Backend("https://[::1]/v2/")
    assert (b.host, b.port, b.path_prefix) == ("::1", 443, "/v2")
    assert eb.Backend("http://a.test").port == 80


def test_backend_labels_are_read_only() -> None:
    """Labels cannot be mutated after construction (backends are shared between threads)."""
    b = eb.Backend("http://a.test", labels={"gpu": "a100"})
    with pytest.raises(TypeError):
        b.labels["gpu"] = "t4"  # type: ignore[index]


def test_repr_shows_non_defaults() -> None:
    """The repr names only what differs from the defaults."""
    assert repr(eb.Backend("http://a.test")) == "Backend('http://a.test')"
    assert repr(eb.Backend("http://a.test", weight=4, tier=1)) == (
        "Backend('http://a.test', weight=4, tier=1)"
    )


def test_as_backend() -> None:
    """Strings coerce to Backends, Backends pass through, anything else is a TypeError."""
    b = eb.Backend("http://a.test")
    assert as_backend("http://a.test") == b
    assert as_backend(b) is b
    with pytest.raises(TypeError, match="expected a Backend or a URL string"):
        as_backend(42)


def test_pool_rejects_duplicate_backends() -> None:
    """Giving the same URL twice to a pool is a ValueError, not a silent double weight."""
    with pytest.raises(ValueError, match="given twice"):
        eb.BackendPool(["http://a.test", "http://a.test/"])


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: eb.SlowStart(min_weight_percent=0), "min_weight_percent"),
        (lambda: eb.SlowStart(window=-1), "window"),
        (lambda: eb.OutlierDetection(consecutive_failures=0), "consecutive_failures"),
        (lambda: eb.OutlierDetection(max_ejection_percent=101), "max_ejection_percent"),
        (lambda: eb.HealthCheck(path="health"), "path"),
        (lambda: eb.HealthCheck(rise=0), "rise"),
        (lambda: eb.BackendPool(panic_threshold=1.5), "panic_threshold"),
        (lambda: eb.GpuPriority(overprovisioning=0.5), "overprovisioning"),
    ],
)
def test_policies_validate(factory: object, message: str) -> None:
    """Policies reject out-of-range parameters with a ValueError naming the parameter."""
    with pytest.raises(ValueError, match=message):
        factory()  # type: ignore[operator]
