"""Daemon threads for the sync transport's raced attempts: as many as are needed.

Why not ``concurrent.futures.ThreadPoolExecutor``: its size caps how many requests run
at once (24 callers of a hedged transport would queue behind its default of a dozen
threads, and a queued attempt's hedge timer would run while it was never sent), its
threads are joined at interpreter exit (an attempt stuck on a hung backend would block
the exit), and it is not usable after ``fork()``. Here a task always starts at once on
an idle thread or a new one; idle threads wait a while for more work, then exit; all
are daemons; a forked child starts with none.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

__all__ = ["Runner"]

T = TypeVar("T")
_STOP: Any = object()  # tells an idle thread to exit (shutdown)

#: Seconds an idle thread waits for another task before it exits.
IDLE_SECONDS = 30.0


class Runner:
    """Run callables on daemon threads, never queueing behind a busy one."""

    def __init__(self, name: str = "embedbalance-attempt", idle: float = IDLE_SECONDS) -> None:
        self._name = name
        self._idle_seconds = idle
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._tasks: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]]
        self._tasks = queue.SimpleQueue()
        self._idle = 0  # threads waiting for a task and not yet claimed by a submit
        self._threads: set[threading.Thread] = set()
        # Set by shutdown until the next submit: a thread that ends its task meanwhile
        # exits instead of waiting for more work (shutdown could not tell it to stop:
        # it was busy when shutdown counted the idle ones).
        self._stopping = False

    @property
    def idle(self) -> int:
        return self._idle

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Start ``fn(*args)`` now, on an idle thread or a new one."""
        if self._pid != os.getpid():
            self._reset()  # a forked child: the parent's threads do not exist here
        future: Future[T] = Future()
        task = (future, fn, args)
        with self._lock:
            self._stopping = False
            reuse = self._idle > 0
            if reuse:
                self._idle -= 1
        if reuse:
            self._tasks.put(task)
        else:
            thread = threading.Thread(target=self._work, args=(task,), name=self._name, daemon=True)
            with self._lock:
                self._threads.add(thread)
            thread.start()
        return future

    def shutdown(self, timeout: float = 5.0) -> None:
        """Let every idle thread go and join it, and join busy ones for up to ``timeout``
        seconds in all (an abandoned attempt ends with its connection, which the
        transport closes first). Later submits start new threads."""
        if self._pid != os.getpid():
            self._reset()
            return
        with self._lock:
            self._stopping = True
            idle, self._idle = self._idle, 0
            threads = list(self._threads)
        for _ in range(idle):
            self._tasks.put(_STOP)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _work(self, task: tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None) -> None:
        tasks = self._tasks
        while task is not None:
            future, fn, args = task
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args)
                except BaseException as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            del task, future, fn, args
            with self._lock:
                if self._stopping:
                    self._threads.discard(threading.current_thread())
                    return
                self._idle += 1
            task = None
            while task is None:
                try:
                    got = tasks.get(timeout=self._idle_seconds)
                except queue.Empty:
                    with self._lock:
                        # Exit only if no submit has claimed a waiting thread meanwhile;
                        # else a task is (about to be) queued for one of us: keep waiting.
                        if self._idle > 0:
                            self._idle -= 1
                            self._threads.discard(threading.current_thread())
                            return
                    continue
                if got is _STOP:
                    with self._lock:
                        self._threads.discard(threading.current_thread())
                    return
                task = got
