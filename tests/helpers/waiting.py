"""Bounded polling for a condition another thread or process brings about.

Why a helper: a test that waits on a real server, a refresh thread or a pool's books
must never wait forever, and must not sleep a fixed time either (too short on a
busy machine, too long on a quiet one). Poll until true, within a limit.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(condition: Callable[[], object], timeout: float, interval: float = 0.01) -> bool:
    """Whether ``condition()`` became true within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return False
