"""Each example runs the way its docstring tells a user to start it — a real server
process on loopback — answers a real embedding and stops cleanly on Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.integrations._checks import BACKENDS_ENV, TEXTS, Reference, check_embeddings, free_port
from tests.integrations.conftest import ROOT

COMMANDS = {
    "flask": ["-m", "flask", "--app", "examples/flask_app", "run", "--port", "{port}"],
    "django": ["examples/django_app/manage.py", "runserver", "127.0.0.1:{port}", "--noreload"],
    "fastapi": ["-m", "uvicorn", "examples.fastapi_app:app", "--port", "{port}"],
}


def _default_sigint() -> None:
    """In the child before exec: Ctrl-C behaves as in a terminal. A test run started in
    the background of a non-interactive shell ignores SIGINT, its children inherit that,
    and Python then installs no KeyboardInterrupt handler: the example would ignore the
    test's Ctrl-C and look hung."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _output(log: Path) -> str:
    return log.read_text(errors="replace")[-20_000:]


@pytest.fixture(params=sorted(COMMANDS))
def server(request: pytest.FixtureRequest, backends_env: str, tmp_path: Path) -> Iterator[str]:
    """One example started from the repository root with the documented command; its
    base URL once it answers. Stopped by its PID.

    Its output goes to a file, not a pipe: a pipe nobody reads while the server runs
    blocks the server once full. With ``PYTHONFAULTHANDLER``, a server that does not
    exit is sent SIGABRT and prints every thread's stack into that file, shown in the
    failure."""
    port = free_port()
    args = [arg.format(port=port) for arg in COMMANDS[request.param]]
    env = {
        **os.environ,
        BACKENDS_ENV: backends_env,
        "PYTHONUNBUFFERED": "1",
        "PYTHONFAULTHANDLER": "1",
    }
    log = tmp_path / "server.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            preexec_fn=_default_sigint,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{request.param} exited early:\n{_output(log)}")
            try:
                if httpx.get(url + "/stats", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{request.param} did not answer within 30 s")
            time.sleep(0.1)
        yield url
        # Ctrl-C: the server shuts down and the interpreter must be able to exit (a
        # leftover non-daemon thread would hold it).
        os.kill(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGABRT)  # the fault handler prints every stack
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            pytest.fail(f"{request.param} did not exit within 15 s of Ctrl-C:\n{_output(log)}")
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_example_serves_real_embeddings(server: str, reference: Reference) -> None:
    """The started example embeds through both workers' pool and answers the same rows
    as a direct worker request."""
    texts = TEXTS[:3]
    response = httpx.post(server + "/embed", json={"texts": texts}, timeout=30)
    assert response.status_code == 200, response.text
    check_embeddings(response.json(), texts, reference)
