"""Fixtures for transport tests: real control-server processes on loopback."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "helpers"))

from control_proc import ControlServer, stop_all


@pytest.fixture(params=["asyncio", pytest.param("trio", marks=pytest.mark.slow)])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """asyncio in the default run, trio too in the slow suite (as in tests/conformance)."""
    return str(request.param)


@pytest.fixture
def servers() -> Iterator[Callable[..., list[ControlServer]]]:
    """Start N control servers; every one is stopped by PID at teardown."""
    started: list[ControlServer] = []

    def start(n: int, **kwargs: object) -> list[ControlServer]:
        new = ControlServer.start_many(n, **kwargs)
        started.extend(new)
        return new

    yield start
    stop_all(started)
