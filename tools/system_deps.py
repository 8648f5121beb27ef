"""Install the Debian packages that the system tests need, when we can.

Why a script and not a README step: CI runs one command on a clean machine, as root,
so the project itself must install what its tests use. As a non-root user we only
report what is missing; the tests then skip with a reason (or fail under CI=true).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# binary -> Debian package providing it
PACKAGES = {
    "haproxy": "haproxy",
    "nginx": "nginx",
    "dnsmasq": "dnsmasq-base",
    "promtool": "prometheus",
}
SBIN = ("/usr/sbin", "/sbin", "/usr/local/sbin")


def which(binary: str) -> str | None:
    """Find a binary on PATH or in the sbin folders a non-root PATH often lacks."""
    found = shutil.which(binary)
    if found:
        return found
    for folder in SBIN:
        candidate = Path(folder) / binary
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def main() -> int:
    missing = {b: p for b, p in PACKAGES.items() if which(b) is None}
    if not missing:
        print("system deps: all present")
        return 0
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        print(
            f"system deps: missing {sorted(missing)}; not root or no apt-get:"
            " the tests that need them skip"
        )
        return 0
    # Keep package scripts from starting system-wide daemons (nginx on :80 and so on):
    # the tests start their own instances on loopback and stop them by PID.
    policy = Path("/usr/sbin/policy-rc.d")
    created = False
    if not policy.exists():
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        created = True
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
        cmd = [
            "apt-get",
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            *sorted(set(missing.values())),
        ]
        with tempfile.TemporaryFile() as log:
            proc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
            if proc.returncode != 0:
                log.seek(0)
                sys.stdout.write(log.read().decode(errors="replace")[-4000:])
                print(f"system deps: apt-get install failed ({proc.returncode})")
                return 0 if os.environ.get("CI") != "true" else proc.returncode
    finally:
        if created:
            policy.unlink()
    still = [b for b in missing if which(b) is None]
    print(f"system deps: installed {sorted(set(missing.values()))}; still missing {still}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
