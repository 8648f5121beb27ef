"""Fixtures of the DNS discovery tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dnsmasq_server import Dnsmasq, system_binary


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[Dnsmasq]:
    """A started dnsmasq with no records yet; stopped by PID at the end."""
    server = Dnsmasq(system_binary("dnsmasq"), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
