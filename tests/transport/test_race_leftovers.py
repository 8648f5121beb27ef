"""What the transports leave behind when a race ends badly, pinned directly: attempts
still running when an error leaves the sync race, a hedge's loser whose inner transport
raises after the request was answered, the background tasks the async transport
spawns, and inner transports after a ``fork``.

Why apart: each of these showed in mutation testing as a line whose breaking left the
suite green. Each one's failure is quiet in use (a lease never released, so the pool
counts a request in flight for ever and shuns that replica; an error logged from a
callback nobody reads; a task collected while it runs; a child process speaking on
its parent's connections), so the tests look at the books, not at the answer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading

import anyio
import httpx
import pytest
from tests.helpers.waiting import wait_until

import embedbalance as eb
from embedbalance import transport as transport_module

pytestmark = pytest.mark.timeout(60)


def _sync_transport(handler: object) -> eb.BalancingTransport:
    """Round-robin over two mock backends, hedging 5 ms after the first answer, with
    budget for every request to hedge."""
    return eb.BalancingTransport(
        ["http://b0.test", "http://b1.test"],
        balancer=eb.RoundRobin(),
        health_check=None,
        outlier_detection=None,
        hedge=eb.Hedge(min_samples=1, min_delay=0.005, multiple=1.0, budget_ratio=1.0),
        transport=httpx.MockTransport(handler),  # type: ignore[arg-type]
    )


def _send(transport: eb.BalancingTransport) -> httpx.Response:
    request = httpx.Request("POST", "http://svc/embed", json={"inputs": ["x"]})
    response = transport.handle_request(request)
    response.read()
    return response


class _Script:
    """A mock backend's behaviour by call order: the first request (the warm-up)
    answers; the second (the first copy of the raced request) waits for ``gate`` and
    then does ``late``; the third (the hedge) does ``early``."""

    def __init__(self, early: str, late: str) -> None:
        self.early, self.late = early, late
        self.gate = threading.Event()
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            self.calls.append(request.url.host)
            n = len(self.calls)
        if n == 2:
            assert self.gate.wait(10), "the test never opened the gate"
            return self._do(self.late)
        return self._do(self.early if n == 3 else "answer")

    @staticmethod
    def _do(what: str) -> httpx.Response:
        if what == "raise":
            raise RuntimeError("bug in the inner transport")
        return httpx.Response(200, json={"ok": True})


def test_sync_race_releases_a_copy_still_running_when_an_error_leaves_it() -> None:
    """The hedge's inner transport raises a non-httpx error while the first copy is
    still waiting on its server: the caller gets that error, and the first copy's lease
    is released at once, as cancelled (its thread finishes later, unwaited). If this
    fails, the pool counts that request in flight after the caller has gone (the
    balancer then shuns the replica) or the release itself raises over the bug."""
    script = _Script(early="raise", late="answer")
    transport = _sync_transport(script)
    try:
        assert _send(transport).status_code == 200  # warm: a hedge delay exists now
        with pytest.raises(RuntimeError, match=r"^bug in the inner transport$"):
            _send(transport)
        first_copy = script.calls[1]
        assert script.calls[2] != first_copy  # the hedge went elsewhere
        rows = transport.stats().pool.by_url()
        assert transport.stats().pool.in_flight == 0
        assert rows[f"http://{first_copy}"].cancelled == 1
    finally:
        script.gate.set()
        transport.close()


def test_sync_hedge_loser_raising_after_the_answer_is_booked_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The first copy's inner transport raises a non-httpx error after the hedge has
    answered the request: the loser's lease is released as cancelled and nothing is
    logged as an error (the caller has its answer; the error has nobody to reach). If
    this fails, settling the loser raises inside a future's callback, which
    ``concurrent.futures`` logs as an error on every such request."""
    script = _Script(early="answer", late="raise")
    transport = _sync_transport(script)
    caplog.set_level(logging.ERROR)
    try:
        assert _send(transport).status_code == 200
        assert _send(transport).status_code == 200  # answered by the hedge
        first_copy = script.calls[1]
        script.gate.set()
        rows = lambda: transport.stats().pool.by_url()  # noqa: E731
        wait_until(lambda: rows()[f"http://{first_copy}"].cancelled == 1, timeout=10)
        assert transport.stats().pool.in_flight == 0
    finally:
        script.gate.set()
        transport.close()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


def test_spawned_background_work_is_held_until_it_ends() -> None:
    """A task the async transport starts in the background (its health checks, the
    closing of retired connections) is held by a strong reference while it runs and
    dropped when it ends. If this fails, asyncio holds only a weak reference to it and
    a garbage collection can destroy it mid-run ("Task was destroyed but it is
    pending")."""

    async def main() -> tuple[bool, bool]:
        gate = asyncio.Event()

        async def work() -> None:
            await gate.wait()

        before = set(transport_module._TASKS)
        transport_module._spawn(work)
        new = transport_module._TASKS - before
        assert len(new) == 1
        (task,) = new
        held = isinstance(task, asyncio.Task) and not task.done()
        gate.set()
        await task
        await asyncio.sleep(0)  # the done callback runs one step after the task ends
        return held, task in transport_module._TASKS

    held, still_held = asyncio.run(main())
    assert held
    assert not still_held


def test_inner_transports_after_fork_are_the_childs_own() -> None:
    """After a ``fork`` (seen as a changed process id) the inner transports start over:
    the parent's per-backend ones are forgotten unclosed, nothing parked for closing
    is handed over, the lock is new (one held by a parent thread at fork time would
    deadlock the child), and the next backend lookup in the same child reuses what it
    made. If this fails, a child process sends on its parent's pooled connections or
    deadlocks on its first request. (``tests/conformance/test_fork.py`` forks for real.)
    """
    made: list[str] = []

    def factory(backend: eb.Backend) -> str:
        made.append(backend.url)
        return f"inner {len(made)}"

    inner: transport_module._Inner[str] = transport_module._Inner(factory, lambda: "shared")
    backend = eb.Backend("http://b0.test")
    assert inner.get(backend) == "inner 1"
    inner.park("parked by the parent")
    inner._lock.acquire()  # a parent thread holds it at fork time
    inner._pid = -1  # as seen from a forked child
    assert inner.get(backend) == "inner 2"  # the parent's is not reused
    assert inner.get(backend) == "inner 2"  # the child's own is
    assert inner._pid == os.getpid()
    assert inner.take_parked() == []
    assert len(inner) == 1
    assert made == ["http://b0.test", "http://b0.test"]


def test_async_close_cancels_a_running_loser_and_waits_only_for_it() -> None:
    """A hedge's loser still waiting on its server when the transport closes: ``aclose``
    cancels it, waits until it is gone (its lease released as cancelled) and returns
    as soon as it is, not after its 5 s bound. If this fails, every close with a copy
    in flight either leaves that copy's lease in flight or stalls for 5 s (the wake-up
    set only while other copies remain)."""

    async def main() -> tuple[int, int, int]:
        warming = [True]
        gate = anyio.Event()
        calls: list[str] = []

        async def handler(request: httpx.Request) -> httpx.Response:
            if not warming[0]:
                calls.append(request.url.host)
                if len(calls) == 1:
                    await gate.wait()  # the first copy waits on its server
            return httpx.Response(200, json={})

        transport = eb.AsyncBalancingTransport(
            ["http://b0.test", "http://b1.test"],
            balancer=eb.RoundRobin(),
            health_check=None,
            outlier_detection=None,
            hedge=eb.Hedge(min_samples=1, min_delay=0.005, multiple=1.0, budget_ratio=1.0),
            transport=httpx.MockTransport(handler),
        )
        request = httpx.Request("POST", "http://svc/embed", json={"inputs": ["x"]})
        await (await transport.handle_async_request(request)).aread()
        warming[0] = False
        response = await transport.handle_async_request(request)
        await response.aread()
        assert response.status_code == 200  # the hedge answered
        in_flight = transport.stats().pool.in_flight  # the loser, still waiting
        with anyio.fail_after(3.0):
            await transport.aclose()
        loser = transport.stats().pool.by_url()[f"http://{calls[0]}"]
        return in_flight, transport.stats().pool.in_flight, loser.cancelled

    before, after, cancelled = anyio.run(main)
    assert before == 1
    assert after == 0
    assert cancelled == 1
