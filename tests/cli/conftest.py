"""Real workers for the CLI tests, started once for the directory and stopped by PID:
two that serve the same vectors (one slowed with ``--delay-ms``) and one started with
another pooling, which serves the same model name and dimension but different vectors."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.helpers.worker_proc import WorkerProcess, start_worker  # noqa: E402

BASE = ("--torch-threads", "1", "--max-wait-ms", "2")
#: Sleep per forward pass. Both benchmarked workers get one, large against a forward
#: pass over two one-word texts, so that their capacities are set by the delays (a 4x
#: ratio in the sleep, 3x to 4x in capacity) and hardly by how busy the machine's
#: cores happen to be while the test runs.
FAST_DELAY_MS, SLOW_DELAY_MS = 100, 400

SPECS = {
    "fast": (*BASE, "--delay-ms", str(FAST_DELAY_MS)),
    "slow": (*BASE, "--delay-ms", str(SLOW_DELAY_MS)),
    "cls": (*BASE, "--pooling", "cls"),
}


@pytest.fixture(scope="session")
def cli_workers() -> Iterator[dict[str, WorkerProcess]]:
    """The three workers by role, started in parallel."""
    with ThreadPoolExecutor(len(SPECS)) as pool:
        futures = {
            name: pool.submit(start_worker, *args, timeout=180.0) for name, args in SPECS.items()
        }
        started: dict[str, WorkerProcess] = {}
        try:
            for name, fut in futures.items():
                started[name] = fut.result()
        except BaseException:
            for fut in futures.values():
                if fut.exception() is None:
                    fut.result().kill()
            raise
    try:
        yield started
    finally:
        for worker in started.values():
            worker.stop()
