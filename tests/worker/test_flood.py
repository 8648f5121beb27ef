"""A flood of maximum-size bodies of over-long texts: memory stays bounded and a valid
short request sent during the flood is still answered quickly."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from tests.helpers.worker_proc import start_worker

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

CLIENTS = 64
FLOOD_S = 8.0
PROBE_EVERY_S = 0.2
PAYLOAD_LIMIT = 4 * 1024 * 1024
#: Before admission came first, a valid request waited up to 20 s behind the flood.
PROBE_BOUND_S = 5.0


def _peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def _flood_body() -> bytes:
    text = "an over long text that repeats itself " * 420  # ~16 KB, ~3000 tokens
    body = json.dumps({"inputs": [text] * 256}).encode()
    assert PAYLOAD_LIMIT * 0.9 < len(body) <= PAYLOAD_LIMIT
    return body


def test_flood_of_garbage_keeps_memory_bounded_and_valid_requests_fast() -> None:
    """64 clients sending maximum-size bodies of over-long texts get only 413/429, peak RSS
    stays under 1.5 GiB, and a valid request every 200 ms is answered 200 without waiting
    behind the garbage (the 1 s latency goal is measured by the benchmark; here the bound
    is loose because the flood's clients share the CPU with the worker)."""
    body = _flood_body()
    stop = threading.Event()
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    with start_worker("--torch-threads", "1", "--payload-limit", str(PAYLOAD_LIMIT)) as worker:

        def flood() -> None:
            with httpx.Client(timeout=30) as client:
                while not stop.is_set():
                    try:
                        code = client.post(
                            worker.url + "/embed",
                            content=body,
                            headers={"content-type": "application/json"},
                        ).status_code
                    except httpx.HTTPError:
                        code = -1
                    with lock:
                        statuses[code] += 1

        probes: list[tuple[int, float]] = []
        with ThreadPoolExecutor(CLIENTS) as pool:
            for _ in range(CLIENTS):
                pool.submit(flood)
            time.sleep(1.0)  # let the flood build up
            with httpx.Client(timeout=10) as prober:
                deadline = time.monotonic() + FLOOD_S
                while time.monotonic() < deadline:
                    started = time.monotonic()
                    resp = prober.post(
                        worker.url + "/embed", json={"inputs": ["a valid short one"]}
                    )
                    probes.append((resp.status_code, time.monotonic() - started))
                    time.sleep(max(0.0, PROBE_EVERY_S - (time.monotonic() - started)))
            stop.set()
        peak = _peak_rss_bytes(worker.pid)
    assert sum(statuses.values()) >= CLIENTS, "the flood never got going"
    assert set(statuses) <= {413, 429}, statuses
    assert len(probes) >= FLOOD_S / 1.0
    slow = [(code, round(s, 3)) for code, s in probes if code != 200 or s > PROBE_BOUND_S]
    assert not slow, f"valid requests refused or slow during the flood: {slow}"
    assert peak <= 1.5 * 1024**3, f"peak RSS {peak / 1024**3:.2f} GiB"
