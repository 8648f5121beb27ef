"""Fixtures for the conformance suite: TEI-semantics stubs on loopback, a throwaway CA,
a real dnsmasq, and helpers that read the process's own sockets and threads."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

_TESTS = Path(__file__).resolve().parents[1]
for _folder in (_TESTS / "helpers", _TESTS / "dns"):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

from tei_stub import TeiStub  # noqa: E402

import embedbalance as eb  # noqa: E402


@pytest.fixture(params=["asyncio", pytest.param("trio", marks=pytest.mark.slow)])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every async test runs on asyncio, and on trio in the slow suite (the twins' rules
    live once in the shared core; trio is checked there to keep this folder quick)."""
    return str(request.param)


@pytest.fixture
def stubs() -> Iterator[Callable[..., list[TeiStub]]]:
    """Start N TEI stubs with the given options; every one is stopped at teardown."""
    started: list[TeiStub] = []

    def start(n: int, **kwargs: Any) -> list[TeiStub]:
        new = [TeiStub(**kwargs) for _ in range(n)]
        started.extend(new)
        return new

    yield start
    for stub in started:
        stub.signal_stop()
    for stub in started:
        stub.stop()


@pytest.fixture(scope="session")
def ca() -> Any:
    """A throwaway certificate authority (trustme) for https backends."""
    trustme = pytest.importorskip("trustme")
    return trustme.CA()


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[Any]:
    """A started dnsmasq on 127.0.0.1 with no records yet; stopped by PID at the end
    (skips without the binary, fails under CI=true, as tests/helpers/system.py says)."""
    from dnsmasq_server import Dnsmasq, system_binary

    server = Dnsmasq(system_binary("dnsmasq"), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Favourite(eb.Balancer):
    """Full scan on a score that makes one backend look far idler than the rest, so a
    test knows which backend an attempt goes to first."""

    def __init__(self, url: str) -> None:
        self.url = url

    def score(self, state: Any, now: float) -> float:
        return 0.0 if state.backend.url == self.url else 1e6


def quiet(**kwargs: Any) -> dict[str, Any]:
    """Transport options with no background checks, ejection or slow start unless a test
    asks: only the behaviour under test acts."""
    return {"health_check": None, "outlier_detection": None, "slow_start": None, **kwargs}


def tcp_connections(ports: set[int]) -> int:
    """Open TCP connections *from this process* to any of ``ports`` on loopback (any
    state but LISTEN), read from /proc: the sockets a transport still holds."""
    inodes: set[str] = set()
    fd_dir = Path("/proc/self/fd")
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(fd_dir / fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            state, inode = fields[3], fields[9]
            if state != "0A" and remote_port in ports and inode in inodes:
                count += 1
    return count
