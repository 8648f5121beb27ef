"""Fixtures for the framework integrations: two real workers on loopback (started once
for the whole directory), the truth to compare against, and the checks every example's
answers must pass."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    # So that ``examples.fastapi_app`` imports the way ``uvicorn examples.fastapi_app:app``
    # does from the repository root.
    sys.path.insert(0, str(ROOT))

from tests.helpers.worker_proc import WorkerProcess, WorkerSupply  # noqa: E402
from tests.integrations._checks import WORKER_ARGS, Reference  # noqa: E402


@pytest.fixture(scope="session")
def workers(
    standard_workers: tuple[WorkerProcess, WorkerProcess, WorkerProcess],
    victims: WorkerSupply,
) -> tuple[WorkerProcess, WorkerProcess]:
    """Two real workers: the suite's traffic pair (tests/conftest.py). Asking for
    ``victims`` here starts the first killable worker while the frameworks' tests run."""
    return (standard_workers[0], standard_workers[1])


@pytest.fixture(scope="session")
def victims(request: pytest.FixtureRequest) -> Iterator[WorkerSupply]:
    """Fresh workers for the tests that kill one (``victim``), each started while the
    test before it runs; as many as the collected tests ask for."""
    wanted = sum("victim" in getattr(item, "fixturenames", ()) for item in request.session.items)
    supply = WorkerSupply(wanted, *WORKER_ARGS)
    try:
        yield supply
    finally:
        supply.close()


@pytest.fixture(scope="session")
def urls(workers: tuple[WorkerProcess, WorkerProcess]) -> list[str]:
    """The two workers' base URLs."""
    return [w.url for w in workers]


@pytest.fixture(scope="session")
def backends_env(urls: list[str]) -> str:
    """The value of ``EMBEDBALANCE_BACKENDS`` naming both workers."""
    return ",".join(urls)


@pytest.fixture(scope="session")
def reference(workers: tuple[WorkerProcess, WorkerProcess]) -> Iterator[Reference]:
    """A direct, unbalanced client of the first worker."""
    ref = Reference(workers[0].url)
    try:
        yield ref
    finally:
        ref.close()
