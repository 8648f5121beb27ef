"""Where backends come from: the event model and the static source.

A discovery source tells a pool which backends exist; the pool works out what was
added and removed (:func:`diff`). Sources with I/O (DNS) live in their own module;
this one stays pure.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs

from ._backend import Backend, as_backend

if TYPE_CHECKING:
    from .pool import BackendPool

__all__ = ["Change", "Discovery", "StaticDiscovery", "diff"]


@attrs.frozen
class Change:
    """One membership event: ``kind`` is ``"add"``, ``"remove"`` or ``"update"``
    (same URL, new weight, tier or labels)."""

    kind: str
    backend: Backend


def diff(old: Iterable[Backend], new: Iterable[Backend]) -> list[Change]:
    """Events that turn membership ``old`` into ``new``, keyed by URL, in a stable order:
    removals first (so a pool never briefly holds both), then updates, then adds."""
    before = {b.url: b for b in old}
    after: dict[str, Backend] = {}
    for b in new:
        after[b.url] = b
    changes = [Change("remove", b) for url, b in before.items() if url not in after]
    for url, b in after.items():
        prev = before.get(url)
        if prev is None:
            continue
        # Every field, not only weight and tier: Kubernetes reuses pod IPs, so the same
        # address may come back serving another model, in another zone, under another
        # TLS name. (Labels are compared apart: they are not part of Backend equality.)
        if prev != b or dict(prev.labels) != dict(b.labels):
            changes.append(Change("update", b))
    changes += [Change("add", b) for url, b in after.items() if url not in before]
    return changes


@runtime_checkable
class Discovery(Protocol):
    """A source of backends that keeps a pool's membership current.

    Sync apps call :meth:`start` (resolve once, synchronously, then refresh in the
    background — a daemon thread) and :meth:`stop` (no thread survives). Async apps run
    :meth:`arun` in a task group: it resolves, calls ``task_status.started()``, and
    refreshes until cancelled. Sources apply what they find with ``pool.update()``.
    """

    def start(self, pool: BackendPool) -> None: ...

    def stop(self) -> None: ...

    async def arun(self, pool: BackendPool, *, task_status: Any = ...) -> None: ...


def _as_backends(items: Iterable[Backend | str]) -> tuple[Backend, ...]:
    return tuple(as_backend(b) for b in items)


@attrs.frozen
class StaticDiscovery:
    """A fixed list of backends: what a plain list of URLs means."""

    backends: tuple[Backend, ...] = attrs.field(converter=_as_backends)

    def start(self, pool: BackendPool) -> None:
        pool.update(self.backends)

    def stop(self) -> None:
        return None

    async def arun(self, pool: BackendPool, *, task_status: Any = None) -> None:
        pool.update(self.backends)
        if task_status is not None:
            task_status.started()
