"""The two clients take the same options with the same defaults, and every option given
to either reaches the same place: its request shapes, its transport, its HTTP client.

Why a test of its own: the constructors are twins of some forty keywords each, and the
suite exercises the sync one far more. Mutation testing showed that the async one
could drop ``retry=``, ``zone=`` or ``timeout=`` on the floor, or change a default, and
no test noticed. Here both are built from one set of non-default values and compared
field by field, and the defaults that the docs state are pinned.
"""

from __future__ import annotations

import inspect
import random
from typing import Any

import attrs
import httpx
import pytest

import embedbalance as eb
from embedbalance.client import _Config

#: The defaults docs/client.md states: if one changes, the docs change with it.
DOCUMENTED = {
    "api": "tei",
    "path": None,
    "model": None,
    "normalize": None,
    "truncate": None,
    "dimensions": None,
    "dtype": "float32",
    "encoding_format": "float",
    "batch_tokens": 4096,
    "batch_size": 32,
    "probe_info": True,
    "tokenizer": None,
    "sort_by_length": True,
    "max_concurrency": None,
    "dimension": None,
    "timeout": 60.0,
    "headers": None,
    "priority": "interactive",
    "bulk_limit": eb.BulkLimit(),
    "progress": None,
    "progress_threshold": 1000,
    "on_batch": None,
    "panic_threshold": 0.5,
    "dedupe": True,
}

#: The keyword whose type differs between the twins by design.
TWIN_TYPED = {"transport"}


def _defaults(cls: type) -> dict[str, Any]:
    params = inspect.signature(cls.__init__).parameters  # type: ignore[misc]
    return {name: p.default for name, p in params.items() if name not in ("self", "backends")}


def test_both_clients_take_the_same_keywords_with_the_same_defaults() -> None:
    """If this fails, one twin grew or lost an option, or its default drifted."""
    sync, asyn = _defaults(eb.EmbeddingClient), _defaults(eb.AsyncEmbeddingClient)
    assert sorted(sync) == sorted(asyn)
    for name, default in sync.items():
        if name in TWIN_TYPED:
            continue
        assert asyn[name] == default, name
    for name, default in DOCUMENTED.items():
        assert (sync[name], asyn[name]) == (default, default), name


@pytest.mark.parametrize("cls", [eb.EmbeddingClient, eb.AsyncEmbeddingClient])
def test_a_max_concurrency_below_one_is_refused_by_name(cls: type) -> None:
    """0 is refused with the option's name; 1 is allowed (one sub-batch at a time)."""
    with pytest.raises(ValueError, match=r"^max_concurrency must be >= 1, got 0$"):
        cls(["http://127.0.0.1:9"], max_concurrency=0, health_check=None)
    cls(["http://127.0.0.1:9"], max_concurrency=1, health_check=None)


@pytest.mark.parametrize("cls", [eb.EmbeddingClient, eb.AsyncEmbeddingClient])
@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        (
            {"encoding_format": "int8"},
            ValueError,
            "encoding_format must be 'float' or 'base64', got 'int8'",
        ),
        ({"batch_size": 0}, ValueError, "batch_tokens and batch_size must be >= 1"),
        ({"batch_tokens": 0}, ValueError, "batch_tokens and batch_size must be >= 1"),
        ({"dimension": True}, ValueError, "dimension must be >= 1, got True"),
        ({"dimensions": 0}, ValueError, "dimensions must be >= 1, got 0"),
        ({"dimension": 3, "dimensions": 4}, ValueError, "dimension=3 contradicts dimensions=4"),
        ({"dtype": "int8"}, ValueError, "dtype must be 'float32' or 'float16', got 'int8'"),
        ({"timeout": 0}, ValueError, "timeout must be > 0 or None, got 0"),
        ({"cache": {}}, TypeError, "cache must be an EmbeddingCache or None, got {}"),
    ],
)
def test_each_bad_option_is_refused_with_its_own_message(
    cls: type, options: dict[str, Any], error: type[Exception], message: str
) -> None:
    """Each option checked at construction is refused by name, with the value given,
    and the smallest allowed value passes (one text, one token, a dimension of 1). If
    this fails, a wrong setting is accepted and fails later, far from its cause, or
    the message does not say which setting."""
    with pytest.raises(error) as info:
        cls(["http://127.0.0.1:9"], health_check=None, **options)
    assert str(info.value) == message
    cls(["http://127.0.0.1:9"], health_check=None, batch_size=1, batch_tokens=1, dimension=1)


def test_dimensions_pins_the_dimension_of_an_empty_answer() -> None:
    """``dimensions=3`` alone: ``embed([])`` answers shape ``(0, 3)`` with no request
    (nothing listens on the backend's port). If this fails, an empty call asks
    ``/info`` for a size the caller already gave."""
    with eb.EmbeddingClient(["http://127.0.0.1:9"], dimensions=3, health_check=None) as client:
        assert client.embed([]).shape == (0, 3)


def _count(text: str) -> int:
    return len(text) + 1


def _options() -> dict[str, Any]:
    """A non-default value for every keyword both twins share (fresh objects each call,
    equal between calls)."""
    return {
        "api": "openai",
        "model": "m",
        "path": "/v2/embed",
        "normalize": True,
        "truncate": True,
        "dimensions": 8,
        "dtype": "float16",
        "encoding_format": "base64",
        "batch_tokens": 1000,
        "batch_size": 5,
        "tokenizer": _count,
        "sort_by_length": False,
        "progress": False,
        "progress_threshold": 7,
        "dimension": 8,
        "timeout": 12.5,
        "probe_info": False,
        "dedupe": False,
        "headers": {"x-team": "search"},
        "priority": "bulk",
        "bulk_limit": eb.BulkLimit(initial=3, max_limit=3),
        "balancer": eb.RoundRobin,
        "health_check": eb.HealthCheck(interval=9.0),
        "outlier_detection": eb.OutlierDetection(consecutive_failures=9),
        "slow_start": eb.SlowStart(window=9.0),
        "panic_threshold": 0.25,
        "zone": "z1",
        "retry": eb.Retry(attempts=5),
        "hedge": eb.Hedge(multiple=3.0),
        "attempt_timeout": 4.0,
        "max_concurrency": 3,
    }


#: Given to both twins: each must keep this very generator (the jitter, the tie-breaks
#: and the health checks' seeds come from it).
RNG = random.Random(7)


def _config(cfg: _Config) -> dict[str, Any]:
    fields = attrs.asdict(cfg, recurse=False)
    fields.pop("_lock")
    counter = fields.pop("count_tokens")
    fields["counted"] = counter("hello")
    return fields


def _transport(client: Any) -> dict[str, Any]:
    core = client.transport._core
    pool = core.pool
    return {
        "balancer": type(pool.balancer),
        "health_check": pool.health_check,
        "outlier_detection": pool.outlier_detection,
        "slow_start": pool.slow_start,
        "panic_threshold": pool.panic_threshold,
        "zone": pool.locality,
        "retry": core.retry,
        "hedge": core.policy.hedge,
        "attempt_timeout": core.policy.attempt_timeout,
        "total_timeout": core.policy.total_timeout,
        "rng is the one given": core.rng is RNG,
    }


def _http(client: Any) -> dict[str, Any]:
    http = client._http
    return {"timeout": http.timeout, "team": http.headers.get("x-team")}


async def _async_state(inner: httpx.AsyncBaseTransport) -> tuple[Any, ...]:
    async with eb.AsyncEmbeddingClient(
        ["http://127.0.0.1:9"], transport=inner, rng=RNG, **_options()
    ) as client:
        gate = client._gate
        assert gate is not None
        return (
            _config(client._cfg),
            _transport(client),
            _http(client),
            (gate.limiter.max_limit, client._max_concurrency),
            client.transport._ainner.get(eb.Backend("http://127.0.0.1:9")) is inner,
        )


@pytest.mark.anyio
async def test_every_option_reaches_the_same_place_in_both_clients() -> None:
    """Built from the same non-default values, the twins hold equal request shapes,
    transports and HTTP clients, and the inner transport given is the one used. If this
    fails, an option of one twin is dropped or sent somewhere else."""
    inner = httpx.HTTPTransport()
    with eb.EmbeddingClient(
        ["http://127.0.0.1:9"], transport=inner, rng=RNG, **_options()
    ) as client:
        gate = client._gate
        assert gate is not None
        sync = (
            _config(client._cfg),
            _transport(client),
            _http(client),
            (gate.limiter.max_limit, client._max_concurrency),
            client.transport._inner.get(eb.Backend("http://127.0.0.1:9")) is inner,
        )
    asyn = await _async_state(httpx.AsyncHTTPTransport())
    assert asyn == sync
    config, transport, http, _, same_inner = sync
    # ...and they are the values given, not two equal defaults.
    assert same_inner
    assert (config["batch_size"], config["batch_tokens"], config["counted"]) == (5, 1000, 6)
    assert (config["sort_by_length"], config["probe_info"], config["dedupe"]) == (
        False,
        False,
        False,
    )
    assert (config["timeout"], config["priority"], config["progress_threshold"]) == (
        12.5,
        "bulk",
        7,
    )
    options = config["options"]
    assert (options.model, options.normalize, options.truncate, options.dimensions) == (
        "m",
        True,
        True,
        8,
    )
    assert config["wire"].path == "/v2/embed"
    assert transport["rng is the one given"]
    assert transport["retry"] == eb.Retry(attempts=5)
    assert transport["hedge"] == eb.Hedge(multiple=3.0)
    assert transport["outlier_detection"] == eb.OutlierDetection(consecutive_failures=9)
    assert transport["slow_start"] == eb.SlowStart(window=9.0)
    assert transport["health_check"].interval == 9.0
    assert (transport["attempt_timeout"], transport["panic_threshold"]) == (4.0, 0.25)
    assert transport["zone"].zone == "z1"
    assert http == {"timeout": httpx.Timeout(12.5), "team": "search"}


async def _async_default_state(**options: Any) -> tuple[Any, ...]:
    async with eb.AsyncEmbeddingClient(
        ["http://127.0.0.1:9", "http://127.0.0.1:10"], **options
    ) as c:
        return _built(c)


def _built(client: Any) -> tuple[Any, ...]:
    gate = client._gate
    return (
        _config(client._cfg),
        {k: v for k, v in _transport(client).items() if k != "rng is the one given"},
        _http(client),
        None if gate is None else (gate.limiter.max_limit, gate._timeout),
    )


@pytest.mark.anyio
@pytest.mark.parametrize("priority", ["interactive", "bulk"])
async def test_both_clients_built_with_defaults_hold_the_documented_values(priority: str) -> None:
    """Built with nothing but backends (and a priority), the twins hold equal state, and
    it is the documented one: 32 texts and 4,096 tokens a sub-batch, sorted by length,
    a 60 s timeout, ``/info`` probed; a bulk client's limit capped at two sub-batches per
    live backend, within the client's timeout; an interactive client has no bulk gate.
    (A default changed in the signature alone would pass the keyword test above: this
    one builds with them.) If this fails, the twins start from different settings."""
    urls = ["http://127.0.0.1:9", "http://127.0.0.1:10"]
    options = {"health_check": None, "priority": priority}
    with eb.EmbeddingClient(urls, **options) as client:  # type: ignore[arg-type]
        sync = _built(client)
    assert await _async_default_state(**options) == sync
    config, _, http, gate = sync
    assert (config["batch_size"], config["batch_tokens"]) == (32, 4096)
    assert (config["sort_by_length"], config["probe_info"], config["timeout"]) == (True, True, 60.0)
    assert http["timeout"] == httpx.Timeout(60.0)
    assert gate == ((4, 60.0) if priority == "bulk" else None)


@pytest.mark.anyio
async def test_the_metrics_sink_and_clock_given_are_the_ones_used() -> None:
    """A ``PrometheusMetrics`` sink given to either twin is its transport's sink and
    exports the client's savings; the clock given is the pool's. If this fails, a
    client's requests or its folded duplicates are missing from the dashboards."""
    from prometheus_client import CollectorRegistry

    def clock() -> float:
        return 5.0

    for twin in ("sync", "async"):
        registry = CollectorRegistry()
        sink = eb.PrometheusMetrics(registry)
        options: dict[str, Any] = {"health_check": None, "metrics": sink, "clock": clock}
        if twin == "sync":
            with eb.EmbeddingClient(["http://127.0.0.1:9"], **options) as client:
                core = client.transport._core
                client._cfg.duplicates = 3
                folded = registry.get_sample_value("embedbalance_duplicates_folded_total")
        else:
            async with eb.AsyncEmbeddingClient(["http://127.0.0.1:9"], **options) as aclient:
                core = aclient.transport._core
                aclient._cfg.duplicates = 3
                folded = registry.get_sample_value("embedbalance_duplicates_folded_total")
        assert core.metrics is sink, twin
        assert (core.clock, core.pool.clock) == (clock, clock), twin
        assert folded == 3, twin
