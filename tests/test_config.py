"""embedbalance.config: every documented variable round-trips, mappings validate with
errors that name the setting, and the kwargs build real clients and transports."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from embedbalance import (
    Backend,
    BalancingTransport,
    EmbeddingClient,
    GpuPriority,
    HealthCheck,
    Hedge,
    OutlierDetection,
    PeakEwma,
    Retry,
    RetryBudgetPolicy,
    ShortestExpectedDelay,
    SlowStart,
)
from embedbalance import config as eb_config
from embedbalance.config import ENV_VARS, Config, ConfigError, from_config, from_env

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"
P = "EMBEDBALANCE_"

#: One valid value per documented variable, and what it must become.
SAMPLES: dict[str, tuple[str, Any]] = {
    "BACKENDS": ("http://a:1,http://b:2;weight=4;tier=1;model=m;zone=z", None),
    "DNS": ("embed-gpu.ns.svc;port=8000;tier=0,embed-cpu.ns.svc;tier=1", None),
    "DNS_PORT": ("8001", 8001),
    "DNS_MIN_TTL": ("2", 2.0),
    "DNS_MAX_TTL": ("20", 20.0),
    "DNS_TIMEOUT": ("1.5", 1.5),
    "BALANCER": ("peak-ewma", "peak-ewma"),
    "BALANCER_PARAMS": ('{"tau": 3.0}', {"tau": 3.0}),
    "RETRY_ATTEMPTS": ("4", 4),
    "RETRY_BUDGET_RATIO": ("0.3", 0.3),
    "RETRY_BUDGET_WINDOW": ("5", 5.0),
    "RETRY_BUDGET_MIN_PER_SECOND": ("2", 2.0),
    "HEDGE": ("on", None),
    "HEDGE_PERCENTILE": ("90", 90.0),
    "HEDGE_MULTIPLE": ("3", 3.0),
    "HEDGE_PER_BACKEND": ("false", False),
    "HEDGE_MIN_DELAY": ("0.01", 0.01),
    "HEDGE_MIN_SAMPLES": ("20", 20),
    "HEDGE_BUDGET_RATIO": ("0.05", 0.05),
    "HEALTH": ("off", None),
    "HEALTH_PATH": ("/ready", "/ready"),
    "HEALTH_INTERVAL": ("5", 5.0),
    "HEALTH_TIMEOUT": ("0.5", 0.5),
    "HEALTH_JITTER": ("0.2", 0.2),
    "HEALTH_RISE": ("3", 3),
    "HEALTH_FALL": ("4", 4),
    "HEALTH_CANARY": ("on", HealthCheck(canary=True).canary),
    "OUTLIER_DETECTION": ("off", None),
    "OUTLIER_CONSECUTIVE_FAILURES": ("7", 7),
    "OUTLIER_BASE_EJECTION_TIME": ("10", 10.0),
    "OUTLIER_MAX_EJECTION_TIME": ("100", 100.0),
    "OUTLIER_MAX_EJECTION_PERCENT": ("30", 30.0),
    "SLOW_START": ("off", None),
    "SLOW_START_WINDOW": ("20", 20.0),
    "SLOW_START_AGGRESSION": ("2", 2.0),
    "SLOW_START_MIN_WEIGHT_PERCENT": ("5", 5.0),
    "SLOW_START_WARM_ANSWERS": ("4", 4),
    "PANIC_THRESHOLD": ("0.3", 0.3),
    "ZONE": ("eu-west-1a", "eu-west-1a"),
    "TIMEOUT": ("12", 12.0),
    "ATTEMPT_TIMEOUT": ("3", 3.0),
    "TOTAL_TIMEOUT": ("20", 20.0),
    "API": ("openai", "openai"),
    "MODEL": ("all-MiniLM-L6-v2", "all-MiniLM-L6-v2"),
    "PATH": ("/v1/embeddings", "/v1/embeddings"),
    "NORMALIZE": ("false", False),
    "TRUNCATE": ("yes", True),
    "BATCH_TOKENS": ("2048", 2048),
    "BATCH_SIZE": ("16", 16),
    "MAX_CONCURRENCY": ("6", 6),
    "DIMENSION": ("384", 384),
    "PRIORITY": ("bulk", "bulk"),
    "API_KEY": ("s3cret", "s3cret"),
    "HEADERS": ('{"x-team": "search"}', {"x-team": "search"}),
}


def _get(cfg: Config, target: str) -> Any:
    """The value a dotted setting path holds in ``cfg``."""
    head, *rest = target.split(".")
    if head in eb_config._CLIENT:
        return cfg.client[head]
    if head == "timeouts":
        return cfg.timeouts[rest[0]]
    if head == "balancer":
        return cfg.balancer if rest == ["name"] else dict(cfg.balancer_params)
    if head == "dns":
        return cfg.dns[rest[0]] if cfg.dns else None
    node: Any = getattr(cfg, head)
    for key in rest:
        node = getattr(node, key)
    return node


def test_every_variable_has_a_sample_and_is_documented() -> None:
    """If this fails, a variable was added without a round-trip sample here or without
    a line in docs/config.md, so users cannot find it."""
    assert set(SAMPLES) == set(ENV_VARS)
    text = DOC.read_text()
    missing = [name for name in ENV_VARS if f"`{P}{name}`" not in text]
    assert not missing


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_each_variable_alone_sets_its_setting_and_round_trips(name: str) -> None:
    """If this fails, the variable is ignored, lands on the wrong setting, or does not
    survive ``to_env`` -> ``from_env``."""
    raw, expected = SAMPLES[name]
    env = {f"{P}{name}": raw}
    if name not in ("BACKENDS", "DNS") and not name.startswith("DNS_"):
        env[f"{P}BACKENDS"] = "http://a:1"
    if name.startswith("DNS_"):
        env[f"{P}DNS"] = "embed.ns.svc"
    if name == "BALANCER_PARAMS":
        env[f"{P}BALANCER"] = "peak-ewma"
    cfg = from_env(environ=env)
    target = ENV_VARS[name]
    if expected is not None:
        assert _get(cfg, target) == expected
    elif name == "BACKENDS":
        assert cfg.backends == (
            Backend("http://a:1"),
            Backend("http://b:2", weight=4, tier=1, model="m", zone="z"),
        )
    elif name == "DNS":
        assert cfg.dns == {
            "targets": [
                {"name": "embed-gpu.ns.svc", "port": 8000, "tier": 0},
                {"name": "embed-cpu.ns.svc", "tier": 1},
            ]
        }
    elif name == "HEDGE":
        assert cfg.hedge is True
        assert cfg.transport_kwargs()["hedge"] == Hedge()
    else:  # a switch turned off
        assert getattr(cfg, target) is False
        key = {"health": "health_check"}.get(target, target)
        assert cfg.transport_kwargs()[key] is None
    assert from_env(environ=cfg.to_env()) == cfg
    assert from_env("APP_", environ=cfg.to_env("APP_")) == cfg


def test_all_variables_together_round_trip_into_kwargs() -> None:
    """If this fails, variables interfere with each other, or the kwargs do not carry
    what the environment said."""
    env = {f"{P}{k}": v for k, (v, _) in SAMPLES.items() if k not in ("DNS", "HEALTH")}
    env = {k: v for k, v in env.items() if not k.startswith(f"{P}DNS")}
    for switch in ("OUTLIER_DETECTION", "SLOW_START"):
        del env[f"{P}{switch}"]  # "off" plus details is refused (tested below)
    cfg = from_env(environ=env)
    assert from_env(environ=cfg.to_env()) == cfg
    kw = cfg.client_kwargs()
    assert kw["backends"] == [
        Backend("http://a:1"),
        Backend("http://b:2", weight=4, tier=1, model="m", zone="z"),
    ]
    assert kw["zone"] == "eu-west-1a"
    assert isinstance(kw["balancer"], PeakEwma)
    assert kw["retry"] == Retry(
        attempts=4, budget=RetryBudgetPolicy(ratio=0.3, window=5.0, min_per_second=2.0)
    )
    assert kw["hedge"] == Hedge(
        percentile=90.0,
        multiple=3.0,
        per_backend=False,
        min_delay=0.01,
        min_samples=20,
        budget_ratio=0.05,
    )
    assert kw["health_check"] == HealthCheck(
        path="/ready", interval=5.0, timeout=0.5, jitter=0.2, rise=3, fall=4, canary=True
    )
    assert kw["outlier_detection"] == OutlierDetection(
        consecutive_failures=7,
        base_ejection_time=10.0,
        max_ejection_time=100.0,
        max_ejection_percent=30.0,
    )
    assert kw["slow_start"] == SlowStart(
        window=20.0, aggression=2.0, min_weight_percent=5.0, warm_answers=4
    )
    assert (kw["timeout"], kw["attempt_timeout"], kw["total_timeout"]) == (12.0, 3.0, 20.0)
    assert kw["headers"] == {"x-team": "search", "Authorization": "Bearer s3cret"}
    assert "s3cret" not in repr(cfg)
    assert (kw["api"], kw["batch_size"], kw["dimension"], kw["truncate"]) == (
        "openai",
        16,
        384,
        True,
    )


def test_attempt_timeout_auto_passes_through() -> None:
    """If this fails, the transports' ``attempt_timeout="auto"`` cannot be chosen from
    configuration, or survives only one way of the environment round trip."""
    cfg = from_env(environ={f"{P}BACKENDS": "http://a:1", f"{P}ATTEMPT_TIMEOUT": "auto"})
    assert cfg.transport_kwargs()["attempt_timeout"] == "auto"
    assert from_env(environ=cfg.to_env()) == cfg
    with pytest.raises(ConfigError, match=r"timeouts\.request"):
        from_config({"timeouts": {"request": "auto"}})


def test_unset_means_class_defaults() -> None:
    """If this fails, a config pins defaults the user never chose (a later version's
    better default would not reach them)."""
    kw = from_env(environ={f"{P}BACKENDS": "http://a:1"}).client_kwargs()
    assert kw == {"backends": [Backend("http://a:1")]}


YAML = """
backends:
  - http://10.0.0.5:8000
  - {url: http://10.0.0.9:8000, weight: 4, tier: 0}
balancer: {name: gpu-priority, params: {inner: peak-ewma, overprovisioning: 1.2}}
retry: {attempts: 2, budget: {ratio: 0.1}}
hedge: {percentile: 99}
health: {path: /health, interval: 1.0}
outlier_detection: false
timeouts: {request: 30, attempt: 5}
api: openai
model: all-MiniLM-L6-v2
api_key: token
"""


def test_yaml_file_loads_into_working_kwargs() -> None:
    """If this fails, the documented YAML shape no longer builds a transport and client."""
    cfg = from_config(yaml.safe_load(YAML))
    kw = cfg.transport_kwargs()
    assert isinstance(kw["balancer"], GpuPriority)
    assert isinstance(kw["balancer"].tier_balancer(0), PeakEwma)
    assert kw["outlier_detection"] is None
    with BalancingTransport(**kw) as transport:
        assert {b.url for b in transport.stats().pool.backends} == {
            "http://10.0.0.5:8000",
            "http://10.0.0.9:8000",
        }
    client = EmbeddingClient(**cfg.client_kwargs())
    client.close()
    assert from_env(environ=cfg.to_env()) == cfg


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"backends": ["http://a:1"], "retyr": 3}, "unknown setting.*retyr"),
        ({"backends": []}, None),
        ({"backends": ["ftp://a"]}, r"backends\[0\]"),
        ({"backends": [{"weight": 2}]}, r"backends\[0\]: 'url' is required"),
        ({"backends": ["http://a:1"], "dns": "x.svc"}, "not both"),
        ({"backends": ["http://a:1"], "balancer": "fastest"}, "balancer: unknown 'fastest'"),
        (
            {"backends": ["http://a:1"], "balancer": {"name": "peak-ewma", "params": {"x": 1}}},
            "balancer.params",
        ),
        (
            {"backends": ["http://a:1"], "retry": {"attempts": "many"}},
            "retry.attempts: expected an integer",
        ),
        ({"backends": ["http://a:1"], "retry": {"attempts": 0}}, "retry: attempts must be >= 1"),
        ({"backends": ["http://a:1"], "health": {"interval": -1}}, "health: interval"),
        ({"backends": ["http://a:1"], "hedge": {"percent": 9}}, "hedge: unknown setting"),
        (
            {"backends": ["http://a:1"], "timeouts": {"request": 0}},
            "timeouts.request: expected seconds > 0",
        ),
        ({"backends": ["http://a:1"], "api": "grpc"}, "api: expected one of tei, openai"),
        ({"backends": ["http://a:1"], "batch_size": 0}, "batch_size: expected an integer >= 1"),
        ({"backends": ["http://a:1"], "truncate": "maybe"}, "truncate: expected true or false"),
        (
            {"backends": ["http://a:1"], "panic_threshold": 2},
            "panic_threshold: expected a fraction",
        ),
        (
            {"backends": ["http://a:1"], "headers": {"a": 1}},
            "headers: expected a mapping of strings",
        ),
        ({"dns": {"targets": []}}, "dns.targets: expected one or more"),
        ([1, 2], "must be a mapping"),
    ],
)
def test_bad_mapping_is_a_config_error_naming_the_setting(
    mapping: Any, message: str | None
) -> None:
    """If this fails, a wrong setting is silently ignored, crashes with a bare
    KeyError/TypeError, or is reported without saying which setting is wrong."""
    if message is None:  # valid to load, but nothing to balance over
        cfg = from_config(mapping)
        with pytest.raises(ConfigError, match="no backends"):
            cfg.transport_kwargs()
        return
    with pytest.raises(ConfigError, match=message):
        from_config(mapping)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"RETRY_ATTEMPTS": "x"}, "RETRY_ATTEMPTS"),
        ({"BACKENDS": "http://a:1;weight"}, "BACKENDS"),
        ({"BACKENDS": "http://a:1;weight=-1"}, "BACKENDS"),
        ({"HEALTH_INTERVAL": "-1"}, "HEALTH_INTERVAL"),
        ({"HEDGE": "off", "HEDGE_PERCENTILE": "90"}, "HEDGE_PERCENTILE"),
        ({"BALANCER": "peak-ewma", "BALANCER_PARAMS": "{"}, "BALANCER_PARAMS"),
        ({"BALANCER": "peak-ewma", "BALANCER_PARAMS": '{"x": 1}'}, "BALANCER_PARAMS"),
        ({"TRUNCATE": "perhaps"}, "TRUNCATE"),
        ({"HEALTH": "sometimes"}, "HEALTH"),
        ({"ATTEMPT_TIMEOUT": "-3"}, "ATTEMPT_TIMEOUT"),
    ],
)
def test_bad_variable_error_names_the_variable(env: dict[str, str], variable: str) -> None:
    """If this fails, an operator reading the error cannot tell which variable to fix."""
    environ = {f"{P}BACKENDS": "http://a:1", **{f"{P}{k}": v for k, v in env.items()}}
    with pytest.raises(ConfigError, match=rf"^{P}{variable}: "):
        from_env(environ=environ)


def test_empty_variables_count_as_unset_and_prefix_isolates() -> None:
    """If this fails, an empty variable (common in Compose files) becomes a setting, or
    another app's variables leak into this one's config."""
    cfg = from_env(
        "SEARCH_",
        environ={"SEARCH_BACKENDS": "http://a:1", "SEARCH_TIMEOUT": "", f"{P}TIMEOUT": "9"},
    )
    assert cfg.timeouts == {}


def test_config_error_is_a_value_error() -> None:
    """If this fails, code that catches ValueError around configuration misses ours."""
    assert issubclass(ConfigError, ValueError)


_floats = st.floats(min_value=0.01, max_value=1000, allow_nan=False).map(lambda x: round(x, 3))


@settings(max_examples=60, deadline=None)
@given(
    urls=st.lists(st.integers(1, 65535), min_size=1, max_size=4, unique=True),
    weights=st.lists(_floats, min_size=4, max_size=4),
    attempts=st.integers(1, 6),
    timeout=_floats,
    hedge=st.one_of(st.booleans(), st.floats(50, 99.9).map(lambda x: round(x, 2))),
    batch=st.integers(1, 512),
    api=st.sampled_from(["tei", "openai"]),
)
def test_any_config_round_trips_through_the_environment(
    urls: list[int],
    weights: list[float],
    attempts: int,
    timeout: float,
    hedge: bool | float,
    batch: int,
    api: str,
) -> None:
    """If this fails, some value changes on its way through environment variables
    (a float's repr, a weight, a switch)."""
    mapping: dict[str, Any] = {
        "backends": [
            {"url": f"http://127.0.0.1:{port}", "weight": w}
            for port, w in zip(urls, weights, strict=False)
        ],
        "retry": attempts,
        "hedge": hedge if isinstance(hedge, bool) else {"percentile": hedge},
        "timeouts": {"request": timeout},
        "batch_size": batch,
        "api": api,
    }
    cfg = from_config(mapping)
    assert from_env(environ=cfg.to_env()) == cfg


def test_docs_table_lists_only_real_variables() -> None:
    """If this fails, docs/config.md documents a variable the code does not read."""
    documented = set(re.findall(rf"`{P}([A-Z_]+)`", DOC.read_text()))
    assert documented <= set(ENV_VARS) | {"BACKENDS"}


def test_classmethods_build_all_four_classes_and_overrides_win() -> None:
    """If this fails, ``from_env`` / ``from_config`` on the public classes stop honouring
    the configuration or let it override an explicit keyword."""
    import anyio

    from embedbalance import AsyncBalancingTransport, AsyncEmbeddingClient, RoundRobin

    env = {f"{P}BACKENDS": "http://127.0.0.1:9;weight=3", f"{P}BALANCER": "peak-ewma"}
    mapping = {"backends": ["http://127.0.0.1:9"], "health": False}
    with BalancingTransport.from_env(environ=env, balancer=RoundRobin()) as transport:
        assert isinstance(transport.pool.balancer, RoundRobin)
        assert transport.stats().pool.backends[0].weight == 3
    with BalancingTransport.from_config(mapping) as transport:
        assert isinstance(transport.pool.balancer, ShortestExpectedDelay)
    with EmbeddingClient.from_env(environ=env) as client:
        assert isinstance(client.transport.pool.balancer, PeakEwma)
    with EmbeddingClient.from_config(mapping, dimension=384) as client:
        assert client.dimension == 384

    async def main() -> None:
        async with AsyncBalancingTransport.from_env(environ=env) as atransport:
            assert isinstance(atransport.pool.balancer, PeakEwma)
        async with AsyncBalancingTransport.from_config(mapping, balancer=RoundRobin()) as atr:
            assert isinstance(atr.pool.balancer, RoundRobin)  # the keyword wins
            assert [b.url for b in atr.pool.backends] == ["http://127.0.0.1:9"]
        async with AsyncEmbeddingClient.from_env(environ=env, dimension=384) as aclient:
            assert isinstance(aclient.transport.pool.balancer, PeakEwma)
            assert aclient.dimension == 384  # the keyword wins beside the environment
            assert aclient.stats().pool.backends[0].weight == 3
        async with AsyncEmbeddingClient.from_config(mapping, dimension=384) as aclient:
            assert aclient.dimension == 384
            assert [b.url for b in aclient.stats().pool.backends] == ["http://127.0.0.1:9"]

    anyio.run(main)
    with pytest.raises(ConfigError, match=f"^{P}BACKENDS"):
        EmbeddingClient.from_env(environ={f"{P}BACKENDS": "nope"})


def test_dns_settings_build_a_dns_discovery() -> None:
    """If this fails, DNS targets from a config (tiers, ports, TTL bounds) do not reach
    the DnsDiscovery the transport balances over."""
    pytest.importorskip("dns.resolver")
    from embedbalance import DnsDiscovery

    cfg = from_env(
        environ={
            f"{P}DNS": "gpu.ns.svc;port=8000;tier=0,cpu.ns.svc;tier=1;weight=0.5",
            f"{P}DNS_PORT": "9000",
            f"{P}DNS_MAX_TTL": "10",
        }
    )
    discovery = cfg.transport_kwargs()["backends"]
    assert isinstance(discovery, DnsDiscovery)
    assert [(t.name, t.port, t.tier, t.weight) for t in discovery.targets] == [
        ("gpu.ns.svc", 8000, 0, 1.0),
        ("cpu.ns.svc", None, 1, 0.5),
    ]
    assert (discovery.port, discovery.max_ttl) == (9000, 10.0)
