"""Shared fixtures for the worker suite: one loaded model, in-process apps on top of it."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_ROOT = Path(__file__).resolve().parents[2]
for _path in (str(_ROOT), str(_ROOT / "src")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from starlette.testclient import TestClient  # noqa: E402

from embedbalance_worker import EmbeddingModel, WorkerConfig, create_app  # noqa: E402


@pytest.fixture(scope="session")
def model() -> EmbeddingModel:
    """The bundled model in float32, loaded once for every in-process test."""
    return EmbeddingModel(WorkerConfig())


@pytest.fixture
def make_client(model: EmbeddingModel) -> Iterator[object]:
    """Build a started in-process app (lifespan run) on the shared model."""
    clients: list[TestClient] = []

    def make(**overrides: object) -> TestClient:
        client = TestClient(create_app(WorkerConfig(**overrides), model=model))  # type: ignore[arg-type]
        client.__enter__()
        deadline = time.monotonic() + 60
        while client.get("/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: object) -> TestClient:
    """A default in-process worker app."""
    return make_client()  # type: ignore[operator,no-any-return]
