"""Finding the Debian binaries some tests need (dnsmasq, promtool, haproxy, nginx).

One rule for every suite: a missing binary skips the test with the package to install,
except under ``CI=true``, where ``tools/system_deps.py`` must have installed it and a
skip would hide a broken CI set-up — there it fails.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "_system_deps", Path(__file__).resolve().parents[2] / "tools" / "system_deps.py"
)
assert _SPEC is not None
assert _SPEC.loader is not None
_deps = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_deps)


def system_binary(name: str) -> str:
    """Path of ``name``; skips (or fails under CI=true) when it is not installed."""
    found: str | None = _deps.which(name)
    if found is None:
        package = _deps.PACKAGES.get(name, name)
        reason = f"{name} is not installed (Debian package {package}; tools/system_deps.py installs it as root)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    return found
