"""Shared by the adapter tests: a third, killable worker and a callback that kills it
part-way through a run, so each adapter is proven to survive a replica dying under it."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest
from tests.helpers.worker_proc import WorkerProcess, WorkerSupply
from tests.integrations._checks import Reference

from embedbalance import BatchEvent

#: Enough distinct texts for many sub-batches at ``batch_size=8``.
MANY = [f"adapter text {i}: " + "balanced embeddings " * (1 + i % 5) for i in range(160)]
BATCH = {"batch_size": 8, "batch_tokens": 256, "truncate": True}


@pytest.fixture
def victim(victims: WorkerSupply) -> Iterator[WorkerProcess]:
    """A fresh third worker that the test kills; stopped by PID if it is still alive."""
    worker = victims.take()
    try:
        yield worker
    finally:
        worker.kill()


class KillMidRun:
    """An ``on_batch`` callback: SIGKILLs ``victim`` when it answers its first sub-batch
    (or, failing that, once ``fallback`` sub-batches have come back from anyone), so the
    rest of the run meets a dead replica with requests still planned for it."""

    def __init__(self, victim: WorkerProcess, fallback: int = 3) -> None:
        self.victim = victim
        self.fallback = fallback
        self.events: list[BatchEvent] = []
        self.killed_after: int | None = None
        self._lock = threading.Lock()

    def __call__(self, event: BatchEvent) -> None:
        with self._lock:
            self.events.append(event)
            if self.killed_after is None and (
                event.backend.rstrip("/") == self.victim.url.rstrip("/")
                or len(self.events) >= self.fallback
            ):
                self.victim.kill()
                self.killed_after = len(self.events)

    def assert_mid_run(self) -> None:
        """The kill happened, and sub-batches were still answered after it."""
        assert self.victim.proc.poll() is not None, "the victim was never killed"
        assert self.killed_after is not None
        assert len(self.events) > self.killed_after, "the kill came after the last sub-batch"


def assert_rows_equal(rows: list[list[float]], texts: list[str], reference: Reference) -> None:
    """One row per text, in order, each equal to a direct single-text worker request."""
    assert len(rows) == len(texts)
    for text, row in zip(texts, rows, strict=True):
        assert isinstance(row, list)
        assert all(isinstance(x, float) for x in row[:3])
        np.testing.assert_allclose(np.asarray(row), reference(text), atol=1e-5, rtol=0)
