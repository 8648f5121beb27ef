"""Configuration as plain data: from a mapping (a YAML or JSON file loads into one) or
from environment variables with one prefix.

Why a module of its own: every app that runs the client — a Flask service, a Django
site, a FastAPI app, a batch job in a container — ends up reading the same settings
(backends, DNS names, balancer, retry, hedging, health checks, timeouts) from its
environment, and writing that parser three times is how they drift. Here it is written
once, validated once, and every error names the setting that is wrong::

    cfg = embedbalance.config.from_env()            # EMBEDBALANCE_BACKENDS=... etc.
    client = EmbeddingClient(**cfg.client_kwargs())

    cfg = embedbalance.config.from_config(yaml.safe_load(open("embedbalance.yaml")))
    transport = BalancingTransport(**cfg.transport_kwargs())

:class:`Config` keeps only what was set: anything left out takes the class's own
default, so a config file never pins a default that a later version improves. The
variable names and the mapping's keys are listed in ``docs/config.md``; :data:`ENV_VARS`
is the same list, and a test round-trips every one.
"""

from __future__ import annotations

import importlib
import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs

from ._backend import Backend
from .balancers import (
    Balancer,
    GpuPriority,
    LeastConnections,
    LeastOutstandingTokens,
    PeakEwma,
    PowerOfTwoChoices,
    Random,
    RoundRobin,
    ShortestExpectedDelay,
    WeightedRoundRobin,
)
from .exceptions import ConfigError
from .health import HealthCheck, OutlierDetection, SlowStart
from .retry import Hedge, Retry, RetryBudgetPolicy

__all__ = [
    "BALANCERS",
    "DEFAULT_PREFIX",
    "ENV_VARS",
    "Config",
    "ConfigError",
    "client_kwargs",
    "from_config",
    "from_env",
    "transport_kwargs",
]

DEFAULT_PREFIX: Final = "EMBEDBALANCE_"


#: Balancer names accepted by ``balancer:`` / ``EMBEDBALANCE_BALANCER``.
BALANCERS: Final[Mapping[str, Callable[..., Balancer]]] = {
    "shortest-expected-delay": ShortestExpectedDelay,
    "peak-ewma": PeakEwma,
    "least-connections": LeastConnections,
    "least-outstanding-tokens": LeastOutstandingTokens,
    "power-of-two-choices": PowerOfTwoChoices,
    "round-robin": RoundRobin,
    "weighted-round-robin": WeightedRoundRobin,
    "random": Random,
    "gpu-priority": GpuPriority,
}

# Client settings that are plain values, with their type.
_CLIENT: Final[Mapping[str, type]] = {
    "api": str,
    "model": str,
    "path": str,
    "normalize": bool,
    "truncate": bool,
    "batch_tokens": int,
    "batch_size": int,
    "max_concurrency": int,
    "dimension": int,
    "priority": str,
}
_TIMEOUTS: Final = {"request": "timeout", "attempt": "attempt_timeout", "total": "total_timeout"}
_APIS: Final = ("tei", "openai")
# The policy sections: mapping key, the attrs class, and the fields a config may set.
_POLICIES: Final[Mapping[str, tuple[type, tuple[str, ...]]]] = {
    "hedge": (
        Hedge,
        ("percentile", "multiple", "per_backend", "min_delay", "min_samples", "budget_ratio"),
    ),
    "health": (HealthCheck, ("path", "interval", "timeout", "jitter", "rise", "fall", "canary")),
    "outlier_detection": (
        OutlierDetection,
        ("consecutive_failures", "base_ejection_time", "max_ejection_time", "max_ejection_percent"),
    ),
    "slow_start": (SlowStart, ("window", "aggression", "min_weight_percent", "warm_answers")),
}
_KWARG: Final = {"health": "health_check"}
_BUDGET_FIELDS: Final = ("ratio", "window", "min_per_second")
_DNS_FIELDS: Final = ("port", "min_ttl", "max_ttl", "timeout")
_TARGET_FIELDS: Final = ("port", "tier", "weight", "scheme", "path", "model", "zone")


@attrs.frozen
class Config:
    """Validated settings; ``None`` means "not set: the class default applies" and
    ``False`` (for a policy) means "switched off".

    Build one with :func:`from_config` or :func:`from_env`; turn it into constructor
    keywords with :meth:`client_kwargs` / :meth:`transport_kwargs`.
    """

    backends: tuple[Backend, ...] = ()
    dns: Mapping[str, Any] | None = None
    balancer: str | None = None
    balancer_params: Mapping[str, Any] = attrs.field(factory=dict)
    retry: Retry | None = None
    hedge: Hedge | bool | None = None
    health: HealthCheck | bool | None = None
    outlier_detection: OutlierDetection | bool | None = None
    slow_start: SlowStart | bool | None = None
    panic_threshold: float | None = None
    zone: str | None = None
    timeouts: Mapping[str, float | str] = attrs.field(factory=dict)
    client: Mapping[str, Any] = attrs.field(factory=dict)
    api_key: str | None = attrs.field(default=None, repr=lambda v: "None" if v is None else "***")
    headers: Mapping[str, str] = attrs.field(factory=dict)

    def transport_kwargs(self) -> dict[str, Any]:
        """Keywords for :class:`~embedbalance.BalancingTransport` (or the async twin),
        ``backends`` included: ``BalancingTransport(**cfg.transport_kwargs())``."""
        kwargs: dict[str, Any] = {"backends": self._backends()}
        if self.balancer is not None:
            kwargs["balancer"] = _make_balancer(self.balancer, self.balancer_params)
        if self.retry is not None:
            kwargs["retry"] = self.retry
        for key in _POLICIES:
            value = getattr(self, key)
            if value is True and key == "hedge":
                kwargs["hedge"] = Hedge()
            elif value is False:
                kwargs[_KWARG.get(key, key)] = None
            elif value is not None and value is not True:
                kwargs[_KWARG.get(key, key)] = value
        if self.panic_threshold is not None:
            kwargs["panic_threshold"] = self.panic_threshold
        if self.zone is not None:
            kwargs["zone"] = self.zone
        for key in ("attempt", "total"):
            if key in self.timeouts:
                kwargs[_TIMEOUTS[key]] = self.timeouts[key]
        return kwargs

    def client_kwargs(self) -> dict[str, Any]:
        """Keywords for :class:`~embedbalance.EmbeddingClient` (or the async twin):
        the transport's plus the client's own (API, model, batching, request timeout,
        headers with the API key as a bearer token)."""
        kwargs = self.transport_kwargs()
        kwargs.update(self.client)
        if "request" in self.timeouts:
            kwargs["timeout"] = self.timeouts["request"]
        headers = dict(self.headers)
        if self.api_key is not None:
            headers["Authorization"] = f"Bearer {self.api_key}"
        if headers:
            kwargs["headers"] = headers
        return kwargs

    def _backends(self) -> Any:
        if self.dns is None:
            if not self.backends:
                raise ConfigError("no backends: set 'backends' or 'dns'")
            return list(self.backends)
        # Imported by name, on use: the dns extra (dnspython) is optional, and the
        # transports (which call this) sit beside DNS discovery, not above it.
        dns = importlib.import_module(".dns", __package__)
        options = {k: v for k, v in self.dns.items() if k != "targets"}
        targets = [dns.DnsTarget(**t) for t in self.dns["targets"]]
        return dns.DnsDiscovery(targets, **options)

    def to_env(self, prefix: str = DEFAULT_PREFIX) -> dict[str, str]:
        """The environment variables that :func:`from_env` turns back into this config."""
        return _to_env(self, prefix)


# -- from a mapping -------------------------------------------------------------------


def from_config(mapping: Mapping[str, Any]) -> Config:
    """Validate a plain mapping (say, ``yaml.safe_load`` of a file) into a :class:`Config`.

    Raises :class:`ConfigError` naming the first wrong setting; unknown keys are errors
    too, so a typo is never silently ignored.
    """
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"the configuration must be a mapping, got {type(mapping).__name__}")
    data = dict(mapping)
    known = {
        "backends", "dns", "balancer", "retry", "panic_threshold", "timeouts", "api_key",
        "headers", "zone", *_POLICIES, *_CLIENT,
    }  # fmt: skip
    _no_unknown("the configuration", data, known)
    kwargs: dict[str, Any] = {}
    if "backends" in data:
        kwargs["backends"] = _backends(data["backends"])
    if "dns" in data:
        kwargs["dns"] = _dns(data["dns"])
    if kwargs.get("backends") and "dns" in kwargs:
        raise ConfigError("set 'backends' or 'dns', not both: a transport has one source")
    if "balancer" in data:
        kwargs["balancer"], kwargs["balancer_params"] = _balancer(data["balancer"])
    if "retry" in data:
        kwargs["retry"] = _retry(data["retry"])
    for key, (cls, fields) in _POLICIES.items():
        if key in data:
            kwargs[key] = _policy(key, data[key], cls, fields)
    if "panic_threshold" in data:
        value = _number("panic_threshold", data["panic_threshold"], float)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"panic_threshold: expected a fraction in [0, 1], got {value!r}")
        kwargs["panic_threshold"] = value
    if "zone" in data:
        kwargs["zone"] = _value("zone", data["zone"], str)
    if "timeouts" in data:
        kwargs["timeouts"] = _timeouts(data["timeouts"])
    client = {k: _value(k, data[k], t) for k, t in _CLIENT.items() if k in data}
    if "api" in client and client["api"] not in _APIS:
        raise ConfigError(f"api: expected one of {', '.join(_APIS)}, got {client['api']!r}")
    if "priority" in client and client["priority"] not in ("interactive", "bulk"):
        raise ConfigError(f"priority: expected 'interactive' or 'bulk', got {client['priority']!r}")
    for key in ("batch_tokens", "batch_size", "max_concurrency", "dimension"):
        if key in client and client[key] < 1:
            raise ConfigError(f"{key}: expected an integer >= 1, got {client[key]!r}")
    kwargs["client"] = client
    if "api_key" in data:
        kwargs["api_key"] = _value("api_key", data["api_key"], str)
    if "headers" in data:
        headers = data["headers"]
        if not isinstance(headers, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise ConfigError("headers: expected a mapping of strings to strings")
        kwargs["headers"] = dict(headers)
    return Config(**kwargs)


def _no_unknown(where: str, data: Mapping[str, Any], known: set[str] | tuple[str, ...]) -> None:
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise ConfigError(
            f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )


def _value(name: str, value: Any, kind: type) -> Any:
    if kind is bool:
        return _bool(name, value)
    if kind in (int, float):
        return _number(name, value, kind)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{name}: expected a non-empty string, got {value!r}")
    return value


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ConfigError(f"{name}: expected true or false, got {value!r}")


_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


def _number(name: str, value: Any, kind: type) -> Any:
    if isinstance(value, bool):
        raise ConfigError(f"{name}: expected a number, got {value!r}")
    try:
        number = kind(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        what = "an integer" if kind is int else "a number"
        raise ConfigError(f"{name}: expected {what}, got {value!r}") from None
    if kind is int and isinstance(value, float) and value != number:
        raise ConfigError(f"{name}: expected an integer, got {value!r}")
    if kind is float and not math.isfinite(number):
        raise ConfigError(f"{name}: expected a finite number, got {value!r}")
    return number


def _backends(value: Any) -> tuple[Backend, ...]:
    if isinstance(value, (str, Mapping)):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"backends: expected a list of URLs or mappings, got {value!r}")
    out = []
    for i, item in enumerate(value):
        where = f"backends[{i}]"
        if isinstance(item, str):
            item = {"url": item}
        if not isinstance(item, Mapping):
            raise ConfigError(f"{where}: expected a URL or a mapping, got {item!r}")
        _no_unknown(where, item, ("url", "weight", "tier", "labels", "model", "zone"))
        if "url" not in item:
            raise ConfigError(f"{where}: 'url' is required")
        kw: dict[str, Any] = {"url": _value(f"{where}.url", item["url"], str)}
        if "weight" in item:
            kw["weight"] = _number(f"{where}.weight", item["weight"], float)
        if "tier" in item:
            kw["tier"] = _number(f"{where}.tier", item["tier"], int)
        if "labels" in item:
            kw["labels"] = dict(item["labels"])
        for key in ("model", "zone"):
            if key in item:
                kw[key] = _value(f"{where}.{key}", item[key], str)
        try:
            out.append(Backend(**kw))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return tuple(out)


def _dns(value: Any) -> dict[str, Any]:
    if isinstance(value, (str, list, tuple)):
        value = {"targets": value}
    if not isinstance(value, Mapping):
        raise ConfigError(f"dns: expected a mapping with 'targets', got {value!r}")
    _no_unknown("dns", value, ("targets", *_DNS_FIELDS))
    targets = value.get("targets")
    if isinstance(targets, (str, Mapping)):
        targets = [targets]
    if not isinstance(targets, (list, tuple)) or not targets:
        raise ConfigError("dns.targets: expected one or more DNS names")
    out: dict[str, Any] = {"targets": []}
    for i, target in enumerate(targets):
        where = f"dns.targets[{i}]"
        if isinstance(target, str):
            target = {"name": target}
        if not isinstance(target, Mapping) or "name" not in target:
            raise ConfigError(f"{where}: expected a name or a mapping with 'name'")
        _no_unknown(where, target, ("name", *_TARGET_FIELDS))
        t: dict[str, Any] = {"name": _value(f"{where}.name", target["name"], str)}
        for key, kind in (("port", int), ("tier", int), ("weight", float)):
            if key in target:
                t[key] = _number(f"{where}.{key}", target[key], kind)
        for key in ("scheme", "path", "model", "zone"):
            if key in target:
                t[key] = _value(f"{where}.{key}", target[key], str)
        out["targets"].append(t)
    if "port" in value:
        out["port"] = _number("dns.port", value["port"], int)
    for key in ("min_ttl", "max_ttl", "timeout"):
        if key in value:
            out[key] = _number(f"dns.{key}", value[key], float)
    return out


def _balancer(value: Any) -> tuple[str, dict[str, Any]]:
    params: dict[str, Any] = {}
    if isinstance(value, Mapping):
        if "name" not in value:
            raise ConfigError("balancer: a mapping needs 'name'")
        params = dict(value.get("params") or {})
        _no_unknown("balancer", value, ("name", "params"))
        value = value["name"]
    name = _balancer_name(value)
    try:
        _make_balancer(name, params)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"balancer.params: {exc}") from None
    return name, params


def _balancer_name(value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"balancer: expected a name, got {value!r}")
    key = value.strip().lower().replace("_", "-")
    by_class = {getattr(cls, "__name__", name).lower(): name for name, cls in BALANCERS.items()}
    key = by_class.get(key, key)
    if key not in BALANCERS:
        raise ConfigError(f"balancer: unknown {value!r}; known: {', '.join(BALANCERS)}")
    return key


def _make_balancer(name: str, params: Mapping[str, Any]) -> Balancer:
    params = dict(params)
    if name == "gpu-priority" and "inner" in params:
        params["inner"] = BALANCERS[_balancer_name(params["inner"])]
    return BALANCERS[name](**params)


def _retry(value: Any) -> Retry:
    if value is False or value is True or isinstance(value, int):
        if isinstance(value, int) and not isinstance(value, bool) and value < 0:
            raise ConfigError(f"retry: expected attempts >= 1, or false, got {value!r}")
        return Retry.coerce(value)
    if not isinstance(value, Mapping):
        raise ConfigError(f"retry: expected attempts, false, or a mapping, got {value!r}")
    _no_unknown("retry", value, ("attempts", "budget"))
    kw: dict[str, Any] = {}
    if "attempts" in value:
        kw["attempts"] = _number("retry.attempts", value["attempts"], int)
    if "budget" in value:
        budget = value["budget"]
        if not isinstance(budget, Mapping):
            raise ConfigError(f"retry.budget: expected a mapping, got {budget!r}")
        _no_unknown("retry.budget", budget, _BUDGET_FIELDS)
        kw["budget"] = RetryBudgetPolicy(
            **{k: _number(f"retry.budget.{k}", budget[k], float) for k in budget}
        )
    try:
        return Retry(**kw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"retry: {exc}") from None


def _policy(key: str, value: Any, cls: type, fields: tuple[str, ...]) -> Any:
    if isinstance(value, bool):
        if value and key != "hedge":
            return None  # "on" = the class default, which is what not setting it means
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected true, false, or a mapping, got {value!r}")
    _no_unknown(key, value, fields)
    types = {f.name: f.type for f in attrs.fields(cls)}
    # ``health.canary`` is a switch here (the default canary); a Canary with its own
    # texts or reference vectors is built in code.
    kw = {
        k: _value(f"{key}.{k}", v, bool if k == "canary" else _kind(types[k]))
        for k, v in value.items()
    }
    try:
        return cls(**kw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: {exc}") from None


def _kind(annotation: Any) -> type:
    text = str(annotation)
    for name, kind in (("bool", bool), ("int", int), ("float", float)):
        if text.startswith(name):
            return kind
    return str


def _timeouts(value: Any) -> dict[str, float | str]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"timeouts: expected a mapping of {', '.join(_TIMEOUTS)}, got {value!r}")
    _no_unknown("timeouts", value, tuple(_TIMEOUTS))
    out: dict[str, float | str] = {}
    for key, raw in value.items():
        if key == "attempt" and isinstance(raw, str) and raw.strip().lower() == "auto":
            out[key] = "auto"  # each attempt gets a deadline from its backend's p99
            continue
        seconds = _number(f"timeouts.{key}", raw, float)
        if seconds <= 0:
            raise ConfigError(f"timeouts.{key}: expected seconds > 0, got {seconds!r}")
        out[key] = seconds
    return out


# -- from the environment -------------------------------------------------------------

#: Every environment variable :func:`from_env` reads (after the prefix), with the
#: setting it fills. Lists are comma-separated; a backend or DNS target may carry
#: ``;key=value`` options (``http://gpu:8000;weight=4;tier=0``).
ENV_VARS: Final[Mapping[str, str]] = {
    "BACKENDS": "backends",
    "DNS": "dns.targets",
    "DNS_PORT": "dns.port",
    "DNS_MIN_TTL": "dns.min_ttl",
    "DNS_MAX_TTL": "dns.max_ttl",
    "DNS_TIMEOUT": "dns.timeout",
    "BALANCER": "balancer.name",
    "BALANCER_PARAMS": "balancer.params",
    "RETRY_ATTEMPTS": "retry.attempts",
    "RETRY_BUDGET_RATIO": "retry.budget.ratio",
    "RETRY_BUDGET_WINDOW": "retry.budget.window",
    "RETRY_BUDGET_MIN_PER_SECOND": "retry.budget.min_per_second",
    "HEDGE": "hedge",
    "HEDGE_PERCENTILE": "hedge.percentile",
    "HEDGE_MULTIPLE": "hedge.multiple",
    "HEDGE_PER_BACKEND": "hedge.per_backend",
    "HEDGE_MIN_DELAY": "hedge.min_delay",
    "HEDGE_MIN_SAMPLES": "hedge.min_samples",
    "HEDGE_BUDGET_RATIO": "hedge.budget_ratio",
    "HEALTH": "health",
    "HEALTH_PATH": "health.path",
    "HEALTH_INTERVAL": "health.interval",
    "HEALTH_TIMEOUT": "health.timeout",
    "HEALTH_JITTER": "health.jitter",
    "HEALTH_RISE": "health.rise",
    "HEALTH_FALL": "health.fall",
    "HEALTH_CANARY": "health.canary",
    "OUTLIER_DETECTION": "outlier_detection",
    "OUTLIER_CONSECUTIVE_FAILURES": "outlier_detection.consecutive_failures",
    "OUTLIER_BASE_EJECTION_TIME": "outlier_detection.base_ejection_time",
    "OUTLIER_MAX_EJECTION_TIME": "outlier_detection.max_ejection_time",
    "OUTLIER_MAX_EJECTION_PERCENT": "outlier_detection.max_ejection_percent",
    "SLOW_START": "slow_start",
    "SLOW_START_WINDOW": "slow_start.window",
    "SLOW_START_AGGRESSION": "slow_start.aggression",
    "SLOW_START_MIN_WEIGHT_PERCENT": "slow_start.min_weight_percent",
    "SLOW_START_WARM_ANSWERS": "slow_start.warm_answers",
    "PANIC_THRESHOLD": "panic_threshold",
    "ZONE": "zone",
    "TIMEOUT": "timeouts.request",
    "ATTEMPT_TIMEOUT": "timeouts.attempt",
    "TOTAL_TIMEOUT": "timeouts.total",
    **{name.upper(): name for name in _CLIENT},
    "API_KEY": "api_key",
    "HEADERS": "headers",
}


def from_env(prefix: str = DEFAULT_PREFIX, environ: Mapping[str, str] | None = None) -> Config:
    """Read :data:`ENV_VARS` (each name after ``prefix``) from ``environ`` (default
    ``os.environ``). Empty variables count as unset. Errors name the variable."""
    if environ is None:
        import os

        environ = os.environ
    mapping: dict[str, Any] = {}
    set_vars: dict[str, str] = {}
    for suffix, target in ENV_VARS.items():
        raw = environ.get(prefix + suffix, "").strip()
        if not raw:
            continue
        set_vars[target] = prefix + suffix
        try:
            _put(mapping, target, _parse_env(target, raw))
        except ConfigError as exc:
            raise ConfigError(f"{prefix}{suffix}: {exc}") from None
    try:
        return from_config(mapping)
    except ConfigError as exc:
        raise ConfigError(f"{_culprit(str(exc), set_vars)}{exc}") from None


def _culprit(message: str, set_vars: Mapping[str, str]) -> str:
    """The variable behind a ``from_config`` error: the setting named at the start of
    the message, or its nearest parent that some variable set."""
    head, _, rest = message.partition(":")
    path = re.sub(r"\[\d+\]", "", head).strip()
    detail = f"{path}.{rest.split()[0]}" if rest.split() else ""
    if detail in set_vars:  # "health: interval must be ..." from HEALTH_INTERVAL
        return f"{set_vars[detail]}: "
    while path:
        if path in set_vars:
            return f"{set_vars[path]}: "
        if f"{path}.name" in set_vars:  # balancer
            return f"{set_vars[f'{path}.name']}: "
        if f"{path}.targets" in set_vars:  # dns
            return f"{set_vars[f'{path}.targets']}: "
        path = path.rpartition(".")[0]
    return ""


def _parse_env(target: str, raw: str) -> Any:
    if target == "backends":
        return [_with_options(part, "url") for part in _split(raw)]
    if target == "dns.targets":
        return [_with_options(part, "name") for part in _split(raw)]
    if target in ("balancer.params", "headers"):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"expected a JSON object: {exc}") from None
        if not isinstance(value, dict):
            raise ConfigError(f"expected a JSON object, got {raw!r}")
        return value
    if target in _POLICIES:
        return _bool(target, raw)
    return raw


def _split(raw: str) -> list[str]:
    return [part.strip() for part in raw.split(",") if part.strip()]


def _with_options(part: str, first: str) -> dict[str, str]:
    head, *options = [p.strip() for p in part.split(";")]
    item = {first: head}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"expected key=value after ';' in {part!r}, got {option!r}")
        item[key.strip()] = value.strip()
    return item


def _put(mapping: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = mapping
    for key in parents:
        existing = node.get(key)
        if not isinstance(existing, dict):
            # A switch ("HEDGE=on") followed by a detail ("HEDGE_PERCENTILE"): the
            # details win, and "off" with details is a contradiction.
            if existing is False:
                raise ConfigError(f"{key} is switched off but {dotted} is set")
            existing = {}
            node[key] = existing
        node = existing
    if isinstance(node.get(leaf), dict):
        if value is False:
            raise ConfigError(f"{leaf} is switched off but its details are set")
        return  # "on" plus details: the details say it all
    node[leaf] = value


def _to_env(cfg: Config, prefix: str) -> dict[str, str]:
    env: dict[str, str] = {}

    def put(suffix: str, value: Any) -> None:
        if isinstance(value, bool):
            value = "true" if value else "false"
        env[prefix + suffix] = str(value)

    if cfg.backends:
        put("BACKENDS", ",".join(_backend_spec(b) for b in cfg.backends))
    if cfg.dns is not None:
        put("DNS", ",".join(_target_spec(t) for t in cfg.dns["targets"]))
        for key in _DNS_FIELDS:
            if key in cfg.dns:
                put(f"DNS_{key.upper()}", cfg.dns[key])
    if cfg.balancer is not None:
        put("BALANCER", cfg.balancer)
        if cfg.balancer_params:
            put("BALANCER_PARAMS", json.dumps(dict(cfg.balancer_params)))
    if cfg.retry is not None:
        put("RETRY_ATTEMPTS", cfg.retry.attempts)
        for key in _BUDGET_FIELDS:
            put(f"RETRY_BUDGET_{key.upper()}", getattr(cfg.retry.budget, key))
    env_names = {target: suffix for suffix, target in ENV_VARS.items()}
    for key, (_, fields) in _POLICIES.items():
        value = getattr(cfg, key)
        if isinstance(value, bool):
            put(env_names[key], value)
        elif value is not None:
            for name in fields:
                field = getattr(value, name)
                if name == "canary":
                    if field is not None and field != HealthCheck(canary=True).canary:
                        raise ConfigError(
                            "a canary with its own settings cannot be written as "
                            "environment variables (only on or off)"
                        )
                    field = field is not None
                put(env_names[f"{key}.{name}"], field)
    if cfg.panic_threshold is not None:
        put("PANIC_THRESHOLD", cfg.panic_threshold)
    if cfg.zone is not None:
        put("ZONE", cfg.zone)
    for key, seconds in cfg.timeouts.items():
        put(env_names[f"timeouts.{key}"], seconds)
    for key, value in cfg.client.items():
        put(key.upper(), value)
    if cfg.api_key is not None:
        put("API_KEY", cfg.api_key)
    if cfg.headers:
        put("HEADERS", json.dumps(dict(cfg.headers)))
    return env


def _backend_spec(backend: Backend) -> str:
    if backend.labels:
        raise ConfigError("backend labels cannot be written as environment variables")
    spec = f"{backend.url};weight={backend.weight!r};tier={backend.tier}"
    for key in ("model", "zone"):
        value = getattr(backend, key)
        if value is not None:
            spec += f";{key}={value}"
    return spec


def _target_spec(target: Mapping[str, Any]) -> str:
    return ";".join([target["name"], *(f"{k}={target[k]}" for k in _TARGET_FIELDS if k in target)])


# -- shortcuts -----------------------------------------------------------------------


def client_kwargs(
    mapping: Mapping[str, Any] | None = None, *, prefix: str = DEFAULT_PREFIX
) -> dict[str, Any]:
    """Client keywords from ``mapping``, or from the environment when it is ``None``."""
    cfg = from_env(prefix) if mapping is None else from_config(mapping)
    return cfg.client_kwargs()


def transport_kwargs(
    mapping: Mapping[str, Any] | None = None, *, prefix: str = DEFAULT_PREFIX
) -> dict[str, Any]:
    """Transport keywords from ``mapping``, or from the environment when it is ``None``."""
    cfg = from_env(prefix) if mapping is None else from_config(mapping)
    return cfg.transport_kwargs()
