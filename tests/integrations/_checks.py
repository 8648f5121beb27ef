"""What every example app's answers must satisfy, and small helpers shared by the
integration tests."""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
from tests.helpers.worker_proc import STANDARD_ARGS

WORKER_ARGS = STANDARD_ARGS
DIMENSION = 384
BACKENDS_ENV = "EMBEDBALANCE_BACKENDS"
#: Distinct texts of four lengths.
TEXTS = [
    f"{i}: " + " ".join(["load balancing embedding requests"] * (1 + i % 4)) + f" case {i}"
    for i in range(64)
]


class Reference:
    """Each text's embedding from one worker, one text per request, cached: the truth
    every answer of an example app is compared with."""

    def __init__(self, url: str) -> None:
        self._http = httpx.Client(base_url=url, timeout=60)
        self._cache: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def __call__(self, text: str) -> np.ndarray:
        with self._lock:
            if text not in self._cache:
                response = self._http.post("/embed", json={"inputs": [text], "truncate": True})
                response.raise_for_status()
                self._cache[text] = np.asarray(response.json()[0], dtype=np.float32)
            return self._cache[text]

    def close(self) -> None:
        self._http.close()


def check_embeddings(payload: Any, texts: list[str], reference: Reference) -> None:
    """``payload`` is an example's ``/embed`` answer for ``texts``: one 384-wide row per
    text, in order, each of unit length and equal to a direct worker request."""
    assert payload["dimension"] == DIMENSION
    rows = np.asarray(payload["embeddings"], dtype=np.float32)
    assert rows.shape == (len(texts), DIMENSION)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    for text, row in zip(texts, rows, strict=True):
        np.testing.assert_allclose(row, reference(text), atol=1e-5, rtol=0)


def per_backend_requests(stats: dict[str, Any]) -> dict[str, int]:
    """Requests per backend URL from a ``/stats`` JSON answer."""
    return {b["url"]: int(b["requests"]) for b in stats["pool"]["backends"]}


def embedbalance_threads() -> set[threading.Thread]:
    """Live threads that embedbalance started (they are all named ``embedbalance*``)."""
    return {t for t in threading.enumerate() if t.name.startswith("embedbalance")}


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dead_url() -> str:
    """A loopback URL nothing listens on (the port was just free)."""
    return f"http://127.0.0.1:{free_port()}"


def run_in_fork(child: Callable[[], None], timeout: float = 60.0) -> int:
    """Run ``child()`` in a forked copy of this process, the way gunicorn starts its
    workers, and return its exit status (0: it returned, 1: it raised)."""
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        status = 1
        try:
            child()
            status = 0
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(status)
    deadline = time.monotonic() + timeout
    while True:
        done, wait_status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(wait_status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise TimeoutError(f"forked child {pid} did not finish within {timeout}s")
        time.sleep(0.05)
