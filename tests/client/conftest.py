"""Fixtures for the client suite: real workers on loopback (started once), a reference
embedding from a single worker, a corpus, and fake backends that misbehave."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from tests.client.fake_server import FakeBackend  # noqa: E402
from tests.helpers.worker_proc import WorkerProcess  # noqa: E402


@pytest.fixture(params=["asyncio", pytest.param("trio", marks=pytest.mark.slow)])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every async test runs on asyncio, and on trio in the slow suite (the client's
    async code is anyio throughout; trio is checked there to keep the default run
    under its time budget)."""
    return str(request.param)


@pytest.fixture(scope="session")
def workers(
    standard_workers: tuple[WorkerProcess, WorkerProcess, WorkerProcess],
) -> tuple[WorkerProcess, WorkerProcess, WorkerProcess]:
    """Three real workers (the suite's, tests/conftest.py): two for traffic, one to kill."""
    return standard_workers


@pytest.fixture(scope="session")
def urls(workers: tuple[WorkerProcess, ...]) -> list[str]:
    """The URLs of the two traffic workers."""
    return [workers[0].url, workers[1].url]


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    """About 200 distinct texts of very different lengths, from the standard library's
    own documentation (short enough to keep the suite fast)."""
    from pydoc_data.topics import topics

    seen: set[str] = set()
    texts: list[str] = []
    for name in sorted(topics):
        for para in topics[name].split("\n\n"):
            text = " ".join(para.split())[: 40 + (len(texts) * 37) % 400]
            if len(text) >= 3 and text not in seen:
                seen.add(text)
                texts.append(text)
    return texts[:200]


@pytest.fixture(scope="session")
def reference(workers: tuple[WorkerProcess, ...], corpus: list[str]) -> dict[str, np.ndarray]:
    """Each corpus text's embedding from one worker, one text per request: the truth
    every balanced result is checked against."""
    out: dict[str, np.ndarray] = {}
    with httpx.Client(base_url=workers[0].url, timeout=60) as http:
        for text in corpus:
            rows = http.post("/embed", json={"inputs": [text], "truncate": True}).json()
            out[text] = np.asarray(rows[0], dtype=np.float32)
    return out


@pytest.fixture
def fake() -> Iterator[FakeBackend]:
    """A well-behaved fake backend answering 7-dimensional vectors."""
    with FakeBackend() as server:
        yield server
