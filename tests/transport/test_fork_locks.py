"""A forked child must never inherit a lock held by a thread that does not exist there."""

from __future__ import annotations

import os

import pytest

import embedbalance as eb

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _child_can_use(transport: eb.BalancingTransport) -> int:
    """Fork; in the child, pick a backend through the pool and the retry budget."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            lease = transport.pool.acquire()
            transport.pool.release(lease)
            transport._core.policy.budget.deposit()
            os._exit(0)
        except BaseException:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_locks_held_at_fork_time_are_fresh_in_the_child() -> None:
    """A pool and retry-budget lock held by another thread at fork time (a health check
    mid-report) do not deadlock the child's first request."""
    transport = eb.BalancingTransport(["http://127.0.0.1:9"], health_check=None)
    pool_lock = transport.pool._lock
    budget_lock = transport._core.policy.budget._lock
    pool_lock.acquire()
    budget_lock.acquire()
    try:
        assert _child_can_use(transport) == 0
    finally:
        pool_lock.release()
        budget_lock.release()
        transport.close()
