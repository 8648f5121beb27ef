"""DNS discovery: keep a pool's membership equal to what a name resolves to.

The main use is a Kubernetes *headless* Service: its DNS name resolves to one A/AAAA
record per ready pod (and one SRV record per pod for each named port), so a client
that re-resolves the name on the record TTL sees pods come and go without any proxy
in the path. Readiness decides what DNS publishes, so a pod that fails its readiness
probe or starts terminating leaves every client's pool within a TTL.

Why these rules:

- The refresh interval follows the records' TTL, clamped to ``[min_ttl, max_ttl]``:
  the floor stops a zero TTL from becoming a busy loop against the cluster DNS; the
  ceiling bounds how stale membership may get when a server hands out long TTLs.
- A lookup that *fails* (timeout, SERVFAIL, refused, server gone) says nothing about
  the pods, so the name keeps its last good answer and the failure is logged; retries
  back off from ``min_ttl`` to ``max_ttl``. A lookup that *succeeds with no records*
  (NXDOMAIN, or no data) is news: that name has no pods now.
- An answer that would empty the whole pool is not applied unless ``allow_empty``:
  far more often a DNS or configuration fault than a real scale-to-zero, and an empty
  pool fails every request, while stale backends are still retried and ejected.
- Removal is the pool's job: ``pool.update()`` stops new requests to a removed backend
  and lets its in-flight leases finish (drain).

This module is an I/O edge: it needs dnspython (the ``dns`` extra) and anyio.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Protocol

import anyio
import anyio.to_thread
import attrs
from anyio.abc import TaskStatus

try:
    import dns.exception
    import dns.name
    import dns.nameserver
    import dns.rdatatype
    import dns.resolver
except ImportError as _exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "embedbalance.dns needs dnspython; install it with: pip install 'embedbalance[dns]'"
    ) from _exc

from ._backend import Backend
from ._clock import Clock, monotonic

__all__ = ["DnsDiscovery", "DnsTarget", "Resolution"]

log = logging.getLogger(__name__)

#: Refresh delay for a name that answered with no records and no usable TTL: CoreDNS's
#: default record TTL, so a Service scaled to zero is re-checked about as often as one
#: with pods.
EMPTY_ANSWER_TTL = 5.0


class SupportsUpdate(Protocol):
    """What discovery needs from a pool: replace its membership."""

    def update(self, backends: Iterable[Backend]) -> None: ...


def _check_port(_: object, attribute: attrs.Attribute[int | None], value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ValueError(f"{attribute.name} must be a TCP port (1-65535) or None, got {value!r}")


def _freeze_labels(value: Mapping[str, str] | None) -> Mapping[str, str]:
    return MappingProxyType(dict(value or {}))


@attrs.frozen
class DnsTarget:
    """One name to resolve and what its records become.

    ``port``: given, the name's A and AAAA records are used with this port (a headless
    Service's plain name); ``None`` means "the discovery's ``port``", and when that is
    ``None`` too, the name is looked up as SRV and each record brings its own port
    (``_http._tcp.<service>.<namespace>.svc.cluster.local``). SRV priority and weight
    are ignored: Kubernetes gives every pod the same ones, and relative capacity is
    this target's ``weight``. ``tier``: preference for tiered balancers (0 = first
    choice, e.g. GPU workers; 1 = overflow, e.g. CPU workers). ``weight``: relative
    capacity of each backend found. ``scheme`` and ``path``: how URLs are built.
    ``labels``: copied onto each backend, with ``dns_name`` added.
    ``tls_server_name``: for ``https`` targets, the name the pods' certificate is issued
    for (backends are reached by address, so without it TLS would verify the address);
    ``True`` means this target's ``name``. ``model`` and ``zone``: copied onto each
    backend found (one Service per model, or per zone; see ``Backend``).
    """

    name: str = attrs.field(validator=attrs.validators.min_len(1))
    port: int | None = attrs.field(default=None, validator=_check_port)
    tier: int = 0
    weight: float = 1.0
    scheme: str = attrs.field(default="http", validator=attrs.validators.in_(("http", "https")))
    path: str = ""
    labels: Mapping[str, str] = attrs.field(
        factory=dict, converter=_freeze_labels, eq=False, hash=False
    )
    tls_server_name: str | bool | None = None
    model: str | None = None
    zone: str | None = None

    @property
    def server_name(self) -> str | None:
        """The TLS server name backends of this target verify against, if any."""
        if self.tls_server_name is True:
            return self.name.rstrip(".")
        return self.tls_server_name or None


def _as_targets(value: str | DnsTarget | Iterable[str | DnsTarget]) -> tuple[DnsTarget, ...]:
    items: Iterable[str | DnsTarget] = [value] if isinstance(value, (str, DnsTarget)) else value
    targets = tuple(DnsTarget(t) if isinstance(t, str) else t for t in items)
    if not targets:
        raise ValueError("DnsDiscovery needs at least one name")
    for t in targets:
        if not isinstance(t, DnsTarget):
            raise TypeError(f"expected a name or a DnsTarget, got {type(t).__name__}")
    return targets


def _as_nameservers(
    value: Sequence[str | tuple[str, int]] | None,
) -> tuple[tuple[str, int], ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    result = []
    for item in value:
        host, port = (item, 53) if isinstance(item, str) else item
        ipaddress.ip_address(host)  # dnspython wants addresses; fail early and clearly
        result.append((host, int(port)))
    return tuple(result)


@attrs.frozen
class Resolution:
    """The outcome of one round of lookups.

    ``backends``: the merged set (failed names contribute their last good answer);
    ``ttl``: seconds until the next round, already clamped and backed off;
    ``errors``: one line per name whose lookup failed this round.
    """

    backends: tuple[Backend, ...]
    ttl: float
    errors: tuple[str, ...] = ()


class _LookupFailed(Exception):
    """A name could not be resolved this round (as opposed to resolving to nothing)."""


def _url(scheme: str, address: str, port: int, path: str) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"{scheme}://{host}:{port}{path.rstrip('/')}"


@attrs.define(eq=False, repr=False)
class DnsDiscovery:
    """Backends from DNS: A/AAAA records of a name with a known port, or SRV records.

    ``targets``: a name, a :class:`DnsTarget`, or several (one per tier, say a GPU and
    a CPU headless Service). ``port``: the port for targets that give none; with both
    ``None`` a target is looked up as SRV. ``nameservers``: ``[("10.96.0.10", 53)]``
    or plain addresses; ``None`` reads the system's resolver configuration (in a pod:
    the cluster DNS and its search domains). ``resolver``: a ready
    ``dns.resolver.Resolver`` to use instead (``nameservers`` is then ignored).
    ``min_ttl``/``max_ttl``: floor and ceiling of the refresh interval, in seconds.
    ``timeout``: the most one lookup may take. ``allow_empty``: apply an answer that
    empties the pool (off by default, see the module docs). ``clock``: the time source
    for refresh scheduling.

    Sync apps call :meth:`start` and :meth:`stop`; async apps run :meth:`arun` in a
    task group. One instance runs at most one of these at a time.
    """

    targets: tuple[DnsTarget, ...] = attrs.field(converter=_as_targets)
    port: int | None = attrs.field(default=None, kw_only=True, validator=_check_port)
    nameservers: tuple[tuple[str, int], ...] | None = attrs.field(
        default=None, kw_only=True, converter=_as_nameservers
    )
    resolver: dns.resolver.Resolver | None = attrs.field(default=None, kw_only=True)
    min_ttl: float = attrs.field(default=1.0, kw_only=True)
    max_ttl: float = attrs.field(default=30.0, kw_only=True)
    timeout: float = attrs.field(default=2.0, kw_only=True)
    allow_empty: bool = attrs.field(default=False, kw_only=True)
    clock: Clock = attrs.field(default=monotonic, kw_only=True)

    _resolver: dns.resolver.Resolver = attrs.field(init=False)
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock)
    _known: dict[int, tuple[Backend, ...]] = attrs.field(init=False, factory=dict)
    _failing: set[int] = attrs.field(init=False, factory=set)
    _failures: int = attrs.field(init=False, default=0)
    _applied: tuple[Backend, ...] | None = attrs.field(init=False, default=None)
    _next_refresh: float = attrs.field(init=False, default=0.0)
    _thread: threading.Thread | None = attrs.field(init=False, default=None)
    _stop: threading.Event = attrs.field(init=False, factory=threading.Event)
    _running: bool = attrs.field(init=False, default=False)
    _owner: int = attrs.field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        if not 0 < self.min_ttl <= self.max_ttl:
            raise ValueError(
                f"need 0 < min_ttl <= max_ttl, got min_ttl={self.min_ttl!r}, "
                f"max_ttl={self.max_ttl!r}"
            )
        if self.timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {self.timeout!r}")
        if self.resolver is not None:
            self._resolver = self.resolver
        else:
            resolver = dns.resolver.Resolver(configure=self.nameservers is None)
            if self.nameservers is not None:
                resolver.nameservers = [
                    dns.nameserver.Do53Nameserver(host, port) for host, port in self.nameservers
                ]
            # No cache: the whole point is to see the records change on their TTL.
            resolver.cache = None
            resolver.timeout = self.timeout
            resolver.lifetime = self.timeout
            self._resolver = resolver

    def __repr__(self) -> str:
        names = ", ".join(t.name for t in self.targets)
        count = "unresolved" if self._applied is None else f"{len(self._applied)} backends"
        return f"<DnsDiscovery {names}: {count}>"

    # -- what was found -------------------------------------------------------------

    @property
    def backends(self) -> tuple[Backend, ...]:
        """The set last applied to the pool (empty before the first round)."""
        return self._applied or ()

    @property
    def next_refresh(self) -> float:
        """Clock time at which the next round of lookups is due."""
        return self._next_refresh

    # -- one round ------------------------------------------------------------------

    def resolve(self) -> Resolution:
        """Look every name up once; failed names keep their last good answer.

        Blocking (up to ``timeout`` per query). Updates the per-name memory of last
        good answers, but touches no pool.
        """
        with self._lock:
            ttls: list[float] = []
            errors: list[str] = []
            for index, target in enumerate(self.targets):
                try:
                    found, ttl = self._lookup(target)
                except _LookupFailed as exc:
                    kept = self._known.get(index, ())
                    errors.append(f"{target.name}: {exc}")
                    if index not in self._failing:
                        log.warning(
                            "DNS lookup of %s failed (%s); keeping its %d last known backends",
                            target.name,
                            exc,
                            len(kept),
                        )
                        self._failing.add(index)
                    else:
                        log.debug("DNS lookup of %s still failing: %s", target.name, exc)
                    continue
                if index in self._failing:
                    self._failing.discard(index)
                    log.info("DNS lookup of %s recovered: %d backends", target.name, len(found))
                self._known[index] = found
                ttls.append(ttl)
            ttl = min(ttls, default=self.max_ttl)
            ttl = min(max(ttl, self.min_ttl), self.max_ttl)
            if errors:
                self._failures += 1
                backoff = min(self.min_ttl * 2 ** (self._failures - 1), self.max_ttl)
                ttl = min(ttl, backoff)
            else:
                self._failures = 0
            merged: dict[str, Backend] = {}
            for index in range(len(self.targets)):
                for backend in self._known.get(index, ()):
                    # The same address under two names: the earlier (preferred) name wins.
                    merged.setdefault(backend.url, backend)
            return Resolution(tuple(merged.values()), ttl, tuple(errors))

    def apply(self, pool: SupportsUpdate, resolution: Resolution) -> None:
        """Make the pool's membership the resolved set (unless that would empty it)."""
        new = resolution.backends
        old = self._applied
        if not new and old and not self.allow_empty:
            log.warning(
                "DNS answers for %s would remove all %d backends; keeping them "
                "(pass allow_empty=True to allow scaling to zero)",
                ", ".join(t.name for t in self.targets),
                len(old),
            )
            return
        if old is None or set(old) != set(new):
            before = {b.url for b in old or ()}
            after = {b.url for b in new}
            log.info(
                "DNS discovery: %d backends (+%d -%d)",
                len(new),
                len(after - before),
                len(before - after),
            )
        pool.update(new)
        self._applied = new

    def refresh(self, pool: SupportsUpdate) -> float:
        """One round: resolve, apply to ``pool``, schedule the next; returns the delay."""
        resolution = self.resolve()
        self.apply(pool, resolution)
        self._next_refresh = self.clock() + resolution.ttl
        return resolution.ttl

    # -- sync: a daemon thread --------------------------------------------------------

    def start(self, pool: SupportsUpdate) -> None:
        """Resolve now (so the pool is filled when this returns, DNS permitting), then
        refresh in one daemon thread until :meth:`stop`."""
        self._claim()
        self._stop.clear()
        try:
            self.refresh(pool)
        except BaseException:
            self._running = False
            raise
        thread = threading.Thread(
            target=self._loop, args=(pool,), name="embedbalance-dns", daemon=True
        )
        self._thread = thread
        thread.start()

    def stop(self) -> None:
        """Stop refreshing and join the thread (at most one lookup's ``timeout``)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and self._owner == os.getpid():
            thread.join()
        self._running = False

    def _loop(self, pool: SupportsUpdate) -> None:
        while not self._stop.wait(max(0.0, self._next_refresh - self.clock())):
            try:
                self.refresh(pool)
            except Exception:
                # A bug, not a DNS failure (those are handled in resolve): keep the
                # thread alive, but do not spin.
                log.exception("DNS discovery refresh failed unexpectedly")
                self._next_refresh = self.clock() + self.max_ttl

    def _claim(self) -> None:
        if self._running and self._owner != os.getpid():
            # A forked child: the parent's refresh thread does not exist here, and the
            # lock may have been copied while that thread held it.
            self._lock = threading.Lock()
            self._thread = None
            self._stop = threading.Event()
            self._running = False
        with self._lock:
            if self._running:
                raise RuntimeError(f"{self!r} is already running")
            self._running = True
            self._owner = os.getpid()

    # -- async: an anyio task ---------------------------------------------------------

    async def arun(
        self, pool: SupportsUpdate, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Resolve, report ``task_status.started()``, then refresh until cancelled.

        Lookups run in a worker thread (dnspython's async resolver is asyncio-only, and
        this must also work on trio); a cancelled lookup is abandoned, not awaited.
        """
        self._claim()
        try:
            await self._arefresh(pool)
            task_status.started()
            while True:
                await anyio.sleep(max(0.0, self._next_refresh - self.clock()))
                await self._arefresh(pool)
        finally:
            self._running = False

    async def _arefresh(self, pool: SupportsUpdate) -> None:
        resolution = await anyio.to_thread.run_sync(self.resolve, abandon_on_cancel=True)
        self.apply(pool, resolution)
        self._next_refresh = self.clock() + resolution.ttl

    # -- lookups ------------------------------------------------------------------------

    def _query(self, name: str, rdtype: str) -> dns.resolver.Answer | None:
        """One query: the answer, ``None`` for "no such records", or :class:`_LookupFailed`."""
        try:
            answer = self._resolver.resolve(
                name, rdtype, raise_on_no_answer=False, lifetime=self.timeout, search=True
            )
        except dns.resolver.NXDOMAIN:
            return None
        except dns.exception.DNSException as exc:
            raise _LookupFailed(f"{rdtype}: {type(exc).__name__}: {exc}") from exc
        return answer if answer.rrset is not None else None

    def _addresses(self, name: str) -> tuple[list[str], float]:
        """A then AAAA records of ``name`` and the lower of their TTLs."""
        addresses: list[str] = []
        ttls: list[float] = []
        for rdtype in ("A", "AAAA"):
            answer = self._query(name, rdtype)
            if answer is None or answer.rrset is None:
                continue
            ttls.append(float(answer.rrset.ttl))
            addresses += [str(_rdata(r).address) for r in answer.rrset]
        return addresses, min(ttls, default=EMPTY_ANSWER_TTL)

    def _lookup(self, target: DnsTarget) -> tuple[tuple[Backend, ...], float]:
        labels = {**target.labels, "dns_name": target.name}
        port = target.port if target.port is not None else self.port

        def backend(address: str, port: int) -> Backend:
            return Backend(
                _url(target.scheme, address, port, target.path),
                weight=target.weight,
                tier=target.tier,
                labels=labels,
                tls_server_name=target.server_name,
                model=target.model,
                zone=target.zone,
            )

        if port is not None:
            addresses, ttl = self._addresses(target.name)
            return tuple(backend(a, port) for a in addresses), ttl
        answer = self._query(target.name, "SRV")
        if answer is None or answer.rrset is None:
            return (), EMPTY_ANSWER_TTL
        ttls = [float(answer.rrset.ttl)]
        # Servers usually send the targets' addresses along (Kubernetes and dnsmasq
        # both do); look up only the ones they did not.
        extra: dict[dns.name.Name, list[str]] = {}
        for rrset in answer.response.additional:
            if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                extra.setdefault(rrset.name, []).extend(str(_rdata(r).address) for r in rrset)
                ttls.append(float(rrset.ttl))
        found: list[Backend] = []
        for record in answer.rrset:
            srv = _rdata(record)
            host: dns.name.Name = srv.target
            if host == dns.name.root:  # "." means: no service here
                continue
            if host in extra:
                addresses = extra[host]
            else:
                addresses, ttl = self._addresses(host.to_text())
                ttls.append(ttl)
            found += [backend(a, int(srv.port)) for a in addresses]
        return tuple(found), min(ttls)


def _rdata(record: object) -> Any:
    """dnspython types record data by its base class; the fields we read are per type."""
    return record
