"""Run a function in a child made by ``os.fork()`` and bring back what it returned.

Why a helper: fork safety (gunicorn ``--preload``) is a promise of several modules, and
each test of it needs the same care: the child never returns into pytest, reports
through a pipe, and a stuck child is killed by its PID after a bounded wait.
"""

from __future__ import annotations

import json
import os
import select
import signal
import time
from collections.abc import Callable
from typing import Any


def in_child(work: Callable[[], Any], limit: float = 20.0) -> Any:
    """Run ``work`` in a forked child and return its (JSON-able) result, or raise
    ``AssertionError`` with the child's error or silence."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.close(read)
            try:
                report = {"ok": work()}
            except BaseException as exc:
                report = {"error": f"{type(exc).__name__}: {exc}"}
            os.write(write, json.dumps(report).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    chunks: list[bytes] = []
    deadline = time.monotonic() + limit
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([read], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            chunk = os.read(read, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read)
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    if not chunks:
        raise AssertionError(f"the forked child reported nothing within {limit:g}s")
    report = json.loads(b"".join(chunks))
    if "error" in report:
        raise AssertionError(f"the forked child failed: {report['error']}")
    return report["ok"]
