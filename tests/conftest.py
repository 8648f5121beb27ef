"""Suite-wide setup: make the shared helpers importable from every test folder, and the
real workers that more than one folder uses (started once for the whole run)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent
for folder in (_HERE, _HERE / "helpers"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
if str(_HERE.parent) not in sys.path:  # for ``tests.helpers...``, as the folders import it
    sys.path.append(str(_HERE.parent))

from tests.helpers.worker_proc import STANDARD_ARGS, WorkerProcess, start_workers  # noqa: E402


@pytest.fixture(scope="session")
def standard_workers() -> Iterator[tuple[WorkerProcess, WorkerProcess, WorkerProcess]]:
    """Three real workers with :data:`STANDARD_ARGS`, started in parallel and stopped by
    PID at the end: the first two serve traffic for tests/client, tests/integrations and
    tests/contract alike (each checks its own counters' changes, never their totals),
    the third is the client suite's to kill. Sharing them saves a start-up of ~6 s per
    folder."""
    started = start_workers(3, *STANDARD_ARGS)
    try:
        yield (started[0], started[1], started[2])
    finally:
        for worker in started:
            worker.stop()
