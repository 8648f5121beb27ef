"""Fixtures for the benchmark-harness tests: the benchmark modules live in benchmarks/,
outside the package, so they are put on the import path here."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))


def require_binary(name: str) -> str:
    """Path of a proxy binary; skip when it is missing, but fail under ``CI=true``,
    where ``tools/system_deps.py`` should have installed it."""
    from _proxies import find_binary

    path = find_binary(name)
    if path is None:
        reason = f"{name} is not installed (Debian package {name}; run tools/system_deps.py)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    return path
